/**
 * End users' accounts at OAuth apps: connect sessions that run the authorization-code flow with
 * PKCE (S256) and `state`, the callback that exchanges the code and seals the tokens, and the
 * accounts the API lists and revokes.
 *
 * Threat model: the connect URL is a bearer capability the product hands to one of its users; it
 * is random, stored only as a hash, and expires in minutes. The `state` sent to the provider is
 * another random value, stored as a hash, bound to one session and good once: the callback takes
 * the session in one conditional update, so a replayed, forged or late callback finds nothing and
 * stores nothing. The PKCE verifier is sealed in the session and never leaves the host, so a code
 * stolen from one session's redirect cannot be exchanged by another session (the provider checks
 * the verifier against the code's challenge). The flow is bound to the browser that opened the
 * connect URL: that browser gets a cookie whose value is hashed with the state, so an
 * authorization URL handed to someone else (an attacker's session finished in a victim's browser,
 * connecting the victim's account to the attacker's end user) finds no session at the callback.
 * The connect URL itself stays a bearer capability: whoever opens it connects to its end user, so
 * the product hands it only to that user, within its own signed-in session.
 * When the provider names its issuer in the redirect (RFC 9207), it must be the app's. Tokens are sealed by the vault with the account's
 * id as associated data and never returned by any API; errors name the provider's OAuth error
 * code, never its answer's body. End users are the tenant's own strings: every lookup is by
 * tenant, so another tenant's "alice" is another end user.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  type Account,
  type AccountDeleted,
  AppError,
  type ConnectSession,
  type ConnectSessionCreate,
} from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import type { AccessGrant } from "../bridge/bridge.ts";
import { accountAad } from "../secrets/secrets.ts";
import type { Sealer } from "../secrets/vault.ts";
import { dialectOf } from "../store/database.ts";
import { newId } from "../store/ids.ts";
import type { Db } from "../store/portable.ts";
import type { Database, OAuthAccountsTable } from "../store/schema.ts";
import type { OAuthApps, ResolvedApp } from "./apps.ts";
import { type ProviderAnswer, type ProviderHttp, ProviderUnreachable } from "./provider-http.ts";

/** How long a connect URL (and the authorization it starts) stays good. */
export const CONNECT_SESSION_TTL_MS = 10 * 60_000;

/** Associated data of a session's sealed PKCE verifier (an account's tokens: see accountAad). */
export const connectSessionAad = (id: string) => `connect-session:v1:${id}`;

/** The tokens of an account, as sealed. */
export const AccountTokens = z.object({
  access_token: z.string().min(1),
  refresh_token: z.string().min(1).nullable(),
  token_type: z.string(),
});
export type AccountTokens = z.infer<typeof AccountTokens>;

/** A token endpoint's successful answer (RFC 6749 5.1). */
const TokenAnswer = z.object({
  access_token: z.string().min(1).max(16_384),
  token_type: z.string().max(64).default("Bearer"),
  refresh_token: z.string().min(1).max(16_384).optional(),
  expires_in: z.coerce.number().positive().optional(),
  scope: z.string().max(4096).optional(),
});

/** The longest lifetime of an access token believed, in seconds (a year): a larger `expires_in` is cut to it. */
const MAX_EXPIRES_IN_S = 365 * 24 * 3600;

/**
 * When a token given `expires_in` seconds at `now` expires, as the store's whole milliseconds: a
 * provider's fractional or absurd lifetime is neither a float in a bigint column nor a date past
 * what a Date can show.
 */
const expiresAt = (now: number, expiresIn: number | undefined) =>
  expiresIn === undefined ? null : Math.round(now + Math.min(expiresIn, MAX_EXPIRES_IN_S) * 1000);

/** An access token is refreshed when it expires within this long. */
export const REFRESH_MARGIN_MS = 60_000;

/**
 * A token refreshed this recently is not refreshed again because an upstream refused it: a
 * sandbox calling an endpoint that always answers 401 would otherwise have the host refresh at
 * the provider on every call.
 */
export const UNAUTHORIZED_REFRESH_INTERVAL_MS = 30_000;

const needsReauth = (app: string) =>
  new AppError(
    "account_needs_reauth",
    `The run's end user's account at '${app}' was refused by its provider; have them connect it again.`,
    { app },
  );

