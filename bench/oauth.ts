/**
 * `paddock bench oauth`: what attaching an end user's OAuth token costs a bridge call, through a
 * real host whose run is a real sandbox calling an upstream on loopback, and a real OpenID Connect
 * server (the oidc-provider stand-in) that issued the tokens.
 *
 * Figures:
 * - fresh_ms: calls side by side in one run of an end user, interleaved on keep-alive connections:
 *   through a connection attaching a static secret (`static_secret`) and through one attaching the
 *   run's end user's OAuth token, fresh (`oauth_fresh`: not refreshed; reused in process for
 *   accountTokenCacheMs, as a static secret is, after the first call reads and unseals it);
 *   `difference` is the latter minus the former per percentile (the goal: no more than 0 within
 *   noise).
 * - refresh_ms: calls, in the same run, through a connection whose app issues access tokens for 2
 *   seconds, each made once the token is within its refresh margin, so each refreshes on its path
 *   (`call`: the whole call seen by the sandbox; `refresh`: the refresh alone, from the run's
 *   account.refreshed events). `refreshes` is what the provider served (must equal the calls).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { browserCookies, type OidcStandIn, startOidcStandIn } from "../packages/host/src/testing/oidc-stand-in.ts";
import { artifactJson, type BenchHost, follow, now, startBenchHost, TIMED_BRIDGE_GET } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface OAuthBenchOptions {
  imagesDir: string;
  /** Call pairs (static secret, fresh OAuth token) for the side-by-side part. */
  pairs: number;
  /** Calls that refresh on their path. */
  refreshes: number;
  progress?: (line: string) => void;
}

export interface OAuthBenchResult {
  scenario: "oauth";
  fresh_ms: { static_secret: Dist; oauth_fresh: Dist; difference: { p50: number; p99: number } };
  refresh_ms: { call: Dist; refresh: Dist };
  refreshes: number;
  notes: string;
}

/** Access tokens of the refresh part live this long: each call after half of it refreshes. */
const SHORT_TTL_S = 2;
const END_USER = "bench-user";

/** Interleaved GETs through both connections, then spaced calls that refresh; times to /outputs/latency.json. */
const AGENT = `${TIMED_BRIDGE_GET}
const pairs = Number(process.env.BENCH_PAIRS);
const refreshes = Number(process.env.BENCH_REFRESHES);
for (let i = 0; i < 50; i++) { await call("static"); await call("oauth"); }
const out = { static_secret: [], oauth_fresh: [], refresh: [] };
for (let i = 0; i < pairs; i++) {
  if (i % 2) { out.oauth_fresh.push(await call("oauth")); out.static_secret.push(await call("static")); }
  else { out.static_secret.push(await call("static")); out.oauth_fresh.push(await call("oauth")); }
}
// Past half of the short token's lifetime, the next call refreshes it on its path.
for (let i = 0; i < refreshes; i++) {
  await new Promise((r) => setTimeout(r, ${SHORT_TTL_S * 500} + 100));
  out.refresh.push(await call("oauth-short"));
}
writeFileSync("/outputs/latency.json", JSON.stringify(out));
`;

const round = (x: number) => Math.round(x * 1000) / 1000;

