export { unsealRunners } from "./engine/runner-registry.ts";
export { type HostConfig, type RunningHost, startHost, VERSION } from "./host.ts";
export { ImageStore } from "./images/image-store.ts";
