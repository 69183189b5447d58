/** A run end to end: real host, real sandbox, real kernel limits. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { assertOrder } from "../testing/order.ts";
import { forEachStore } from "../testing/stores.ts";

forEachStore((store) =>
  describe(`runs end to end on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    before(async () => {
      t = await startTestHost(await store.hostConfig());
    });
    after(async () => {
      await t?.close();
    });

    const types = (events: { type: string }[]) => events.map((e) => e.type);

    it("succeeds, turns markers into events and logs, and stores /outputs as artifacts", async () => {
      const script = [
        "import json, os, sys",
        "inp = json.load(open('/inputs/input.json'))",
        "print('::paddock::' + json.dumps({'type': 'progress', 'data': {'pct': 50}}), flush=True)",
        "print('hello', inp['who'], flush=True)",
        "print('warn', file=sys.stderr, flush=True)",
        "os.makedirs('/outputs/sub', exist_ok=True)",
        "open('/outputs/report.md', 'w').write('# report\\n')",
        "open('/outputs/sub/data.json', 'w').write('{}')",
        "os.symlink('/etc/passwd', '/outputs/link')",
      ].join("\n");
      const { run, events } = await runAgent(
        t,
        { name: uniqueName("ok"), command: ["python3", "main.py"], files: { "main.py": script } },
        { who: "world" },
      );
      assert.equal(run.status, "succeeded");
      assert.equal(run.reason, "completed");
      assert.equal(run.exit_code, 0);
      assert.deepEqual(types(events).slice(0, 5), [
        "run.queued",
        "run.starting",
        "attempt.started",
        "run.running",
        "user",
      ]);
      assert.equal(types(events).at(-1), "run.succeeded");
      const seqs = events.map((e) => e.seq);
      assert.deepEqual(
        seqs,
        seqs.map((_, i) => i + 1),
        "sequence numbers are 1..n with no gap",
      );
      assert.deepEqual(events.find(isEvent("user"))?.data, {
        type: "progress",
        data: { pct: 50 },
      });
      const logs = events.filter(isEvent("log")).map((e) => e.data);
      assert.deepEqual(logs, [
        { stream: "stdout", line: "hello world" },
        { stream: "stderr", line: "warn" },
      ]);
      const arts = (await t.api("GET", `/v1/runs/${run.id}/artifacts`)).body.data;
      assert.deepEqual(
        arts.map((a: { path: string; size: number }) => [a.path, a.size]),
        [
          ["report.md", 9],
          ["sub/data.json", 2],
        ],
      );
      const skipped = events.filter(isEvent("artifact.skipped"));
      assert.deepEqual(skipped[0]?.data, { path: "link", why: "symbolic link" });
      const report = arts.find((a: { path: string }) => a.path === "report.md");
      const dl = await fetch(`${t.host.url}/v1/runs/${run.id}/artifacts/${report.id}/content`, {
        headers: { authorization: `Bearer ${t.adminKey}` },
      });
      assert.equal(dl.status, 200);
      assert.equal(await dl.text(), "# report\n");
      assert.match(dl.headers.get("content-disposition") ?? "", /attachment/);
    });

    it("records a non-zero exit as failed with its code", async () => {
      const { run } = await runAgent(t, { name: uniqueName("exit"), command: ["sh", "-c", "echo bye; exit 3"] });
      assert.deepEqual([run.status, run.reason, run.exit_code], ["failed", "exit_code", 3]);
    });

    it("keeps malformed markers as log lines and never crashes on them", async () => {
      const lines = [
        "::paddock::{broken",
        '::paddock::{"type":"has space"}',
        '::paddock::{"type":"ok","data":[1]}',
        '::paddock::{"type":"x","extra":true}',
      ];
      const cmd = lines.map((l) => `printf '%s\\n' '${l}'`).join("; ");
      const { run, events } = await runAgent(t, { name: uniqueName("markers"), command: ["sh", "-c", cmd] });
      assert.equal(run.status, "succeeded");
      const user = events.filter(isEvent("user")).map((e) => e.data);
      assert.deepEqual(user, [{ type: "ok", data: [1] }]);
      const logged = events.filter(isEvent("log")).map((e) => e.data.line);
      assert.deepEqual(logged, [lines[0], lines[1], lines[3]]);
    });

    it("times out a process that ignores SIGTERM", async () => {
      const { run } = await runAgent(t, {
        name: uniqueName("timeout"),
        command: ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
        limits: { timeout_s: 1 },
      });
      assert.deepEqual([run.status, run.reason], ["timed_out", "timed_out"]);
    });

    it("records an out-of-memory kill as oom", async () => {
      const { run } = await runAgent(t, {
        name: uniqueName("oom"),
        command: ["python3", "-c", "x = bytearray(400 * 1024 * 1024); print(len(x))"],
        limits: { memory_mb: 96 },
      });
      assert.deepEqual([run.status, run.reason, run.exit_code], ["failed", "oom", 137]);
    });

    it("contains a fork bomb and ends it with the run", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("forkbomb"),
        // The bomb starts in a subshell and the shell then waits by exec, never forking again: a shell
        // whose own fork fails exits at once (status 2), which would end the run before its timeout.
        command: ["sh", "-c", "echo start; b() { b | b & }; (b) & exec sleep 30"],
        limits: { pids: 64, timeout_s: 3 },
      });
      assert.equal(run.status, "timed_out");
      assert.ok(events.filter(isEvent("log")).some((e) => e.data.line === "start"));
    });

    it("ends a double-forked setsid daemon with the run", async () => {
      const tag = `${600 + Math.floor(Math.random() * 1000)}.${process.pid}`;
      const { run } = await runAgent(t, {
        name: uniqueName("daemon"),
        command: ["sh", "-c", `setsid sh -c 'sleep ${tag} & sleep ${tag}' & echo spawned; exit 0`],
      });
      assert.equal(run.status, "succeeded");
      // The driver's own tests check the cgroup is empty; here: no process of the daemon survives.
      const { readdirSync, readFileSync } = await import("node:fs");
      const left = readdirSync("/proc")
        .filter((p) => /^\d+$/.test(p))
        .map((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, "utf8");
          } catch {
            return "";
          }
        })
        .filter((cmd) => cmd.includes(tag));
      assert.deepEqual(left, []);
    });

    it("collects artifacts from a sandbox that was killed", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("partial"),
        command: ["sh", "-c", "echo step-1 > /outputs/partial.txt; sleep 60"],
        limits: { timeout_s: 1 },
      });
      assert.equal(run.status, "timed_out");
      const arts = (await t.api("GET", `/v1/runs/${run.id}/artifacts`)).body.data;
      assert.deepEqual(
        arts.map((a: { path: string }) => a.path),
        ["partial.txt"],
      );
      assertOrder(types(events), ["artifact.created", "run.timed_out"]);
    });

    it("records a run whose runner stops heartbeating as lost", async () => {
      const quick = await startTestHost({
        heartbeatMs: 100,
        heartbeatTimeoutMs: 800,
        warmSandboxes: 0,
        ...(await store.hostConfig()),
      });
      try {
        // The agent freezes the runner (same uid inside the sandbox): no frame, no heartbeat.
        const { run } = await runAgent(quick, {
          name: "freezer",
          command: ["sh", "-c", "kill -STOP $PPID; sleep 60"],
          limits: { timeout_s: 30 },
        });
        assert.deepEqual([run.status, run.reason], ["failed", "lost"]);
      } finally {
        await quick.close();
      }
    });

    it("caps logged output and says so", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("logcap"),
        command: ["sh", "-c", "i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"],
        limits: { log_kb: 8 },
      });
      assert.equal(run.status, "succeeded");
      const logBytes = events.filter(isEvent("log")).reduce((n, e) => n + e.data.line.length + 1, 0);
      assert.ok(logBytes <= 8 * 1024 + 64, `logged ${logBytes} bytes`);
      assert.ok(types(events).includes("log.truncated"));
      assert.ok((events.find(isEvent("log.dropped"))?.data.lines ?? 0) > 4000);
    });

    it("holds user events to the same byte budget as logs", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("eventflood"),
        command: [
          "python3",
          "-c",
          "import json\nfor i in range(3000): print('::paddock::' + json.dumps({'type': 'x', 'data': 'y' * 1000}))",
        ],
        limits: { log_kb: 8 },
      });
      assert.equal(run.status, "succeeded");
      const stored = events.filter(isEvent("user")).reduce((n, e) => n + JSON.stringify(e.data).length, 0);
      assert.ok(stored <= 8 * 1024 + 1100, `stored ${stored} bytes of user events`);
      assert.ok((events.find(isEvent("log.dropped"))?.data.lines ?? 0) > 2900);
    });

    it("reports a bounded list of skipped outputs with a count of the rest", async () => {
      const { run, events } = await runAgent(t, {
        name: uniqueName("symlinks"),
        command: ["sh", "-c", "i=0; while [ $i -lt 400 ]; do ln -s /etc/passwd /outputs/l$i; i=$((i+1)); done"],
      });
      assert.equal(run.status, "succeeded");
      const skipped = events.filter(isEvent("artifact.skipped"));
      assert.equal(skipped.length, 101);
      assert.deepEqual(skipped.at(-1)?.data, { more: 300 });
    });

    it("fails with command_not_found when the command cannot be started at run time", async () => {
      // The script passes the image check (an executable file) but names a missing interpreter, so
      // starting it fails (ENOENT) in the sandbox.
      const { run, events } = await runAgent(t, {
        name: uniqueName("gone"),
        command: ["/app/tool"],
        files: { tool: "#!/nonexistent/interpreter\n" },
      });
      assert.deepEqual([run.status, run.reason, run.exit_code], ["failed", "command_not_found", 127]);
      assert.equal(types(events).at(-1), "run.failed");
    });

    it("fails with the shell's exit code when a shell cannot find a program", async () => {
      const { run } = await runAgent(t, {
        name: uniqueName("sh-gone"),
        command: ["sh", "-c", "exec /nonexistent/tool"],
      });
      assert.deepEqual([run.status, run.reason, run.exit_code], ["failed", "exit_code", 127]);
    });
  }),
);
