/**
 * The dashboard's one way to the API: same-origin requests that carry the session cookie, with the
 * session's CSRF value on every write; error answers become ApiError with the API's stable code.
 */

/** The API's error answer, or a failure to reach it (code `network`). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;

  constructor(status: number, code: string, message: string, details?: unknown) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** The endpoint itself does not exist on this host (an older host): the page leaves that part out. */
  get missingEndpoint(): boolean {
    return this.status === 404 && this.code === "route_not_found";
  }
}

/** A query's values; undefined, null and "" are left out. */
export type Query = Record<string, string | number | boolean | undefined | null>;

/** A path with its query string. */
export function withQuery(path: string, query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

const SAFE = new Set(["GET", "HEAD"]);

export interface ClientOptions {
  fetch: typeof fetch;
  /** The session's CSRF value, sent on writes. */
  csrf: () => string | null;
  /** Called when an answer says the session is no longer valid (401). */
  onUnauthorized?: () => void;
}

export interface ApiClient {
  get<T>(path: string, query?: Query): Promise<T>;
  send<T>(method: string, path: string, body?: unknown): Promise<T>;
  /** The raw answer of a GET (for downloads and previews), after the same error handling. */
  raw(path: string, init?: RequestInit): Promise<Response>;
}

/** Reads an error answer: the API's `{error: {code, message, details}}`, or the status alone. */
export async function errorOf(res: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {}
  const e = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | null)?.error;
  if (e && typeof e.code === "string") {
    return new ApiError(res.status, e.code, typeof e.message === "string" ? e.message : e.code, e.details);
  }
  return new ApiError(res.status, `http_${res.status}`, `The host answered ${res.status}.`);
}

/** A client over `options.fetch`: JSON in and out, CSRF on writes, errors as ApiError. */
export function createClient(options: ClientOptions): ApiClient {
  const request = async (method: string, path: string, init: RequestInit = {}): Promise<Response> => {
    const headers = new Headers(init.headers);
    if (!SAFE.has(method)) {
      const csrf = options.csrf();
      if (csrf) headers.set("x-paddock-csrf", csrf);
    }
    let res: Response;
    try {
      res = await options.fetch(path, { ...init, method, headers, credentials: "same-origin" });
    } catch (err) {
      throw new ApiError(0, "network", `The host could not be reached (${(err as Error).message}).`);
    }
    if (res.ok) return res;
    const error = await errorOf(res);
    if (res.status === 401) options.onUnauthorized?.();
    throw error;
  };
  const json = async <T>(res: Response): Promise<T> => (res.status === 204 ? (undefined as T) : res.json());
  return {
    get: async (path, query) => json(await request("GET", withQuery(path, query))),
    send: async (method, path, body) =>
      json(
        await request(
          method,
          path,
          body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } },
        ),
      ),
    raw: (path, init) => request("GET", path, init),
  };
}
