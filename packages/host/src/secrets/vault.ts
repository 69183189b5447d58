/**
 * Envelope encryption for everything the host keeps secret at rest (secret values, the private
 * halves of token signing keys). Each value gets a fresh 256-bit data key: the value is sealed with
 * AES-256-GCM under the data key, and the data key is sealed with AES-256-GCM under the master
 * key. Both seals authenticate the caller's associated data (for example the tenant and the
 * secret's name), so a sealed box copied to another row does not open. Rotating the master key
 * re-seals only the data keys.
 *
 * The master key never touches the database: it comes from a file only root may read, or from an
 * environment variable the host removes from its own environment once read, so that no process
 * the host starts inherits it.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { chmod, readFile, stat, writeFile } from "node:fs/promises";

const KEY_BYTES = 32;
const IV_BYTES = 12;
/** The environment variable a host may take its master key from (base64 or hex of 32 bytes). */
export const MASTER_KEY_ENV = "PADDOCK_MASTER_KEY";

/** What every user of sealed boxes needs from the vault. */
export interface Sealer {
  /** Seals plaintext bound to `aad`; returns the box (JSON text) and the master key's id. */
  seal(plaintext: Buffer, aad: string): { sealed: string; masterKeyId: string };
  /** Opens a box sealed with the same `aad`; throws when it was altered, moved or its key is unknown. */
  open(sealed: string, aad: string): Buffer;
}

interface Box {
  v: 1;
  /** Id of the master key that sealed the data key. */
  mk: string;
  /** Data key: IV, sealed key, tag. */
  kiv: string;
  key: string;
  ktag: string;
  /** Value: IV, ciphertext, tag. */
  iv: string;
  ct: string;
  tag: string;
}

export interface MasterKey {
  id: string;
  bytes: Buffer;
}

/** A master key's public name: a fingerprint that says which key sealed a box and nothing more. */
export function masterKeyId(bytes: Buffer): string {
  return `mk-${createHash("sha256").update("paddock master key id\0").update(bytes).digest("hex").slice(0, 16)}`;
}

/** Parses a master key written as base64 (44 characters) or hex (64 characters) of 32 bytes. */
export function parseMasterKey(text: string, where: string): MasterKey {
  const trimmed = text.trim();
  let bytes: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) bytes = Buffer.from(trimmed, "hex");
  else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(trimmed)) bytes = Buffer.from(trimmed, "base64");
  if (!bytes || bytes.length !== KEY_BYTES) {
    throw new Error(`${where}: a master key is 32 random bytes written as base64 or hex (openssl rand -base64 32)`);
  }
  return { id: masterKeyId(bytes), bytes };
}

/** Reads a master key file, refusing one that users other than its owner may read or write. */
export async function readMasterKeyFile(file: string): Promise<MasterKey> {
  const info = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`master key file ${file}: ${err.code === "ENOENT" ? "not found" : err.message}`);
  });
  if (!info.isFile()) throw new Error(`master key file ${file}: not a regular file`);
  if ((info.mode & 0o077) !== 0) {
    throw new Error(
      `master key file ${file}: readable by others (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`,
    );
  }
  return parseMasterKey(await readFile(file, "utf8"), `master key file ${file}`);
}

/** Writes a new random master key to `file` (mode 0600), failing if the file exists. */
export async function createMasterKeyFile(file: string): Promise<MasterKey> {
  const bytes = randomBytes(KEY_BYTES);
  await writeFile(file, `${bytes.toString("base64")}\n`, { mode: 0o600, flag: "wx" });
  await chmod(file, 0o600);
  return { id: masterKeyId(bytes), bytes };
}

function sealWith(key: Buffer, plaintext: Buffer, aad: Buffer): { iv: Buffer; ct: Buffer; tag: Buffer } {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  cipher.setAAD(aad);
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return { iv, ct, tag: cipher.getAuthTag() };
}

function openWith(key: Buffer, iv: Buffer, ct: Buffer, tag: Buffer, aad: Buffer): Buffer {
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(ct), decipher.final()]);
}

/** HMAC-SHA256 of `message` under a key derived from `master` for `purpose` alone. */
function macWith(master: Buffer, purpose: string, message: string): Buffer {
  const key = createHmac("sha256", master).update(`paddock mac key\0${purpose}`).digest();
  return createHmac("sha256", key).update(message).digest();
}

