/**
 * One attempt of a run: boot a sandbox, feed the runner its spec, turn its frames into events,
 * enforce the wall-clock timeout and the runner's heartbeat, collect artifacts, and record how it
 * ended. Threat model: everything read from the sandbox is agent-controlled. Frames are parsed with
 * their schema and capped in size and number, and logs and user events share one byte budget
 * (the runner's own caps are not a boundary: agent code can write to its stdout directly); a
 * frame can only add events to its own run. The exit
 * status a runner reports is believed only for the agent's own outcome; limits, timeouts and
 * kills are the host's own observations.
 */
import { rename, writeFile } from "node:fs/promises";
import { constants } from "node:os";
import { join } from "node:path";
import { finished } from "node:stream/promises";
import {
  type AgentSpec,
  agentCallName,
  type Limits,
  Marker,
  type RunEventData,
  RunnerFrame,
  type RunnerSpec,
  type RunReason,
  type RunStatus,
} from "@paddock/protocol";
import { LineSplitter } from "@paddock/runner";
import type { ArtifactRow, Artifacts } from "../artifacts/artifacts.ts";
import { collectOutputs } from "../artifacts/collector.ts";
import type { BlobStore } from "../blobs/blobs.ts";
import type { LiveSandboxes } from "../bridge/live.ts";
import type { RunTokenClaims } from "../bridge/tokens.ts";
import { DEFAULT_PATH } from "../images/resolve-command.ts";
import type { CurrentRunner } from "../images/runner-registry.ts";
import type { Log, LogFields } from "../logs/log.ts";
import type { SandboxDriver, SandboxExit, SandboxHandle, SandboxSpec } from "../sandbox/driver.ts";
import { OUTPUTS_DIR, RUNNER_ARGV, RUNNER_ENV, RUNNER_SDK, RUNTIME_DIR } from "../sandbox/driver.ts";
import type { EventLog, NewEvent } from "../store/event-log.ts";
import { type Fence, isLeaseLost } from "../store/fence.ts";
import { newId } from "../store/ids.ts";
import { epochOf } from "../tracing/tracing.ts";
import type { AttemptTrace } from "./attempt-trace.ts";

export const MAX_LINE_BYTES = 16 * 1024;
/** A frame carries one line, JSON-escaped (worst case 6 bytes per byte), plus a small envelope. */
const MAX_FRAME_BYTES = MAX_LINE_BYTES * 6 + 1024;
export const MAX_EVENTS_PER_ATTEMPT = 10_000;
/** How many heartbeat timeouts a runner may take to say hello once its sandbox is up. */
const RUNNER_START_ALLOWANCE = 4;

export interface AttemptDeps {
  driver: SandboxDriver;
  events: EventLog;
  /** Where collected artifacts' content goes: the shared store, through this node's cache. */
  blobs: Pick<BlobStore, "put">;
  /** Host paths of the spec's layers, top first, base rootfs last. */
  resolveLayers(spec: AgentSpec): Promise<string[]>;
  /** The runner every boot mounts, whatever runner the snapshot names. */
  currentRunner(): Promise<CurrentRunner>;
  /** Where collected artifacts are recorded, with their events. */
  artifacts: Pick<Artifacts, "record">;
  heartbeatMs: number;
  heartbeatTimeoutMs: number;
  log: Log;
  /** The host bridge, when sandboxes get networks: where it listens and how runs get tokens. */
  bridge?: AttemptBridge;
}

/** What an attempt needs to let its sandbox call the bridge. */
export interface AttemptBridge {
  /** The bridge's URL as sandboxes reach it, for example http://10.209.0.1:41234. */
  url: string;
  live: LiveSandboxes;
  /** Signs a run token for these claims. */
  mint(claims: RunTokenClaims): Promise<{ token: string; expiresAt: number }>;
  /** How long a token lives; the attempt renews it at a third of that. */
  ttlMs: number;
}

/** Where the run token is inside the sandbox (RUNTIME_DIR is read-only there). */
export const TOKEN_FILE = `${RUNTIME_DIR}/token`;

