/**
 * Attacks on the no-secret-in-the-sandbox promise, each run for real: a sandbox dumps everything
 * it can read looking for the credential; stolen and forged run tokens are replayed from other
 * sandboxes, from the host, after expiry and after the run ended; and the sandbox tries to reach
 * anything but the bridge port. Every target is something this test started itself.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { isEvent } from "@paddock/protocol";
import { artifactJson, PROBE_AGENT, type ProbeResult, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";

const SECRET = `xoxb-${randomBytes(20).toString("hex")}`;
const PROVIDER_KEY = `sk-proj-${randomBytes(20).toString("hex")}`;
const NODE = "/opt/paddock/runner/node";

/** Reads everything it may: environment, every process's environ and cmdline, every file. */
const DUMP_AGENT = String.raw`
import os, sys, json
# The needles arrive XORed with 0x5a, so the input file itself holds none of them.
needles = [bytes(b ^ 0x5A for b in bytes.fromhex(n)) for n in json.load(open(os.environ["PADDOCK_INPUT"]))["needles"]]
found, files, denied = [], 0, 0
def check(where, data):
    for n in needles:
        if n in data:
            found.append(where)
check("environ", "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode())
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for part in ("environ", "cmdline"):
            try:
                check(f"/proc/{pid}/{part}", open(f"/proc/{pid}/{part}", "rb").read())
            except OSError:
                denied += 1
for root, dirs, names in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in names:
        path = os.path.join(root, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    check(path, f.read(8 << 20))
                files += 1
        except OSError:
            denied += 1
json.dump({"found": found, "files": files, "denied": denied}, open("/outputs/dump.json", "w"))
`;

/** Forges tokens from its own: alg none, HS256 keyed with the bridge's public key, an unknown kid, a changed claim. */
const FORGE_AGENT = `
import { createHmac, createPublicKey } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
const own = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const base = process.env.PADDOCK_BRIDGE_URL;
const [h, p, sig] = own.split(".");
const header = JSON.parse(Buffer.from(h, "base64url"));
const payload = JSON.parse(Buffer.from(p, "base64url"));
const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwks = await (await fetch(base + "/.well-known/jwks.json")).json();
const jwk = jwks.keys.find((k) => k.kid === header.kid);
const pem = createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "pem" });
const hs = (key) => {
  const head = enc({ ...header, alg: "HS256" });
  return head + "." + p + "." + createHmac("sha256", key).update(head + "." + p).digest("base64url");
};
const forged = {
  none: enc({ ...header, alg: "none" }) + "." + p + ".",
  none_nosig: enc({ ...header, alg: "none" }) + "." + p,
  hs256_pem: hs(pem),
  hs256_jwk: hs(JSON.stringify(jwk)),
  hs256_raw: hs(Buffer.from(jwk.x, "base64url")),
  unknown_kid: enc({ ...header, kid: "not-a-key" }) + "." + p + "." + sig,
  no_kid: enc({ alg: header.alg, typ: header.typ }) + "." + p + "." + sig,
  wrong_aud: h + "." + enc({ ...payload, aud: "someone-else" }) + "." + sig,
  other_run: h + "." + enc({ ...payload, run: "run_other" }) + "." + sig,
  later_exp: h + "." + enc({ ...payload, exp: payload.exp + 86400 }) + "." + sig,
  wrong_typ: enc({ ...header, typ: "JWT" }) + "." + p + "." + sig,
};
const results = {};
for (const [name, token] of Object.entries(forged)) {
  const res = await fetch(base + "/bridge/echo/echo/x", { headers: { authorization: "Bearer " + token } });
  results[name] = { status: res.status, code: (await res.json()).error?.code };
}
const ok = await fetch(base + "/bridge/echo/echo/x", { headers: { authorization: "Bearer " + own } });
results.own = { status: ok.status };
writeFileSync("/outputs/result.json", JSON.stringify(results));
`;

