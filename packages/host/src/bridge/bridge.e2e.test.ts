/**
 * The host bridge end to end: real host, real sandboxes on their own networks, a local stand-in
 * for the external API. Agents call through the bridge; the stand-in sees the real credential,
 * the sandbox never does, and every call and denial is on the run's record.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { isEvent } from "@paddock/protocol";
import { build } from "esbuild";
import { artifactJson, PROBE_AGENT, type ProbeResult, type StandIn, startStandIn } from "../testing/bridge-support.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";

const SECRET = `ghs_${randomBytes(18).toString("hex")}`;
const NODE = "/opt/paddock/runner/node";

describe("host bridge", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let upstream: StandIn;

  before(async () => {
    upstream = await startStandIn();
    t = await startTestHost();
    const put = async (path: string, body: unknown) => {
      const res = await t.api("PUT", path, body);
      assert.ok(res.status === 200 || res.status === 201, `${path}: ${res.status} ${JSON.stringify(res.body)}`);
    };
    await put("/v1/secrets/gh-token", { value: SECRET });
    const common = { base_url: upstream.url, secret: "gh-token", internal: true, timeout_ms: 1500 };
    const everything = { allow: [{ methods: ["GET", "POST", "PUT"], path: "/**" }] };
    await put("/v1/connections/github", {
      ...common,
      auth: { type: "bearer" },
      max_response_bytes: 65536,
      policy: {
        allow: [
          { methods: ["GET", "POST"], path: "/repos/*/*/issues" },
          { methods: ["GET", "POST"], path: "/echo/**" },
          { methods: ["GET"], path: "/gzip/**" },
          { methods: ["GET"], path: "/cookie" },
          { methods: ["GET"], path: "/redirect" },
          { methods: ["GET"], path: "/slow" },
          { methods: ["GET"], path: "/big" },
        ],
      },
    });
    await put("/v1/connections/basic", { ...common, auth: { type: "basic", username: "bot" }, policy: everything });
    await put("/v1/connections/query", { ...common, auth: { type: "query", param: "api_key" }, policy: everything });
    await put("/v1/connections/header", {
      ...common,
      auth: { type: "header", name: "X-Api-Token", prefix: "Token " },
      policy: everything,
    });
    await put("/v1/connections/limited", {
      ...common,
      auth: { type: "bearer" },
      policy: { ...everything, rate_limit: { requests: 2, per_s: 3600 } },
    });
    await put("/v1/connections/unlisted", { ...common, auth: { type: "bearer" }, policy: everything });
  });

  after(async () => {
    await t?.close();
    await upstream?.close();
  });

  const probe = async (calls: unknown[], connections = ["github", "basic", "query", "header", "limited"]) => {
    const { run, events } = await runAgent(
      t,
      {
        name: uniqueName("probe"),
        command: [NODE, "/app/probe.mjs"],
        files: { "probe.mjs": PROBE_AGENT },
        policy: { connections },
      },
      { calls },
    );
    assert.equal(run.status, "succeeded", JSON.stringify(events.filter((e) => e.type !== "bridge.call")));
    const out = (await artifactJson(t, run.id, "result.json")) as { token: string; results: ProbeResult[] };
    return { run, events, out };
  };

  test("calls reach the upstream with the credential; the sandbox never sees it", async () => {
    const before = upstream.seen.length;
    const { events, out } = await probe([
      {
        path: "/bridge/github/echo/a?x=1",
        headers: { cookie: "c=1", "x-forwarded-for": "1.2.3.4", "x-api-key": "mine", forwarded: "for=1.2.3.4" },
      },
      { path: "/bridge/github/echo/b", method: "POST", body: "hello", headers: { "content-type": "text/plain" } },
      { path: "/bridge/github/gzip/c" },
      { path: "/bridge/github/cookie" },
      { path: "/bridge/github/redirect" },
      { path: "/bridge/basic/echo/d" },
      { path: "/bridge/query/echo/e?api_key=mine&y=2" },
      { path: "/bridge/header/echo/f" },
    ]);
    const statuses = out.results.map((r) => r.status);
    assert.deepEqual(statuses, [200, 200, 200, 200, 302, 200, 200, 200], JSON.stringify(out.results));

    const seen = upstream.seen.slice(before);
    assert.equal(seen.length, 8);
    const [echo, post, gzip, , , basic, query, header] = seen;
    assert.equal(echo?.headers.authorization, `Bearer ${SECRET}`);
    assert.equal(echo?.url, "/echo/a?x=1");
    for (const h of ["cookie", "x-forwarded-for", "x-api-key", "forwarded"])
      assert.equal(echo?.headers[h], undefined, h);
    assert.equal(post?.body, "hello");
    assert.equal(gzip?.headers["accept-encoding"], "identity");
    assert.equal(basic?.headers.authorization, `Basic ${Buffer.from(`bot:${SECRET}`).toString("base64")}`);
    assert.equal(new URL(query?.url ?? "", "http://x").searchParams.getAll("api_key").join(), SECRET);
    assert.equal(new URL(query?.url ?? "", "http://x").searchParams.get("y"), "2");
    assert.equal(header?.headers["x-api-token"], `Token ${SECRET}`);

    // What came back into the sandbox: echoes redacted, no cookie set, the redirect not followed.
    const back = JSON.stringify(out);
    for (const form of [SECRET, Buffer.from(`bot:${SECRET}`).toString("base64"), encodeURIComponent(SECRET)]) {
      assert.ok(!back.includes(form), `a form of the secret reached the sandbox: ${form}`);
    }
    assert.match(out.results[0]?.body ?? "", /\[REDACTED\]/);
    assert.match(out.results[2]?.body ?? "", /\[REDACTED\]/, "a compressed echo is redacted too");
    assert.equal(out.results[3]?.headers?.["set-cookie"], undefined);
    assert.equal(out.results[4]?.headers?.location, "http://169.254.169.254/latest/meta-data/");

    // The record: one bridge.call per call, without the secret.
    const calls = events.filter(isEvent("bridge.call")).map((e) => e.data);
    assert.equal(calls.length, 8);
    const [first, second] = calls;
    assert.ok(first && second);
    assert.deepEqual(first, {
      connection: "github",
      method: "GET",
      path: "/echo/a",
      rule: "/echo/**",
      status: 200,
      bytes_in: 0,
      bytes_out: first.bytes_out,
      ms: first.ms,
      redacted: first.redacted,
    });
    assert.ok(first.bytes_out > 0 && (first.redacted ?? 0) >= 1);
    assert.equal(second.bytes_in, 5);
    assert.ok(!JSON.stringify(events).includes(SECRET));
    assert.ok(!t.logs.join("\n").includes(SECRET), "the host's log never holds the secret");
  });

  test("the policy, traversal spellings and forbidden methods are refused before the upstream", async () => {
    const before = upstream.seen.length;
    const refused = [
      { method: "DELETE", path: "/bridge/github/echo/a", code: "policy_denied" },
      { path: "/bridge/github/admin", code: "policy_denied" },
      { path: "/bridge/github/repos/acme/app/hooks", code: "policy_denied" },
      { method: "TRACE", path: "/bridge/github/echo/a", code: "policy_denied", raw: true },
      // Not even an HTTP method to the host's parser: refused before the bridge sees it.
      { method: "TRACK", path: "/bridge/github/echo/a", code: null, raw: true },
      { path: "/bridge/github/echo/../admin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/./a", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/%2e%2e/admin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/.%2E/admin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo%2f..%2fadmin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/a%2Fb", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/a%5cb", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/a\\..\\b", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/%252e%252e/admin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/%25252e/admin", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo//x", code: "path_rejected", raw: true },
      { path: "/bridge/github/echo/%00", code: "path_rejected", raw: true },
      { path: "/bridge/unlisted/echo/a", code: "connection_not_allowed" },
      { path: "/bridge/nosuch/echo/a", code: "connection_not_allowed" },
      { path: "/bridge/../v1/health", code: "connection_not_allowed", raw: true },
    ];
    const { events, out } = await probe(refused);
    for (const [i, r] of out.results.entries()) {
      const want = refused[i];
      assert.ok(r.status >= 400 && r.status < 500, `${want?.method ?? "GET"} ${want?.path}: ${r.status} ${r.body}`);
      if (want?.code === null) continue;
      assert.equal(
        JSON.parse(r.body ?? "{}").error?.code,
        want?.code,
        `${want?.method ?? "GET"} ${want?.path}: ${r.body}`,
      );
    }
    assert.equal(upstream.seen.length, before, "nothing refused reached the upstream");
    const denials = events.filter(isEvent("bridge.call")).filter((e) => e.data.code);
    assert.equal(denials.length, refused.filter((r) => r.code !== null).length, "every denial is recorded");
  });

  test("rate limits, timeouts and size caps", async () => {
    const { out, events } = await probe([
      { path: "/bridge/limited/echo/1" },
      { path: "/bridge/limited/echo/2" },
      { path: "/bridge/limited/echo/3" },
      { path: "/bridge/github/slow" },
      { path: "/bridge/github/big?size=1000" },
      { path: "/bridge/github/big?size=100000" },
    ]);
    const [a, b, c, slow, small, big] = out.results;
    assert.deepEqual([a?.status, b?.status], [200, 200]);
    assert.equal(c?.status, 429);
    assert.equal(JSON.parse(c?.body ?? "{}").error.code, "rate_limited");
    assert.ok(Number(c?.headers?.["retry-after"]) >= 1);
    assert.equal(slow?.status, 504);
    assert.equal(JSON.parse(slow?.body ?? "{}").error.code, "upstream_timeout");
    assert.equal(small?.status, 200);
    assert.equal(small?.body?.length, 1000);
    assert.notEqual(big?.body?.length, 100000, "an answer over the cap is not passed on whole");
    const bigCall = events.filter(isEvent("bridge.call")).at(-1);
    assert.equal(bigCall?.data.code, "upstream_too_large");
  });

  test("an upstream that is not public is refused unless the connection is internal", async () => {
    const res = await t.api("PUT", "/v1/connections/loopback", {
      base_url: upstream.url,
      secret: "gh-token",
      auth: { type: "bearer" },
      policy: { allow: [{ methods: ["GET"], path: "/**" }] },
    });
    // Refused when written (an IP literal), or when called (a name resolving there).
    if (res.status < 300) {
      const { out } = await probe([{ path: "/bridge/loopback/echo/a" }], ["loopback"]);
      assert.equal(JSON.parse(out.results[0]?.body ?? "{}").error.code, "upstream_refused");
    } else {
      assert.equal(res.status, 400, JSON.stringify(res.body));
    }
  });

  test("an official client library works unchanged through the bridge (@octokit/rest)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "paddock-octokit-"));
    try {
      const entry = join(dir, "entry.mjs");
      await import("node:fs/promises").then((fs) =>
        fs.writeFile(
          entry,
          `import { Octokit } from "@octokit/rest";
import { writeFileSync } from "node:fs";
const { bridge } = await import(process.env.PADDOCK_SDK);
const octokit = new Octokit({ baseUrl: bridge.url("github"), auth: bridge.token() });
const list = await octokit.rest.issues.listForRepo({ owner: "acme", repo: "app" });
const created = await octokit.rest.issues.create({ owner: "acme", repo: "app", title: "from the sandbox" });
const direct = await bridge.fetch("github", "/repos/acme/app/issues");
writeFileSync("/outputs/result.json", JSON.stringify({ list: list.data, created: created.data, status: created.status, direct: direct.status }));
`,
        ),
      );
      const outfile = join(dir, "octo.mjs");
      await build({
        entryPoints: [entry],
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node24",
        outfile,
        nodePaths: ["../../../../node_modules", "../../node_modules"].map((p) => new URL(p, import.meta.url).pathname),
        logLevel: "error",
      });
      const before = upstream.seen.length;
      const { run } = await runAgent(t, {
        name: uniqueName("octokit"),
        command: [NODE, "/app/octo.mjs"],
        files: { "octo.mjs": await readFile(outfile, "utf8") },
        policy: { connections: ["github"] },
      });
      assert.equal(run.status, "succeeded");
      const out = await artifactJson(t, run.id, "result.json");
      assert.deepEqual(out.list, [{ number: 7, title: "issue of acme/app", state: "open" }]);
      assert.equal(out.status, 201);
      assert.equal(out.created.title, "from the sandbox");
      assert.equal(out.direct, 200);
      const seen = upstream.seen.slice(before);
      assert.deepEqual(
        seen.map((s) => `${s.method} ${s.url}`),
        ["GET /repos/acme/app/issues", "POST /repos/acme/app/issues", "GET /repos/acme/app/issues"],
      );
      for (const s of seen) assert.equal(s.headers.authorization, `Bearer ${SECRET}`);
      assert.match(String(seen[0]?.headers["user-agent"]), /octokit/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