/** Who is told when an account turns needs_reauth: written in the transaction that marks it. */
export interface AccountNotices {
  needsReauth(trx: Db, tenantId: string, account: { account: string; end_user: string; app: string }): Promise<boolean>;
  /** Told once what needsReauth() wrote has committed. */
  committed(): void;
}

export interface AccountsDeps {
  db: Kysely<Database>;
  vault: Sealer;
  apps: OAuthApps;
  http: ProviderHttp;
  secrets: { reveal(tenantId: string, name: string): Promise<string | null> };
  notices?: AccountNotices;
  /**
   * The URL people reach this host at (`serve --public-url`): connect URLs and the callback the
   * provider redirects to are on it, whatever address the product called the API at.
   */
  publicUrl?: string | undefined;
  /**
   * How long an opened access token is reused in this process before its account is read again
   * (0: every call reads it). A token near expiry, or refused by the upstream, is read again at once.
   */
  cacheMs?: number;
  now?: () => number;
}

/** An opened access token reused within `cacheMs`, with what says whether it is still usable. */
interface Opened extends Pick<OAuthAccountsTable, "access_expires_at" | "updated_at"> {
  account: string;
  token: string;
  at: number;
}

/** The cookie binding a flow to the browser that started it: its name follows from the state. */
export interface BrowserBinding {
  name: string;
  value: string;
  /** Sent over https only (the callback is on an https URL). */
  secure: boolean;
}

/** The name of the cookie that binds the flow of `state` to its browser. */
export const bindingCookie = (state: string) => `paddock_connect_${sha256(state).slice(0, 16)}`;

/** What the state is stored as: its hash with the browser's cookie, so one without the other finds nothing. */
const stateHash = (state: string, browser: string) => sha256(`${state}\0${browser}`);

/** Where the callback sends the user's browser: back to the product, or a page of its own. */
export type CallbackOutcome = { redirect: string } | { page: { status: number; title: string; message: string } };

const sha256 = (text: string) => createHash("sha256").update(text).digest("base64url");
const random = () => randomBytes(32).toString("base64url");

/**
 * The refresh under way (or last queued) per account, shared by every Accounts over one store in
 * this process: on SQLite, where no row lock spans the provider's answer, this queue is the lock.
 */
const refreshQueues = new WeakMap<Kysely<Database>, Map<string, Promise<unknown>>>();

export class Accounts {
  readonly #deps: AccountsDeps;
  readonly #now: () => number;
  /** The refresh under way (or last queued) per account (see refreshQueues). */
  readonly #refreshing: Map<string, Promise<unknown>>;
  /** Opened access tokens by tenant, app and end user (see AccountsDeps.cacheMs). */
  readonly #opened = new Map<string, Opened>();

  constructor(deps: AccountsDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    const queue = refreshQueues.get(deps.db) ?? new Map<string, Promise<unknown>>();
    refreshQueues.set(deps.db, queue);
    this.#refreshing = queue;
  }

  /**
   * A connect session for `end_user` at `app`: the URL on this host to send the user to (on its
   * public URL, else the `origin` the API was called at). `unknown_oauth_app` when the tenant has
   * no such app.
   */
  async createSession(tenantId: string, body: ConnectSessionCreate, called: string): Promise<ConnectSession> {
    const app = await this.#deps.apps.resolve(tenantId, body.app);
    const origin = this.#deps.publicUrl === undefined ? called : trimSlash(this.#deps.publicUrl);
    const now = this.#now();
    const id = newId("cxs", now);
    const token = random();
    const { sealed, masterKeyId } = this.#deps.vault.seal(Buffer.from(random()), connectSessionAad(id));
    const expires = now + CONNECT_SESSION_TTL_MS;
    await this.#deps.db
      .insertInto("connect_sessions")
      .values({
        id,
        tenant_id: tenantId,
        app_id: app.id,
        end_user: body.end_user,
        token_hash: sha256(token),
        // Replaced by the hash of the state sent to the provider when the user opens the URL.
        state_hash: sha256(random()),
        sealed_verifier: sealed,
        master_key_id: masterKeyId,
        scopes: JSON.stringify(body.scopes ?? app.scopes),
        redirect_uri: `${origin}/oauth/callback`,
        redirect_after: body.redirect_after ?? null,
        expires_at: expires,
        used_at: null,
        created_at: now,
      })
      .execute();
    return {
      id,
      end_user: body.end_user,
      app: app.name,
      url: `${origin}/oauth/connect/${token}`,
      expires_at: new Date(expires).toISOString(),
    };
  }

