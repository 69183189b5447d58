export { type HostConfig, type RunningHost, startHost, VERSION } from "./host.ts";
export { ImageStore } from "./images/image-store.ts";
