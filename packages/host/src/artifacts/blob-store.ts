/** Content-addressed blobs: <dir>/sha256/<first two hex>/<hex>. Written aside, then renamed. */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

export class BlobStore {
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
  }

  path(sha256: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`not a sha256: ${sha256}`);
    return join(this.#dir, "sha256", sha256.slice(0, 2), sha256);
  }

  /** Stores a stream, at most `maxBytes` of it; returns its digest and size. */
  async put(source: Readable, maxBytes: number): Promise<{ sha256: string; size: number }> {
    const tmpDir = join(this.#dir, "tmp");
    await mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, randomBytes(12).toString("hex"));
    const digest = createHash("sha256");
    let size = 0;
    try {
      await pipeline(
        source,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            size += chunk.length;
            if (size > maxBytes) throw new Error(`blob larger than ${maxBytes} bytes`);
            digest.update(chunk);
            yield chunk;
          }
        },
        createWriteStream(tmp, { mode: 0o600 }),
      );
      const sha256 = digest.digest("hex");
      const dest = this.path(sha256);
      await mkdir(join(this.#dir, "sha256", sha256.slice(0, 2)), { recursive: true });
      await rename(tmp, dest);
      return { sha256, size };
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async has(sha256: string): Promise<boolean> {
    return stat(this.path(sha256)).then(
      () => true,
      () => false,
    );
  }

  open(sha256: string): Readable {
    return createReadStream(this.path(sha256));
  }
}
