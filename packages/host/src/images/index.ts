export {
  type BaseImage,
  DEFAULT_MIRROR,
  DEFAULT_SUITE,
  type EnsureBaseOptions,
  type ImageInfo,
  ImageStore,
  type ImageStoreOptions,
  type ImportRootfsOptions,
} from "./image-store.ts";
export { LayerStore, type LayerStoreOptions, layerPathProblem } from "./layer-store.ts";
export {
  AGENT_USER,
  DEFAULT_IMAGE_POINTER,
  type ImageMeta,
  isDigest,
  LAYER_APP_DIR,
  type RunnerVersion,
} from "./layout.ts";
export { DEFAULT_CWD, DEFAULT_PATH, type ResolveCommandOptions, resolveCommand } from "./resolve-command.ts";
export { type EnsureRunnerOptions, type RunnerLayer, RunnerLayers, type RunnerLayersOptions } from "./runner-layers.ts";
export { digestEntries, digestTree, type ScanOptions, scanTree, type TreeEntry, type TreeScan } from "./tree-digest.ts";
