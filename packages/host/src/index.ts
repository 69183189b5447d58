export type { HostConfig, HostConfigInput } from "./config.ts";
export { type RunningHost, startHost, VERSION } from "./host.ts";
export { ImageStore } from "./images/image-store.ts";
export { unsealRunners } from "./images/runner-registry.ts";
