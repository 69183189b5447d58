export * from "./api.ts";
export * from "./bridge.ts";
export * from "./errors.ts";
export * from "./limits.ts";
export * from "./marker.ts";
export * from "./runner.ts";
export * from "./secrets.ts";
export * from "./sessions.ts";
