import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { constants, existsSync } from "node:fs";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { LineSplitter } from "./line-splitter.ts";

const bundle = new URL("../dist/runner.mjs", import.meta.url).pathname;

function split(max: number, chunks: string[]): [string, boolean][] {
  const out: [string, boolean][] = [];
  const s = new LineSplitter(max, (line, truncated) => out.push([line, truncated]));
  for (const c of chunks) s.push(Buffer.from(c));
  s.end();
  return out;
}

describe("LineSplitter", () => {
  it("joins lines across chunks and strips CR", () => {
    assert.deepEqual(split(100, ["ab", "c\r\nde", "f\n", "tail"]), [
      ["abc", false],
      ["def", false],
      ["tail", false],
    ]);
  });

  it("cuts an overlong line once, flags it, and drops the rest of it", () => {
    assert.deepEqual(split(4, ["abcdefgh", "ijk\nxy\n"]), [
      ["abcd", true],
      ["xy", false],
    ]);
  });

  it("keeps empty lines", () => {
    assert.deepEqual(split(10, ["\n\nx\n"]), [
      ["", false],
      ["", false],
      ["x", false],
    ]);
  });
});

async function runBundle(spec: unknown): Promise<Record<string, unknown>[]> {
  const child = spawn(process.execPath, [bundle], { stdio: ["pipe", "pipe", "inherit"] });
  child.stdin.end(JSON.stringify(spec));
  let text = "";
  for await (const c of child.stdout) text += c;
  return text
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}

describe("runner bundle", () => {
  it("is one small file built from the runner's sources and the protocol's marker parser only", async () => {
    // Importing the build script builds dist/runner.mjs and gives esbuild's account of its inputs.
    const { built } = await import("../build.ts");
    assert.deepEqual(Object.keys(built.outputs), ["packages/runner/dist/runner.mjs"]);
    const inputs = Object.keys(built.inputs).sort();
    assert.ok(inputs.includes("packages/runner/src/main.ts"), inputs.join(", "));
    // No host code, no package from node_modules (zod, kysely, hono...), nothing of the
    // protocol but its dependency-free marker parser; Node's built-ins stay imports.
    const allowed = (path: string) =>
      path === "packages/protocol/src/marker.ts" ||
      (/^packages\/runner\/src\/[a-z-]+\.ts$/.test(path) && !path.endsWith(".test.ts"));
    assert.deepEqual(
      inputs.filter((path) => !allowed(path)),
      [],
      "inputs of the runner bundle",
    );
    const code = await readFile(bundle, "utf8");
    assert.ok(code.length < 20_000, `${code.length} bytes`);
  });

  const spec = (command: string[]) => ({
    command,
    env: { PATH: "/usr/bin:/bin" },
    cwd: "/",
    heartbeat_ms: 50,
    max_line_bytes: 64,
  });

  it("frames output, markers and the exit status", async () => {
    const frames = await runBundle(
      spec([
        "sh",
        "-c",
        `echo out; echo '::paddock::{"type":"p","data":1}'; echo '::paddock::{bad'; echo err >&2; exit 4`,
      ]),
    );
    const kinds = frames.filter((f) => f.t !== "hb");
    assert.equal(kinds[0]?.t, "hello");
    assert.equal(kinds[1]?.t, "started");
    assert.deepEqual(
      kinds.filter((f) => f.t === "event"),
      [{ t: "event", type: "p", data: 1 }],
    );
    assert.deepEqual(
      kinds.filter((f) => f.t === "log" && f.stream === "stdout").map((f) => f.line),
      ["out", "::paddock::{bad"],
    );
    assert.deepEqual(kinds.at(-1), { t: "exit", code: 4, signal: null });
  });

  it("reports a missing command as a spawn error, not an exit", async () => {
    const frames = await runBundle(spec(["/no/such/program"]));
    assert.deepEqual(
      frames.map((f) => f.t),
      ["hello", "spawn_error"],
    );
    assert.equal(frames[1]?.code, "ENOENT");
  });

  it("reports the exit of the main process even when a daemon keeps its pipes open", async () => {
    // The daemon holds the agent's pipes until the test writes to its FIFO, after the runner is done.
    const dir = await mkdtemp(join(tmpdir(), "paddock-runner-daemon-"));
    const fifo = join(dir, "go");
    execFileSync("mkfifo", [fifo]);
    const daemon = `setsid sh -c 'read x < ${fifo}; : > ${fifo}.done' & echo spawned`;
    try {
      let timer: NodeJS.Timeout | undefined;
      const hang = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("the runner waited for the daemon")), 30_000);
      });
      const frames = await Promise.race([runBundle(spec(["sh", "-c", daemon])), hang]).finally(() =>
        clearTimeout(timer),
      );
      assert.deepEqual(frames.at(-1), { t: "exit", code: 0, signal: null });
      assert.equal(existsSync(`${fifo}.done`), false, "the daemon was still running");
    } finally {
      // Releases the daemon if it waits on the FIFO. Opened non-blocking, so that a daemon that never
      // opened it (ENXIO: no reader) cannot hang the test; removing the folder then stops it.
      const writer = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENXIO") throw err;
        return null;
      });
      await writer?.write("go\n");
      await writer?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
