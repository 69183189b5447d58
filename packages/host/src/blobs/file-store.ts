/**
 * Blobs in a folder, local or on NFS: <dir>/sha256/<first two hex>/<hex>. A put writes a temp file
 * under <dir>/tmp, flushes it, checks its digest and renames it into place, then flushes the
 * folder: a reader sees a whole blob or none, and several processes putting the same digest at
 * once each rename identical content over the same name.
 */
import { createReadStream } from "node:fs";
import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { isErrno } from "../fs/store-fs.ts";
import { newId } from "../store/ids.ts";
import {
  type BlobInfo,
  type BlobSource,
  type BlobStore,
  type ByteRange,
  blobUnavailable,
  checkDigestPrefix,
  checkSha256,
  type PutOptions,
  writeVerified,
} from "./blobs.ts";

export class FileBlobStore implements BlobStore {
  readonly location: string;
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
    this.location = `file://${dir}`;
  }

  /** The blob's file (which may not exist). */
  path(sha256: string): string {
    checkSha256(sha256);
    return join(this.#dir, "sha256", sha256.slice(0, 2), sha256);
  }

  async head(sha256: string): Promise<BlobInfo | null> {
    try {
      const st = await stat(this.path(sha256));
      return { sha256, size: st.size, modifiedMs: st.mtimeMs };
    } catch (err) {
      if (isErrno(err, "ENOENT")) return null;
      throw err;
    }
  }

  async put(source: BlobSource, options: PutOptions = {}): Promise<{ sha256: string; size: number }> {
    const tmpDir = join(this.#dir, "tmp");
    await mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, newId("put"));
    const written = await writeVerified(source, tmp, options);
    try {
      const dest = this.path(written.sha256);
      const folder = join(this.#dir, "sha256", written.sha256.slice(0, 2));
      await mkdir(folder, { recursive: true });
      await rename(tmp, dest);
      await syncFolder(folder);
      return written;
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async get(sha256: string, options: { range?: ByteRange } = {}): Promise<Readable> {
    const fh = await open(this.path(sha256), "r").catch((err: unknown) => {
      if (isErrno(err, "ENOENT")) throw blobUnavailable(sha256, `is not in ${this.location}`);
      throw err;
    });
    const { range } = options;
    return createReadStream("", {
      fd: fh,
      ...(range ? { start: range.start, ...(range.end !== undefined ? { end: range.end } : {}) } : {}),
    });
  }

  async delete(sha256: string): Promise<boolean> {
    try {
      await rm(this.path(sha256));
      return true;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  async *list(prefix = ""): AsyncIterable<BlobInfo> {
    checkDigestPrefix(prefix);
    const root = join(this.#dir, "sha256");
    const folders = await readdir(root).catch((err: unknown) => {
      if (isErrno(err, "ENOENT")) return [] as string[];
      throw err;
    });
    for (const folder of folders.sort()) {
      if (!folder.startsWith(prefix.slice(0, 2))) continue;
      for (const name of await readdir(join(root, folder)).catch(() => [] as string[])) {
        if (!name.startsWith(prefix) || !name.startsWith(folder) || !/^[0-9a-f]{64}$/.test(name)) continue;
        const info = await this.head(name);
        if (info) yield info;
      }
    }
  }

  close(): void {}
}

/** Flushes a folder's entries (a rename into it) to disk. */
async function syncFolder(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
