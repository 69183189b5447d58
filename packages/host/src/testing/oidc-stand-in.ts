/**
 * A real OAuth 2.0 / OpenID Connect authorization server on loopback (npm oidc-provider), the
 * external stand-in for providers such as Google or GitHub: authorization code with PKCE required,
 * refresh tokens that rotate on every use, short access-token lifetimes and RFC 7009 revocation.
 * Its login and consent are one interaction a test drives by following redirects: the interaction
 * URL with `?login=<user>` signs that user in and grants what was asked; with `?deny=1` it answers
 * access_denied. Opened plainly (by a browser), it shows a login form and then a consent page. Tests see what the server issued: which user a token belongs to, how many
 * refreshes it served, and can revoke a user's grants as a user would at the provider.
 */
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import Provider from "oidc-provider";

export interface OidcStandIn {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** The user an access token was issued to, or null when it is unknown, expired or revoked. */
  userOf(accessToken: string): Promise<string | null>;
  /** Refresh grants served, code exchanges, refusals with invalid_grant, and revocations. */
  counts: { refreshed: number; invalidGrant: number; codes: number; revoked: number };
  /**
   * Plays the user's browser from the authorization URL: signs in as `login` and consents (or
   * refuses with `deny`), following the provider's redirects with its cookies, and returns the
   * URL the provider sends the browser back to (the redirect URI, with code or error and state).
   */
  authorize(url: string, as: { login: string } | { deny: true }): Promise<string>;
  /** The body of `PUT /v1/oauth-apps/{name}` for this server, its client secret in the secret `secret`. */
  appBody(secret: string): Record<string, unknown>;
  /** Revokes every grant of `user`, as the user would in the provider's settings. */
  revokeUser(user: string): Promise<void>;
  close(): Promise<void>;
}

export interface OidcStandInOptions {
  /** The redirect URI the client is registered with (the host's /oauth/callback). */
  redirectUri: string;
  accessTtlS?: number;
}

export async function startOidcStandIn(options: OidcStandInOptions): Promise<OidcStandIn> {
  const server = http.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const clientId = "paddock-test";
  const clientSecret = "client-secret-for-tests-only";
  const grants = new Map<string, Set<string>>();
  const counts = { refreshed: 0, invalidGrant: 0, codes: 0, revoked: 0 };
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [options.redirectUri],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    pkce: { required: () => true },
    rotateRefreshToken: true,
    issueRefreshToken: async () => true,
    features: { devInteractions: { enabled: false }, revocation: { enabled: true } },
    cookies: { keys: ["stand-in-cookie-key"] },
    ttl: {
      AccessToken: options.accessTtlS ?? 60,
      AuthorizationCode: 60,
      RefreshToken: 24 * 3600,
      Grant: 24 * 3600,
      Interaction: 600,
      Session: 3600,
      IdToken: 600,
    },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  });
  provider.on("grant.success", (ctx) => {
    if (ctx.oidc.params?.grant_type === "refresh_token") counts.refreshed++;
    else counts.codes++;
  });
  provider.on("grant.error", (_ctx, err) => {
    if ((err as { error?: string }).error === "invalid_grant") counts.invalidGrant++;
  });
  const serve = provider.callback();
  server.on("request", (req, res) => {
    if (req.url === "/token/revocation") res.on("finish", () => res.statusCode === 200 && counts.revoked++);
    if (!req.url?.startsWith("/interaction/")) return void serve(req, res);
    interact(provider, grants, req, res).catch((err: unknown) => {
      res.writeHead(500).end(String(err));
    });
  });
  return {
    issuer,
    clientId,
    clientSecret,
    counts,
    appBody: (secret) => ({
      issuer,
      client_id: clientId,
      client_secret: secret,
      // offline_access with prompt=consent: the provider issues a refresh token.
      scopes: ["openid", "offline_access"],
      extra_params: { prompt: "consent" },
      internal: true,
    }),
    async authorize(url, as) {
      const jar = new Map<string, string>();
      let next = url;
      for (let hop = 0; hop < 10; hop++) {
        if (next.startsWith(options.redirectUri)) return next;
        const target = new URL(next);
        if (target.pathname.startsWith("/interaction/")) {
          if ("deny" in as) target.searchParams.set("deny", "1");
          else target.searchParams.set("login", as.login);
        }
        const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
        const res = await fetch(target, { redirect: "manual", headers: cookie ? { cookie } : {} });
        for (const line of res.headers.getSetCookie()) {
          const [pair] = line.split(";");
          const eq = pair?.indexOf("=") ?? -1;
          if (pair && eq > 0) jar.set(pair.slice(0, eq), pair.slice(eq + 1));
        }
        const location = res.headers.get("location");
        if (!location)
          throw new Error(`the provider answered ${res.status} at ${target.pathname}: ${await res.text()}`);
        next = new URL(location, target).toString();
      }
      throw new Error("the provider redirected too many times");
    },
    async userOf(token) {
      const found = await provider.AccessToken.find(token);
      return found?.accountId ?? null;
    },
    async revokeUser(user) {
      for (const grantId of grants.get(user) ?? []) {
        await provider.AccessToken.revokeByGrantId(grantId);
        await provider.RefreshToken.revokeByGrantId(grantId);
        await (await provider.Grant.find(grantId))?.destroy();
      }
      grants.delete(user);
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}

/** One step of login and consent: `?login=USER` signs in and grants all asked; `?deny=1` refuses. */
async function interact(
  provider: Provider,
  grants: Map<string, Set<string>>,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): Promise<void> {
  const query = new URL(req.url ?? "/", "http://x").searchParams;
  const details = await provider.interactionDetails(req, res);
  if (query.get("deny") === "1") {
    await provider.interactionFinished(req, res, { error: "access_denied", error_description: "the user said no" });
    return;
  }
  if (details.prompt.name === "login") {
    const login = query.get("login");
    if (!login) {
      form(res, "Sign in", '<label>User <input name="login" autofocus></label> <button>Sign in</button>');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  if (!query.get("login") && query.get("consent") !== "1") {
    const scope = String(details.params.scope ?? "");
    form(
      res,
      "Allow access",
      `<p>${htmlText(String(details.params.client_id))} asks for: ${htmlText(scope)}</p><input type="hidden" name="consent" value="1"><button>Allow</button>`,
    );
    return;
  }
  const accountId = details.session?.accountId ?? "";
  const grant = new provider.Grant({ accountId, clientId: String(details.params.client_id) });
  grant.addOIDCScope(String(details.params.scope ?? "openid"));
  const grantId = await grant.save();
  const mine = grants.get(accountId) ?? new Set<string>();
  mine.add(grantId);
  grants.set(accountId, mine);
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

/** A page with one form that submits (GET) back to the interaction's URL. */
function form(res: http.ServerResponse, title: string, inner: string): void {
  res
    .writeHead(200, { "content-type": "text/html; charset=utf-8" })
    .end(
      `<!doctype html><meta charset="utf-8"><title>${title}</title><h1>${title}</h1><form method="get">${inner}</form>`,
    );
}

const htmlText = (text: string) => text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

/**
 * The cookies a host's answer sets, as a browser would send them back (`name=value; …`): the
 * connect URL binds the flow to the browser that opened it.
 */
export function browserCookies(res: Response): string {
  return res.headers
    .getSetCookie()
    .map((line) => line.split(";")[0])
    .join("; ");
}
