/**
 * Run tokens: short-lived EdDSA (Ed25519) JWTs the host mints for each attempt of a run and
 * checks on every call a sandbox makes to the bridge. A token names the run, attempt, tenant,
 * agent, sandbox and sandbox address it was issued to, and the scopes it grants.
 *
 * Threat model:
 * - A stolen token (an agent dumps its environment, or leaks the token in its output) is worth
 *   little: it lives minutes (`ttlMs`), and the bridge honours it only from the sandbox address
 *   and for the live attempt it names; those checks are the bridge's, on the claims returned here.
 * - Forged tokens: only keys this host made and stored verify; the key is chosen by `kid` among
 *   keys held in memory, never taken from the token (`jwk`, `jku`, `x5u` and friends are refused),
 *   and every header and claim is checked for presence, type and value; unknown ones are refused.
 * - Algorithm confusion: only `EdDSA` is accepted, with Ed25519 public keys; `none`, HMAC (a
 *   public key used as a shared secret) and every other algorithm fail before any key is used.
 *   `typ` must be exactly `paddock-run+jwt`, so no other JWT signed with these keys passes.
 * - Key compromise window: private keys are sealed by the vault at rest (the database never holds
 *   them in plaintext) and rotate every `rotateAfterMs`. A retired key verifies only the tokens it
 *   already signed, until they expire (`verify_until`), and is then deleted. Anyone holding the
 *   master key and the database can mint tokens for as long as the key they open is honoured.
 *
 * Errors: a missing token is `token_missing`, an expired one `token_expired`, anything else that
 * does not verify `token_invalid`. Messages name the failed check, never the token itself.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { AppError } from "@paddock/protocol";
import { errors, type JWK, type JWTHeaderParameters, jwtVerify, SignJWT } from "jose";
import type { Kysely } from "kysely";
import { z } from "zod";
import { signingKeyAad } from "../secrets/secrets.ts";
import type { Sealer } from "../secrets/vault.ts";
import type { Database, SigningKeysTable } from "../store/schema.ts";

/** The `typ` header every run token carries. */
export const RUN_TOKEN_TYP = "paddock-run+jwt";
/** The only signature algorithm run tokens use. */
export const RUN_TOKEN_ALG = "EdDSA";
/** Longest token accepted; longer input is refused before it is parsed. */
export const MAX_RUN_TOKEN_LENGTH = 4096;

const DEFAULT_AUDIENCE = "paddock-bridge";
const DEFAULT_TTL_MS = 10 * 60_000;
const DEFAULT_ROTATE_AFTER_MS = 24 * 60 * 60_000;
const DEFAULT_CLOCK_TOLERANCE_S = 5;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const HEADER_NAMES = new Set(["alg", "kid", "typ"]);
const MAX_CLAIM_LENGTH = 512;
const MAX_SCOPES = 256;

const Text = z.string().min(1).max(MAX_CLAIM_LENGTH);
const Seconds = z.int().min(0);

/**
 * What a run token grants, as the attempt asks for it, the issuer signs it and the bridge checks
 * it: the attempt it belongs to, where it may be used from and what it may do.
 */
export const RunTokenClaims = z.strictObject({
  /** The run's id (also the token's `sub`). */
  run: Text,
  /** The attempt number, from 1. */
  attempt: z.int().min(1),
  tenant: Text,
  agent: Text,
  /** The sandbox's network address, as the bridge sees it as the source of a call. */
  addr: Text,
  /** The sandbox's id. */
  sandbox: Text,
  /** What the token allows, for example `bridge:<connection>`. */
  scopes: z.array(Text).max(MAX_SCOPES),
});
export type RunTokenClaims = z.infer<typeof RunTokenClaims>;

/** A verified token's payload: its claims plus the registered JWT claims, and nothing else. */
const VerifiedRunToken = RunTokenClaims.extend({
  iss: Text,
  aud: Text,
  /** Equals `run`. */
  sub: Text,
  /** Seconds since the epoch, as in every JWT. */
  iat: Seconds,
  nbf: Seconds,
  exp: Seconds,
  /** Random, unique per token. */
  jti: Text,
});
export type VerifiedRunToken = Readonly<z.infer<typeof VerifiedRunToken>>;

