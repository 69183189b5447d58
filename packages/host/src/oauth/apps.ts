/**
 * OAuth apps of a tenant: the provider's endpoints and the client the host authorizes end users
 * with. An app is set from explicit endpoints or from an OpenID Connect issuer, whose discovery
 * document is read once, when the app is set, and its endpoints stored.
 *
 * Threat model: apps are written by tenant API keys. The client secret is a vault secret named by
 * the app, never stored in it. Endpoints must be https on public addresses unless the app is
 * internal (admin key only), which also lets them be plain http on private or loopback addresses;
 * the discovered endpoints are held to the same rule, and every call to them is pinned (see
 * provider-http.ts). Another tenant's apps answer as unknown ones.
 */
import { AppError, OAuthApp, OAuthAppPut } from "@paddock/protocol";
import type { Kysely, Transaction } from "kysely";
import { z } from "zod";
import { upstreamLiteralRefusal } from "../bridge/connections.ts";
import { newId } from "../store/ids.ts";
import type { Database, OAuthAppsTable } from "../store/schema.ts";
import { type ProviderHttp, ProviderUnreachable } from "./provider-http.ts";

/** An app as stored: its endpoints resolved. */
const StoredApp = OAuthApp.omit({ name: true, created_at: true, updated_at: true });
export type StoredApp = z.infer<typeof StoredApp>;

/** An app as the rest of the host uses it. */
export interface ResolvedApp extends StoredApp {
  id: string;
  tenantId: string;
  name: string;
}

const Discovery = z.object({
  issuer: z.string(),
  authorization_endpoint: z.string(),
  token_endpoint: z.string(),
  revocation_endpoint: z.string().optional(),
  authorization_response_iss_parameter_supported: z.boolean().optional(),
});

export class OAuthApps {
  readonly #db: Kysely<Database>;
  readonly #http: ProviderHttp;

  constructor(db: Kysely<Database>, http: ProviderHttp) {
    this.#db = db;
    this.#http = http;
  }

