/**
 * The runner: the only platform code inside a sandbox. It reads its RunnerSpec from stdin, starts
 * the agent's command, and reports to the host as RunnerFrame JSON lines on stdout: each output
 * line (markers become structured events), heartbeats, and the exit status. It holds no secret and
 * decides nothing; the host re-checks every frame it sends. It imports no zod (start-up time):
 * only types and the dependency-free marker check. The same bundle is the agents' SDK (sdk.ts):
 * imported rather than started, it only exports.
 */
import { spawn } from "node:child_process";
import type { RunnerFrame, RunnerSpec } from "@paddock/protocol";
import { MARKER_PREFIX, parseMarkerLine } from "@paddock/protocol/marker";
import { runBuiltinAgent } from "./agent-loop.ts";
import { LineSplitter } from "./line-splitter.ts";

const out = process.stdout;
const PIPE_GRACE_MS = 200;
let blocked = false;
const waiting: (() => void)[] = [];
out.on("drain", () => {
  blocked = false;
  for (const resume of waiting.splice(0)) resume();
});

function send(frame: RunnerFrame): void {
  if (!out.write(`${JSON.stringify(frame)}\n`)) blocked = true;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

async function main(): Promise<void> {
  // The spec comes from the host, the trusted side; the host built it with the RunnerSpec schema.
  const spec = JSON.parse(await readStdin()) as RunnerSpec;
  send({ t: "hello", pid: process.pid });

  const [file, ...args] = spec.command as [string, ...string[]];
  const child = spawn(file, args, {
    cwd: spec.cwd,
    env: spec.env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });

  const heartbeat = setInterval(() => send({ t: "hb" }), spec.heartbeat_ms);
  let spawnFailed = false;
  child.on("error", (err: NodeJS.ErrnoException) => {
    spawnFailed = true;
    send({ t: "spawn_error", code: err.code ?? "EUNKNOWN", message: err.message.slice(0, 4096) });
  });
  child.on("spawn", () => send({ t: "started", pid: child.pid ?? -1 }));

  // Pause the agent's pipes while the host is not reading, so memory stays bounded.
  const throttle = (stream: NodeJS.ReadableStream) => {
    stream.on("data", () => {
      if (blocked) {
        stream.pause();
        waiting.push(() => stream.resume());
      }
    });
  };
  const stdout = new LineSplitter(spec.max_line_bytes, (line, truncated) => {
    if (line.startsWith(MARKER_PREFIX) && !truncated) {
      const marker = parseMarkerLine(line);
      if (marker) return send({ t: "event", type: marker.type, data: marker.data });
    }
    send({ t: "log", stream: "stdout", line, ...(truncated ? { truncated } : {}) });
  });
  const stderr = new LineSplitter(spec.max_line_bytes, (line, truncated) =>
    send({ t: "log", stream: "stderr", line, ...(truncated ? { truncated } : {}) }),
  );
  if (child.stdout && child.stderr) {
    child.stdout.on("data", (c: Buffer) => stdout.push(c));
    child.stderr.on("data", (c: Buffer) => stderr.push(c));
    throttle(child.stdout);
    throttle(child.stderr);
  }

  // The run ends when the agent's main process exits. Output still in its pipes is read until
  // they close or a short grace passes: a daemon it left behind may hold them open forever (the
  // sandbox, and the daemon with it, is torn down once the runner exits).
  let finished = false;
  const finish = (code: number | null, signal: NodeJS.Signals | null) => {
    if (finished) return;
    finished = true;
    clearInterval(heartbeat);
    stdout.end();
    stderr.end();
    if (!spawnFailed) send({ t: "exit", code, signal });
    out.end(() => process.exit(0));
  };
  child.on("exit", (code, signal) => {
    const grace = setTimeout(() => finish(code, signal), PIPE_GRACE_MS);
    child.once("close", () => {
      clearTimeout(grace);
      finish(code, signal);
    });
  });
  // A failed spawn never exits.
  child.on("error", () => {
    if (child.pid === undefined) finish(null, null);
  });
}

export { bridge, callAgent } from "./sdk.ts";

// Started as a program, it is the runner, or with `agent` the built-in agent (the runner's child);
// imported by an agent, it is only the SDK.
if (import.meta.main) {
  const builtin = process.argv[2] === "agent";
  (builtin ? runBuiltinAgent() : main().then(() => undefined))
    .then((code) => {
      if (code !== undefined) process.exitCode = code;
    })
    .catch((err: unknown) => {
      process.stderr.write(`${builtin ? "agent" : "runner"}: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(builtin ? 1 : 70);
    });
}