export interface MintedRunToken {
  token: string;
  jti: string;
  /** When the token stops verifying (milliseconds since the epoch; the clock tolerance aside). */
  expiresAt: number;
}

export interface RunTokensOptions {
  db: Kysely<Database>;
  /** Seals the private keys at rest (the vault). */
  sealer: Sealer;
  /** The `iss` of every token, usually the host's identity. */
  issuer: string;
  /** The `aud` of every token; default "paddock-bridge". */
  audience?: string;
  /** How long a token lives; default 10 minutes. */
  ttlMs?: number;
  /** Age after which the signing key is replaced (checked at start and when minting); default 24 h. */
  rotateAfterMs?: number;
  /** Allowed clock skew on `exp` and `nbf`, in seconds; default 5. */
  clockToleranceS?: number;
  /**
   * Entries in the cache of verified tokens (exact token text → claims); 0 turns it off, the
   * default is 10 000. A hit skips the signature check, which dominates the cost of `verify`, but
   * re-checks expiry, not-before and that the signing key is still honoured, so a cached token
   * stops verifying exactly when an uncached one would. The price is memory (at most this many
   * tokens and their claims) and that a hit is only as trustworthy as this process's memory;
   * only tokens that verified fully are ever cached.
   */
  verifyCacheSize?: number;
  /** The clock, in milliseconds since the epoch; default Date.now. */
  now?: () => number;
}

/** A key as held in memory: its public half, and its private half while it signs. */
interface HeldKey {
  kid: string;
  publicKey: KeyObject;
  publicJwk: JWK;
  createdAt: number;
  /** Null while it signs. */
  verifyUntil: number | null;
}

interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  createdAt: number;
}

interface CachedClaims {
  claims: VerifiedRunToken;
  kid: string;
}

const DEFAULT_CACHE_SIZE = 10_000;

const randomId = (bytes: number) => randomBytes(bytes).toString("base64url");

/** Mints and verifies run tokens with Ed25519 keys kept in `signing_keys`. */
export class RunTokens {
  readonly #db: Kysely<Database>;
  readonly #sealer: Sealer;
  readonly #issuer: string;
  readonly #audience: string;
  readonly #ttlMs: number;
  readonly #rotateAfterMs: number;
  readonly #toleranceS: number;
  readonly #now: () => number;
  readonly #cacheSize: number;
  readonly #keys = new Map<string, HeldKey>();
  readonly #cache = new Map<string, CachedClaims>();
  #signing: SigningKey | null = null;
  #rotating: Promise<void> | null = null;