  /**
   * Creates or replaces the app `name`. Throws `unknown_secret` for a client secret the tenant
   * lacks, `oauth_discovery_failed` when the issuer's document cannot be read or does not match,
   * `validation_failed` for an endpoint on an address the app may not use.
   */
  async put(tenantId: string, name: string, body: OAuthAppPut): Promise<{ app: OAuthApp; created: boolean }> {
    const spec = OAuthAppPut.parse(body);
    const resolved = await this.#resolve(spec);
    const now = Date.now();
    const result = await this.#db.transaction().execute(async (trx) => {
      if (spec.client_secret !== undefined) {
        const secret = await trx
          .selectFrom("secrets")
          .select("id")
          .where("tenant_id", "=", tenantId)
          .where("name", "=", spec.client_secret)
          .executeTakeFirst();
        if (!secret) {
          throw new AppError("unknown_secret", `No secret '${spec.client_secret}'; set it first, then the app.`, {
            secret: spec.client_secret,
          });
        }
      }
      const existing = await findApp(trx, tenantId, name);
      const row: OAuthAppsTable = {
        id: existing?.id ?? newId("oap", now),
        tenant_id: tenantId,
        name,
        secret_name: resolved.client_secret,
        spec: JSON.stringify(resolved),
        created_at: existing?.created_at ?? now,
        updated_at: now,
      };
      if (existing) {
        await trx
          .updateTable("oauth_apps")
          .set({ secret_name: row.secret_name, spec: row.spec, updated_at: now })
          .where("id", "=", existing.id)
          .execute();
      } else {
        await trx.insertInto("oauth_apps").values(row).execute();
      }
      return { row, created: !existing };
    });
    return { app: toApp(result.row), created: result.created };
  }

  async list(tenantId: string): Promise<OAuthApp[]> {
    const rows = await this.#db
      .selectFrom("oauth_apps")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .orderBy("name")
      .execute();
    return rows.map(toApp);
  }

  async get(tenantId: string, name: string): Promise<OAuthApp> {
    return toApp(await this.#row(tenantId, name));
  }

  /** Deletes an app no account uses (`conflict` otherwise); returns what it was. */
  async delete(tenantId: string, name: string): Promise<OAuthApp> {
    return this.#db.transaction().execute(async (trx) => {
      const row = await findApp(trx, tenantId, name);
      if (!row) throw notFound(name);
      const used = await trx
        .selectFrom("oauth_accounts")
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .where("app_id", "=", row.id)
        .executeTakeFirstOrThrow();
      if (Number(used.n) > 0) {
        throw new AppError(
          "conflict",
          `The OAuth app '${name}' has ${used.n} connected account(s); revoke them first.`,
          { accounts: Number(used.n) },
        );
      }
      await trx.deleteFrom("oauth_apps").where("id", "=", row.id).execute();
      return toApp(row);
    });
  }

  /** The app for the host's own use; `unknown_oauth_app` when the tenant has none of that name. */
  async resolve(tenantId: string, name: string): Promise<ResolvedApp> {
    const row = await findApp(this.#db, tenantId, name);
    if (!row) throw new AppError("unknown_oauth_app", `No OAuth app '${name}'.`, { app: name });
    return toResolved(row);
  }

  /** The app of an id (an account's or a session's), whatever its tenant. */
  async byId(id: string): Promise<ResolvedApp> {
    return toResolved(
      await this.#db.selectFrom("oauth_apps").selectAll().where("id", "=", id).executeTakeFirstOrThrow(),
    );
  }

  async #row(tenantId: string, name: string): Promise<OAuthAppsTable> {
    const row = await findApp(this.#db, tenantId, name);
    if (!row) throw notFound(name);
    return row;
  }

  /** The app's endpoints: explicit ones, else the issuer's discovered ones; each checked. */
  async #resolve(spec: OAuthAppPut): Promise<StoredApp> {
    let discovered: z.infer<typeof Discovery> | null = null;
    if (spec.issuer !== undefined) {
      checkEndpoint("issuer", spec.issuer, spec.internal);
      const url = `${spec.issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`;
      let answer: Awaited<ReturnType<ProviderHttp["getJson"]>>;
      try {
        answer = await this.#http.getJson(url, spec.internal);
      } catch (err) {
        if (!(err instanceof ProviderUnreachable)) throw err;
        throw new AppError("oauth_discovery_failed", `The issuer's discovery document: ${err.message}.`);
      }
      const parsed = Discovery.safeParse(answer.json);
      if (answer.status !== 200 || !parsed.success) {
        throw new AppError(
          "oauth_discovery_failed",
          `The issuer answered ${answer.status} without a discovery document naming its endpoints.`,
        );
      }
      // OpenID Connect Discovery 4.3: the document's issuer is exactly the one asked about.
      if (parsed.data.issuer.replace(/\/+$/, "") !== spec.issuer.replace(/\/+$/, "")) {
        throw new AppError("oauth_discovery_failed", "The discovery document names another issuer.");
      }
      discovered = parsed.data;
    }
    const app: StoredApp = {
      issuer: spec.issuer ?? null,
      authorize_url: spec.authorize_url ?? discovered?.authorization_endpoint ?? "",
      token_url: spec.token_url ?? discovered?.token_endpoint ?? "",
      revoke_url: spec.revoke_url ?? discovered?.revocation_endpoint ?? null,
      client_id: spec.client_id,
      client_secret: spec.client_secret ?? null,
      scopes: spec.scopes,
      pkce: spec.pkce,
      extra_params: spec.extra_params ?? {},
      internal: spec.internal,
      iss_required: discovered?.authorization_response_iss_parameter_supported === true,
    };
    checkEndpoint("authorize_url", app.authorize_url, app.internal);
    checkEndpoint("token_url", app.token_url, app.internal);
    if (app.revoke_url !== null) checkEndpoint("revoke_url", app.revoke_url, app.internal);
    return app;
  }
}

function findApp(
  db: Kysely<Database> | Transaction<Database>,
  tenantId: string,
  name: string,
): Promise<OAuthAppsTable | undefined> {
  return db
    .selectFrom("oauth_apps")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .where("name", "=", name)
    .executeTakeFirst();
}

const notFound = (name: string) => new AppError("not_found", `No OAuth app '${name}'.`);

/** An endpoint must be an https URL on a public address, unless the app is internal. */
function checkEndpoint(field: string, url: string, internal: boolean): void {
  let problem: string | null = null;
  if (!URL.canParse(url)) problem = "not a URL";
  else {
    const parsed = new URL(url);
    if (parsed.protocol !== "https:" && !(internal && parsed.protocol === "http:"))
      problem = internal ? "an http or https URL" : 'an https URL (plain http only with "internal": true)';
    else if (parsed.username !== "" || parsed.password !== "") problem = "no credentials in the URL";
    else {
      const refusal = upstreamLiteralRefusal(url, internal);
      if (refusal !== null) problem = `the address is ${refusal}, which an app that is not internal may not use`;
    }
  }
  if (problem === null) return;
  throw new AppError("validation_failed", `Invalid request: ${field}: ${problem}.`, [
    { path: field, code: "custom", message: problem },
  ]);
}

function parseStored(row: OAuthAppsTable): StoredApp {
  return StoredApp.parse(JSON.parse(row.spec));
}

function toResolved(row: OAuthAppsTable): ResolvedApp {
  return { ...parseStored(row), id: row.id, tenantId: row.tenant_id, name: row.name };
}

function toApp(row: OAuthAppsTable): OAuthApp {
  return {
    name: row.name,
    ...parseStored(row),
    created_at: new Date(row.created_at).toISOString(),
    updated_at: new Date(row.updated_at).toISOString(),
  };
}