/** How every sandbox of an agent boots, cold or warm: the runner, waiting for its spec. */
export async function sandboxSpec(
  deps: AttemptDeps,
  spec: AgentSpec,
  runner: CurrentRunner,
): Promise<Omit<SandboxSpec, "id">> {
  return {
    layers: await deps.resolveLayers(spec),
    runnerDir: runner.dir,
    limits: spec.limits,
    files: [],
    argv: [...RUNNER_ARGV],
    env: { PATH: DEFAULT_PATH, LANG: "C.UTF-8", HOME: "/home/agent", ...RUNNER_ENV },
    cwd: "/",
    network: deps.bridge !== undefined,
  };
}

export interface AttemptInput {
  runId: string;
  tenantId: string;
  agentId: string;
  /** For a child run: the root of its tree and the root's agent (whose budget it shares). */
  rootRunId?: string | null;
  rootAgentId?: string | null;
  /** The end user the run acts for (its OAuth connections attach that user's accounts). */
  endUser?: string | null;
  attempt: number;
  /** The node running it: with run and attempt, the fencing token of every write it makes. */
  workerId: string;
  spec: AgentSpec;
  input: string | null;
  /** The attempt's spans, when the host traces. */
  trace?: AttemptTrace | null;
}

export interface AttemptOutcome {
  status: Exclude<RunStatus, "queued" | "starting" | "running" | "waiting">;
  reason: RunReason;
  exitCode: number | null;
  /** Set when the host itself interrupted the attempt (shutdown); the run goes back to the queue. */
  interrupted?: boolean;
}

type StopReason = "timed_out" | "canceled" | "lost" | "shutdown" | "out_of_credits" | "lease_lost";

export class Attempt {
  readonly #deps: AttemptDeps;
  readonly #in: AttemptInput;
  #handle: SandboxHandle | null = null;
  #stop: StopReason | null = null;
  #pending: NewEvent[] = [];
  #flushing: Promise<void> | null = null;
  #eventCount = 0;
  #logBytes = 0;
  #logDropped = 0;
  #badFrames = 0;
  #lastFrameAt = Date.now();
  #exitFrame: { code: number | null; signal: string | null } | null = null;
  #spawnError: { code: string; message: string } | null = null;
  /** The runner said hello: the sandbox booted far enough to run platform code. */
  #runnerUp = false;
  #exited = false;
  /** Another node holds the run now: nothing more is written for this attempt. */
  #fenced = false;
  /** Ends the sandbox's bridge access (unlists it, stops renewing its token). */
  #closeBridge: (() => void) | null = null;
  /** Since when the run waits for approvals (null: it does not), and how long it waited before. */
  #waitingSince: number | null = null;
  #waitedMs = 0;
  readonly #limits: Limits;
  /** What every line this attempt logs concerns. */
  readonly #fields: LogFields;

  constructor(deps: AttemptDeps, input: AttemptInput) {
    this.#deps = deps;
    this.#in = input;
    this.#limits = input.spec.limits;
    this.#fields = { run_id: input.runId, tenant_id: input.tenantId, agent_id: input.agentId, attempt: input.attempt };
  }

