/**
 * `paddock env export` and `paddock env import` (the real bin/paddock) between two real hosts
 * with their own data folders: the archive moves an agent's environment, the import shows in
 * `env history`, and refusals leave no partial file behind.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { cleanEnv, hostSkipReason, IMAGES, PADDOCK } from "./e2e-support.ts";

interface Result {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs bin/paddock in `cwd` against `host`, with no other PADDOCK_* settings. */
function cli(host: RunningHost, key: string, args: string[], cwd: string): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      PADDOCK,
      args,
      {
        cwd,
        env: cleanEnv({ PADDOCK_URL: host.url, PADDOCK_API_KEY: key }),
        encoding: "buffer",
        maxBuffer: 1024 ** 3,
        timeout: 300_000,
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr: stderr.toString() });
      },
    );
  });
}

const show = (r: Result) =>
  `exit ${r.code}\n--- stdout\n${r.stdout.toString().slice(0, 2000)}\n--- stderr\n${r.stderr}`;
const COMMAND = ["sh", "-c", "sha256sum /app/data.txt"];

describe("paddock env export / import between two hosts", { skip: e2eSkip(hostSkipReason()) }, () => {
  let work: string;
  let out: string;
  const hosts: { host: RunningHost; key: string; dataDir: string }[] = [];
  const logs: string[] = [];
  const data = "the environment of host A\n";

  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies.
  const api = async (i: number, method: string, path: string, body?: unknown): Promise<any> => {
    const { host, key } = hosts[i] as (typeof hosts)[number];
    const res = await fetch(`${host.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const json = await res.json();
    assert.ok(res.ok, JSON.stringify(json));
    return json;
  };
  const a = () => hosts[0] as (typeof hosts)[number];
  const b = () => hosts[1] as (typeof hosts)[number];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "paddock-env-archive-"));
    out = join(work, "out");
    await mkdir(out);
    for (const name of ["a", "b"]) {
      const dataDir = join(work, name);
      const host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: (line) => logs.push(line) });
      hosts.push({ host, key: host.adminKey as string, dataDir });
    }
    await api(0, "POST", "/v1/agents", { name: "src", command: COMMAND, files: { "data.txt": data } });
    await api(1, "POST", "/v1/agents", { name: "dst", command: COMMAND });
  });
  after(async () => {
    for (const { host, dataDir } of hosts) {
      await host.close();
      await unsealRunners(dataDir);
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("exports to a file, imports on another host, and shows the import in env history", async () => {
    const exported = await cli(a().host, a().key, ["env", "export", "src"], out);
    assert.equal(exported.code, 0, show(exported));
    const file = join(out, "src-v1.tar.zst");
    assert.match(exported.stdout.toString(), /src-v1\.tar\.zst .*\(version 1 of src\)/);
    const bytes = await readFile(file);
    assert.deepEqual(await readdir(out), ["src-v1.tar.zst"], "no temp file is left");

    const piped = await cli(a().host, a().key, ["env", "export", "src", "--version", "1", "-o", "-"], out);
    assert.equal(piped.code, 0, show(piped));
    assert.ok(piped.stdout.equals(bytes), "stdout carries the same archive");
    const slim = await cli(a().host, a().key, ["env", "export", "src", "--no-base", "-o", "slim.tar.zst"], out);
    assert.equal(slim.code, 0, show(slim));
    assert.ok((await readFile(join(out, "slim.tar.zst"))).length < bytes.length / 4);

    const imported = await cli(b().host, b().key, ["env", "import", "dst", "src-v1.tar.zst"], out);
    assert.equal(imported.code, 0, show(imported));
    assert.equal(
      imported.stdout.toString(),
      "dst: version 2 is current, imported from src-v1.tar.zst (version 1 of src)\n",
    );

    const history = await cli(b().host, b().key, ["env", "history", "dst", "--json"], out);
    assert.equal(history.code, 0, show(history));
    const versions = JSON.parse(history.stdout.toString()) as { version: number; reason: string; current: boolean }[];
    assert.deepEqual(
      versions.map((s) => [s.version, s.reason, s.current]),
      [
        [2, "import", true],
        [1, "create", false],
      ],
    );
    const table = await cli(b().host, b().key, ["env", "history", "dst"], out);
    assert.match(table.stdout.toString(), /^2 +\* +import /m);

    const run = await cli(b().host, b().key, ["run", "dst", "--follow"], out);
    assert.equal(run.code, 0, show(run));
    const sha = createHash("sha256").update(data).digest("hex");
    assert.match(run.stdout.toString(), new RegExp(`${sha}  /app/data.txt`));
  });

  it("reports refused archives and unknown versions, leaving no partial file", async () => {
    const file = join(out, "slim.tar.zst");
    assert.ok(existsSync(file), "needs the first test's archive");
    const whole = await readFile(file);
    await writeFile(join(out, "cut.tar.zst"), whole.subarray(0, whole.length - 100));
    const before = await readdir(out);

    const cut = await cli(b().host, b().key, ["env", "import", "dst", "cut.tar.zst"], out);
    assert.equal(cut.code, 1, show(cut));
    assert.match(
      cut.stderr,
      /^error invalid_archive: The archive is truncated or corrupt: .*; nothing was imported\. Check that the whole file was sent/m,
    );

    const unknown = await cli(a().host, a().key, ["env", "export", "src", "--version", "9"], out);
    assert.equal(unknown.code, 1, show(unknown));
    assert.match(unknown.stderr, /^error not_found: The agent has no snapshot version 9/m);

    const missing = await cli(b().host, b().key, ["env", "import", "dst", "nowhere.tar.zst"], out);
    assert.equal(missing.code, 1, show(missing));
    assert.match(missing.stderr, /^error: cannot read nowhere\.tar\.zst/m);

    const usage = await cli(a().host, a().key, ["env", "export", "src", "--version", "0"], out);
    assert.equal(usage.code, 2, show(usage));

    // A layer changed behind the host's back fails its digest check while the export is packed,
    // before anything is sent.
    const agent = (await api(0, "GET", "/v1/agents?name=src")).data[0];
    await writeFile(join(a().dataDir, "layers", agent.snapshot.layers[0], "app", "data.txt"), "tampered\n");
    const broken = await cli(a().host, a().key, ["env", "export", "src", "--no-base", "-o", "broken.tar.zst"], out);
    assert.equal(broken.code, 1, show(broken));
    assert.match(broken.stderr, /^error internal: /m);
    assert.ok(
      logs.some((line) => /exporting agt_\w+ version 1: .* does not hold sha256-/.test(line)),
      logs.join("\n"),
    );

    assert.deepEqual(await readdir(out), before, "no archive or temp file was written");
    const versions = await api(
      1,
      "GET",
      `/v1/agents/${(await api(1, "GET", "/v1/agents?name=dst")).data[0].id}/snapshots`,
    );
    assert.equal(versions.data.length, 2, "the refused import added no version");
  });
});
