export {
  type Compression,
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_ENTRIES,
  detectCompression,
  type ExtractOptions,
  type ExtractResult,
  extractTarball,
  OPAQUE_XATTR,
  openArchive,
} from "./extract-rootfs.ts";
export {
  type PackResult,
  packSnapshot,
  packTree,
  SNAPSHOT_BASE,
  SNAPSHOT_LAYERS,
  SNAPSHOT_MANIFEST,
  type SnapshotTree,
  type UnpackedContents,
  type UnpackOptions,
  type UnpackTargets,
  unpackSnapshot,
} from "./pack-layers.ts";
export { type TarEntry, TarFormatError, TarReader } from "./tar-format.ts";
