/** The dashboard's pages and their paths under /ui (no hash: the host answers every /ui path with the app). */

export const BASE = "/ui";

export type Route =
  | { page: "runs" }
  | { page: "run"; id: string }
  | { page: "agents" }
  | { page: "agent"; id: string }
  | { page: "credits" }
  | { page: "approvals" }
  | { page: "accounts" }
  | { page: "settings" }
  | { page: "admin" }
  | { page: "not_found"; path: string };

const ID = /^[a-z]{3}_[0-9a-z]{1,60}$/;

/** The page a location's path names. */
export function matchRoute(pathname: string): Route {
  const parts = pathname
    .replace(/\/+$/, "")
    .split("/")
    .filter((p) => p !== "");
  if (parts[0] !== "ui") return { page: "not_found", path: pathname };
  const [, section, id, ...rest] = parts;
  if (rest.length > 0) return { page: "not_found", path: pathname };
  switch (section) {
    case undefined:
    case "runs":
      if (id === undefined) return { page: "runs" };
      return ID.test(id) ? { page: "run", id } : { page: "not_found", path: pathname };
    case "agents":
      if (id === undefined) return { page: "agents" };
      return ID.test(id) ? { page: "agent", id } : { page: "not_found", path: pathname };
    case "credits":
    case "approvals":
    case "accounts":
    case "settings":
    case "admin":
      return id === undefined ? { page: section } : { page: "not_found", path: pathname };
    default:
      return { page: "not_found", path: pathname };
  }
}

/** The path of a page. */
export const paths = {
  runs: (search = "") => `${BASE}/runs${search}`,
  run: (id: string) => `${BASE}/runs/${encodeURIComponent(id)}`,
  agents: () => `${BASE}/agents`,
  agent: (id: string) => `${BASE}/agents/${encodeURIComponent(id)}`,
  credits: () => `${BASE}/credits`,
  approvals: () => `${BASE}/approvals`,
  accounts: () => `${BASE}/accounts`,
  settings: () => `${BASE}/settings`,
  admin: () => `${BASE}/admin`,
};

/** Whether a click on a link should be left to the browser (new tab, download, another origin). */
export function isPlainClick(e: {
  button: number;
  metaKey: boolean;
  ctrlKey: boolean;
  shiftKey: boolean;
  altKey: boolean;
  defaultPrevented: boolean;
}): boolean {
  return e.button === 0 && !e.metaKey && !e.ctrlKey && !e.shiftKey && !e.altKey && !e.defaultPrevented;
}
