/**
 * The sandbox driver interface. A driver boots a root filesystem made of read-only layers plus a
 * per-sandbox writable layer, with the runner layer mounted read-only at RUNNER_MOUNT, and runs
 * the runner inside it under the given limits. Drivers other than the Linux one (Kubernetes pods,
 * microVM hosts) implement the same interface.
 */
import type { Readable, Writable } from "node:stream";
import type { Limits } from "@paddock/protocol";
import { RUNNER_BUNDLE, RUNNER_CACHE, RUNNER_NODE } from "../fs/layout.ts";

/** Where the runner layer appears inside every sandbox. */
export const RUNNER_MOUNT = "/opt/paddock/runner";
/**
 * How the runner starts inside a sandbox; its layer's compile cache is built by this very command.
 * One V8 worker thread instead of one per core: the runner only relays lines, and with a thousand
 * sandboxes on a machine its threads (4 instead of 7) count against the pids limits and pid_max.
 */
export const RUNNER_ARGV: readonly string[] = [
  `${RUNNER_MOUNT}/${RUNNER_NODE}`,
  "--v8-pool-size=1",
  `${RUNNER_MOUNT}/${RUNNER_BUNDLE}`,
];
/**
 * The runner layer's compile cache. Node reads it through NODE_COMPILE_CACHE and writes to it only
 * when an entry does not match, which cannot happen for the layer's own bundle; a write would fail
 * on the read-only mount and be skipped quietly.
 */
export const RUNNER_COMPILE_CACHE = `${RUNNER_MOUNT}/${RUNNER_CACHE}`;
/** What the runner's environment adds to the basics (PATH, LANG, HOME); the agent's command never inherits it. */
export const RUNNER_ENV: Readonly<Record<string, string>> = Object.freeze({ NODE_COMPILE_CACHE: RUNNER_COMPILE_CACHE });
/** The runner's Node binary, which agents written for Node may run on. */
export const RUNNER_NODE_PATH = `${RUNNER_MOUNT}/${RUNNER_NODE}`;
/** The agents' SDK (the runner bundle, imported rather than started; see the runner's sdk.ts). */
export const RUNNER_SDK = `${RUNNER_MOUNT}/${RUNNER_BUNDLE}`;
/** The folder whose files become the run's artifacts. */
export const OUTPUTS_DIR = "/outputs";
/** A read-only folder the host fills after boot (the run's input). */
export const INPUTS_DIR = "/inputs";
/** A read-only folder of the host's for the platform's own files (the run token). */
export const RUNTIME_DIR = "/run/paddock";

export interface SandboxFile {
  /** Absolute path inside the sandbox, for example /inputs/input.json. */
  path: string;
  content: Buffer | string;
  /** Defaults to 0o444: readable, not writable, by the sandbox user. */
  mode?: number;
}

export interface SandboxSpec {
  /** Unique, [a-z0-9-] only; names the cgroup and the mount folder. */
  id: string;
  /** Host paths of read-only lower layers, top-most first; the last is the base rootfs. */
  layers: string[];
  /** Host path of the runner layer folder (holds `node` and `runner.mjs`). */
  runnerDir: string;
  limits: Limits;
  /** Files placed in the writable layer before boot, owned by root. */
  files: SandboxFile[];
  /** Argument vector run inside the sandbox, for example [`${RUNNER_MOUNT}/node`, `${RUNNER_MOUNT}/runner.mjs`]. */
  argv: string[];
  /** The whole environment of argv; nothing of the host's is inherited. */
  env: Record<string, string>;
  cwd: string;
  /** Boots the sandbox as a step of an environment edit session instead of a run. */
  session?: SessionSpec;
  /**
   * Give the sandbox a network of its own whose only peer is the host's bridge (when the driver
   * has sandbox networks); otherwise, and always for sessions, it has loopback only.
   */
  network?: boolean;
}

/**
 * An environment edit session's sandbox: its writable layer outlives each sandbox (one session,
 * many commands, one at a time), and inside it a root user whose ids are mapped to a host range
 * of the session's own can do what package managers do (files owned by several users).
 */
export interface SessionSpec {
  /** The session layer's folder (see SandboxDriver.createSessionLayer). */
  layerDir: string;
  /** First host id of the session's 65536 ids: sandbox uid/gid N is host BASE+N. */
  idBase: number;
  /** A pseudo-terminal of this size as stdin/stdout/stderr; stdin then takes frames (terminalFrame). */
  terminal?: { rows: number; cols: number };
  /** Host path of a Unix socket to appear at /run/paddock/egress.sock inside. */
  egressSocket?: string;
}

/** A session layer: the writable layer of an edit session, on a quota of its own. */
export interface SessionLayer {
  /** Host folder holding upper/ (the layer), work/ and egress/ (a folder for the egress socket). */
  dir: string;
  upper: string;
  egressDir: string;
}

export interface SessionLayerUsage {
  usedBytes: number;
  sizeBytes: number;
  usedInodes: number;
  inodes: number;
}

/** Encodes input for a sandbox with a terminal: type 0 carries bytes, type 1 a window size. */
export function terminalFrame(frame: { data: Buffer } | { rows: number; cols: number }): Buffer {
  const payload = "data" in frame ? frame.data : Buffer.from(`${frame.rows} ${frame.cols}`);
  const head = Buffer.alloc(5);
  head.writeUInt8("data" in frame ? 0 : 1, 0);
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

export interface SandboxExit {
  /** Exit code of argv, or null when it died of a signal. */
  code: number | null;
  signal: string | null;
  /** The kernel's OOM killer killed a process of this sandbox. */
  oom: boolean;
}

export interface SandboxHandle {
  readonly id: string;
  /** stdin/stdout/stderr of argv. */
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Resolves once every process of the sandbox is gone. */
  readonly exited: Promise<SandboxExit>;
  /** SIGKILLs every process of the sandbox (including setsid'd and double-forked ones). Idempotent. */
  kill(): Promise<void>;
  /** Host path of the sandbox's /outputs folder; valid until destroy(). */
  readonly outputsDir: string;
  /**
   * Host path of a root-owned folder seen read-only at INPUTS_DIR inside; what the host writes
   * there, also after boot, appears at once. Lets a sandbox booted ahead of its run get the input.
   */
  readonly inputsDir: string;
  /** Like inputsDir, seen at RUNTIME_DIR: where the host puts the run token. */
  readonly runtimeDir: string;
  /** The sandbox's address on its network, or null without one. */
  readonly address: string | null;
  /** Kills what is left, unmounts, removes cgroups and folders. Idempotent. */
  destroy(): Promise<void>;
}

export interface SandboxDriver {
  readonly name: string;
  boot(spec: SandboxSpec): Promise<SandboxHandle>;
  /** Removes what a dead host of this instance left behind; returns how many sandboxes it cleaned. */
  reapOrphans(): Promise<number>;
  /** Makes an empty session layer of diskMb megabytes, its root owned by host id idBase. */
  createSessionLayer?(id: string, diskMb: number, idBase: number): Promise<SessionLayer>;
  sessionLayerUsage?(id: string): Promise<SessionLayerUsage>;
  /** Unmounts and removes a session layer; idempotent. */
  removeSessionLayer?(id: string): Promise<void>;
}
