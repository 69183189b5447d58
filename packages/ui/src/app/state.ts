/**
 * The dashboard's shared state: who is signed in, the API client bound to that session, what the
 * host's API offers, where the app is (its URL), and a clock that ticks for live durations.
 */
import type { UiSession } from "@paddock/protocol";
import { signal } from "@preact/signals";
import { createClient } from "./lib/api.ts";
import { type Capabilities, capabilitiesOf, NO_CAPABILITIES } from "./lib/capabilities.ts";

/** undefined while it is being found out; null when nobody is signed in. */
export const session = signal<UiSession | null | undefined>(undefined);

export const api = createClient({
  fetch: (input, init) => fetch(input, init),
  csrf: () => session.value?.csrf_token ?? null,
  onUnauthorized: () => {
    session.value = null;
  },
});

export const caps = signal<Capabilities>(NO_CAPABILITIES);

export const here = signal({ path: window.location.pathname, search: window.location.search });

/** Goes to a page of the app without reloading it. */
export function navigate(url: string, options: { replace?: boolean } = {}): void {
  if (options.replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  here.value = { path: window.location.pathname, search: window.location.search };
}

window.addEventListener("popstate", () => {
  here.value = { path: window.location.pathname, search: window.location.search };
});

/** Now, to the second, for durations that grow while a run goes. */
export const now = signal(Date.now());
setInterval(() => {
  now.value = Date.now();
}, 1000);

/** Finds out whether a session cookie is signed in, and what the API offers. */
export async function start(): Promise<void> {
  try {
    session.value = await api.get<UiSession>("/v1/ui/session");
  } catch {
    session.value = null;
  }
  void loadCapabilities();
}

export async function loadCapabilities(): Promise<void> {
  try {
    caps.value = capabilitiesOf(await api.get<unknown>("/v1/openapi.json"));
  } catch {
    caps.value = NO_CAPABILITIES;
  }
}

/** Signs in with an API key; the host sets the session cookie. */
export async function signIn(key: string): Promise<void> {
  const res = await fetch("/v1/ui/session", {
    method: "POST",
    headers: { authorization: `Bearer ${key.trim()}` },
    credentials: "same-origin",
  });
  if (!res.ok) {
    const { errorOf } = await import("./lib/api.ts");
    throw await errorOf(res);
  }
  session.value = (await res.json()) as UiSession;
  void loadCapabilities();
}

export async function signOut(): Promise<void> {
  try {
    await api.send("DELETE", "/v1/ui/session");
  } finally {
    session.value = null;
  }
}
