/**
 * A node's verified copy of shared blobs: get-or-fetch a digest into a local folder (download to a
 * temp file, check the sha256, rename), so a second read never touches the shared store.
 *
 * Threat model: the shared store and the network to it are not trusted to return what a digest
 * names. Nothing enters the cache without its digest checked; a whole-blob read checks it again as
 * it streams, and an entry found corrupt is removed so the next read fetches it anew. Failures
 * are blob_unavailable errors that name the digest.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readdir, rename, rm, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { type Readable, Transform } from "node:stream";
import { AppError } from "@paddock/protocol";
import { isErrno } from "../fs/store-fs.ts";
import { newId } from "../store/ids.ts";
import {
  type BlobSource,
  type BlobStore,
  type ByteRange,
  blobUnavailable,
  checkSha256,
  type PutOptions,
  writeVerified,
} from "./blobs.ts";
import type { FileBlobStore } from "./file-store.ts";

/** Downloads older than this were left by a crash. */
const STALE_DOWNLOAD_MS = 60 * 60 * 1000;

export class BlobCache {
  readonly store: BlobStore;
  /** The cache folder; null when blobs are read in place from `#local`. */
  readonly #dir: string | null;
  readonly #local: FileBlobStore | null;
  /** Downloads under way, so concurrent readers of one digest share one. */
  readonly #fetching = new Map<string, Promise<string>>();

  /**
   * A cache in `dir` in front of `store`, or, with `inPlace`, no copy at all: the store is this
   * node's own folder and its files are read where they are.
   */
  constructor(options: { store: BlobStore; dir: string } | { store: FileBlobStore; inPlace: true }) {
    this.store = options.store;
    this.#dir = "dir" in options ? options.dir : null;
    this.#local = "inPlace" in options ? options.store : null;
  }

  /** The local file holding the verified blob, fetched from the store unless it is already here. */
  async file(sha256: string): Promise<string> {
    checkSha256(sha256);
    if (this.#local) {
      if (!(await this.#local.head(sha256))) throw blobUnavailable(sha256, `is not in ${this.store.location}`);
      return this.#local.path(sha256);
    }
    const path = this.#path(sha256);
    if (await exists(path)) {
      // The write time marks the last use, for trim().
      const now = new Date();
      await utimes(path, now, now).catch(() => {});
      return path;
    }
    let fetching = this.#fetching.get(sha256);
    if (!fetching) {
      fetching = this.#fetch(sha256, path).finally(() => this.#fetching.delete(sha256));
      this.#fetching.set(sha256, fetching);
    }
    return fetching;
  }

  /**
   * Stores content in the shared store and keeps this node's verified copy of it, so the node that
   * wrote a blob never downloads it again. The digest is computed as the content streams in.
   */
  async put(source: BlobSource, options: PutOptions = {}): Promise<{ sha256: string; size: number }> {
    if (this.#local) return this.#local.put(source, options);
    const tmp = await this.#tempFile("put");
    try {
      const written = await writeVerified(source, tmp, options);
      await this.store.put({ file: tmp }, { sha256: written.sha256 });
      await this.#keep(tmp, written.sha256);
      return written;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * The blob's content from the local copy. A whole read is checked against the digest as it
   * streams; a mismatch ends the stream with blob_unavailable and drops the copy.
   */
  async open(sha256: string, options: { range?: ByteRange } = {}): Promise<Readable> {
    const path = await this.file(sha256);
    if (options.range) {
      const { start, end } = options.range;
      return createReadStream(path, { start, ...(end !== undefined ? { end } : {}) });
    }
    const digest = createHash("sha256");
    const evict = () => this.evict(sha256);
    const where = this.#local ? this.store.location : "this node's cache, and was dropped";
    const check = new Transform({
      transform(chunk: Buffer, _enc, done) {
        digest.update(chunk);
        done(null, chunk);
      },
      flush(done) {
        const got = digest.digest("hex");
        if (got === sha256) return done();
        evict().then(() => done(blobUnavailable(sha256, `holds content of sha256:${got} in ${where}`)), done);
      },
    });
    const source = createReadStream(path);
    source.on("error", (err) => check.destroy(err));
    return source.pipe(check);
  }

  /**
   * Keeps the cache under `maxBytes`, dropping the copies used least recently first, and removes
   * downloads a crash left half done. Returns the digests dropped.
   */
  async trim(maxBytes: number): Promise<string[]> {
    if (this.#local || this.#dir === null) return [];
    const dir = this.#dir;
    const stale = Date.now() - STALE_DOWNLOAD_MS;
    for (const name of await readdir(join(dir, "tmp")).catch(() => [] as string[])) {
      const st = await stat(join(dir, "tmp", name)).catch(() => null);
      if (st && st.mtimeMs < stale) await rm(join(dir, "tmp", name), { force: true });
    }
    const entries: { sha256: string; size: number; usedMs: number }[] = [];
    for (const folder of await readdir(dir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{2}$/.test(folder)) continue;
      for (const name of await readdir(join(dir, folder))) {
        const st = await stat(join(dir, folder, name)).catch(() => null);
        if (st?.isFile() && name.startsWith(folder)) entries.push({ sha256: name, size: st.size, usedMs: st.mtimeMs });
      }
    }
    let total = entries.reduce((n, e) => n + e.size, 0);
    const dropped: string[] = [];
    for (const e of entries.sort((a, b) => a.usedMs - b.usedMs)) {
      if (total <= maxBytes) break;
      await this.evict(e.sha256);
      total -= e.size;
      dropped.push(e.sha256);
    }
    return dropped;
  }

  /** Drops the local copy (a no-op when blobs are read in place). */
  async evict(sha256: string): Promise<void> {
    if (this.#local) return;
    await rm(this.#path(sha256), { force: true });
  }

  #path(sha256: string): string {
    return join(this.#dir ?? "", sha256.slice(0, 2), sha256);
  }

  async #fetch(sha256: string, path: string): Promise<string> {
    const tmp = await this.#tempFile("get");
    try {
      await writeVerified(await this.store.get(sha256), tmp, { sha256 });
    } catch (err) {
      if (err instanceof AppError && err.code === "blob_digest_mismatch") {
        throw blobUnavailable(sha256, `does not match its digest in ${this.store.location}`);
      }
      throw err;
    }
    await this.#keep(tmp, sha256);
    return path;
  }

  /** A fresh name for a download or upload under way, beside the entries. */
  async #tempFile(kind: string): Promise<string> {
    const tmpDir = join(this.#dir ?? "", "tmp");
    await mkdir(tmpDir, { recursive: true });
    return join(tmpDir, newId(kind));
  }

  /** Moves a verified temp file into place as the entry for `sha256`. */
  async #keep(tmp: string, sha256: string): Promise<void> {
    await mkdir(join(this.#dir ?? "", sha256.slice(0, 2)), { recursive: true });
    await rename(tmp, this.#path(sha256));
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}
