/**
 * The dashboard's sign-in sessions: an API key, presented once, buys a session cookie bound to it.
 *
 * Threat model: the store may leak, so a session is kept only as the SHA-256 of its 256-bit random
 * token. The cookie is HttpOnly (page scripts, including any an agent's output smuggled in, cannot
 * read it) and SameSite=Strict (other sites' pages do not send it). A session is exactly as good
 * as its key: each request re-checks that the key is not revoked and the session not expired, so
 * revoking a key ends its sessions at once. Writes made with the cookie also need the session's
 * CSRF value, which only a page of this origin can have read (from the sign-in answer or
 * GET /v1/ui/session), and a same-origin request (Origin or Sec-Fetch-Site).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Kysely } from "kysely";
import type { Database } from "../store/schema.ts";
import type { Principal } from "./identity.ts";

/** The session cookie's name. */
export const SESSION_COOKIE = "paddock_session";
/** The header that carries a session's CSRF value on writes. */
export const CSRF_HEADER = "x-paddock-csrf";
/** How long a session lasts from sign-in. */
export const SESSION_TTL_MS = 12 * 3600_000;

const sha256 = (text: string) => createHash("sha256").update(text).digest();

/** A session as a request presents it: its key's principal, its CSRF value and when it ends. */
export interface UiSession {
  principal: Principal;
  csrf: string;
  expiresAt: number;
}

export class UiSessions {
  readonly #db: Kysely<Database>;
  readonly #ttlMs: number;

  constructor(db: Kysely<Database>, options: { ttlMs?: number } = {}) {
    this.#db = db;
    this.#ttlMs = options.ttlMs ?? SESSION_TTL_MS;
  }

  /** The CSRF value of a session: derived from its token, so nothing more is stored. */
  static csrfOf(token: string): string {
    return sha256(`csrf\n${token}`).toString("base64url");
  }

  /** Starts a session for a key's principal; the token goes in the cookie and nowhere else. */
  async create(principal: Principal): Promise<{ token: string } & UiSession> {
    const now = Date.now();
    // Ended sessions go as new ones come: the table holds live sessions and few others.
    await this.#db.deleteFrom("ui_sessions").where("expires_at", "<=", now).execute();
    const token = randomBytes(32).toString("base64url");
    const expiresAt = now + this.#ttlMs;
    await this.#db
      .insertInto("ui_sessions")
      .values({ id: sha256(token).toString("hex"), key_id: principal.keyId, created_at: now, expires_at: expiresAt })
      .execute();
    return { token, principal, csrf: UiSessions.csrfOf(token), expiresAt };
  }

  /** The live session of a cookie's token, with its key's principal; null if unknown, expired or its key revoked. */
  async authenticate(token: string): Promise<UiSession | null> {
    if (token.length !== 43 || !/^[\w-]+$/.test(token)) return null;
    const row = await this.#db
      .selectFrom("ui_sessions")
      .innerJoin("api_keys", "api_keys.id", "ui_sessions.key_id")
      .select(["ui_sessions.expires_at", "api_keys.id as key_id", "api_keys.tenant_id", "api_keys.role"])
      .where("ui_sessions.id", "=", sha256(token).toString("hex"))
      .where("api_keys.revoked_at", "is", null)
      .where("ui_sessions.expires_at", ">", Date.now())
      .executeTakeFirst();
    if (!row) return null;
    return {
      principal: { tenantId: row.tenant_id, keyId: row.key_id, role: row.role },
      csrf: UiSessions.csrfOf(token),
      expiresAt: Number(row.expires_at),
    };
  }

  /** Ends the session of a token (signing out); an unknown token changes nothing. */
  async end(token: string): Promise<void> {
    await this.#db.deleteFrom("ui_sessions").where("id", "=", sha256(token).toString("hex")).execute();
  }
}

/** Whether a presented CSRF value is the session's, compared in constant time. */
export function csrfMatches(session: UiSession, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  const a = Buffer.from(presented);
  const b = Buffer.from(session.csrf);
  return a.length === b.length && timingSafeEqual(a, b);
}
