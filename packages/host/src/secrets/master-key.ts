/**
 * Where a host's master key comes from, in this order: a key file the operator names, the
 * PADDOCK_MASTER_KEY environment variable (removed from the host's environment once read, so no
 * process it starts inherits it), or DATA_DIR/master.key, made on the first start. The last is
 * convenient and no safer than the data folder itself; production hosts name a file kept apart
 * from the data (another volume, a secrets mount).
 *
 * Rotation: start the host with the new key as its master key and the old one as an old key; at
 * start, every sealed value still under an old key is re-sealed under the new one.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import {
  createMasterKeyFile,
  MASTER_KEY_ENV,
  type MasterKey,
  parseMasterKey,
  readMasterKeyFile,
  Vault,
} from "./vault.ts";

export interface MasterKeyConfig {
  dataDir: string;
  /** A file holding the master key (base64 or hex of 32 bytes, mode 0600). */
  masterKeyFile?: string;
  /** Files of earlier master keys, to open what they sealed and re-seal it. */
  oldMasterKeyFiles?: string[];
}

/** The vault of a host, opened with its master key (and old keys, for rotation). */
export async function openVault(config: MasterKeyConfig): Promise<{ vault: Vault; source: string }> {
  let current: MasterKey;
  let source: string;
  const fromEnv = process.env[MASTER_KEY_ENV];
  delete process.env[MASTER_KEY_ENV];
  if (config.masterKeyFile) {
    current = await readMasterKeyFile(config.masterKeyFile);
    source = config.masterKeyFile;
  } else if (fromEnv) {
    current = parseMasterKey(fromEnv, MASTER_KEY_ENV);
    source = `$${MASTER_KEY_ENV}`;
  } else {
    const file = join(config.dataDir, "master.key");
    current = existsSync(file) ? await readMasterKeyFile(file) : await createMasterKeyFile(file);
    source = file;
  }
  const old = await Promise.all((config.oldMasterKeyFiles ?? []).map(readMasterKeyFile));
  return {
    vault: new Vault(
      current,
      old.filter((k) => k.id !== current.id),
    ),
    source,
  };
}