const b64 = (b: Buffer) => b.toString("base64url");
const unb64 = (s: unknown): Buffer => {
  if (typeof s !== "string") throw new Error("sealed box is malformed");
  return Buffer.from(s, "base64url");
};

/** The data key's seal binds the box's purpose too: a data key cannot be replayed as a value. */
const keyAad = (aad: string) => Buffer.from(`paddock data key\0${aad}`);
const valueAad = (aad: string) => Buffer.from(`paddock value\0${aad}`);

export class Vault implements Sealer {
  readonly #current: MasterKey;
  readonly #keys: Map<string, Buffer>;

  /** `current` seals; `previous` keys only open (and are re-sealed away from by rewrap). */
  constructor(current: MasterKey, previous: MasterKey[] = []) {
    if (current.bytes.length !== KEY_BYTES) throw new Error("a master key is 32 bytes");
    this.#current = current;
    this.#keys = new Map([...previous, current].map((k) => [k.id, Buffer.from(k.bytes)]));
  }

  get masterKeyId(): string {
    return this.#current.id;
  }

  seal(plaintext: Buffer, aad: string): { sealed: string; masterKeyId: string } {
    const dataKey = randomBytes(KEY_BYTES);
    try {
      const value = sealWith(dataKey, plaintext, valueAad(aad));
      return { sealed: this.#encode(dataKey, value, aad), masterKeyId: this.#current.id };
    } finally {
      dataKey.fill(0);
    }
  }

  open(sealed: string, aad: string): Buffer {
    const box = this.#parse(sealed);
    const dataKey = this.#dataKey(box, aad);
    try {
      return openWith(dataKey, unb64(box.iv), unb64(box.ct), unb64(box.tag), valueAad(aad));
    } catch {
      throw new Error("sealed box does not open: altered, or sealed for another record");
    } finally {
      dataKey.fill(0);
    }
  }

  /**
   * A MAC of `message` for `purpose` (links the host signs and checks later), under a key derived
   * from the master key: nothing but this host can make one, and none is valid for another purpose.
   */
  mac(purpose: string, message: string): Buffer {
    return macWith(this.#current.bytes, purpose, message);
  }

  /** Whether `mac` is `message`'s for `purpose`, under the master key or an old one this host was given. */
  verifyMac(purpose: string, message: string, mac: Buffer): boolean {
    for (const key of this.#keys.values()) {
      const expected = macWith(key, purpose, message);
      if (expected.length === mac.length && timingSafeEqual(expected, mac)) return true;
    }
    return false;
  }

  /** Re-seals the box's data key under the current master key; the value's ciphertext is kept. */
  rewrap(sealed: string, aad: string): { sealed: string; masterKeyId: string; changed: boolean } {
    const box = this.#parse(sealed);
    if (box.mk === this.#current.id) return { sealed, masterKeyId: box.mk, changed: false };
    const dataKey = this.#dataKey(box, aad);
    try {
      const value = { iv: unb64(box.iv), ct: unb64(box.ct), tag: unb64(box.tag) };
      return { sealed: this.#encode(dataKey, value, aad), masterKeyId: this.#current.id, changed: true };
    } finally {
      dataKey.fill(0);
    }
  }

  #encode(dataKey: Buffer, value: { iv: Buffer; ct: Buffer; tag: Buffer }, aad: string): string {
    const wrapped = sealWith(this.#current.bytes, dataKey, keyAad(aad));
    const box: Box = {
      v: 1,
      mk: this.#current.id,
      kiv: b64(wrapped.iv),
      key: b64(wrapped.ct),
      ktag: b64(wrapped.tag),
      iv: b64(value.iv),
      ct: b64(value.ct),
      tag: b64(value.tag),
    };
    return JSON.stringify(box);
  }

  #parse(sealed: string): Box {
    let box: Box;
    try {
      box = JSON.parse(sealed) as Box;
    } catch {
      throw new Error("sealed box is malformed");
    }
    if (box?.v !== 1 || typeof box.mk !== "string") throw new Error("sealed box is malformed");
    return box;
  }

  #dataKey(box: Box, aad: string): Buffer {
    const master = this.#keys.get(box.mk);
    if (!master) {
      throw new Error(`sealed under master key ${box.mk}, which this host was not given (see --old-master-key-file)`);
    }
    try {
      return openWith(master, unb64(box.kiv), unb64(box.key), unb64(box.ktag), keyAad(aad));
    } catch {
      throw new Error("sealed box does not open: altered, or sealed for another record");
    }
  }
}
