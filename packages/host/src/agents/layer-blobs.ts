/**
 * Environment layers in the shared blob store, so a node that has never seen an agent can boot it:
 * a layer made here (create, update, freeze, import) is packed as a one-layer snapshot archive
 * (packSnapshot: deterministic tar, zstd) and put in the store under the archive's sha256, recorded
 * in `layer_blobs` beside the layer's digest. A node missing a layer fetches that blob through its
 * verified cache and unpacks it into its layers folder; a layer already here is used as it is.
 *
 * Threat model: the blob store is shared and not trusted. The archive's sha256 is checked by the
 * cache, and unpackSnapshot recomputes the layer's digest from the extracted files before anything
 * is moved into the layers folder; a blob that fails either is dropped from the cache and the error
 * names it, so the next attempt fetches it again.
 */
import { createWriteStream } from "node:fs";
import { mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { AppError } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { blobUnavailable } from "../blobs/blobs.ts";
import type { BlobCache } from "../blobs/cache.ts";
import { isDigest } from "../fs/layout.ts";
import { isErrno } from "../fs/store-fs.ts";
import { newId } from "../store/ids.ts";
import type { Database } from "../store/schema.ts";
import { packSnapshot, unpackSnapshot } from "./pack-layers.ts";

export const LAYER_BLOB_FORMAT = "paddock.layer.v1";

export interface LayerBlobsDeps {
  db: Kysely<Database>;
  cache: BlobCache;
  layersDir: string;
  /** Where unpacking may put a base image (a layer archive holds none). */
  imagesDir: string;
  /** A local folder for archives being packed. */
  tmpDir: string;
}

export class LayerBlobs {
  readonly #deps: LayerBlobsDeps;
  /** Fetches under way, so concurrent boots of one agent share one. */
  readonly #fetching = new Map<string, Promise<void>>();

  constructor(deps: LayerBlobsDeps) {
    this.#deps = deps;
  }

  /** Puts each layer (present in the layers folder) in the blob store unless it is there already. */
  async publish(digests: readonly string[]): Promise<void> {
    const { db, cache, layersDir, tmpDir } = this.#deps;
    for (const digest of new Set(digests)) {
      const known = await this.#blobOf(digest);
      if (known && (await cache.store.head(known))) continue;
      await mkdir(tmpDir, { recursive: true });
      const file = join(tmpDir, newId("layer"));
      try {
        const tree = { digest, dir: join(layersDir, digest) };
        await packSnapshot({ format: LAYER_BLOB_FORMAT, layer: digest }, [tree], null, createWriteStream(file));
        const { sha256, size } = await cache.store.put({ file });
        await db
          .insertInto("layer_blobs")
          .values({ layer: digest, sha256, size, created_at: Date.now() })
          .onConflict((oc) => oc.column("layer").doUpdateSet({ sha256, size }))
          .execute();
      } finally {
        await rm(file, { force: true });
      }
    }
  }

  /**
   * Makes sure every layer is in the layers folder, fetching and unpacking those that are not.
   * Layers already here cost a stat each and nothing on the network.
   */
  async ensure(digests: readonly string[]): Promise<void> {
    for (const digest of digests) {
      if (!isDigest(digest)) throw new AppError("validation_failed", `not a layer digest: ${JSON.stringify(digest)}`);
      if (await isLayerHere(join(this.#deps.layersDir, digest))) continue;
      let fetching = this.#fetching.get(digest);
      if (!fetching) {
        fetching = this.#fetch(digest).finally(() => this.#fetching.delete(digest));
        this.#fetching.set(digest, fetching);
      }
      await fetching;
    }
  }

  async #blobOf(digest: string): Promise<string | null> {
    const row = await this.#deps.db
      .selectFrom("layer_blobs")
      .select("sha256")
      .where("layer", "=", digest)
      .executeTakeFirst();
    return row?.sha256 ?? null;
  }

  async #fetch(digest: string): Promise<void> {
    const { cache, layersDir, imagesDir } = this.#deps;
    const sha256 = await this.#blobOf(digest);
    if (!sha256) {
      throw new AppError("blob_unavailable", `layer ${digest} is not on this node and no blob of it was stored`, {
        layer: digest,
      });
    }
    const file = await cache.file(sha256);
    try {
      await unpackSnapshot(
        file,
        { layersDir, imagesDir },
        {
          check: (manifest, contents) => {
            const layers = contents.layers.map((l) => l.digest);
            if (manifest.layer !== digest || layers.length !== 1 || layers[0] !== digest || contents.base) {
              throw new AppError("invalid_archive", `it does not hold exactly layer ${digest}`);
            }
          },
        },
      );
    } catch (err) {
      // A blob whose archive is damaged or holds another layer is dropped, to be fetched anew.
      await cache.evict(sha256);
      const why = err instanceof Error ? err.message : String(err);
      throw blobUnavailable(sha256, `(layer ${digest}) could not be unpacked: ${why}`);
    }
  }
}

async function isLayerHere(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}
