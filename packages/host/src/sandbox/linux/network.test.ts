/**
 * Sandbox networks against the real kernel: a sandbox reaches the host's bridge port and nothing
 * else. Every target is a listener this test starts itself (decoys on all of the host's addresses,
 * another sandbox's listener); the attacks run from inside a real sandbox with Python.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { SandboxNetwork } from "./network.ts";
import { collect, makeRunnerDir, makeTestDriver, skipReason, type TestDriver, testSpec } from "./test-support.ts";

const skip = e2eSkip(skipReason() ?? (process.platform === "linux" ? undefined : "sandbox networks need Linux"));

/** Tries each target from inside the sandbox; prints one JSON object: target -> "open" or the error. */
const PROBE = `
import json, socket, sys, threading
out = {}
def probe(t):
    host, port = t.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.5)
    try:
        s.connect((host.strip("[]"), int(port)))
        out[t] = "open"
    except Exception as e:
        out[t] = type(e).__name__
    finally:
        s.close()
threads = [threading.Thread(target=probe, args=(t,)) for t in json.loads(sys.argv[1])]
for t in threads: t.start()
for t in threads: t.join()
try:
    socket.getaddrinfo("deb.debian.org", 80)
    out["dns"] = "resolved"
except Exception as e:
    out["dns"] = type(e).__name__
print(json.dumps(out))
`;

const run = promisify(execFile);
const ip = (args: string) => run("ip", args.split(" "), { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });

function listen(server: net.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

describe("sandbox network", { skip }, () => {
  let td: TestDriver;
  let network: SandboxNetwork;
  let runnerDir: string;
  const servers: net.Server[] = [];
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    network = new SandboxNetwork({ instance: randomBytes(5).toString("hex"), spare: 1 });
    await network.start();
    td = await makeTestDriver("net", { network });
    runnerDir = await makeRunnerDir();
  });

  after(async () => {
    for (const s of servers) s.close();
    for (const undo of cleanups.reverse()) await undo().catch(() => {});
    await td?.cleanup();
    await network?.close();
    assert.deepEqual(await network.leftovers(), []);
  });

  test("only the allowed port of the host address is reachable", async () => {
    const bridge = http.createServer((req, res) => res.end(req.socket.remoteAddress));
    servers.push(bridge);
    const bridgePort = await listen(bridge, network.hostAddress);
    await network.allowPort(bridgePort);
    // Decoys: one on every address of the host (0.0.0.0 and ::), one on the host's loopback.
    const decoy = net.createServer((s) => s.end("decoy"));
    const decoy6 = net.createServer((s) => s.end("decoy"));
    const loopDecoy = net.createServer((s) => s.end("decoy"));
    servers.push(decoy, decoy6, loopDecoy);
    const decoyPort = await listen(decoy, "0.0.0.0");
    const decoy6Port = await listen(decoy6, "::");
    const loopPort = await listen(loopDecoy, "127.0.0.1");
    // A decoy on a link-local address (where cloud metadata services live), on a veth link of
    // this test's own; the host reaches it, so only the filter can keep a sandbox from it.
    const link = `pdll${randomBytes(3).toString("hex")}`;
    const linkLocal = `169.254.77.${2 + ((randomBytes(1)[0] ?? 0) % 250)}`;
    await ip(`link add ${link} type veth peer name ${link}p`);
    cleanups.push(() => ip(`link del ${link}`));
    await ip(`addr add ${linkLocal}/32 dev ${link}`);
    await ip(`link set ${link}p up`);
    await ip(`link set ${link} up`);
    const metaDecoy = net.createServer((s) => {
      s.on("error", () => {});
      s.end("decoy");
    });
    servers.push(metaDecoy);
    const metaPort = await listen(metaDecoy, linkLocal);
    await new Promise<void>((resolve, reject) => {
      const probe = net.connect(metaPort, linkLocal);
      probe.once("data", () => {
        probe.end();
        resolve();
      });
      probe.once("error", reject);
    });

    // Another sandbox listening on its own address.
    const other = await td.driver.boot(
      testSpec(
        "net-other",
        runnerDir,
        [
          "python3",
          "-c",
          "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',9000))\ns.listen()\nprint('up',flush=True)\ntime.sleep(60)",
        ],
        { network: true },
      ),
    );
    try {
      other.stdin.end();
      await new Promise<void>((resolve) => other.stdout.once("data", () => resolve()));
      assert.ok(other.address, "the other sandbox has an address");

      const hostAddresses = Object.values(os.networkInterfaces())
        .flat()
        .filter((a): a is os.NetworkInterfaceInfo => !!a && !a.internal && a.family === "IPv4")
        .map((a) => a.address)
        .filter((a) => a !== network.hostAddress);
      const blocked = [
        `${network.hostAddress}:${decoyPort}`,
        `${network.hostAddress}:${loopPort}`,
        ...hostAddresses.map((a) => `${a}:${decoyPort}`),
        `127.0.0.1:${loopPort}`,
        `[::1]:${decoy6Port}`,
        `${other.address}:9000`,
        `${linkLocal}:${metaPort}`,
        "169.254.169.254:80",
      ];
      const targets = [`${network.hostAddress}:${bridgePort}`, ...blocked];
      const handle = await td.driver.boot(
        testSpec("net-probe", runnerDir, ["python3", "-c", PROBE, JSON.stringify(targets)], { network: true }),
      );
      handle.stdin.end();
      const [stdout, stderr, exit] = await Promise.all([collect(handle.stdout), collect(handle.stderr), handle.exited]);
      await handle.destroy();
      assert.equal(exit.code, 0, stderr);
      const result = JSON.parse(stdout) as Record<string, string>;
      assert.equal(result[`${network.hostAddress}:${bridgePort}`], "open", stdout);
      for (const target of blocked) assert.notEqual(result[target], "open", `${target} must be unreachable: ${stdout}`);
      assert.notEqual(result.dns, "resolved", "no name resolves from a sandbox");
      // The bridge saw the probe's own address.
      assert.notEqual(handle.address, other.address);
    } finally {
      await other.destroy();
    }
  });

  test("a sandbox cannot change its network (no capability over the namespace)", async () => {
    const script = [
      "ip addr add 10.0.0.9/32 dev eth0 2>&1 || echo denied-addr",
      "ip route add 1.2.3.4 dev eth0 2>&1 || echo denied-route",
      'python3 -c "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)" 2>/dev/null || echo denied-raw',
    ].join("; ");
    const handle = await td.driver.boot(testSpec("net-cap", runnerDir, ["sh", "-c", script], { network: true }));
    handle.stdin.end();
    const [stdout] = await Promise.all([collect(handle.stdout), handle.exited]);
    await handle.destroy();
    assert.match(stdout, /denied-raw/);
    // The base image may not ship iproute2; when it does, both changes are refused.
    if (!/not found/.test(stdout)) {
      assert.match(stdout, /denied-addr/);
      assert.match(stdout, /denied-route/);
    }
  });

  test("without a network a sandbox has loopback only", async () => {
    const handle = await td.driver.boot(
      testSpec("net-none", runnerDir, ["python3", "-c", PROBE, JSON.stringify([`${network.hostAddress}:80`])]),
    );
    handle.stdin.end();
    const [stdout, exit] = await Promise.all([collect(handle.stdout), handle.exited]);
    await handle.destroy();
    assert.equal(exit.code, 0);
    assert.equal(handle.address, null);
    assert.equal(JSON.parse(stdout)[`${network.hostAddress}:80`], "OSError");
  });
});
