/**
 * What an agent can see from inside its sandbox, through the full host path. Each check is an
 * attack that must fail: reading host processes, host files, host environment, or rewriting the
 * runner that every later run trusts.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isEvent } from "@paddock/protocol";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { SANDBOX_IF } from "./linux/network.ts";

const skip = e2eSkip(hostSkipReason());

const PROBE = `
import json, os
r = {}
r["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["cmdlines"] = []
for p in r["pids"]:
    try:
        r["cmdlines"].append(open(f"/proc/{p}/cmdline","rb").read().replace(b"\\0", b" ").decode())
    except Exception as e:
        pass
r["env"] = dict(os.environ)
r["uid"] = os.getuid()
r["secret_found"] = []
for root, dirs, files in os.walk("/", followlinks=False):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    if os.environ["PROBE_NAME"] in files:
        r["secret_found"].append(root)
def attempt(name, fn):
    try:
        fn(); r[name] = "allowed"
    except OSError as e:
        r[name] = e.strerror
attempt("runner_write", lambda: open("/opt/paddock/runner/runner.mjs", "a").write("x"))
attempt("runner_create", lambda: open("/opt/paddock/runner/new", "w").write("x"))
attempt("runner_unlink", lambda: os.unlink("/opt/paddock/runner/node"))
attempt("runner_rename", lambda: os.rename("/opt/paddock/runner/node", "/opt/paddock/runner/n2"))
attempt("runner_chmod", lambda: os.chmod("/opt/paddock/runner/node", 0o777))
attempt("image_write", lambda: open("/usr/bin/python3", "a").write("x"))
import fcntl, ctypes, struct
def clear_immutable():
    fd = os.open("/opt/paddock/runner/node", os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", 0))  # FS_IOC_SETFLAGS: no flags, so not immutable
    finally:
        os.close(fd)
attempt("runner_chattr", clear_immutable)
libc = ctypes.CDLL(None, use_errno=True)
def remount():
    # MS_REMOUNT | MS_BIND = 0x20 | 0x1000: make the runner mount writable again
    if libc.mount(b"none", b"/opt/paddock/runner", None, 0x1020, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
attempt("runner_remount", remount)
r["ifaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print("::paddock::" + json.dumps({"type": "probe", "data": r}), flush=True)
`;

describe("sandbox isolation through the host", { skip }, () => {
  let t: TestHost;
  let hostDir: string;
  before(async () => {
    t = await startTestHost();
    hostDir = await mkdtemp(join(tmpdir(), "paddock-secret-"));
    await writeFile(join(hostDir, "host-secret.txt"), "HOST-ONLY-SECRET");
  });
  after(async () => {
    await t?.close();
    await rm(hostDir, { recursive: true, force: true });
  });

  it("hides host processes, files and environment, and protects the runner layer", async () => {
    process.env.PADDOCK_PROBE_CANARY = "canary-value-that-must-not-leak";
    const { run, events } = await runAgent(t, {
      name: uniqueName("probe"),
      command: ["python3", "probe.py"],
      files: { "probe.py": PROBE },
      env: { PROBE_NAME: "host-secret.txt" },
    });
    delete process.env.PADDOCK_PROBE_CANARY;
    assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-5)));
    // biome-ignore lint/suspicious/noExplicitAny: the probe's own JSON.
    const probe = events.find(isEvent("user"))?.data.data as any;
    assert.ok(probe, "the probe reported");

    // Processes: only the sandbox's own (its init, runner, the probe); none of the host's.
    assert.ok(probe.pids.length <= 4, `pids visible: ${probe.pids}`);
    assert.ok(
      !probe.cmdlines.some((c: string) => c.includes("paddock-test") || c.includes("--test")),
      probe.cmdlines.join("|"),
    );
    assert.notEqual(probe.uid, 0);
    // Files: the host's temp folder is nowhere inside.
    assert.deepEqual(probe.secret_found, []);
    // Environment: exactly what the host chose; the bridge's address and where the run token is,
    // never a token or a secret itself.
    assert.equal(JSON.stringify(probe.env).includes("canary-value"), false);
    assert.deepEqual(Object.keys(probe.env).sort(), [
      "HOME",
      "LANG",
      "PADDOCK_ATTEMPT",
      "PADDOCK_BRIDGE_URL",
      "PADDOCK_INPUT",
      "PADDOCK_OUTPUTS",
      "PADDOCK_RUN_ID",
      "PADDOCK_SDK",
      "PADDOCK_TOKEN_FILE",
      "PATH",
      "PROBE_NAME",
      "TMPDIR",
    ]);
    assert.equal(probe.env.PADDOCK_TOKEN_FILE, "/run/paddock/token");
    assert.equal(probe.env.PADDOCK_BRIDGE_URL, t.host.bridgeUrl);
    // The runner layer and the image are read-only to the agent.
    const refusals = ["Read-only file system", "Permission denied", "Operation not permitted"];
    for (const k of [
      "runner_write",
      "runner_create",
      "runner_unlink",
      "runner_rename",
      "runner_chmod",
      "runner_chattr",
    ]) {
      assert.ok(refusals.includes(probe[k]), `${k}: ${probe[k]}`);
    }
    assert.equal(probe.runner_remount, "Operation not permitted", "seccomp refuses mount(2)");
    const runners = join(t.dataDir, "runners");
    for (const layer of readdirSync(runners).filter((n) => n.startsWith("sha256-"))) {
      assert.deepEqual(readdirSync(join(runners, layer)).sort(), [
        "compile-cache",
        "node",
        "runner.mjs",
        "version.json",
      ]);
      const bundle = readFileSync(join(runners, layer, "runner.mjs"));
      assert.deepEqual(bundle, readFileSync(new URL("../../../runner/dist/runner.mjs", import.meta.url)));
    }
    assert.notEqual(probe.image_write, "allowed");
    // Network: loopback and the one link to the host (what it reaches: bridge.security tests).
    assert.deepEqual(probe.ifaces, [SANDBOX_IF, "lo"].sort());
  });
});
