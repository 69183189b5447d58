export * from "./api.ts";
export * from "./errors.ts";
export * from "./limits.ts";
export * from "./marker.ts";
export * from "./runner.ts";
export * from "./sessions.ts";
