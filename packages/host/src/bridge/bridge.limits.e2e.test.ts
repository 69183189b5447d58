/**
 * One sandbox flooding the bridge, for real: it opens far more requests than its cap to an
 * upstream that holds them, with and without a token, and far more connections than its cap;
 * the excess is refused while another sandbox's run goes through, and once the held calls finish
 * the flooding sandbox may call again. Every target is something this test started itself.
 */
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { artifactJson, PROBE_AGENT, type ProbeResult } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";

const NODE = "/opt/paddock/runner/node";
const REQUESTS = 8;
const CONNECTIONS = 24;

/**
 * Sends `n` calls at once to the held route; once all but `cap` are answered, sends `bare` calls
 * without a token and says so (a `flooded` event); then waits for the held ones and calls again.
 */
const FLOOD_AGENT = `
import { readFileSync, writeFileSync } from "node:fs";
const input = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const base = process.env.PADDOCK_BRIDGE_URL;
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const call = async (path, auth = true) => {
  try {
    const res = await fetch(base + path, { headers: auth ? { authorization: "Bearer " + token } : {} });
    return { status: res.status, retry: res.headers.get("retry-after"), body: await res.text() };
  } catch (err) {
    return { status: 0, error: String(err) };
  }
};
let answered = 0;
let early;
const enough = new Promise((resolve) => { early = resolve; });
const flood = [];
for (let i = 0; i < input.n; i++) {
  flood.push(call("/bridge/gated/hold/" + i).then((r) => { if (++answered === input.n - input.cap) early(); return r; }));
}
await enough;
const bare = [];
for (let i = 0; i < input.bare; i++) bare.push(await call("/bridge/gated/echo/bare", false));
console.log("::paddock::" + JSON.stringify({ type: "flooded" }));
const held = await Promise.all(flood);
const again = await call("/bridge/gated/echo/again");
writeFileSync("/outputs/result.json", JSON.stringify({ held, bare, again }));
`;

/**
 * Opens n TCP connections at once, each sending one request and keeping the connection; counts
 * those answered and those closed unanswered, closes them all, then opens one more (again until
 * the host has seen the others close).
 */
const CONNECT_AGENT = `
import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
const input = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const { hostname, port } = new URL(process.env.PADDOCK_BRIDGE_URL);
const open = () => new Promise((resolve) => {
  const socket = net.connect(Number(port), hostname, () => {
    socket.write("GET /.well-known/jwks.json HTTP/1.1\\r\\nHost: bridge\\r\\n\\r\\n");
  });
  let text = "";
  socket.on("data", (d) => { text += d; if (text.includes("\\r\\n\\r\\n")) resolve({ socket, answered: true }); });
  socket.on("error", () => {});
  socket.on("close", () => resolve({ socket, answered: false }));
});
const sockets = await Promise.all(Array.from({ length: input.n }, open));
const answered = sockets.filter((s) => s.answered).length;
const open_after = sockets.filter((s) => s.answered && !s.socket.destroyed).length;
for (const s of sockets) s.socket.destroy();
let later = false;
for (let i = 0; i < 50 && !later; i++) {
  const one = await open();
  later = one.answered;
  one.socket.destroy();
}
writeFileSync("/outputs/result.json", JSON.stringify({ answered, closed: input.n - answered, open_after, later }));
`;

