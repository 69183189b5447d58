export type { HostConfig, HostConfigInput } from "./config.ts";
export { unsealRunners } from "./engine/runner-registry.ts";
export { type RunningHost, startHost, VERSION } from "./host.ts";
export { ImageStore } from "./images/image-store.ts";