  /** This attempt's fencing token. */
  get fence(): Fence {
    return { runId: this.#in.runId, attempt: this.#in.attempt, workerId: this.#in.workerId };
  }

  /**
   * The run is no longer this attempt's (a write was fenced, or its lease could not be renewed):
   * the sandbox loses the bridge and is killed, and nothing more is written for it.
   */
  leaseLost(): void {
    if (!this.#fenced)
      this.#deps.log(`run ${this.#in.runId}: attempt ${this.#in.attempt} lost its lease; stopping it`, this.#fields);
    this.#fenced = true;
    this.#pending = [];
    this.#closeBridge?.();
    this.stop("lease_lost");
  }

  /**
   * Asks the attempt to end; the sandbox is killed and the reason recorded. Idempotent, and a
   * no-op once the sandbox has exited: a late cancel does not rewrite how the agent ended.
   */
  stop(reason: StopReason): void {
    if (this.#exited) return;
    this.#stop ??= reason;
    void this.#handle?.kill();
  }

  /**
   * Runs the attempt to its end, in `warm` (a sandbox booted ahead for this agent) when given,
   * else in a freshly booted one. `onRunning` is called once the sandbox is up.
   */
  async run(
    onRunning: (boot: { ms: number; warm: boolean }) => Promise<boolean>,
    warm: SandboxHandle | null,
    runner: { current: CurrentRunner; ms: number },
  ): Promise<AttemptOutcome> {
    const { runId, attempt, spec } = this.#in;
    const bootStart = performance.now();
    let handle: SandboxHandle | null = null;
    let usedWarm = false;
    try {
      if (warm) {
        usedWarm = await this.#writeInput(warm).then(
          () => true,
          () => false,
        );
        if (usedWarm) handle = warm;
        else await warm.destroy().catch(() => {});
      }
      if (!handle) {
        const id = `${runId.replace(/_/g, "-")}-${attempt}`;
        handle = await this.#deps.driver.boot({ ...(await sandboxSpec(this.#deps, spec, runner.current)), id });
        await this.#writeInput(handle);
      }
      await this.#openBridge(handle);
      this.#in.trace?.sandboxStarted(epochOf(bootStart), { warm: usedWarm, sandboxId: handle.id });
    } catch (err) {
      this.#closeBridge?.();
      await handle?.destroy().catch(() => {});
      const message = err instanceof Error ? err.message : String(err);
      this.#in.trace?.sandboxStarted(epochOf(bootStart), { warm: usedWarm, error: message });
      this.#deps.log(`run ${runId}: sandbox boot failed: ${message}`, this.#fields);
      this.#queue({ type: "attempt.error", data: { stage: "boot", message } });
      await this.#drain();
      return { status: "failed", reason: "sandbox_error", exitCode: null };
    }
    this.#handle = handle;
    if (this.#stop) void handle.kill();

    try {
      const ms = Math.round((performance.now() - bootStart) * 100) / 100;
      if (spec.runner !== runner.current.digest) {
        // The snapshot names another runner: the current one was mounted instead. What that cost
        // is choosing it; its mount is the same read-only bind every boot makes.
        this.#queue({
          type: "runner.swapped",
          data: { from: spec.runner || null, to: runner.current.digest, ms: Math.round(runner.ms * 1000) / 1000 },
        });
      }
      if (!(await onRunning({ ms, warm: usedWarm }))) this.stop("canceled");
      this.#feed(handle);
      const exit = await this.#watch(handle);
      this.#exited = true;
      await this.#drain();
      await this.#collect(handle);
      return this.#outcome(exit);
    } finally {
      // The run's tokens die here: the bridge answers only sandboxes it lists.
      this.#closeBridge?.();
      await handle
        .destroy()
        .catch((err: unknown) => this.#deps.log(`run ${runId}: destroy failed: ${String(err)}`, this.#fields));
    }
  }

  /**
   * Puts a run token in the sandbox's read-only runtime folder (never in argv or the environment),
   * lists the sandbox with the bridge, and renews the token at a third of its lifetime.
   */
  async #openBridge(handle: SandboxHandle): Promise<void> {
    const bridge = this.#deps.bridge;
    if (!bridge || !handle.address) return;
    const { runId, attempt, tenantId, agentId, spec } = this.#in;
    const claims: RunTokenClaims = {
      run: runId,
      attempt,
      tenant: tenantId,
      agent: agentId,
      addr: handle.address,
      sandbox: handle.id,
      // Every run may call the LLM gateway (budgets bound it); connections only as its policy names.
      scopes: [
        "llm",
        ...(spec.policy?.connections ?? []).map((name) => `bridge:${name}`),
        ...(spec.policy?.agents ?? []).map((entry) => `agent:${agentCallName(entry)}`),
        // The run's MCP endpoint, when its policy names an MCP server.
        ...(spec.policy?.mcp?.length ? ["mcp"] : []),
      ],
    };
    const file = join(handle.runtimeDir, "token");
    const put = async () => {
      const { token } = await bridge.mint(claims);
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, token, { mode: 0o444 });
      await rename(tmp, file);
    };
    await put();
    const address = handle.address;
    bridge.live.add({
      address,
      sandboxId: handle.id,
      runId,
      attempt,
      workerId: this.#in.workerId,
      tenantId,
      agentId,
      agentVersion: spec.agent_version,
      endUser: this.#in.endUser ?? null,
      record: (event) => this.#queue(event),
      journaled: (spec.retry?.max_attempts ?? 1) > 1,
      billRunId: this.#in.rootRunId ?? runId,
      outOfCredits: (scope) => {
        this.#queue({ type: "credits.exhausted", data: { budget: scope } });
        this.stop("out_of_credits");
      },
      ...(this.#in.trace ? { trace: this.#in.trace.ref } : {}),
      waiting: (on) => this.#setWaiting(on),
    });
    let renewing = false;
    const timer = setInterval(
      () => {
        if (renewing) return;
        renewing = true;
        put()
          .catch((err: unknown) =>
            this.#deps.log(`run ${runId}: renewing the run token failed: ${String(err)}`, this.#fields),
          )
          .finally(() => {
            renewing = false;
          });
      },
      Math.max(1000, Math.floor(bridge.ttlMs / 3)),
    );
    timer.unref();
    this.#closeBridge = () => {
      clearInterval(timer);
      bridge.live.remove(address, handle.id);
      this.#closeBridge = null;
    };
  }