describe("bridge security", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let upstream: StandIn;

  before(async () => {
    upstream = await startStandIn();
    t = await startTestHost({ runTokens: { ttlMs: 5000, clockToleranceS: 0 } });
    assert.equal((await t.api("PUT", "/v1/secrets/slack", { value: SECRET })).status, 201);
    const res = await t.api("PUT", "/v1/connections/echo", {
      base_url: upstream.url,
      secret: "slack",
      auth: { type: "bearer" },
      internal: true,
      policy: { allow: [{ methods: ["GET", "POST"], path: "/**" }] },
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    // A model provider's key is held the same way: it must not be found either.
    assert.equal((await t.api("PUT", "/v1/secrets/provider-key", { value: PROVIDER_KEY })).status, 201);
    const provider = await t.api("PUT", "/v1/providers/openai", {
      kind: "openai",
      secret: "provider-key",
      models: { "gpt-x": { input: 1, output: 1 } },
    });
    assert.equal(provider.status, 201, JSON.stringify(provider.body));
  });

  after(async () => {
    await t?.close();
    await upstream?.close();
  });

  const agent = (name: string, files: Record<string, string>, command: string[]) => ({
    name: uniqueName(name),
    command,
    files,
    policy: { connections: ["echo"] },
  });

  test("dumping the environment, /proc and every readable file finds no secret or provider key", async () => {
    const masterKey = (await readFile(join(t.dataDir, "master.key"), "utf8")).trim();
    const needles = [SECRET, PROVIDER_KEY, t.adminKey, masterKey, Buffer.from(masterKey, "base64").toString("hex")];
    const hidden = needles.map((n) => Buffer.from([...Buffer.from(n)].map((b) => b ^ 0x5a)).toString("hex"));
    const { run, events } = await runAgent(t, agent("dump", { "dump.py": DUMP_AGENT }, ["python3", "/app/dump.py"]), {
      needles: hidden,
    });
    assert.equal(run.status, "succeeded", JSON.stringify(events.slice(-5)));
    const dump = await artifactJson(t, run.id, "dump.json");
    assert.deepEqual(dump.found, [], `secrets found in: ${dump.found}`);
    assert.ok(dump.files > 1000, `the dump read the whole filesystem (${dump.files} files)`);
  });

  test("forged tokens are refused: alg none, HS256 with the public key, unknown kid, changed claims", async () => {
    const { run } = await runAgent(t, agent("forge", { "forge.mjs": FORGE_AGENT }, [NODE, "/app/forge.mjs"]));
    assert.equal(run.status, "succeeded");
    const results = await artifactJson(t, run.id, "result.json");
    assert.equal(results.own.status, 200, "the genuine token works");
    for (const [name, r] of Object.entries(results as Record<string, { status: number; code?: string }>)) {
      if (name === "own") continue;
      assert.equal(r.status, 401, `${name}: ${JSON.stringify(r)}`);
      assert.equal(r.code, "token_invalid", name);
    }
  });

  /** Starts an agent's run; resolves with its id. */
  const start = async (body: Record<string, unknown>, input: unknown) => {
    const created = await t.api("POST", "/v1/agents", body);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const run = await t.api("POST", `/v1/agents/${created.body.id}/runs`, { input });
    assert.equal(run.status, 201);
    return run.body.id as string;
  };
  /** Waits for the `token` event a probe emits: the token as an attacker who saw the sandbox's output has it. */
  const stolenToken = async (runId: string): Promise<string> => {
    for (let i = 0; i < 400; i++) {
      const events = (await t.api("GET", `/v1/runs/${runId}/events?limit=1000`)).body.data as {
        type: string;
        data: { type?: string; data?: string };
      }[];
      const found = events.find((e) => e.type === "user" && e.data.type === "token");
      if (found?.data.data) return found.data.data;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`run ${runId} never showed its token`);
  };
  const probeAgent = (name: string) => agent(name, { "probe.mjs": PROBE_AGENT }, [NODE, "/app/probe.mjs"]);

  test("a stolen token is refused from another sandbox and from the host while its run lives", async () => {
    // The victim calls once, waits past its first token's lifetime, then replays that token.
    const victim = await start(probeAgent("victim"), {
      emit_token: true,
      calls: [{ path: "/bridge/echo/echo/1" }, { path: "/bridge/echo/echo/2", wait_ms: 5500 }],
    });
    const stolen = await stolenToken(victim);
    // The thief replays it from its own sandbox (another network namespace, another address).
    const thief = await runAgent(t, probeAgent("thief"), {
      calls: [
        { path: "/bridge/echo/echo/3", token: stolen },
        { path: "/bridge/echo/echo/4", token: "" },
      ],
    });
    const outB = (await artifactJson(t, thief.run.id, "result.json")) as { results: ProbeResult[] };
    assert.equal(JSON.parse(outB.results[0]?.body ?? "{}").error.code, "token_mismatch");
    assert.equal(JSON.parse(outB.results[1]?.body ?? "{}").error.code, "token_missing");
    const denials = thief.events.filter(isEvent("bridge.call")).map((e) => e.data.code);
    assert.deepEqual(denials, ["token_mismatch", "token_missing"], "the denials are on the thief's record");

    // The host's own address is not a sandbox's: refused before the token is even looked at.
    const fromHost = await fetch(`${t.host.bridgeUrl}/bridge/echo/echo/5`, {
      headers: { authorization: `Bearer ${stolen}` },
    });
    assert.equal(fromHost.status, 403);
    assert.equal(((await fromHost.json()) as { error: { code: string } }).error.code, "bridge_unknown_source");

    // The victim's own replay of its first token, after that token expired.
    const done = await waitForRun(t, victim);
    assert.equal(done.status, "succeeded");
    const outA = (await artifactJson(t, victim, "result.json")) as { results: ProbeResult[] };
    assert.equal(outA.results[0]?.status, 200);
    assert.equal(outA.results[1]?.status, 401, JSON.stringify(outA.results[1]));
    assert.equal(JSON.parse(outA.results[1]?.body ?? "{}").error.code, "token_expired");
  });

  test("a token is dead once its run has ended, though not yet expired", async () => {
    const victim = await start(probeAgent("short"), { emit_token: true, calls: [] });
    const stolen = await stolenToken(victim);
    assert.equal((await waitForRun(t, victim)).status, "succeeded");
    const replay = await runAgent(t, probeAgent("replay"), { calls: [{ path: "/bridge/echo/echo/6", token: stolen }] });
    const out = (await artifactJson(t, replay.run.id, "result.json")) as { results: ProbeResult[] };
    const code = JSON.parse(out.results[0]?.body ?? "{}").error.code;
    // Within its lifetime the token still verifies, but names a sandbox and run that are gone.
    assert.ok(code === "token_mismatch" || code === "token_expired", code);
    const fromHost = await fetch(`${t.host.bridgeUrl}/bridge/echo/echo/7`, {
      headers: { authorization: `Bearer ${stolen}` },
    });
    assert.equal(((await fromHost.json()) as { error: { code: string } }).error.code, "bridge_unknown_source");
  });

  test("direct egress reaches nothing but the bridge port", async () => {
    const decoy = net.createServer((s) => s.end("decoy"));
    await new Promise<void>((resolve) => decoy.listen(0, "0.0.0.0", resolve));
    const port = (decoy.address() as net.AddressInfo).port;
    let hits = 0;
    decoy.on("connection", () => hits++);
    try {
      const bridge = new URL(t.host.bridgeUrl ?? "");
      const others = Object.values(os.networkInterfaces())
        .flat()
        .filter((i): i is os.NetworkInterfaceInfo => !!i && i.family === "IPv4" && !i.internal)
        .map((i) => i.address);
      const targets = [bridge.hostname, ...others, "127.0.0.1", "169.254.169.254"].map((h) => `${h}:${port}`);
      const script = `
import json, socket, sys
out = {}
for t in json.load(open("/inputs/input.json"))["targets"]:
    h, p = t.rsplit(":", 1)
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((h, int(p))); out[t] = "open"
    except Exception as e:
        out[t] = type(e).__name__
    s.close()
json.dump(out, open("/outputs/egress.json", "w"))
`;
      const { run } = await runAgent(t, agent("egress", { "egress.py": script }, ["python3", "/app/egress.py"]), {
        targets,
      });
      assert.equal(run.status, "succeeded");
      const out = await artifactJson(t, run.id, "egress.json");
      for (const target of targets) assert.notEqual(out[target], "open", `${target} reachable: ${JSON.stringify(out)}`);
      assert.equal(hits, 0, "the decoy saw no connection");
    } finally {
      decoy.close();
    }
  });
});
