/**
 * On-disk layout of the image and layer stores (all read-only once written; written aside, then
 * renamed into place):
 *
 *   <imagesDir>/<digest>/rootfs/      a base image root filesystem
 *   <imagesDir>/<digest>/meta.json    { digest, source, suite?, created_at, size_bytes }
 *   <imagesDir>/default               text file: the digest of the default base image
 *   <layersDir>/<digest>/             an environment layer (a folder overlaid on the rootfs)
 *   <runnersDir>/<digest>/            a runner layer: node, runner.mjs, compile-cache/, version.json
 *   <any store>/.tmp-*                work in progress; never an image or layer, removed when stale
 *
 * Digests are "sha256-<hex>" over a canonical walk of the tree (sorted paths; type, mode, uid,
 * gid, size, content or link target), so identical trees get identical digests. An image digest
 * covers its rootfs; a layer digest covers the whole layer folder; a runner digest covers the
 * runner folder except version.json (which records that digest).
 *
 * An image folder is complete once meta.json exists in it: the folder is renamed into place with
 * meta.json already inside, so a half-built image never carries a digest name.
 */
export const DEFAULT_IMAGE_POINTER = "default";
export const IMAGE_ROOTFS = "rootfs";
export const IMAGE_META = "meta.json";
export const RUNNER_VERSION_FILE = "version.json";
export const RUNNER_NODE = "node";
export const RUNNER_BUNDLE = "runner.mjs";
/** Node's compile cache for the bundle (one folder per Node version and uid), built into the layer. */
export const RUNNER_CACHE = "compile-cache";
/** The folder of a layer whose files appear at /app inside the sandbox. */
export const LAYER_APP_DIR = "app";
/** Prefix of work-in-progress entries inside a store folder. */
export const TEMP_PREFIX = ".tmp-";

/** The user the sandbox runs as; the base image carries a passwd/group entry for it. */
export const AGENT_USER = { name: "agent", uid: 61000, gid: 61000, home: "/home/agent" } as const;

const DIGEST_RE = /^sha256-[0-9a-f]{64}$/;

/** True for a well-formed digest ("sha256-" and 64 lower-case hex digits). */
export function isDigest(value: string): boolean {
  return DIGEST_RE.test(value);
}

/** What meta.json of an image holds. */
export interface ImageMeta {
  digest: string;
  source: string;
  suite?: string;
  created_at: string;
  size_bytes: number;
}

/** What version.json of a runner layer holds. */
export interface RunnerVersion {
  digest: string;
  created_at: string;
  /**
   * What the layer was built from: SHA-256 of the Node binary and of the bundle, and the uid its
   * compile cache is for. Absent in layers made before runner layers carried a compile cache.
   */
  sources?: RunnerSources;
  /** Node's cache folder inside compile-cache/, or null when this Node wrote no cache. */
  compile_cache?: string | null;
}

export interface RunnerSources {
  node: string;
  bundle: string;
  uid: number;
}
