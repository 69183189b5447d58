/**
 * Environment edit sessions end to end: a real host, real sandboxes, the real egress proxy and
 * Debian's real package archive. A session installs a package with apt through the proxy and
 * creates a service user, the freeze becomes a version, and ten runs of it see the same bytes.
 */
import assert from "node:assert/strict";
import { lookup } from "node:dns/promises";
import { lstat } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import WebSocket from "ws";
import { classifyAddress } from "../egress/address-policy.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { waitFor } from "../testing/wait.ts";

const skip = e2eSkip(hostSkipReason());

// biome-ignore lint/suspicious/noExplicitAny: JSON.
type Json = any;

describe("environment edit sessions", { skip }, () => {
  let t: TestHost;
  const agents: Record<string, Json> = {};

  before(async () => {
    t = await startTestHost({ egressTrustedAddresses: await mirrorAddresses() });
  });
  after(async () => {
    await t?.close();
  });

  const makeAgent = async (command: string[]) => {
    const res = await t.api("POST", "/v1/agents", { name: uniqueName("env"), command });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body;
  };
  const exec = async (agentId: string, argv: string[], timeout_s = 120) => {
    const res = await t.api("POST", `/v1/agents/${agentId}/env/session/exec`, { argv, timeout_s });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body;
  };
  const sh = (agentId: string, script: string, timeout_s?: number) => exec(agentId, ["sh", "-c", script], timeout_s);

  it("installs a Debian package through the proxy, freezes it, and ten runs see identical bytes", async () => {
    const probe = [
      "jq --version",
      "sha256sum /usr/bin/jq",
      "stat -c '%n %u:%g %a' /srv/svc /srv/svc/data.txt /usr/bin/jq",
      "cat /srv/svc/data.txt",
      "echo run-scratch > /tmp/scratch && echo $(id -u)",
    ].join(" && ");
    const agent = await makeAgent(["sh", "-c", probe]);
    agents.jq = agent;
    const opened = await t.api("POST", `/v1/agents/${agent.id}/env/session`, {});
    assert.equal(opened.status, 201, JSON.stringify(opened.body));
    assert.equal(opened.body.status, "active");
    assert.deepEqual(opened.body.allow, ["deb.debian.org", "security.debian.org", "registry.npmjs.org"]);

    // apt downloads as _apt (uid 42) and dpkg runs maintainer scripts as root: several uids.
    const install = await sh(
      agent.id,
      "apt-get -o Acquire::Retries=3 update && apt-get install -y --no-install-recommends jq",
      900,
    );
    assert.equal(install.exit_code, 0, `${install.stdout}\n${install.stderr}`);
    const users = await sh(
      agent.id,
      [
        "groupadd -g 4321 svc",
        "useradd -u 4321 -g 4321 -M -d /srv/svc -s /usr/sbin/nologin svc",
        "mkdir -p /srv/svc",
        "echo service-data > /srv/svc/data.txt",
        "chown -R svc:svc /srv/svc",
        "chmod 755 /srv/svc && chmod 644 /srv/svc/data.txt",
        "su -s /bin/sh -c 'id -un' svc",
      ].join(" && "),
    );
    assert.equal(users.exit_code, 0, users.stderr);
    assert.equal(users.stdout.trim(), "svc");

    const egress = await t.api("GET", `/v1/agents/${agent.id}/env/session/egress`);
    assert.equal(egress.status, 200);
    const allowed = egress.body.data.filter((e: Json) => e.decision === "allowed");
    assert.ok(allowed.length > 0, "apt's requests went through the proxy");
    assert.ok(
      allowed.every((e: Json) => e.host === "deb.debian.org"),
      JSON.stringify(allowed),
    );

    const frozen = await t.api("POST", `/v1/agents/${agent.id}/env/freeze`, {});
    assert.equal(frozen.status, 201, JSON.stringify(frozen.body));
    assert.equal(frozen.body.snapshot.reason, "freeze");
    assert.equal(frozen.body.snapshot.version, 2);
    assert.equal(frozen.body.session.status, "frozen");
    assert.ok(frozen.body.snapshot.changes.added > 0);
    assert.ok(frozen.body.snapshot.changes.sample.added.includes("/usr/bin/jq"));

    const outputs: string[] = [];
    for (let i = 0; i < 10; i++) {
      const started = await t.api("POST", `/v1/agents/${agent.id}/runs`, {});
      assert.equal(started.status, 201);
      const run = await waitForRun(t, started.body.id);
      assert.equal(run.status, "succeeded", JSON.stringify(run));
      const events = (await t.api("GET", `/v1/runs/${run.id}/events?limit=1000`)).body.data;
      outputs.push(
        events
          .filter((e: Json) => e.type === "log")
          .map((e: Json) => e.data.line)
          .join("\n"),
      );
    }
    assert.equal(new Set(outputs).size, 1, outputs.join("\n---\n"));
    const out = outputs[0] ?? "";
    assert.match(out, /^jq-1\.6/);
    assert.match(out, /\/srv\/svc \d+:\d+ 755/);
    assert.match(out, /service-data/);
    // The layer keeps the owners the session saw (the service user's ids, root's for the
    // package's files), not the session's host range; a run maps only its own uid and shows the
    // others as nobody.
    const layer = join(t.dataDir, "layers", frozen.body.layer);
    const owner = async (p: string) => {
      const st = await lstat(join(layer, p));
      return `${st.uid}:${st.gid}`;
    };
    assert.equal(await owner("srv/svc"), "4321:4321");
    assert.equal(await owner("srv/svc/data.txt"), "4321:4321");
    assert.equal(await owner("usr/bin/jq"), "0:0");
    assert.equal(await owner(""), "0:0");
    assert.match(out, /\n61000$/);

    const history = await t.api("GET", `/v1/agents/${agent.id}/snapshots`);
    assert.equal(history.body.data[0].reason, "freeze");
    assert.equal(history.body.data[0].current, true);
  });

  it("refuses hosts outside the allowlist and records them; nothing else leaves the sandbox", async () => {
    const agent = await makeAgent(["true"]);
    const opened = await t.api("POST", `/v1/agents/${agent.id}/env/session`, { allow: ["deb.debian.org"] });
    assert.equal(opened.status, 201);
    // A decoy on every host address: the sandbox must reach none of them.
    const decoy: Server = createServer((s) => s.end("DECOY\n"));
    await new Promise<void>((r) => decoy.listen(0, "0.0.0.0", r));
    const port = (decoy.address() as { port: number }).port;
    const hostAddrs = Object.values(networkInterfaces())
      .flat()
      .filter((a) => a && a.family === "IPv4")
      .map((a) => a?.address as string);
    try {
      const script = `
import socket, urllib.request, urllib.error, sys
def fetch(url):
    try:
        return str(urllib.request.urlopen(url, timeout=20).status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except urllib.error.URLError as e:
        return str(e.reason)
    except Exception as e:
        return type(e).__name__
print("registry.npmjs.org", fetch("https://registry.npmjs.org/jq"))
print("example.com", fetch("http://example.com/"))
print("literal", fetch("http://1.1.1.1/"))
for addr in sys.argv[1:]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((addr, ${port}))
        print("reached", addr, s.recv(10))
    except OSError as e:
        print("unreachable", addr)
`;
      const res = await exec(agent.id, ["python3", "-c", script, ...hostAddrs]);
      assert.equal(res.exit_code, 0, res.stderr);
      // HTTPS goes through CONNECT, which the proxy answers with 403 before any tunnel exists.
      assert.match(res.stdout, /registry\.npmjs\.org Tunnel connection failed: 403/);
      assert.match(res.stdout, /example\.com 403/);
      assert.match(res.stdout, /literal 403/);
      assert.doesNotMatch(res.stdout, /reached/);
      for (const addr of hostAddrs) assert.match(res.stdout, new RegExp(`unreachable ${addr.replaceAll(".", "\\.")}`));
      const egress = (await t.api("GET", `/v1/agents/${agent.id}/env/session/egress`)).body.data;
      const refused = egress.filter((e: Json) => e.decision === "refused").map((e: Json) => e.host);
      assert.ok(refused.includes("registry.npmjs.org"), JSON.stringify(egress));
      assert.ok(refused.includes("example.com"), JSON.stringify(egress));
      const session = (await t.api("GET", `/v1/agents/${agent.id}/env/session`)).body;
      assert.ok(session.egress.refused >= 3);
    } finally {
      decoy.close();
      await t.api("DELETE", `/v1/agents/${agent.id}/env/session`);
    }
  });

  it("gives a real terminal over a WebSocket, with resizes", async () => {
    const agent = await makeAgent(["true"]);
    assert.equal((await t.api("POST", `/v1/agents/${agent.id}/env/session`, {})).status, 201);
    const url = `${t.host.url.replace(/^http/, "ws")}/v1/agents/${agent.id}/env/session/shell?rows=33&cols=101`;
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${t.adminKey}` } });
    let output = "";
    let exit: Json = null;
    const closed = new Promise<void>((resolve, reject) => {
      ws.on("message", (data, binary) => {
        if (binary) output += data.toString();
        else exit = JSON.parse(data.toString());
      });
      ws.on("close", () => resolve());
      ws.on("error", reject);
    });
    await new Promise((r) => ws.once("open", r));
    const type = (text: string) => ws.send(Buffer.from(text), { binary: true });
    type("stty size; tty\n");
    await waitFor(() => /33 101/.test(output), { what: "the terminal's first size" });
    ws.send(JSON.stringify({ type: "resize", rows: 50, cols: 132 }));
    type("stty size; exit 5\n");
    await closed;
    assert.match(output, /33 101/);
    assert.match(output, /50 132/);
    assert.match(output, /\/dev\/(pts\/\d+|console)/);
    assert.deepEqual(exit, { type: "exit", code: 5, signal: null });
    // The session is free again: a command can run.
    assert.equal((await exec(agent.id, ["true"])).exit_code, 0);
    await t.api("DELETE", `/v1/agents/${agent.id}/env/session`);
  });

  it("answers bad input with clear errors and loses nothing", async () => {
    const agent = await makeAgent(["true"]);
    const base = `/v1/agents/${agent.id}`;
    const code = async (method: string, path: string, body?: unknown) => {
      const res = await t.api(method, path, body);
      return `${res.status} ${res.body?.error?.code ?? ""}`.trim();
    };
    assert.equal(await code("POST", `${base}/env/freeze`, {}), "409 no_session");
    assert.equal(await code("POST", `${base}/env/session/exec`, { argv: ["true"] }), "409 no_session");
    assert.equal(await code("GET", `${base}/env/session`), "409 no_session");
    assert.equal(await code("POST", `${base}/env/session`, { allow: ["http://evil"] }), "400 validation_failed");
    assert.equal(await code("POST", `${base}/env/session`, { disk_mb: 10 ** 9 }), "400 validation_failed");
    assert.equal(await code("POST", `/v1/agents/agt_doesnotexist/env/session`, {}), "404 not_found");
    assert.equal(await code("POST", `${base}/env/session`, { disk_mb: 16 }), "201");
    assert.equal(await code("POST", `${base}/env/session`, {}), "409 session_exists");
    assert.equal(await code("POST", `${base}/env/session/exec`, { argv: [] }), "400 validation_failed");
    assert.equal(await code("POST", `${base}/env/freeze`, {}), "409 nothing_to_freeze");
    // An excluded path the freeze could not use is refused before the session is touched.
    for (const bad of ["/tmp/", "/a/../b", "/"]) {
      const res = await t.api("POST", `${base}/env/freeze`, { exclude: ["/tmp", bad] });
      assert.equal(`${res.status} ${res.body.error.code}`, "400 validation_failed", bad);
      assert.ok(res.body.error.message.includes(JSON.stringify(bad)), res.body.error.message);
    }
    assert.equal((await t.api("GET", `${base}/env/session`)).body.status, "active");

    // One command at a time: a second one while the first runs is refused, not queued.
    const slow = t.api("POST", `${base}/env/session/exec`, { argv: ["sleep", "5"] });
    await waitFor(async () => (await t.api("GET", `${base}/env/session`)).body.busy === true, {
      what: "the session to run the first command",
    });
    assert.equal(await code("POST", `${base}/env/session/exec`, { argv: ["true"] }), "409 session_busy");
    assert.equal(await code("POST", `${base}/env/freeze`, {}), "409 session_busy");
    assert.equal((await slow).body.exit_code, 0);

    // The disk quota: a clear flag, and the session stays usable.
    const full = await exec(agent.id, ["sh", "-c", "dd if=/dev/zero of=/root/big bs=1M count=64"]);
    assert.notEqual(full.exit_code, 0);
    assert.match(full.stderr, /No space left on device/);
    assert.equal(full.disk_full, true);
    const freed = await exec(agent.id, ["sh", "-c", "rm /root/big && echo ok > /root/small && cat /root/small"]);
    assert.equal(freed.stdout, "ok\n");
    assert.equal(freed.disk_full, false);

    // A shell that cannot start answers with the API's error before any upgrade.
    const refused = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${t.host.url.replace(/^http/, "ws")}${base}/env/session/shell?rows=0`, {
        headers: { authorization: `Bearer ${t.adminKey}` },
      });
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => reject(new Error("the shell opened")));
      ws.on("error", () => {});
    });
    assert.equal(refused, 400);

    // The environment moved on after the session opened: freezing it would lose that change.
    assert.equal(await code("POST", `${base}/rollback`, { version: 1 }), "201");
    assert.equal(await code("POST", `${base}/env/freeze`, {}), "409 environment_changed");
    const history = (await t.api("GET", `${base}/snapshots`)).body.data;
    assert.deepEqual(
      history.map((s: Json) => s.reason),
      ["rollback", "create"],
    );
    assert.equal((await t.api("DELETE", `${base}/env/session`)).body.status, "discarded");
    assert.equal(await code("DELETE", `${base}/env/session`), "409 no_session");
  });

  it("ends open sessions when the host restarts", async () => {
    const agent = await makeAgent(["true"]);
    assert.equal((await t.api("POST", `/v1/agents/${agent.id}/env/session`, {})).status, 201);
    await exec(agent.id, ["sh", "-c", "echo kept > /root/f"]);
    await t.restart();
    const res = await t.api("GET", `/v1/agents/${agent.id}/env/session`);
    assert.equal(res.body.error.code, "no_session");
    // A new session starts clean from the agent's environment.
    assert.equal((await t.api("POST", `/v1/agents/${agent.id}/env/session`, {})).status, 201);
    const ls = await exec(agent.id, ["sh", "-c", "test -e /root/f && echo present || echo absent"]);
    assert.equal(ls.stdout, "absent\n");
    await t.api("DELETE", `/v1/agents/${agent.id}/env/session`);
  });
});

/**
 * Where this machine's network sends the package registries, when that is not a public address
 * (some networks serve them from a mirror on a reserved range): the host's operator setting for
 * that case, as a deployment behind such a mirror would set it. Empty where they are public.
 */
async function mirrorAddresses(): Promise<string[]> {
  const found: string[] = [];
  for (const host of ["deb.debian.org"]) {
    const addresses = await lookup(`${host}.`, { all: true }).catch(() => []);
    for (const { address } of addresses) if (classifyAddress(address) !== null) found.push(address);
  }
  return found;
}
