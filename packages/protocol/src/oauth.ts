/**
 * OAuth apps, connect sessions and end users' accounts as the API accepts and returns them. An
 * account's tokens never appear in any of these shapes: they stay sealed on the host.
 */
import { z } from "zod";
import { ConnectionName } from "./bridge.ts";

/** An OAuth app's name, as connections name it in `auth: {type: "oauth", app}`. */
export const OAuthAppName = ConnectionName;

const SecretRef = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "a secret name: letters, digits, '_', '.' and '-', at most 64");

const HttpUrl = z
  .string()
  .max(2048)
  .refine((u) => URL.canParse(u) && /^https?:$/.test(new URL(u).protocol), "an http or https URL")
  .meta({ format: "uri" });

const Scope = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, "a scope token (printable ASCII, no spaces, quotes or backslashes)");

/**
 * A product's own id for one of its users. Any printable string: no control characters, at most
 * 256 characters. It is namespaced by the tenant: two tenants' "alice" are two end users.
 */
export const EndUser = z
  .string()
  .min(1)
  .max(256)
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point.
  .regex(/^[^\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]+$/, "no control characters")
  .meta({ id: "EndUser", description: "The product's own id for one of its users (no control characters)." });
export type EndUser = z.infer<typeof EndUser>;

/**
 * The body of `PUT /v1/oauth-apps/{name}`: either an OpenID Connect `issuer` (its endpoints are
 * discovered when the app is set) or explicit `authorize_url` and `token_url`. Explicit endpoints
 * win over discovered ones.
 */
export const OAuthAppPut = z
  .object({
    issuer: HttpUrl.optional(),
    authorize_url: HttpUrl.optional(),
    token_url: HttpUrl.optional(),
    /** RFC 7009 revocation endpoint; deleting an account revokes its tokens there too. */
    revoke_url: HttpUrl.optional(),
    client_id: z.string().min(1).max(512),
    /** The name of the secret holding the client secret; none for a public client. */
    client_secret: SecretRef.optional(),
    /** Scopes asked for when a connect session names none. */
    scopes: z.array(Scope).max(64).default([]),
    /** PKCE (S256) on every authorization; only for providers that refuse it may it be turned off. */
    pkce: z.boolean().default(true),
    /** Further parameters of the authorization request (such as `access_type=offline`). */
    extra_params: z.record(z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/), z.string().max(512)).optional(),
    /** The endpoints may be private or loopback addresses (admin key only), and plain http. */
    internal: z.boolean().default(false),
  })
  .strict()
  .superRefine((a, ctx) => {
    if (a.issuer === undefined && (a.authorize_url === undefined || a.token_url === undefined)) {
      ctx.addIssue({ code: "custom", path: ["issuer"], message: "give an issuer, or authorize_url and token_url" });
    }
  })
  .meta({ id: "OAuthAppPut" });
export type OAuthAppPut = z.infer<typeof OAuthAppPut>;
export type OAuthAppPutInput = z.input<typeof OAuthAppPut>;

/** An OAuth app with its endpoints resolved; the client secret by name only. */
export const OAuthApp = z
  .object({
    name: z.string(),
    issuer: z.string().nullable(),
    authorize_url: z.string(),
    token_url: z.string(),
    revoke_url: z.string().nullable(),
    client_id: z.string(),
    client_secret: z.string().nullable(),
    scopes: z.array(z.string()),
    pkce: z.boolean(),
    extra_params: z.record(z.string(), z.string()),
    internal: z.boolean(),
    /**
     * The provider names its issuer in every authorization response (its discovery document says
     * so, RFC 9207): a callback without `iss` is refused, as one naming another issuer is.
     * Absent in apps stored before it was read: false.
     */
    iss_required: z.boolean().default(false),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "OAuthApp" });
export type OAuthApp = z.infer<typeof OAuthApp>;

/** The body of `POST /v1/connect-sessions`. */
export const ConnectSessionCreate = z
  .object({
    end_user: EndUser,
    app: OAuthAppName,
    /** Scopes to ask for instead of the app's. */
    scopes: z.array(Scope).max(64).optional(),
    /** Where the user's browser goes once the account is connected (or the connection failed). */
    redirect_after: HttpUrl.optional(),
  })
  .strict()
  .meta({ id: "ConnectSessionCreate" });
export type ConnectSessionCreate = z.infer<typeof ConnectSessionCreate>;

/** A connect session: the URL to send the end user to, valid until `expires_at`, once. */
export const ConnectSession = z
  .object({
    id: z.string(),
    end_user: z.string(),
    app: z.string(),
    url: z.string(),
    expires_at: z.string(),
  })
  .meta({ id: "ConnectSession" });
export type ConnectSession = z.infer<typeof ConnectSession>;

/** `active`: its token is attached to calls; `needs_reauth`: the provider refused a refresh. */
export const AccountStatus = z.enum(["active", "needs_reauth"]).meta({ id: "AccountStatus" });
export type AccountStatus = z.infer<typeof AccountStatus>;

/** An end user's account at an OAuth app: metadata only, never a token. */
export const Account = z
  .object({
    id: z.string(),
    end_user: z.string(),
    app: z.string(),
    status: AccountStatus,
    scopes: z.array(z.string()),
    /** When the access token expires, if the provider said. */
    expires_at: z.string().nullable(),
    refreshed_at: z.string().nullable(),
    created_at: z.string(),
    updated_at: z.string(),
  })
  .meta({ id: "Account" });
export type Account = z.infer<typeof Account>;

/**
 * An account as `DELETE /v1/accounts/{id}` answers it: deleted here whatever the provider said,
 * and what its revocation endpoint did with the tokens (`revoked`: it took them; `failed`: it could
 * not be reached or refused, so they may still be good there until they expire; `none`: the app has
 * no revocation endpoint).
 */
export const AccountDeleted = Account.extend({
  provider_revocation: z.enum(["revoked", "failed", "none"]),
}).meta({ id: "AccountDeleted" });
export type AccountDeleted = z.infer<typeof AccountDeleted>;

/** The query of `GET /v1/accounts`. */
export const AccountsQuery = z.object({ end_user: EndUser.optional(), app: OAuthAppName.optional() });