  /** The run's input, read-only at /inputs/input.json; written after boot so spares can serve. */
  async #writeInput(handle: SandboxHandle): Promise<void> {
    await writeFile(join(handle.inputsDir, "input.json"), this.#in.input ?? "null", { mode: 0o444, flag: "wx" });
    const builtin = this.#in.spec.builtin;
    if (builtin)
      await writeFile(join(handle.inputsDir, "agent.json"), JSON.stringify(builtin), { mode: 0o444, flag: "wx" });
  }

  #feed(handle: SandboxHandle): void {
    const { spec, runId, attempt } = this.#in;
    const runnerSpec: RunnerSpec = {
      command: spec.command,
      cwd: spec.cwd,
      env: {
        PATH: DEFAULT_PATH,
        HOME: "/home/agent",
        LANG: "C.UTF-8",
        TMPDIR: "/tmp",
        ...spec.env,
        PADDOCK_RUN_ID: runId,
        PADDOCK_ATTEMPT: String(attempt),
        PADDOCK_INPUT: "/inputs/input.json",
        PADDOCK_OUTPUTS: OUTPUTS_DIR,
        ...(this.#deps.bridge && handle.address
          ? { PADDOCK_BRIDGE_URL: this.#deps.bridge.url, PADDOCK_TOKEN_FILE: TOKEN_FILE, PADDOCK_SDK: RUNNER_SDK }
          : {}),
        // The run's MCP endpoint, when its policy names MCP servers.
        ...(this.#deps.bridge && handle.address && spec.policy?.mcp?.length
          ? { PADDOCK_MCP_URL: `${this.#deps.bridge.url}/mcp` }
          : {}),
      },
      heartbeat_ms: this.#deps.heartbeatMs,
      max_line_bytes: MAX_LINE_BYTES,
    };
    handle.stdin.on("error", () => {});
    handle.stdin.end(JSON.stringify(runnerSpec));
  }

  async #watch(handle: SandboxHandle): Promise<SandboxExit> {
    const frames = new LineSplitter(MAX_FRAME_BYTES, (line, truncated) => this.#frame(line, truncated));
    handle.stdout.on("data", (chunk: Buffer) => frames.push(chunk));
    const stderr = new LineSplitter(MAX_LINE_BYTES, (line) => this.#log("runner", line));
    handle.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));