/** An upstream whose /hold/ calls wait until released; anything else is answered at once. */
async function startGate() {
  const held: http.ServerResponse[] = [];
  let seen = 0;
  const waiters: { n: number; resolve: () => void }[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    if (!req.url?.startsWith("/hold/")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ url: req.url }));
      return;
    }
    held.push(res);
    seen++;
    for (const w of waiters.filter((w) => seen >= w.n)) w.resolve();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    /** Calls that reached /hold/ so far. */
    get seen() {
      return seen;
    },
    whenHeld: (n: number) => new Promise<void>((resolve) => (seen >= n ? resolve() : waiters.push({ n, resolve }))),
    release() {
      for (const res of held.splice(0)) res.end("released");
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe("bridge limits per sandbox", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let gate: Awaited<ReturnType<typeof startGate>>;

  before(async () => {
    gate = await startGate();
    t = await startTestHost({ bridgeLimits: { requestsPerSandbox: REQUESTS, connectionsPerSandbox: CONNECTIONS } });
    const res = await t.api("PUT", "/v1/connections/gated", {
      base_url: gate.url,
      internal: true,
      auth: { type: "none" },
      timeout_ms: 120_000,
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  });

  after(async () => {
    gate?.release();
    await t?.close();
    await gate?.close();
  });

  const agent = (name: string, file: string, script: string) => ({
    name: uniqueName(name),
    command: [NODE, `/app/${file}`],
    files: { [file]: script },
    policy: { connections: ["gated"] },
  });

  /** Waits for the run's user event of `type`. */
  const userEvent = async (runId: string, type: string): Promise<void> => {
    for (let i = 0; i < 800; i++) {
      const events = (await t.api("GET", `/v1/runs/${runId}/events?limit=1000`)).body.data as {
        type: string;
        data: { type?: string };
      }[];
      if (events.some((e) => e.type === "user" && e.data.type === type)) return;
      if (events.some((e) => e.type === "run.finished")) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`run ${runId} never emitted ${type}`);
  };

  test("requests past a sandbox's cap are refused 429 while others' calls go through, and the cap frees up", async () => {
    // Fewer than the connection cap, so that every call of the flood reaches the bridge.
    const flood = CONNECTIONS - 4;
    const created = await t.api("POST", "/v1/agents", agent("flood", "flood.mjs", FLOOD_AGENT));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const started = await t.api("POST", `/v1/agents/${created.body.id}/runs`, {
      input: { n: flood, cap: REQUESTS, bare: 5 },
    });
    assert.equal(started.status, 201);
    const runId = started.body.id as string;
    await gate.whenHeld(REQUESTS);
    await userEvent(runId, "flooded");
    assert.equal(gate.seen, REQUESTS, "no call past the cap reached the upstream");

    // Meanwhile another sandbox's run calls through the same bridge as usual, and the API answers.
    const other = await runAgent(t, agent("other", "probe.mjs", PROBE_AGENT), {
      calls: [{ path: "/bridge/gated/echo/1" }, { path: "/bridge/gated/echo/2" }],
    });
    assert.equal(other.run.status, "succeeded");
    const out = (await artifactJson(t, other.run.id, "result.json")) as { results: ProbeResult[] };
    assert.deepEqual(
      out.results.map((r) => r.status),
      [200, 200],
    );
    assert.equal((await t.api("GET", `/v1/runs/${runId}`)).status, 200);

    gate.release();
    const done = await waitForRun(t, runId);
    assert.equal(done.status, "succeeded");
    const result = (await artifactJson(t, runId, "result.json")) as {
      held: { status: number; retry: string | null; body: string }[];
      bare: { status: number; body: string }[];
      again: { status: number };
    };
    const passed = result.held.filter((r) => r.status === 200);
    const refused = result.held.filter((r) => r.status === 429);
    assert.equal(passed.length, REQUESTS, JSON.stringify(result.held.filter((r) => r.status !== 429)));
    assert.equal(refused.length, flood - REQUESTS);
    for (const r of refused) {
      assert.equal(JSON.parse(r.body).error.code, "bridge_busy");
      assert.equal(r.retry, "1");
    }
    // Calls without a token count against the same cap: refused as busy, not looked at further.
    for (const r of result.bare) {
      assert.equal(r.status, 429);
      assert.equal(JSON.parse(r.body).error.code, "bridge_busy");
    }
    assert.equal(result.again.status, 200, "once the held calls finished the sandbox may call again");
    // Reported once for the whole burst, not once per refusal.
    const reports = t.logs.filter((l) => l.includes(`(run ${runId}) has ${REQUESTS} requests`));
    assert.equal(reports.length, 1, reports.join("\n"));
    assert.match(reports[0] ?? "", new RegExp(`has ${REQUESTS} requests in flight, .*; refused 1 since`));
  });

  test("connections past a sandbox's cap are closed at accept, and the cap frees up as they close", async () => {
    const { run } = await runAgent(t, agent("connect", "connect.mjs", CONNECT_AGENT), { n: CONNECTIONS + 16 });
    assert.equal(run.status, "succeeded");
    const result = await artifactJson(t, run.id, "result.json");
    assert.deepEqual(result, { answered: CONNECTIONS, closed: 16, open_after: CONNECTIONS, later: true });
    const reports = t.logs.filter((l) => l.includes(`(run ${run.id}) has ${CONNECTIONS} connections`));
    assert.equal(reports.length, 1, reports.join("\n"));
    assert.match(reports[0] ?? "", new RegExp(`has ${CONNECTIONS} connections open, .*; refused 1 since`));
  });
});
