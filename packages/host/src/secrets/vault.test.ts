/**
 * The vault's envelope seals: a value opens only with its own associated data and a master key
 * the vault holds; any altered field, a box moved to another record, a wrong or loosely kept key
 * is refused; rotation re-seals the data key so the old master key is no longer needed.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createMasterKeyFile, type MasterKey, masterKeyId, parseMasterKey, readMasterKeyFile, Vault } from "./vault.ts";

const AAD = "secret:v1:ten_1:github";
const VALUE = Buffer.from("ghp_not-a-real-token-0123456789");

const newKey = (): MasterKey => {
  const bytes = randomBytes(32);
  return { id: masterKeyId(bytes), bytes };
};

/** Flips one character of a base64url field so it still decodes to the same length. */
function alter(sealed: string, field: string): string {
  const box = JSON.parse(sealed) as Record<string, string>;
  const text = box[field] ?? "";
  const first = text[0] === "A" ? "B" : "A";
  box[field] = `${first}${text.slice(1)}`;
  return JSON.stringify(box);
}

describe("Vault", () => {
  test("seals and opens a value; the box holds no plaintext", () => {
    const key = newKey();
    const vault = new Vault(key);
    const { sealed, masterKeyId: id } = vault.seal(VALUE, AAD);
    assert.equal(id, key.id);
    assert.equal(vault.masterKeyId, key.id);
    assert.ok(!sealed.includes(VALUE.toString()));
    assert.ok(!sealed.includes(VALUE.toString("base64url")));
    assert.deepEqual(vault.open(sealed, AAD), VALUE);
    assert.notEqual(vault.seal(VALUE, AAD).sealed, sealed, "every seal uses a fresh data key and IV");
  });

  test("any altered field is refused", () => {
    const vault = new Vault(newKey());
    const { sealed } = vault.seal(VALUE, AAD);
    for (const field of ["kiv", "key", "ktag", "iv", "ct", "tag"]) {
      assert.throws(() => vault.open(alter(sealed, field), AAD), /does not open/, field);
    }
    const renamed = { ...JSON.parse(sealed), mk: newKey().id };
    assert.throws(() => vault.open(JSON.stringify(renamed), AAD), /which this host was not given/);
    assert.throws(() => vault.open("not json", AAD), /malformed/);
    assert.throws(() => vault.open(JSON.stringify({ v: 2, mk: "x" }), AAD), /malformed/);
  });

  test("a box moved to another record does not open", () => {
    const vault = new Vault(newKey());
    const { sealed } = vault.seal(VALUE, AAD);
    assert.throws(() => vault.open(sealed, "secret:v1:ten_2:github"), /does not open/);
    assert.throws(() => vault.open(sealed, "secret:v1:ten_1:gitlab"), /does not open/);
    assert.throws(() => vault.open(sealed, "signing-key:v1:github"), /does not open/);
  });

  test("rewrap moves a box to the new master key; then only the new key is needed", () => {
    const oldKey = newKey();
    const newer = newKey();
    const { sealed } = new Vault(oldKey).seal(VALUE, AAD);
    const rotating = new Vault(newer, [oldKey]);
    const moved = rotating.rewrap(sealed, AAD);
    assert.equal(moved.changed, true);
    assert.equal(moved.masterKeyId, newer.id);
    assert.equal(JSON.parse(moved.sealed).ct, JSON.parse(sealed).ct, "the value's ciphertext is kept");
    assert.deepEqual(new Vault(newer).open(moved.sealed, AAD), VALUE);
    assert.deepEqual(rotating.rewrap(moved.sealed, AAD), { ...moved, changed: false });
    assert.throws(() => rotating.rewrap(sealed, "secret:v1:ten_2:github"), /does not open/);
  });

  test("a box under a master key the vault was not given names that key", () => {
    const oldKey = newKey();
    const { sealed } = new Vault(oldKey).seal(VALUE, AAD);
    const message = new RegExp(`sealed under master key ${oldKey.id}, which this host was not given`);
    assert.throws(() => new Vault(newKey()).open(sealed, AAD), message);
    assert.throws(() => new Vault(newKey()).rewrap(sealed, AAD), message);
  });
});

describe("master keys", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-vault-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("parseMasterKey takes base64 and hex of 32 bytes", () => {
    const bytes = randomBytes(32);
    const fromB64 = parseMasterKey(`${bytes.toString("base64")}\n`, "test");
    const fromHex = parseMasterKey(bytes.toString("hex").toUpperCase(), "test");
    assert.deepEqual(fromB64.bytes, bytes);
    assert.deepEqual(fromHex.bytes, bytes);
    assert.equal(fromB64.id, fromHex.id);
    assert.match(fromB64.id, /^mk-[0-9a-f]{16}$/);
  });

  test("parseMasterKey refuses anything else without quoting it", () => {
    const bad = [
      "",
      "hunter2",
      randomBytes(16).toString("base64"),
      randomBytes(31).toString("hex"),
      randomBytes(33).toString("base64"),
      `${randomBytes(32).toString("hex").slice(0, 63)}g`,
    ];
    for (const text of bad) {
      assert.throws(
        () => parseMasterKey(text, "where"),
        (err: Error) =>
          err.message.startsWith("where: a master key is 32 random bytes") && !err.message.includes(text || "\0"),
      );
    }
  });

  test("createMasterKeyFile writes a 0600 key that reads back, and never overwrites one", async () => {
    const file = join(dir, "master.key");
    const made = await createMasterKeyFile(file);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(await readMasterKeyFile(file), made);
    await assert.rejects(createMasterKeyFile(file), /EEXIST/);
    assert.deepEqual((await readMasterKeyFile(file)).bytes, made.bytes);
  });

  test("a key file others may read is refused", async () => {
    const file = join(dir, "loose.key");
    await writeFile(file, randomBytes(32).toString("base64"), { mode: 0o600 });
    await chmod(file, 0o644);
    await assert.rejects(readMasterKeyFile(file), /readable by others \(mode 644\); chmod 600 it/);
    await chmod(file, 0o640);
    await assert.rejects(readMasterKeyFile(file), /readable by others/);
    await chmod(file, 0o600);
    assert.equal((await readMasterKeyFile(file)).bytes.length, 32);
    await assert.rejects(readMasterKeyFile(join(dir, "missing.key")), /missing\.key: not found/);
    await assert.rejects(readMasterKeyFile(dir), /not a regular file/);
    assert.ok((await readFile(file, "utf8")).length > 0);
  });
});