export async function oauthBench(opts: OAuthBenchOptions): Promise<OAuthBenchResult> {
  const upstream = http.createServer({ keepAlive: true }, (req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "text/plain" }).end("ok"));
  });
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  const b = await startBenchHost({ imagesDir: opts.imagesDir, warmSandboxes: 0 });
  const redirectUri = `${b.host.url}/oauth/callback`;
  const long = await startOidcStandIn({ redirectUri, accessTtlS: 3600 });
  const short = await startOidcStandIn({ redirectUri, accessTtlS: SHORT_TTL_S });
  try {
    const connection = (auth: unknown, secret?: string) => ({
      base_url: base,
      auth,
      ...(secret ? { secret } : {}),
      internal: true,
      policy: { allow: [{ methods: ["GET"], path: "/echo/**" }] },
    });
    await b.api("PUT", "/v1/secrets/static-key", { value: "static-secret-value-0123456789" });
    await b.api("PUT", "/v1/connections/static", connection({ type: "bearer" }, "static-key"));
    for (const [app, idp] of [
      ["idp", long],
      ["idp-short", short],
    ] as const) {
      await b.api("PUT", `/v1/secrets/${app}-secret`, { value: idp.clientSecret });
      await b.api("PUT", `/v1/oauth-apps/${app}`, idp.appBody(`${app}-secret`));
      await connectAccount(b, idp, app);
    }
    await b.api("PUT", "/v1/connections/oauth", connection(`oauth:idp`));
    await b.api("PUT", "/v1/connections/oauth-short", connection(`oauth:idp-short`));
    const agent = await b.api("POST", "/v1/agents", {
      name: "oauth-bench",
      command: ["/opt/paddock/runner/node", "/app/agent.mjs"],
      files: { "agent.mjs": AGENT },
      env: { BENCH_PAIRS: String(opts.pairs), BENCH_REFRESHES: String(opts.refreshes) },
      limits: { timeout_s: 600 + Math.ceil(opts.pairs / 50) },
      policy: { connections: ["static", "oauth", "oauth-short"] },
    });
    const refreshedBefore = short.counts.refreshed;
    const run = await b.api("POST", `/v1/agents/${agent.id}/runs`, { end_user: END_USER });
    const ended = await follow(b.host.url, b.host.adminKey as string, run.id, now());
    if (ended.status !== "succeeded") throw new Error(`bench oauth: the run ${ended.status}`);
    const samples = await artifactJson<Record<"static_secret" | "oauth_fresh" | "refresh", number[]>>(
      b,
      run.id,
      "latency.json",
    );
    const events = await b.api<{ data: { type: string; data: { ms: number; app: string } }[] }>(
      "GET",
      `/v1/runs/${run.id}/events?types=account.refreshed&limit=1000`,
    );
    const refreshed = events.data.filter((e) => e.type === "account.refreshed" && e.data.app === "idp-short");
    const staticSecret = dist(samples.static_secret);
    const oauthFresh = dist(samples.oauth_fresh);
    opts.progress?.(`side by side: p50 ${staticSecret.p50} ms static secret, ${oauthFresh.p50} ms fresh OAuth token`);
    const call = dist(samples.refresh);
    opts.progress?.(`${opts.refreshes} calls refreshing on their path: p50 ${call.p50} ms`);
    return {
      scenario: "oauth",
      fresh_ms: {
        static_secret: staticSecret,
        oauth_fresh: oauthFresh,
        difference: { p50: round(oauthFresh.p50 - staticSecret.p50), p99: round(oauthFresh.p99 - staticSecret.p99) },
      },
      refresh_ms: { call, refresh: dist(refreshed.map((e) => e.data.ms)) },
      refreshes: short.counts.refreshed - refreshedBefore,
      notes:
        "fresh_ms are whole bridged calls from inside one sandbox, interleaved on keep-alive connections to the same " +
        "upstream; a fresh token is reused in process for accountTokenCacheMs (5 s) as a static secret is; " +
        "refresh_ms.refresh is the token endpoint's round trip with the account's row lock and the new tokens' " +
        "sealing and store",
    };
  } finally {
    await b.close();
    await long.close();
    await short.close();
    upstream.closeAllConnections();
    upstream.close();
  }
}

/** Connects the bench's end user at `app`, as their browser would (a connect URL, login, consent). */
async function connectAccount(b: BenchHost, idp: OidcStandIn, app: string): Promise<void> {
  const session = await b.api<{ url: string }>("POST", "/v1/connect-sessions", { end_user: END_USER, app });
  const opened = await fetch(session.url, { redirect: "manual" });
  const back = await idp.authorize(opened.headers.get("location") ?? "", { login: END_USER });
  // The flow is bound to the browser that opened the link: its cookie goes back with the callback.
  const landed = await fetch(back, { redirect: "manual", headers: { cookie: browserCookies(opened) } });
  if (landed.status !== 200) throw new Error(`bench oauth: connecting at ${app} answered ${landed.status}`);
}