  constructor(options: RunTokensOptions) {
    this.#db = options.db;
    this.#sealer = options.sealer;
    this.#issuer = options.issuer;
    this.#audience = options.audience ?? DEFAULT_AUDIENCE;
    this.#ttlMs = options.ttlMs ?? DEFAULT_TTL_MS;
    this.#rotateAfterMs = options.rotateAfterMs ?? DEFAULT_ROTATE_AFTER_MS;
    this.#toleranceS = options.clockToleranceS ?? DEFAULT_CLOCK_TOLERANCE_S;
    this.#cacheSize = options.verifyCacheSize ?? DEFAULT_CACHE_SIZE;
    this.#now = options.now ?? Date.now;
    if (!this.#issuer) throw new Error("run tokens need an issuer");
    if (!(this.#ttlMs >= 1000)) throw new Error("run token ttlMs must be at least 1000");
    if (!(this.#rotateAfterMs > 0)) throw new Error("run token rotateAfterMs must be positive");
    if (!(this.#toleranceS >= 0)) throw new Error("run token clockToleranceS must not be negative");
    if (!Number.isSafeInteger(this.#cacheSize) || this.#cacheSize < 0) {
      throw new Error("run token verifyCacheSize must be a whole number, 0 or more");
    }
  }

  /** How long a token lives, in milliseconds. */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  /**
   * Loads the keys from the store, drops those whose tokens have all expired, and makes a signing
   * key when there is none or it is due for rotation. Throws when the signing key cannot be opened
   * (for example, the host was given another master key).
   */
  async start(): Promise<void> {
    const now = this.#now();
    await this.#deleteExpired(now);
    const rows = await this.#db.selectFrom("signing_keys").selectAll().orderBy("created_at", "asc").execute();
    this.#keys.clear();
    this.#cache.clear();
    this.#signing = null;
    for (const row of rows) this.#keys.set(row.kid, heldKey(row));
    const signers = rows.filter((r) => r.retired_at === null);
    const newest = signers.at(-1);
    if (newest) this.#signing = this.#openSigningKey(newest);
    if (signers.length > 1) await this.#retire(signers.slice(0, -1), now);
    if (!this.#signing || now - this.#signing.createdAt >= this.#rotateAfterMs) await this.rotate();
  }

  /**
   * Makes a new signing key. The previous one stops signing now and verifies the tokens it signed
   * until they expire (`verify_until` = now + ttl + clock tolerance); then it is deleted.
   */
  async rotate(): Promise<void> {
    const now = this.#now();
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const kid = randomId(16);
    const publicJwk = publicJwkOf(publicKey, kid);
    const privateJwk = Buffer.from(JSON.stringify(privateKey.export({ format: "jwk" })));
    const { sealed, masterKeyId } = this.#sealer.seal(privateJwk, signingKeyAad(kid));
    privateJwk.fill(0);
    const verifyUntil = this.#retiredVerifyUntil(now);
    await this.#db.transaction().execute(async (trx) => {
      await trx
        .updateTable("signing_keys")
        .set({ retired_at: now, verify_until: verifyUntil })
        .where("retired_at", "is", null)
        .execute();
      await trx
        .insertInto("signing_keys")
        .values({
          kid,
          alg: RUN_TOKEN_ALG,
          public_jwk: JSON.stringify(publicJwk),
          sealed_private: sealed,
          master_key_id: masterKeyId,
          created_at: now,
          retired_at: null,
          verify_until: null,
        })
        .execute();
    });
    for (const key of this.#keys.values()) if (key.verifyUntil === null) key.verifyUntil = verifyUntil;
    this.#keys.set(kid, { kid, publicKey, publicJwk, createdAt: now, verifyUntil: null });
    this.#signing = { kid, privateKey, createdAt: now };
    this.#dropExpiredKeys(now);
    await this.#deleteExpired(now);
  }

  /** Signs a token for one attempt; rotates the signing key first when it is due. */
  async mint(claims: RunTokenClaims): Promise<MintedRunToken> {
    const grant = checkGrant(claims);
    const signing = await this.#currentSigningKey();
    const now = this.#now();
    const iat = Math.floor(now / 1000);
    const exp = Math.floor((now + this.#ttlMs) / 1000);
    const jti = randomId(16);
    const token = await new SignJWT({
      run: grant.run,
      attempt: grant.attempt,
      tenant: grant.tenant,
      agent: grant.agent,
      addr: grant.addr,
      sandbox: grant.sandbox,
      scopes: [...grant.scopes],
    })
      .setProtectedHeader({ alg: RUN_TOKEN_ALG, kid: signing.kid, typ: RUN_TOKEN_TYP })
      .setIssuer(this.#issuer)
      .setAudience(this.#audience)
      .setSubject(grant.run)
      .setIssuedAt(iat)
      .setNotBefore(iat)
      .setExpirationTime(exp)
      .setJti(jti)
      .sign(signing.privateKey);
    return { token, jti, expiresAt: exp * 1000 };
  }

  /** Verifies a token, answering from the cache of verified tokens when it holds this one. */
  async verify(token: string): Promise<VerifiedRunToken> {
    if (this.#cacheSize === 0) return this.verifyUncached(token);
    const hit = this.#cache.get(token);
    if (hit) {
      this.#cache.delete(token);
      if (this.#stillValid(hit, this.#now())) {
        this.#cache.set(token, hit);
        return hit.claims;
      }
    }
    const verified = await this.#verifyFully(token);
    this.#remember(token, verified);
    return verified.claims;
  }

  /** Verifies a token in full (signature, header and claims), bypassing the cache. */
  async verifyUncached(token: string): Promise<VerifiedRunToken> {
    return (await this.#verifyFully(token)).claims;
  }

  /** The public keys still honoured, as a JWKS (the signing key and retired keys until verify_until). */
  publicJwks(): { keys: JWK[] } {
    const now = this.#now();
    const keys = [...this.#keys.values()].filter((k) => honoured(k, now)).map((k) => ({ ...k.publicJwk }));
    return { keys };
  }

  async #verifyFully(token: string): Promise<CachedClaims> {
    if (typeof token !== "string" || token.length === 0) throw new AppError("token_missing");
    if (token.length > MAX_RUN_TOKEN_LENGTH) throw invalid("it is too long");
    if (!COMPACT_JWS.test(token)) throw invalid("it is not a compact JWS");
    const now = this.#now();
    let kid = "";
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(
        token,
        (header) => {
          const key = this.#keyFor(header, now);
          kid = key.kid;
          return key.publicKey;
        },
        {
          algorithms: [RUN_TOKEN_ALG],
          issuer: this.#issuer,
          audience: this.#audience,
          typ: RUN_TOKEN_TYP,
          clockTolerance: this.#toleranceS,
          currentDate: new Date(now),
          requiredClaims: ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"],
        },
      ));
    } catch (err) {
      throw fromJose(err);
    }
    return { claims: parseClaims(payload), kid };
  }

  /** The key that verifies a token with this header, or a refusal; runs before the signature check. */
  #keyFor(header: JWTHeaderParameters, now: number): HeldKey {
    for (const name of Object.keys(header)) {
      if (!HEADER_NAMES.has(name)) throw invalid("its header has parameters besides alg, kid and typ");
    }
    if (header.alg !== RUN_TOKEN_ALG) throw invalid("its algorithm is not EdDSA");
    if (header.typ !== RUN_TOKEN_TYP) throw invalid("its typ is not paddock-run+jwt");
    if (typeof header.kid !== "string" || header.kid === "") throw invalid("it names no key");
    const key = this.#keys.get(header.kid);
    if (!key) throw invalid("its key is unknown");
    if (!honoured(key, now)) throw invalid("its key is no longer honoured");
    return key;
  }

  async #currentSigningKey(): Promise<SigningKey> {
    const signing = this.#signing;
    if (signing && this.#now() - signing.createdAt < this.#rotateAfterMs) return signing;
    if (!signing) throw new Error("run tokens: call start() before mint()");
    this.#rotating ??= this.rotate().finally(() => {
      this.#rotating = null;
    });
    await this.#rotating;
    if (!this.#signing) throw new Error("run tokens: no signing key after rotation");
    return this.#signing;
  }

  #openSigningKey(row: SigningKeysTable): SigningKey {
    let plaintext: Buffer;
    try {
      plaintext = this.#sealer.open(row.sealed_private, signingKeyAad(row.kid));
    } catch (err) {
      throw new Error(
        `run token signing key ${row.kid} (sealed under master key ${row.master_key_id}) cannot be opened: ${(err as Error).message}`,
      );
    }
    try {
      const privateKey = createPrivateKey({ key: JSON.parse(plaintext.toString("utf8")) as JWK, format: "jwk" });
      const derived = createPublicKey(privateKey).export({ format: "jwk" });
      const stored = JSON.parse(row.public_jwk) as JWK;
      if (privateKey.asymmetricKeyType !== "ed25519" || derived.x !== stored.x) {
        throw new Error("its private half does not match its public key");
      }
      return { kid: row.kid, privateKey, createdAt: Number(row.created_at) };
    } catch (err) {
      throw new Error(`run token signing key ${row.kid} is unusable: ${(err as Error).message}`);
    } finally {
      plaintext.fill(0);
    }
  }

  /** Retires keys that should no longer sign (several hosts sharing a store may have made one each). */
  async #retire(rows: SigningKeysTable[], now: number): Promise<void> {
    const verifyUntil = this.#retiredVerifyUntil(now);
    const kids = rows.map((r) => r.kid);
    await this.#db
      .updateTable("signing_keys")
      .set({ retired_at: now, verify_until: verifyUntil })
      .where("kid", "in", kids)
      .where("retired_at", "is", null)
      .execute();
    for (const kid of kids) {
      const key = this.#keys.get(kid);
      if (key) key.verifyUntil = verifyUntil;
    }
  }

  #retiredVerifyUntil(now: number): number {
    return now + this.#ttlMs + this.#toleranceS * 1000;
  }

  async #deleteExpired(now: number): Promise<void> {
    await this.#db
      .deleteFrom("signing_keys")
      .where("verify_until", "is not", null)
      .where("verify_until", "<=", now)
      .execute();
  }

  #dropExpiredKeys(now: number): void {
    for (const [kid, key] of this.#keys) if (!honoured(key, now)) this.#keys.delete(kid);
  }

  /** A cache hit stands while an uncached verify would pass: times in range and the key honoured. */
  #stillValid(entry: CachedClaims, now: number): boolean {
    const key = this.#keys.get(entry.kid);
    if (!key || !honoured(key, now)) return false;
    const nowS = Math.floor(now / 1000);
    return entry.claims.exp > nowS - this.#toleranceS && entry.claims.nbf <= nowS + this.#toleranceS;
  }

  #remember(token: string, verified: CachedClaims): void {
    while (this.#cache.size >= this.#cacheSize) {
      const oldest = this.#cache.keys().next();
      if (oldest.done) break;
      this.#cache.delete(oldest.value);
    }
    this.#cache.set(token, verified);
  }
}

function heldKey(row: SigningKeysTable): HeldKey {
  const jwk = JSON.parse(row.public_jwk) as JWK;
  if (row.alg !== RUN_TOKEN_ALG || jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || jwk.kid !== row.kid) {
    throw new Error(`run token key ${row.kid} is not an Ed25519 key for ${RUN_TOKEN_ALG}`);
  }
  const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: jwk.x }, format: "jwk" });
  const verifyUntil = row.verify_until === null ? null : Number(row.verify_until);
  return { kid: row.kid, publicKey, publicJwk: jwk, createdAt: Number(row.created_at), verifyUntil };
}

function publicJwkOf(publicKey: KeyObject, kid: string): JWK {
  const { kty, crv, x } = publicKey.export({ format: "jwk" });
  return { kty, crv, x, kid, alg: RUN_TOKEN_ALG, use: "sig" };
}

function honoured(key: HeldKey, now: number): boolean {
  return key.verifyUntil === null || now < key.verifyUntil;
}

function invalid(reason: string): AppError {
  return new AppError("token_invalid", `The run token does not verify: ${reason}.`);
}

/** Maps a failure inside jwtVerify to an error code; our own refusals pass through unchanged. */
function fromJose(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof errors.JWTExpired) return new AppError("token_expired");
  if (err instanceof errors.JWTClaimValidationFailed) return invalid(`its "${err.claim}" claim is not accepted`);
  if (err instanceof errors.JWSSignatureVerificationFailed) return invalid("its signature is wrong");
  if (err instanceof errors.JOSEAlgNotAllowed) return invalid("its algorithm is not EdDSA");
  return invalid("it is malformed");
}

/** The payload of a signed token, parsed whole: any missing, extra or mistyped claim fails. */
function parseClaims(payload: Record<string, unknown>): VerifiedRunToken {
  const parsed = VerifiedRunToken.safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    if (issue?.code === "unrecognized_keys") throw invalid("it carries a claim run tokens do not have");
    throw invalid(`its "${String(issue?.path[0] ?? "")}" claim is missing or malformed`);
  }
  const claims = parsed.data;
  if (claims.sub !== claims.run) throw invalid(`its "sub" claim is not its run`);
  if (claims.exp <= claims.nbf) throw invalid(`its "exp" claim is not after "nbf"`);
  Object.freeze(claims.scopes);
  return Object.freeze(claims);
}

/** The claims to sign, refused as the verifier would refuse them, so a bad token is never handed to a sandbox. */
function checkGrant(claims: RunTokenClaims): RunTokenClaims {
  const parsed = RunTokenClaims.safeParse(claims);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`run token ${String(issue?.path.join(".") ?? "claims")} is not accepted: ${issue?.message}`);
  }
  return parsed.data;
}
