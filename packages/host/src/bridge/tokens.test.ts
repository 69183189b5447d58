/**
 * Run tokens against a real SQLite store and a real vault. Each attack is a token built the way an
 * attacker would build it (by hand, or signed with the host's own key to isolate one check) and
 * must be refused by the real verifier.
 */
import assert from "node:assert/strict";
import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
} from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AppError } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { signingKeyAad } from "../secrets/secrets.ts";
import { parseMasterKey, Vault } from "../secrets/vault.ts";
import { migrate } from "../store/migrations.ts";
import type { Database } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";
import { RUN_TOKEN_TYP, type RunTokenClaims, RunTokens, type RunTokensOptions } from "./tokens.ts";

const ISSUER = "paddock-host-test";
const AUDIENCE = "paddock-bridge";
const TTL_MS = 10 * 60_000;
const TOLERANCE_S = 5;
const START = 1_750_000_000_000;

const GRANT: RunTokenClaims = {
  run: "run_01abcdefghjkmnpqrstvwxyz",
  attempt: 2,
  tenant: "ten_01abcdefghjkmnpqrstvwxyz",
  agent: "agt_01abcdefghjkmnpqrstvwxyz",
  addr: "10.209.0.6",
  sandbox: "run-01abcdefghjkmnpqrstvwxyz-2",
  scopes: ["bridge:github", "llm"],
};

const b64json = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
const decodePart = (token: string, i: number) =>
  JSON.parse(Buffer.from(token.split(".")[i] ?? "", "base64url").toString("utf8")) as Record<string, unknown>;

/** A compact JWS with any header and payload, signed over the usual signing input by `signer`. */
function craft(header: unknown, payload: unknown, signer: (input: Buffer) => Buffer | string): string {
  const input = `${b64json(header)}.${b64json(payload)}`;
  const signature = signer(Buffer.from(input));
  return `${input}.${typeof signature === "string" ? signature : signature.toString("base64url")}`;
}
const ed25519 = (key: KeyObject) => (input: Buffer) => sign(null, input, key);
const hs256 = (secret: Buffer | string) => (input: Buffer) => createHmac("sha256", secret).update(input).digest();

async function rejects(p: Promise<unknown>, code: string, token?: string): Promise<AppError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AppError, String(err));
    assert.equal(err.code, code, err.message);
    if (token) {
      assert.ok(!err.message.includes(token), "the message echoes the token");
      for (const part of token.split(".")) if (part.length > 8) assert.ok(!err.message.includes(part));
    }
    return err;
  }
  assert.fail(`expected ${code}`);
}