  /**
   * The provider's authorization URL for the session a connect URL's token names, with a fresh
   * `state` bound to it and to the browser (the cookie to set there); `oauth_state_invalid` when
   * the token is unknown, used or expired.
   */
  async authorizeUrl(token: string): Promise<{ url: string; binding: BrowserBinding }> {
    const now = this.#now();
    const session = await this.#deps.db
      .selectFrom("connect_sessions")
      .selectAll()
      .where("token_hash", "=", sha256(token))
      .executeTakeFirst();
    if (!session || session.used_at !== null || session.expires_at <= now) {
      throw new AppError(
        "oauth_state_invalid",
        "This connect link is unknown, already used or expired; ask for a new one.",
      );
    }
    const app = await this.#deps.apps.byId(session.app_id);
    const state = random();
    const browser = random();
    await this.#deps.db
      .updateTable("connect_sessions")
      .set({ state_hash: stateHash(state, browser) })
      .where("id", "=", session.id)
      .where("used_at", "is", null)
      .execute();
    const url = new URL(app.authorize_url);
    for (const [key, value] of Object.entries(app.extra_params)) url.searchParams.set(key, value);
    url.searchParams.set("response_type", "code");
    url.searchParams.set("client_id", app.client_id);
    url.searchParams.set("redirect_uri", session.redirect_uri);
    const scopes = z.array(z.string()).parse(JSON.parse(session.scopes));
    if (scopes.length > 0) url.searchParams.set("scope", scopes.join(" "));
    url.searchParams.set("state", state);
    if (app.pkce) {
      const verifier = this.#deps.vault.open(session.sealed_verifier, connectSessionAad(session.id)).toString();
      url.searchParams.set("code_challenge", createHash("sha256").update(verifier).digest("base64url"));
      url.searchParams.set("code_challenge_method", "S256");
    }
    const secure = new URL(session.redirect_uri).protocol === "https:";
    return { url: url.toString(), binding: { name: bindingCookie(state), value: browser, secure } };
  }