    // The runner's silence counts from now, when its sandbox is up: a boot that waited behind
    // hundreds of others (a burst of runs) is not a runner that went quiet.
    this.#lastFrameAt = Date.now();
    const started = Date.now();
    let timeout: NodeJS.Timeout;
    // The timeout counts the run's own time: time spent waiting for people's approvals, up to
    // limits.max_wait_s in all, moves the deadline.
    const check = () => {
      const credit = Math.min(this.#waited(), this.#limits.max_wait_s * 1000);
      const left = started + this.#limits.timeout_s * 1000 + credit - Date.now();
      if (left <= 0) this.stop("timed_out");
      else timeout = setTimeout(check, this.#waitingSince === null ? left : Math.max(left, 1000));
    };
    timeout = setTimeout(check, this.#limits.timeout_s * 1000);
    const watchdog = setInterval(() => {
      // Until its hello, the runner is still starting (Node's start-up, which among hundreds of
      // runners starting at once on a busy host takes seconds): it gets RUNNER_START_ALLOWANCE
      // heartbeat timeouts; from then on, one.
      const allowed = this.#deps.heartbeatTimeoutMs * (this.#runnerUp ? 1 : RUNNER_START_ALLOWANCE);
      if (Date.now() - this.#lastFrameAt > allowed) this.stop("lost");
    }, this.#deps.heartbeatMs);
    try {
      // finished() also settles for a stream that closed already: a sandbox killed as it came up
      // (a cancel while it booted) can close its stdout before this listens, and a `close` listener
      // added then would wait forever.
      const [exit] = await Promise.all([handle.exited, finished(handle.stdout).catch(() => {})]);
      frames.end();
      stderr.end();
      return exit;
    } finally {
      clearTimeout(timeout);
      clearInterval(watchdog);
    }
  }

  /** Whether the run waits for approvals now. */
  get waiting(): boolean {
    return this.#waitingSince !== null;
  }

  #setWaiting(on: boolean): void {
    if (on && this.#waitingSince === null) this.#waitingSince = Date.now();
    if (!on && this.#waitingSince !== null) {
      this.#waitedMs += Date.now() - this.#waitingSince;
      this.#waitingSince = null;
    }
  }

  /** How long the run has waited for approvals in this attempt, the wait going on included. */
  #waited(): number {
    return this.#waitedMs + (this.#waitingSince === null ? 0 : Date.now() - this.#waitingSince);
  }

  #frame(line: string, truncated: boolean): void {
    this.#lastFrameAt = Date.now();
    let value: unknown;
    try {
      value = truncated ? undefined : JSON.parse(line);
    } catch {}
    const parsed = RunnerFrame.safeParse(value);
    if (!parsed.success) {
      this.#badFrames++;
      return;
    }
    const frame = parsed.data;
    switch (frame.t) {
      case "log":
        this.#log(frame.stream, frame.line, frame.truncated);
        break;
      case "event": {
        // Re-checked with the schema: the runner's own check is not trusted.
        const marker = Marker.safeParse({ type: frame.type, data: frame.data });
        if (marker.success) this.#in.trace?.marker(marker.data);
        if (!marker.success) this.#badFrames++;
        else if (this.#spend(Buffer.byteLength(JSON.stringify(marker.data.data ?? null)) + marker.data.type.length)) {
          this.#queue({ type: "user", data: { type: marker.data.type, data: marker.data.data ?? null } });
        }
        break;
      }
      case "exit":
        this.#exitFrame = { code: frame.code, signal: frame.signal };
        break;
      case "spawn_error":
        this.#spawnError = { code: frame.code, message: frame.message };
        this.#queue({ type: "attempt.error", data: { stage: "spawn", code: frame.code, message: frame.message } });
        break;
      case "hello":
        this.#runnerUp = true;
        break;
      case "started":
      case "hb":
        break;
    }
  }

  #log(stream: RunEventData<"log">["stream"], line: string, truncated?: boolean): void {
    if (this.#spend(Buffer.byteLength(line) + 1)) {
      this.#queue({ type: "log", data: truncated ? { stream, line, truncated } : { stream, line } });
    }
  }

  /**
   * Log lines and user events share one byte budget (limits.log_kb): whatever the sandbox sends,
   * a run stores at most that much of it. Past the budget, output is counted and dropped.
   */
  #spend(bytes: number): boolean {
    const cap = this.#limits.log_kb * 1024;
    if (this.#logBytes >= cap) {
      this.#logDropped++;
      return false;
    }
    this.#logBytes += bytes;
    if (this.#logBytes >= cap) this.#queue({ type: "log.truncated", data: { limit_bytes: cap } });
    return true;
  }

  /** Queues an event; writes go out in group commits, the first one at once. */
  #queue(event: NewEvent): void {
    if (this.#fenced || this.#eventCount >= MAX_EVENTS_PER_ATTEMPT) return;
    this.#eventCount++;
    if (this.#eventCount === MAX_EVENTS_PER_ATTEMPT) {
      event = { type: "events.truncated", data: { limit: MAX_EVENTS_PER_ATTEMPT } };
    }
    this.#pending.push({ ...event, ts: Date.now() });
    this.#flushing ??= this.#flushLoop();
  }

  async #flushLoop(): Promise<void> {
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending;
        this.#pending = [];
        const { refused } = await this.#deps.events.writeWellFormed(
          this.#in.runId,
          this.#in.attempt,
          batch,
          this.fence,
        );
        for (const { type, problems } of refused) {
          this.#deps.log(`run ${this.#in.runId}: dropped a malformed '${type}' event: ${problems}`, this.#fields);
        }
      }
    } catch (err) {
      if (isLeaseLost(err)) this.leaseLost();
      else this.#deps.log(`run ${this.#in.runId}: writing events failed: ${String(err)}`, this.#fields);
    } finally {
      this.#flushing = null;
    }
  }

  async #drain(): Promise<void> {
    if (this.#fenced) return;
    if (this.#logDropped > 0) {
      this.#pending.push({ type: "log.dropped", data: { lines: this.#logDropped }, ts: Date.now() });
      this.#logDropped = 0;
    }
    if (this.#badFrames > 0) {
      this.#pending.push({ type: "attempt.protocol_errors", data: { frames: this.#badFrames }, ts: Date.now() });
      this.#badFrames = 0;
    }
    while (this.#flushing || this.#pending.length > 0) {
      this.#flushing ??= this.#flushLoop();
      await this.#flushing;
    }
  }

  async #collect(handle: SandboxHandle): Promise<void> {
    const { runId, attempt } = this.#in;
    if (this.#fenced) return;
    try {
      const result = await collectOutputs(handle.outputsDir, this.#deps.blobs, this.#limits.artifacts_mb * 1024 * 1024);
      const rows: ArtifactRow[] = result.files.map((f) => ({
        id: newId("art"),
        path: f.path,
        size: f.size,
        sha256: f.sha256,
        content_type: f.contentType,
      }));
      const events: NewEvent[] = rows.map((r) => ({
        type: "artifact.created",
        data: { artifact_id: r.id, path: r.path, size: r.size, sha256: r.sha256, content_type: r.content_type },
      }));
      for (const s of result.skipped) events.push({ type: "artifact.skipped", data: s });
      if (result.skippedCount > result.skipped.length) {
        events.push({ type: "artifact.skipped", data: { more: result.skippedCount - result.skipped.length } });
      }
      if (events.length > 0) await this.#deps.artifacts.record(this.#in, rows, events, this.fence);
    } catch (err) {
      if (isLeaseLost(err)) return this.leaseLost();
      this.#deps.log(`run ${runId}: collecting artifacts failed: ${String(err)}`, this.#fields);
      await this.#deps.events
        .write(
          runId,
          attempt,
          [{ type: "attempt.error", data: { stage: "artifacts", message: String(err) } }],
          this.fence,
        )
        .catch(() => {});
    }
  }

  #outcome(exit: SandboxExit): AttemptOutcome {
    switch (this.#stop) {
      case "canceled":
        return { status: "canceled", reason: "canceled", exitCode: null };
      case "timed_out":
        return { status: "timed_out", reason: "timed_out", exitCode: null };
      case "out_of_credits":
        return { status: "failed", reason: "out_of_credits", exitCode: null };
      case "shutdown":
        return { status: "failed", reason: "lost", exitCode: null, interrupted: true };
      case "lost":
      case "lease_lost":
        return { status: "failed", reason: "lost", exitCode: null };
    }
    if (exit.oom) return { status: "failed", reason: "oom", exitCode: 137 };
    if (this.#spawnError) {
      const missing = this.#spawnError.code === "ENOENT" || this.#spawnError.code === "EACCES";
      return { status: "failed", reason: missing ? "command_not_found" : "sandbox_error", exitCode: 127 };
    }
    const agent = this.#exitFrame;
    // No exit report: the runner never came up (a sandbox fault), or it died under the agent.
    if (!agent) return { status: "failed", reason: this.#runnerUp ? "lost" : "sandbox_error", exitCode: exit.code };
    if (agent.signal) {
      const signum = constants.signals[agent.signal as keyof typeof constants.signals] ?? 0;
      return { status: "failed", reason: "killed", exitCode: 128 + signum };
    }
    if (agent.code === 0) return { status: "succeeded", reason: "completed", exitCode: 0 };
    return { status: "failed", reason: "exit_code", exitCode: agent.code };
  }
}