describe("RunTokens", () => {
  let dir: string;
  let file: string;
  let db: Kysely<Database>;
  let vault: Vault;
  let clock = START;
  let tokens: RunTokens;
  const make = (over: Partial<RunTokensOptions> = {}) =>
    new RunTokens({
      db,
      sealer: vault,
      issuer: ISSUER,
      ttlMs: TTL_MS,
      clockToleranceS: TOLERANCE_S,
      now: () => clock,
      ...over,
    });

  /** The host's own signing key, opened the way only the host can (to isolate single checks). */
  async function hostKey(): Promise<{ kid: string; key: KeyObject }> {
    const row = await db
      .selectFrom("signing_keys")
      .selectAll()
      .where("retired_at", "is", null)
      .orderBy("created_at", "desc")
      .executeTakeFirstOrThrow();
    const jwk = JSON.parse(vault.open(row.sealed_private, signingKeyAad(row.kid)).toString("utf8"));
    return { kid: row.kid, key: createPrivateKey({ key: jwk, format: "jwk" }) };
  }

  /** A genuine token's header and payload, to alter one field of. */
  async function genuine(): Promise<{
    token: string;
    header: Record<string, unknown>;
    payload: Record<string, unknown>;
  }> {
    const { token } = await tokens.mint(GRANT);
    return { token, header: decodePart(token, 0), payload: decodePart(token, 1) };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-tokens-"));
    file = join(dir, "paddock.db");
    db = openSqlite(file);
    await migrate(db);
    vault = new Vault(parseMasterKey(randomBytes(32).toString("base64"), "test"));
    tokens = make();
    await tokens.start();
  });
  after(async () => {
    await db.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  test("a minted token carries exactly the documented header and claims, and verifies", async () => {
    clock = START;
    const minted = await tokens.mint(GRANT);
    const header = decodePart(minted.token, 0);
    const { kid } = await hostKey();
    assert.deepEqual(header, { alg: "EdDSA", kid, typ: "paddock-run+jwt" });
    const payload = decodePart(minted.token, 1);
    const iat = Math.floor(START / 1000);
    assert.deepEqual(payload, {
      iss: ISSUER,
      aud: AUDIENCE,
      sub: GRANT.run,
      iat,
      nbf: iat,
      exp: iat + TTL_MS / 1000,
      jti: minted.jti,
      ...GRANT,
    });
    assert.deepEqual(Object.keys(payload).sort(), [
      "addr",
      "agent",
      "attempt",
      "aud",
      "exp",
      "iat",
      "iss",
      "jti",
      "nbf",
      "run",
      "sandbox",
      "scopes",
      "sub",
      "tenant",
    ]);
    assert.equal(minted.expiresAt, (iat + TTL_MS / 1000) * 1000);
    assert.match(minted.jti, /^[A-Za-z0-9_-]{22}$/);
    assert.notEqual((await tokens.mint(GRANT)).jti, minted.jti);
    assert.deepEqual({ ...(await tokens.verifyUncached(minted.token)) }, payload);
    const claims = await tokens.verify(minted.token);
    assert.deepEqual({ ...claims }, payload);
    assert.ok(Object.isFrozen(claims) && Object.isFrozen(claims.scopes), "cached claims cannot be altered");
    assert.deepEqual(
      tokens.publicJwks().keys.map((k) => k.kid),
      [kid],
    );
  });

  test('alg "none" is refused, with and without a signature part', async () => {
    clock = START;
    const { header, payload } = await genuine();
    const unsigned = `${b64json({ ...header, alg: "none" })}.${b64json(payload)}.`;
    await rejects(tokens.verify(unsigned), "token_invalid", unsigned);
    const bare = `${b64json({ alg: "none", typ: RUN_TOKEN_TYP })}.${b64json(payload)}.`;
    await rejects(tokens.verify(bare), "token_invalid", bare);
    const withJunk = `${b64json({ ...header, alg: "none" })}.${b64json(payload)}.AAAA`;
    await rejects(tokens.verify(withJunk), "token_invalid", withJunk);
    for (const alg of ["None", "NONE", "nOnE"]) {
      await rejects(tokens.verify(`${b64json({ ...header, alg })}.${b64json(payload)}.`), "token_invalid");
    }
  });

  test("HS256 signed with the public key (raw, PEM, DER, JWK, x) as the secret is refused", async () => {
    clock = START;
    const { header, payload } = await genuine();
    const jwk = tokens.publicJwks().keys[0];
    assert.ok(jwk?.x);
    const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: jwk.x }, format: "jwk" });
    const secrets: [string, Buffer | string][] = [
      ["raw", Buffer.from(jwk.x, "base64url")],
      ["pem", publicKey.export({ format: "pem", type: "spki" }).toString()],
      ["der", publicKey.export({ format: "der", type: "spki" })],
      ["jwk json", JSON.stringify(jwk)],
      ["jwk x", jwk.x],
    ];
    for (const [form, secret] of secrets) {
      for (const alg of ["HS256", "HS384", "HS512"]) {
        const token = craft({ ...header, alg }, payload, hs256(secret));
        const err = await rejects(tokens.verify(token), "token_invalid", token);
        assert.match(err.message, /algorithm/, `${alg} with the ${form} public key`);
      }
    }
  });

  test("an unknown kid, or none, is refused", async () => {
    clock = START;
    const { header, payload } = await genuine();
    const { key } = await hostKey();
    const unknown = craft({ ...header, kid: "no-such-key" }, payload, ed25519(key));
    assert.match((await rejects(tokens.verify(unknown), "token_invalid", unknown)).message, /key is unknown/);
    const { kid: _kid, ...withoutKid } = header;
    const noKid = craft(withoutKid, payload, ed25519(key));
    assert.match((await rejects(tokens.verify(noKid), "token_invalid", noKid)).message, /names no key/);
    for (const kid of [7, "", null, ["x"]]) {
      await rejects(tokens.verify(craft({ ...header, kid }, payload, ed25519(key))), "token_invalid");
    }
  });

  test("a token for another audience or issuer is refused, even signed by this host's key", async () => {
    clock = START;
    const otherAudience = make({ audience: "paddock-gateway" });
    await otherAudience.start();
    const forOther = (await otherAudience.mint(GRANT)).token;
    assert.equal(decodePart(forOther, 0).kid, (await hostKey()).kid, "same key, so only the audience differs");
    await rejects(tokens.verify(forOther), "token_invalid", forOther);

    const otherIssuer = make({ issuer: "some-other-host" });
    await otherIssuer.start();
    const fromOther = (await otherIssuer.mint(GRANT)).token;
    await rejects(tokens.verify(fromOther), "token_invalid", fromOther);

    const { header, payload } = await genuine();
    const { key } = await hostKey();
    for (const aud of [[AUDIENCE], [AUDIENCE, "x"], "", undefined]) {
      await rejects(tokens.verify(craft(header, { ...payload, aud }, ed25519(key))), "token_invalid");
    }
    for (const iss of [[ISSUER], `${ISSUER} `, undefined]) {
      await rejects(tokens.verify(craft(header, { ...payload, iss }, ed25519(key))), "token_invalid");
    }
  });

  test("a wrong or missing typ is refused", async () => {
    clock = START;
    const { header, payload } = await genuine();
    const { key } = await hostKey();
    for (const typ of ["JWT", "at+jwt", "application/paddock-run+jwt", "PADDOCK-RUN+JWT", "", 1, undefined]) {
      const token = craft({ ...header, typ }, payload, ed25519(key));
      assert.match((await rejects(tokens.verify(token), "token_invalid", token)).message, /typ/, String(typ));
    }
  });

  test("a token expires after its lifetime plus the clock tolerance, cached or not", async () => {
    clock = START;
    const { token } = await tokens.mint(GRANT);
    await tokens.verify(token);
    clock = START + TTL_MS + TOLERANCE_S * 1000 - 1000;
    await tokens.verify(token);
    await tokens.verifyUncached(token);
    clock = START + TTL_MS + TOLERANCE_S * 1000;
    await rejects(tokens.verify(token), "token_expired", token);
    await rejects(tokens.verifyUncached(token), "token_expired", token);
    clock = START;
  });

  test("a token is refused before its nbf (beyond the tolerance)", async () => {
    clock = START;
    const { token } = await tokens.mint(GRANT);
    clock = START - (TOLERANCE_S + 1) * 1000;
    await rejects(tokens.verify(token), "token_invalid", token);
    clock = START - (TOLERANCE_S - 1) * 1000;
    await tokens.verify(token);
    clock = START;
    const { header, payload } = await genuine();
    const { key } = await hostKey();
    const nbf = Math.floor(START / 1000) + 60;
    const early = craft(header, { ...payload, nbf, iat: nbf, exp: nbf + 600 }, ed25519(key));
    assert.match((await rejects(tokens.verify(early), "token_invalid", early)).message, /nbf/);
  });

  test("a tampered payload keeps no signature, even after the genuine token was cached", async () => {
    clock = START;
    const { token, payload } = await genuine();
    await tokens.verify(token);
    const [h, , s] = token.split(".");
    for (const change of [{ addr: "10.209.0.7" }, { scopes: [...GRANT.scopes, "bridge:prod-db"] }, { attempt: 3 }]) {
      const forged = `${h}.${b64json({ ...payload, ...change })}.${s}`;
      const err = await rejects(tokens.verify(forged), "token_invalid", forged);
      assert.match(err.message, /signature/);
    }
    // Same claims, different bytes (whitespace in the JSON): the signature no longer covers them.
    const respaced = `${h}.${Buffer.from(JSON.stringify(payload, null, 1)).toString("base64url")}.${s}`;
    await rejects(tokens.verify(respaced), "token_invalid", respaced);
  });

  test("a signature by another Ed25519 key under this host's kid is refused", async () => {
    clock = START;
    const { header, payload } = await genuine();
    const attacker = generateKeyPairSync("ed25519");
    const forged = craft(header, payload, ed25519(attacker.privateKey));
    assert.match((await rejects(tokens.verify(forged), "token_invalid", forged)).message, /signature/);
    // Offering the attacker's own key in the header changes nothing: keys come only from the store.
    const attackerJwk = attacker.publicKey.export({ format: "jwk" });
    const embedded = craft({ ...header, jwk: attackerJwk }, payload, ed25519(attacker.privateKey));
    await rejects(tokens.verify(embedded), "token_invalid", embedded);
    const jku = craft({ ...header, jku: "https://attacker.example/jwks" }, payload, ed25519(attacker.privateKey));
    await rejects(tokens.verify(jku), "token_invalid", jku);
  });

  test("only the documented claims with their types are accepted, even signed by this host's key", async () => {
    clock = START;
    const { header, payload } = await genuine();
    const { key } = await hostKey();
    const { jti: _jti, ...noJti } = payload;
    const { scopes: _scopes, ...noScopes } = payload;
    const bad: Record<string, unknown>[] = [
      { ...payload, admin: true },
      { ...payload, attempt: "2" },
      { ...payload, attempt: 0 },
      { ...payload, attempt: 1.5 },
      { ...payload, scopes: "bridge:github" },
      { ...payload, scopes: [1] },
      { ...payload, addr: "" },
      { ...payload, sub: "run_other" },
      { ...payload, exp: payload.nbf },
      noJti,
      noScopes,
    ];
    for (const claims of bad) {
      const token = craft(header, claims, ed25519(key));
      await rejects(tokens.verify(token), "token_invalid", token);
    }
    await tokens.verify(craft(header, payload, ed25519(key)));
    const crit = craft({ ...header, crit: ["exp"] }, payload, ed25519(key));
    await rejects(tokens.verify(crit), "token_invalid", crit);
  });

  test("a missing, oversized or malformed token is refused before parsing", async () => {
    clock = START;
    await rejects(tokens.verify(""), "token_missing");
    const { token } = await genuine();
    const long = `${token}${"A".repeat(5000)}`;
    assert.match((await rejects(tokens.verify(long), "token_invalid", long)).message, /too long/);
    for (const junk of ["a.b", "a.b.c.d", `${token} `, `${token}=`, "e30.e30.e30"]) {
      await rejects(tokens.verify(junk), "token_invalid");
    }
  });

  test("mint refuses grants the verifier would refuse", async () => {
    for (const over of [{ attempt: 0 }, { addr: "" }, { scopes: [""] }, { run: "x".repeat(600) }]) {
      await assert.rejects(tokens.mint({ ...GRANT, ...over }), /run token/);
    }
  });

  test("a rotated key verifies its tokens until verify_until, then not; new tokens use the new key", async () => {
    clock = START + 60_000;
    const before = await tokens.mint(GRANT);
    const oldKid = decodePart(before.token, 0).kid as string;
    await tokens.verify(before.token);
    await tokens.rotate();
    const afterRotation = await tokens.mint(GRANT);
    const newKid = decodePart(afterRotation.token, 0).kid as string;
    assert.notEqual(newKid, oldKid);
    const row = await db.selectFrom("signing_keys").selectAll().where("kid", "=", oldKid).executeTakeFirstOrThrow();
    const verifyUntil = clock + TTL_MS + TOLERANCE_S * 1000;
    assert.equal(row.retired_at, clock);
    assert.equal(row.verify_until, verifyUntil);
    assert.deepEqual(
      tokens
        .publicJwks()
        .keys.map((k) => k.kid)
        .sort(),
      [oldKid, newKid].sort(),
    );

    clock = verifyUntil - 1000;
    await tokens.verify(before.token);
    await tokens.verifyUncached(before.token);
    clock = verifyUntil;
    for (const verify of [(t: string) => tokens.verify(t), (t: string) => tokens.verifyUncached(t)]) {
      const err = await rejects(verify(before.token), "token_invalid", before.token);
      assert.match(err.message, /no longer honoured/);
    }
    assert.deepEqual(
      tokens.publicJwks().keys.map((k) => k.kid),
      [newKid],
    );

    // A later start drops the retired key from the store.
    const restarted = make();
    await restarted.start();
    assert.equal(
      await db.selectFrom("signing_keys").where("kid", "=", oldKid).select("kid").executeTakeFirst(),
      undefined,
    );
    clock = START;
    tokens = make();
    await tokens.start();
  });

  test("the signing key rotates when it is older than rotateAfterMs, at start and when minting", async () => {
    clock = START;
    const rotating = make({ rotateAfterMs: 60 * 60_000 });
    await rotating.start();
    await rotating.rotate();
    clock = START + 60 * 60_000 - 1;
    assert.equal(decodePart((await rotating.mint(GRANT)).token, 0).kid, (await hostKey()).kid);
    const first = decodePart((await rotating.mint(GRANT)).token, 0).kid;
    clock = START + 60 * 60_000;
    const second = decodePart((await rotating.mint(GRANT)).token, 0).kid;
    assert.notEqual(second, first, "mint rotated the key that came of age");
    clock = START + 2 * 60 * 60_000;
    const restarted = make({ rotateAfterMs: 60 * 60_000 });
    await restarted.start();
    const third = decodePart((await restarted.mint(GRANT)).token, 0).kid;
    assert.notEqual(third, second, "start rotated the key that came of age");
    const signing = await db.selectFrom("signing_keys").select("kid").where("retired_at", "is", null).execute();
    assert.deepEqual(
      signing.map((r) => r.kid),
      [third],
    );
    clock = START;
    tokens = make();
    await tokens.start();
  });

  test("keys survive a restart: a new instance on the same store and vault verifies old tokens", async () => {
    clock = START;
    const { token } = await tokens.mint(GRANT);
    const kid = decodePart(token, 0).kid;
    const restarted = make();
    await restarted.start();
    assert.equal((await restarted.verify(token)).addr, GRANT.addr);
    assert.equal(decodePart((await restarted.mint(GRANT)).token, 0).kid, kid, "it keeps signing with the same key");
    await tokens.rotate();
    const again = make();
    await again.start();
    await again.verify(token);
    tokens = again;
  });

  test("with another master key the signing key does not open, and start says so", async () => {
    const stranger = new Vault(parseMasterKey(randomBytes(32).toString("base64"), "other"));
    const elsewhere = new RunTokens({ db, sealer: stranger, issuer: ISSUER, now: () => clock });
    await assert.rejects(elsewhere.start(), (err: Error) => {
      assert.match(err.message, /signing key \S+ \(sealed under master key mk-[0-9a-f]+\) cannot be opened/);
      assert.match(err.message, /which this host was not given/);
      return true;
    });
  });

  test("a sealed private key moved to another row does not open", async () => {
    const rows = await db.selectFrom("signing_keys").selectAll().execute();
    const signing = rows.find((r) => r.retired_at === null);
    assert.ok(signing);
    assert.throws(() => vault.open(signing.sealed_private, signingKeyAad("another-kid")), /does not open/);
  });

  test("the database holds no private key material in plaintext", async () => {
    clock = START;
    await tokens.rotate();
    await tokens.mint(GRANT);
    const rows = await db.selectFrom("signing_keys").selectAll().execute();
    assert.ok(rows.length >= 2);
    const needles: Buffer[] = [];
    for (const row of rows) {
      const jwk = JSON.parse(vault.open(row.sealed_private, signingKeyAad(row.kid)).toString("utf8")) as { d: string };
      const d = Buffer.from(jwk.d, "base64url");
      assert.equal(d.length, 32);
      needles.push(Buffer.from(jwk.d), Buffer.from(d.toString("base64")), Buffer.from(d.toString("hex")), d);
      assert.ok(!row.public_jwk.includes('"d"'));
    }
    let searched = 0;
    for (const suffix of ["", "-wal", "-shm"]) {
      const bytes = await readFile(`${file}${suffix}`).catch(() => null);
      if (!bytes) continue;
      searched += bytes.length;
      for (const needle of needles) assert.equal(bytes.indexOf(needle), -1, `private key bytes in paddock.db${suffix}`);
    }
    assert.ok(searched > 0);
  });

  test("without the cache, verify still checks everything", async () => {
    clock = START;
    const uncached = make({ verifyCacheSize: 0 });
    await uncached.start();
    const { token } = await uncached.mint(GRANT);
    assert.equal((await uncached.verify(token)).run, GRANT.run);
    clock = START + TTL_MS + TOLERANCE_S * 1000;
    await rejects(uncached.verify(token), "token_expired", token);
    clock = START;
  });

  test("the cache holds at most verifyCacheSize tokens and every one still re-checks expiry", async () => {
    clock = START;
    const small = make({ verifyCacheSize: 2 });
    await small.start();
    const minted = await Promise.all([1, 2, 3].map((attempt) => small.mint({ ...GRANT, attempt })));
    for (const { token } of minted) await small.verify(token);
    for (const { token } of minted) await small.verify(token);
    clock = START + TTL_MS + TOLERANCE_S * 1000;
    for (const { token } of minted) await rejects(small.verify(token), "token_expired", token);
    clock = START;
  });
});
