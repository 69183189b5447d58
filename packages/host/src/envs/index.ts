export {
  CHANGES_SAMPLE_SIZE,
  type Changes,
  type ComputeChangesOptions,
  computeChanges,
} from "./changes.ts";
export { DEFAULT_FREEZE_EXCLUDE, type FreezeOptions, type FrozenLayer, freezeUpper } from "./freeze.ts";
