/**
 * Environment layers and base images in the shared blob store, so a node that has never seen an
 * agent can boot it: a layer made here (create, update, freeze, import) and the base image an agent
 * is made on are each packed as a one-tree snapshot archive (packSnapshot: deterministic tar,
 * zstd) and put in the store under the archive's sha256, recorded in `tree_blobs` beside the
 * tree's digest. A node missing one fetches that blob through its verified cache and unpacks it
 * into its layers or images folder; a tree already here is used as it is, with no network call.
 *
 * Threat model: the blob store is shared and not trusted. The archive's sha256 is checked by the
 * cache, and unpackSnapshot recomputes the tree's digest from the extracted files before anything
 * is moved into place; a blob that fails either is dropped from the cache and the error names it,
 * so the next attempt fetches it again.
 */
import { createWriteStream } from "node:fs";
import { mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { AppError } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { blobUnavailable } from "../blobs/blobs.ts";
import type { BlobCache } from "../blobs/cache.ts";
import { IMAGE_META, IMAGE_ROOTFS, isDigest } from "../fs/layout.ts";
import { isErrno } from "../fs/store-fs.ts";
import { newId } from "../store/ids.ts";
import type { Database } from "../store/schema.ts";
import { packSnapshot, unpackSnapshot } from "./pack-layers.ts";

export const TREE_BLOB_FORMAT = "paddock.tree.v1";

/** An environment layer (under the layers folder) or a base image (under the images folder). */
export type TreeKind = "layer" | "image";

export interface LayerBlobsDeps {
  db: Kysely<Database>;
  cache: BlobCache;
  layersDir: string;
  imagesDir: string;
  /** A local folder for archives being packed. */
  tmpDir: string;
}

export class LayerBlobs {
  readonly #deps: LayerBlobsDeps;
  /** Packs and fetches under way, by kind and digest, so concurrent callers share one. */
  readonly #pending = new Map<string, Promise<void>>();

  constructor(deps: LayerBlobsDeps) {
    this.#deps = deps;
  }

  /** Puts each tree in the blob store unless it is there already; a tree not here is fetched first. */
  async publish(kind: TreeKind, digests: readonly string[]): Promise<void> {
    for (const digest of new Set(digests)) {
      await this.ensure(kind, [digest]);
      await this.#once(`publish ${kind} ${digest}`, () => this.#publish(kind, digest));
    }
  }

  /**
   * Makes sure every tree is here, fetching and unpacking those that are not. Trees already here
   * cost a stat each and nothing on the network.
   */
  async ensure(kind: TreeKind, digests: readonly string[]): Promise<void> {
    for (const digest of digests) {
      if (!isDigest(digest)) throw new AppError("validation_failed", `not a digest: ${JSON.stringify(digest)}`);
      if (await this.#isHere(kind, digest)) continue;
      await this.#once(`fetch ${kind} ${digest}`, () => this.#fetch(kind, digest));
    }
  }

  #once(key: string, work: () => Promise<void>): Promise<void> {
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = work().finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    return pending;
  }

  async #isHere(kind: TreeKind, digest: string): Promise<boolean> {
    const { layersDir, imagesDir } = this.#deps;
    // An image is complete once its meta.json is written (the last step of every install).
    const path = kind === "layer" ? join(layersDir, digest) : join(imagesDir, digest, IMAGE_META);
    try {
      await stat(path);
      return true;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  async #blobOf(kind: TreeKind, digest: string): Promise<string | null> {
    const row = await this.#deps.db
      .selectFrom("tree_blobs")
      .select("sha256")
      .where("kind", "=", kind)
      .where("digest", "=", digest)
      .executeTakeFirst();
    return row?.sha256 ?? null;
  }

  async #publish(kind: TreeKind, digest: string): Promise<void> {
    const { db, cache, layersDir, imagesDir, tmpDir } = this.#deps;
    const known = await this.#blobOf(kind, digest);
    if (known && (await cache.store.head(known))) return;
    await mkdir(tmpDir, { recursive: true });
    const file = join(tmpDir, newId("pack"));
    try {
      const manifest = { format: TREE_BLOB_FORMAT, [kind]: digest };
      const out = createWriteStream(file);
      if (kind === "layer") await packSnapshot(manifest, [{ digest, dir: join(layersDir, digest) }], null, out);
      else await packSnapshot(manifest, [], { digest, dir: join(imagesDir, digest, IMAGE_ROOTFS) }, out);
      const { sha256, size } = await cache.store.put({ file });
      await db
        .insertInto("tree_blobs")
        .values({ kind, digest, sha256, size, created_at: Date.now() })
        .onConflict((oc) => oc.columns(["kind", "digest"]).doUpdateSet({ sha256, size }))
        .execute();
    } finally {
      await rm(file, { force: true });
    }
  }

  async #fetch(kind: TreeKind, digest: string): Promise<void> {
    const { cache, layersDir, imagesDir } = this.#deps;
    const sha256 = await this.#blobOf(kind, digest);
    if (!sha256) {
      throw new AppError("blob_unavailable", `${kind} ${digest} is not on this node and no blob of it was stored`, {
        [kind]: digest,
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
            const holds =
              kind === "layer"
                ? layers.length === 1 && layers[0] === digest && !contents.base
                : layers.length === 0 && contents.base?.digest === digest;
            if (manifest[kind] !== digest || !holds) {
              throw new AppError("invalid_archive", `it does not hold exactly ${kind} ${digest}`);
            }
          },
        },
      );
    } catch (err) {
      // A blob whose archive is damaged or holds another tree is dropped, to be fetched anew.
      await cache.evict(sha256);
      const why = err instanceof Error ? err.message : String(err);
      throw blobUnavailable(sha256, `(${kind} ${digest}) could not be unpacked: ${why}`);
    }
  }
}
