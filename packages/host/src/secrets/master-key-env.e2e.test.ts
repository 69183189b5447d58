/**
 * A master key given as PADDOCK_MASTER_KEY stays in the host process: a real host started with it
 * in its environment runs an agent, keeps warm launchers and freezes an environment session, and
 * no process below it (tools, launchers, sandboxes) ever shows the key in /proc/<pid>/environ.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startHost } from "../host.ts";
import { unsealRunners } from "../images/runner-registry.ts";
import { hostSkipReason, testImagesDir } from "../testing/harness.ts";
import { spawnHost } from "../testing/host-child.ts";
import { descendants } from "../testing/processes.ts";
import { waitFor } from "../testing/wait.ts";
import { MASTER_KEY_ENV } from "./vault.ts";

const skip = hostSkipReason();

describe("a master key from the environment", { skip }, () => {
  it("reaches no process the host starts", async (t) => {
    const key = randomBytes(32).toString("base64");
    const dataDir = await realpath(await mkdtemp(join(tmpdir(), "paddock-key-env-")));
    const config = { dataDir, port: 0, imagesDir: testImagesDir() };
    const host = await spawnHost(config, { ...process.env, [MASTER_KEY_ENV]: key });
    const hostPid = host.child.pid as number;
    t.after(async () => {
      if (host.child.exitCode === null) {
        host.child.kill("SIGKILL");
        await new Promise((r) => host.child.once("exit", r));
      }
      // A host on the same data folder removes what the killed one left (sandboxes, mounts).
      process.env[MASTER_KEY_ENV] = key;
      const cleaner = await startHost({ ...config, log: () => {} });
      await cleaner.close();
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    });

    // Every process below the host, looked at again and again while the host works.
    const seen = new Map<number, { comm: string; environ: string }>();
    const leaks = new Set<string>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const p of await descendants(hostPid)) {
          const environ = await readFile(`/proc/${p.pid}/environ`, "latin1").catch(() => null);
          if (environ === null) continue;
          seen.set(p.pid, { comm: p.comm, environ });
          if (environ.includes(`${MASTER_KEY_ENV}=`) || environ.includes(key)) leaks.add(`${p.pid} ${p.comm}`);
        }
        await sleep(5);
      }
    })();

    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${host.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${host.adminKey}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      // biome-ignore lint/suspicious/noExplicitAny: JSON bodies.
      return { status: res.status, body: (await res.json()) as any };
    };
    try {
      // The host took the key from the environment: it made no key file of its own.
      assert.equal(existsSync(join(dataDir, "master.key")), false);

      // A sandbox that stays up, and the launchers the host keeps warm beside it.
      const agent = await call("POST", "/v1/agents", { name: "sleeper", command: ["sh", "-c", "sleep 600"] });
      const run = await call("POST", `/v1/agents/${agent.body.id}/runs`, {});
      assert.equal(run.status, 201, JSON.stringify(run.body));
      const sleeper = await waitFor(
        () => [...seen.values()].find((p) => p.comm === "sleep" && p.environ.includes(`PADDOCK_RUN_ID=${run.body.id}`)),
        { what: "the run's sleep process to be seen", timeoutMs: 120_000 },
      );
      assert.ok(sleeper.environ.includes("PADDOCK_ATTEMPT=1"), "environments are read from the sandbox");

      // Freezing runs the host's copy and attribute tools over a tree of files.
      const shaped = await call("POST", "/v1/agents", { name: "shaped", command: ["true"] });
      const base = `/v1/agents/${shaped.body.id}`;
      assert.equal((await call("POST", `${base}/env/session`, {})).status, 201);
      const made = await call("POST", `${base}/env/session/exec`, {
        argv: ["sh", "-c", "mkdir /root/many && cd /root/many && for i in $(seq 2000); do echo $i > f$i; done"],
      });
      assert.equal(made.body.exit_code, 0, JSON.stringify(made.body));
      const frozen = await call("POST", `${base}/env/freeze`, {});
      assert.equal(frozen.status, 201, JSON.stringify(frozen.body));

      await call("POST", `/v1/runs/${run.body.id}/cancel`, {});
    } finally {
      sampling = false;
      await sampler;
    }
    const names = [...new Set([...seen.values()].map((p) => p.comm))].sort();
    assert.ok(names.includes("sleep"), `the sandbox's processes were seen: ${names.join(", ")}`);
    assert.deepEqual([...leaks], [], `processes holding the key (seen: ${names.join(", ")})`);
  });
});