  /**
   * The provider's redirect back: takes the session its `state` and the browser's cookie
   * (`cookie(name)`) name (once), exchanges the code and seals the tokens. A state that names no
   * pending session of this browser is an error page; anything else goes back to the product's
   * `redirect_after` (with `error=` when it failed), or a page.
   */
  async callback(
    query: Record<string, string | undefined>,
    cookie: (name: string) => string | undefined,
  ): Promise<CallbackOutcome> {
    const now = this.#now();
    const state = query.state ?? "";
    const browser = state === "" ? undefined : cookie(bindingCookie(state));
    const session =
      state === "" || state.length > 512 || browser === undefined || browser.length > 512
        ? undefined
        : await this.#deps.db
            .updateTable("connect_sessions")
            .set({ used_at: now })
            .where("state_hash", "=", stateHash(state, browser))
            .where("used_at", "is", null)
            .where("expires_at", ">", now)
            .returningAll()
            .executeTakeFirst();
    if (!session) {
      const err = new AppError(
        "oauth_state_invalid",
        "This authorization does not belong to a pending connect session started in this browser (unknown, used or expired); start again from the connect link.",
      );
      return { page: { status: 400, title: "Not connected", message: err.message } };
    }
    const back = (params: Record<string, string>, failure?: string): CallbackOutcome => {
      if (session.redirect_after === null) {
        return failure
          ? { page: { status: 502, title: "Not connected", message: failure } }
          : {
              page: { status: 200, title: "Connected", message: "Your account is connected; you may close this page." },
            };
      }
      const url = new URL(session.redirect_after);
      for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
      return { redirect: url.toString() };
    };
    if (query.error !== undefined || query.code === undefined || query.code === "") {
      const code = oauthErrorCode(query.error ?? "missing_code");
      return back({ error: code }, `The provider answered '${code}'; nothing was stored.`);
    }
    const app = await this.#deps.apps.byId(session.app_id);
    // RFC 9207: a redirect naming another issuer is an authorization server mix-up; its code is not
    // sent. From a provider that always names its issuer, a redirect naming none is refused too.
    if (query.iss !== undefined && app.issuer !== null && trimSlash(query.iss) !== trimSlash(app.issuer)) {
      return back({ error: "invalid_issuer" }, "The authorization came back from another issuer; nothing was stored.");
    }
    if (query.iss === undefined && app.iss_required) {
      return back(
        { error: "invalid_issuer" },
        "The authorization came back without the issuer this provider always names; nothing was stored.",
      );
    }
    const verifier = this.#deps.vault.open(session.sealed_verifier, connectSessionAad(session.id)).toString();
    let tokens: z.infer<typeof TokenAnswer>;
    try {
      tokens = await this.#exchange(app, {
        grant_type: "authorization_code",
        code: query.code.slice(0, 4096),
        redirect_uri: session.redirect_uri,
        ...(app.pkce ? { code_verifier: verifier } : {}),
      });
    } catch (err) {
      if (!(err instanceof AppError)) throw err;
      return back({ error: String((err.details as { error?: string })?.error ?? "server_error") }, err.message);
    }
    const scopes = tokens.scope?.split(" ").filter(Boolean) ?? z.array(z.string()).parse(JSON.parse(session.scopes));
    const account = await this.store(session.tenant_id, app.id, session.end_user, tokens, scopes);
    return back({ account: account.id, status: "connected" });
  }

  /**
   * Seals `tokens` as the account of `endUser` at the app, replacing any it had (a reconnect makes
   * the account active again).
   */
  async store(
    tenantId: string,
    appId: string,
    endUser: string,
    tokens: {
      access_token: string;
      refresh_token?: string | undefined;
      token_type?: string;
      expires_in?: number | undefined;
    },
    scopes: string[],
  ): Promise<Account> {
    const now = this.#now();
    return this.#deps.db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom("oauth_accounts")
        .select(["id", "created_at"])
        .where("tenant_id", "=", tenantId)
        .where("app_id", "=", appId)
        .where("end_user", "=", endUser)
        .executeTakeFirst();
      const id = existing?.id ?? newId("acc", now);
      this.#forget(id);
      const sealed = this.#seal(id, {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token ?? null,
        token_type: tokens.token_type ?? "Bearer",
      });
      const row: OAuthAccountsTable = {
        id,
        tenant_id: tenantId,
        app_id: appId,
        end_user: endUser,
        status: "active",
        scopes: JSON.stringify(scopes),
        sealed_tokens: sealed.sealed,
        master_key_id: sealed.masterKeyId,
        access_expires_at: expiresAt(now, tokens.expires_in),
        refreshed_at: null,
        created_at: existing?.created_at ?? now,
        updated_at: now,
      };
      if (existing) {
        const { id: _id, tenant_id: _t, app_id: _a, end_user: _e, created_at: _c, ...changed } = row;
        await trx.updateTable("oauth_accounts").set(changed).where("id", "=", id).execute();
      } else {
        await trx.insertInto("oauth_accounts").values(row).execute();
      }
      const app = await trx.selectFrom("oauth_apps").select("name").where("id", "=", appId).executeTakeFirstOrThrow();
      return toAccount(row, app.name);
    });
  }

  /** The tenant's accounts, of one end user and/or app when given. */
  async list(
    tenantId: string,
    filter: { end_user?: string | undefined; app?: string | undefined },
  ): Promise<Account[]> {
    let query = this.#deps.db
      .selectFrom("oauth_accounts as a")
      .innerJoin("oauth_apps as p", "p.id", "a.app_id")
      .selectAll("a")
      .select("p.name as app_name")
      .where("a.tenant_id", "=", tenantId);
    if (filter.end_user !== undefined) query = query.where("a.end_user", "=", filter.end_user);
    if (filter.app !== undefined) query = query.where("p.name", "=", filter.app);
    const rows = await query.orderBy("a.end_user").orderBy("p.name").execute();
    return rows.map((r) => toAccount(r, r.app_name));
  }

  /**
   * Deletes the account and revokes its tokens at the provider when the app has a revocation
   * endpoint (a provider that cannot be reached or refuses does not keep the account here; the
   * answer says so: `provider_revocation: "failed"`).
   */
  async revoke(tenantId: string, id: string): Promise<AccountDeleted> {
    const row = await this.#deps.db
      .selectFrom("oauth_accounts")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("id", "=", id)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No account '${id}'.`);
    const app = await this.#deps.apps.byId(row.app_id);
    await this.#deps.db.deleteFrom("oauth_accounts").where("id", "=", row.id).execute();
    this.#forget(row.id);
    let revocation: AccountDeleted["provider_revocation"] = "none";
    if (app.revoke_url !== null) {
      const { revoke_url } = app;
      const tokens = this.open(row);
      const hints: [string, string][] = [["access_token", tokens.access_token]];
      if (tokens.refresh_token !== null) hints.unshift(["refresh_token", tokens.refresh_token]);
      // RFC 7009 2.2: 200 whether or not the token was still good; anything else, or no answer, failed.
      const answers = await Promise.all(
        hints.map(([hint, token]) =>
          this.#post(app, revoke_url, { token, token_type_hint: hint }).then(
            (answer) => answer.status === 200,
            () => false,
          ),
        ),
      );
      revocation = answers.every(Boolean) ? "revoked" : "failed";
    }
    return { ...toAccount(row, app.name), provider_revocation: revocation };
  }

  /**
   * The access token of `endUser`'s account at the tenant's app `appName`, for the bridge to
   * attach: refreshed first when it expires within REFRESH_MARGIN_MS, or when it is `stale` (the
   * upstream answered 401 to it). `account_missing` naming the app when the end user has none,
   * `account_needs_reauth` when its provider refused it.
   */
  async accessToken(tenantId: string, endUser: string, appName: string, stale?: string): Promise<AccessGrant> {
    const key = `${tenantId}\0${appName}\0${endUser}`;
    const hit = this.#opened.get(key);
    if (
      hit &&
      stale === undefined &&
      this.#now() - hit.at < (this.#deps.cacheMs ?? 0) &&
      this.#usable(hit, hit.token)
    ) {
      return { token: hit.token, refreshed: null };
    }
    this.#opened.delete(key);
    const row = await this.#deps.db
      .selectFrom("oauth_accounts as a")
      .innerJoin("oauth_apps as p", "p.id", "a.app_id")
      .select([
        "a.id",
        "a.app_id",
        "a.status",
        "a.sealed_tokens",
        "a.access_expires_at",
        "a.refreshed_at",
        "a.updated_at",
      ])
      .where("a.tenant_id", "=", tenantId)
      .where("p.tenant_id", "=", tenantId)
      .where("p.name", "=", appName)
      .where("a.end_user", "=", endUser)
      .executeTakeFirst();
    if (!row) {
      throw new AppError("account_missing", `The run's end user has no account at the OAuth app '${appName}'.`, {
        app: appName,
      });
    }
    if (row.status === "needs_reauth") throw needsReauth(appName);
    const token = this.open(row).access_token;
    if (this.#usable(row, token, stale)) {
      this.#remember(key, {
        account: row.id,
        token,
        access_expires_at: row.access_expires_at,
        updated_at: row.updated_at,
      });
      return { token, refreshed: null };
    }
    const started = performance.now();
    const outcome = await this.#refreshOnce(row.id, row.app_id, stale);
    const refreshed = {
      account: row.id,
      app: appName,
      reason: stale === undefined ? ("expiry" as const) : ("unauthorized" as const),
      needs_reauth: outcome === null,
      ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
    if (outcome === null) throw Object.assign(needsReauth(appName), { refreshed });
    return { token: outcome.token, refreshed: outcome.by === "us" ? refreshed : null };
  }

  /** Keeps an opened token for `cacheMs`; it is dropped from memory once that has passed. */
  #remember(key: string, opened: Omit<Opened, "at">): void {
    const cacheMs = this.#deps.cacheMs ?? 0;
    if (cacheMs <= 0) return;
    const at = this.#now();
    this.#opened.set(key, { ...opened, at });
    setTimeout(() => {
      if (this.#opened.get(key)?.at === at) this.#opened.delete(key);
    }, cacheMs + 10).unref();
  }

  /** Drops the opened token of an account replaced or deleted here. */
  #forget(accountId: string): void {
    for (const [key, opened] of this.#opened) if (opened.account === accountId) this.#opened.delete(key);
  }

  /**
   * A token that is not the one the upstream refused (unless refreshed within
   * UNAUTHORIZED_REFRESH_INTERVAL_MS) and does not expire within the margin: REFRESH_MARGIN_MS, or
   * half its lifetime for a token issued for less than twice that.
   */
  #usable(
    row: Pick<OAuthAccountsTable, "access_expires_at" | "updated_at"> & { refreshed_at?: number | null },
    token: string,
    stale?: string,
  ): boolean {
    if (stale !== undefined && token === stale) {
      const refreshed = row.refreshed_at ?? null;
      if (refreshed === null || this.#now() - Number(refreshed) >= UNAUTHORIZED_REFRESH_INTERVAL_MS) return false;
    }
    if (row.access_expires_at === null) return true;
    const expires = Number(row.access_expires_at);
    const margin = Math.min(REFRESH_MARGIN_MS, (expires - Number(row.updated_at)) / 2);
    return expires - this.#now() > margin;
  }

  /**
   * One refresh at a time per account: in this process, callers of the same account wait in line;
   * across hosts, the account's row is locked (SELECT … FOR UPDATE on PostgreSQL; SQLite has one
   * host, and the queue is shared by every Accounts over its store). Whoever gets the lock re-reads the row: when another refreshed meanwhile, its token
   * is used as is. Null when the provider refused (invalid_grant): the account is needs_reauth.
   */
  async #refreshOnce(
    accountId: string,
    appId: string,
    stale: string | undefined,
  ): Promise<{ token: string; by: "us" | "other" } | null> {
    const before = this.#refreshing.get(accountId) ?? Promise.resolve();
    const turn = before.catch(() => undefined).then(() => this.#refreshLocked(accountId, appId, stale));
    const tail = turn.catch(() => undefined);
    this.#refreshing.set(accountId, tail);
    try {
      return await turn;
    } finally {
      if (this.#refreshing.get(accountId) === tail) this.#refreshing.delete(accountId);
    }
  }

  async #refreshLocked(
    accountId: string,
    appId: string,
    stale: string | undefined,
  ): Promise<{ token: string; by: "us" | "other" } | null> {
    const db = this.#deps.db;
    // Read before the lock: nothing inside the transaction may wait for another connection.
    const app = await this.#deps.apps.byId(appId);
    const secret = await this.#clientSecret(app);
    let noticed = false;
    // PostgreSQL: the row lock spans the provider's answer, so other nodes wait for it. SQLite has
    // one host, whose refreshes of an account queue in #refreshOnce, and one connection: a
    // transaction held over the provider's answer would stall every query of the host, so there
    // only the writes are one, and they change the row only if nothing (a reconnect) changed it since.
    const locked = dialectOf(db) === "postgres";
    const inLock = <T>(fn: (q: Db) => Promise<T>) => (locked ? db.transaction().execute(fn) : fn(db));
    const writing = <T>(q: Db, fn: (t: Db) => Promise<T>) => (locked ? fn(q) : db.transaction().execute(fn));
    const outcome = await inLock(async (trx) => {
      let query = trx.selectFrom("oauth_accounts").selectAll().where("id", "=", accountId);
      if (locked) query = query.forUpdate();
      const row = await query.executeTakeFirst();
      if (!row || row.status === "needs_reauth") return null;
      const tokens = this.open(row);
      if (this.#usable(row, tokens.access_token, stale)) {
        return { token: tokens.access_token, by: "other" as const };
      }
      const now = this.#now();
      const refused = () =>
        writing(trx, async (w) => {
          const marked = await w
            .updateTable("oauth_accounts")
            .set({ status: "needs_reauth", updated_at: now })
            .where("id", "=", row.id)
            .where("updated_at", "=", row.updated_at)
            .executeTakeFirst();
          if (Number(marked.numUpdatedRows) === 0) return null;
          const account = { account: row.id, end_user: row.end_user, app: app.name };
          noticed = (await this.#deps.notices?.needsReauth(w, row.tenant_id, account)) ?? false;
          return null;
        });
      if (tokens.refresh_token === null) return refused();
      let answer: z.infer<typeof TokenAnswer>;
      try {
        answer = await this.#exchange(
          app,
          { grant_type: "refresh_token", refresh_token: tokens.refresh_token },
          secret,
        );
      } catch (err) {
        if (err instanceof AppError && (err.details as { error?: string } | undefined)?.error === "invalid_grant") {
          return refused();
        }
        throw err;
      }
      // A provider that rotates refresh tokens sends a new one; one that does not keeps the old.
      const sealed = this.#seal(row.id, {
        access_token: answer.access_token,
        refresh_token: answer.refresh_token ?? tokens.refresh_token,
        token_type: answer.token_type,
      });
      await trx
        .updateTable("oauth_accounts")
        .set({
          sealed_tokens: sealed.sealed,
          master_key_id: sealed.masterKeyId,
          access_expires_at: expiresAt(now, answer.expires_in),
          refreshed_at: now,
          updated_at: now,
        })
        .where("id", "=", row.id)
        .where("updated_at", "=", row.updated_at)
        .execute();
      return { token: answer.access_token, by: "us" as const };
    });
    if (noticed) this.#deps.notices?.committed();
    return outcome;
  }

  /** The tokens of an account row (for the bridge, on the host). */
  open(row: Pick<OAuthAccountsTable, "id" | "sealed_tokens">): AccountTokens {
    return AccountTokens.parse(JSON.parse(this.#deps.vault.open(row.sealed_tokens, accountAad(row.id)).toString()));
  }

  #seal(id: string, tokens: AccountTokens): { sealed: string; masterKeyId: string } {
    return this.#deps.vault.seal(Buffer.from(JSON.stringify(tokens)), accountAad(id));
  }

  /** A token endpoint call; `oauth_provider_error` naming the provider's error code when it refuses. */
  async #exchange(
    app: ResolvedApp,
    form: Record<string, string>,
    secret?: string | null,
  ): Promise<z.infer<typeof TokenAnswer>> {
    let answer: ProviderAnswer;
    try {
      answer = await this.#post(app, app.token_url, form, secret);
    } catch (err) {
      if (!(err instanceof ProviderUnreachable)) throw err;
      throw new AppError("oauth_provider_error", `The token endpoint: ${err.message}.`, { error: "unreachable" });
    }
    const parsed = TokenAnswer.safeParse(answer.json);
    if (answer.status !== 200 || !parsed.success) {
      const error = oauthErrorCode(answer.json?.error);
      throw new AppError(
        "oauth_provider_error",
        `The token endpoint answered ${answer.status}${error ? ` (${error})` : ""}; nothing was stored.`,
        { error, status: answer.status },
      );
    }
    return parsed.data;
  }

  /** The app's client secret, or null for a public client. */
  #clientSecret(app: ResolvedApp): Promise<string | null> {
    return app.client_secret === null
      ? Promise.resolve(null)
      : this.#deps.secrets.reveal(app.tenantId, app.client_secret);
  }

  /** A form POST to one of the app's endpoints, authenticated as its client (`secret` when read already). */
  async #post(
    app: ResolvedApp,
    url: string,
    form: Record<string, string>,
    known?: string | null,
  ): Promise<ProviderAnswer> {
    const secret = known === undefined ? await this.#clientSecret(app) : known;
    if (secret === null) return this.#deps.http.postForm(url, app.internal, { ...form, client_id: app.client_id });
    return this.#deps.http.postForm(url, app.internal, form, { user: app.client_id, password: secret });
  }
}

const trimSlash = (url: string) => url.replace(/\/+$/, "");

/** An OAuth error code as a provider sent it, kept to its defined alphabet (RFC 6749 5.2). */
function oauthErrorCode(value: unknown): string {
  return typeof value === "string" && /^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$/.test(value) ? value : "invalid_answer";
}

function toAccount(row: OAuthAccountsTable, app: string): Account {
  const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());
  return {
    id: row.id,
    end_user: row.end_user,
    app,
    status: row.status === "needs_reauth" ? "needs_reauth" : "active",
    scopes: z.array(z.string()).parse(JSON.parse(row.scopes)),
    expires_at: iso(row.access_expires_at),
    refreshed_at: iso(row.refreshed_at),
    created_at: new Date(Number(row.created_at)).toISOString(),
    updated_at: new Date(Number(row.updated_at)).toISOString(),
  };
}
