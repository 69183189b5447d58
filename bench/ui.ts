/**
 * `paddock bench ui`: the dashboard in Debian's Chromium (playwright-core), measured in the browser.
 *
 * - `initial_load`: the bytes a first visit to /ui transfers for the app (index.html and every
 *   asset, gzipped as served), beside the budget of 100 KB and the build's own count.
 * - `runs_page`: from navigation to the runs list shown and usable, with 10,000 runs in the store
 *   (a host's services over SQLite, served over HTTP: the list needs no sandbox), the first load
 *   and then warm loads; beside the floor: the list's API call alone, from Node.
 * - `live_event`: from the host writing an event (its time) to its bar in the run's timeline,
 *   seen by a MutationObserver in the page, for a real run in a real sandbox emitting an event
 *   every 100 ms; beside the floor: the same events' arrival over SSE in Node.
 */
import { existsSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { serve } from "@hono/node-server";
import type { Browser, BrowserContext } from "playwright-core";
import { frozenSpec } from "../packages/host/src/agents/agents.ts";
import { startNoRootHost } from "../packages/host/src/testing/no-root-host.ts";
import { buildUi, INITIAL_LOAD_BUDGET } from "../packages/ui/build.ts";
import { browserSkipReason, launchBrowser } from "../packages/ui/src/e2e/browser.ts";
import { startBenchHost } from "./bench-host.ts";
import { type Dist, dist } from "./stats.ts";

export interface UiBenchResult {
  initial_load: { gzip_bytes: number; requests: number; budget_bytes: number; build_gzip_bytes: number };
  runs_page: {
    runs_in_store: number;
    first_load_ms: number;
    interactive_ms: Dist;
    target_ms: number;
    floor_api_list_ms: Dist;
  };
  live_event: { timeline_ms: Dist; target_p50_ms: number; floor_sse_node_ms: Dist } | { skipped: string };
}

/** Page-side: when the runs list is first shown ready (ms since navigation start). */
const WATCH_READY = `
  new MutationObserver((_, observer) => {
    if (document.querySelector("[data-page=runs][data-ready] tr[data-run]")) {
      window.__readyAt = performance.now();
      observer.disconnect();
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
`;

/** Page-side: when each timeline bar first appears, by its event's seq (epoch ms). */
const WATCH_BARS = `
  window.__bars = {};
  new MutationObserver(() => {
    for (const el of document.querySelectorAll("rect[data-seq]")) {
      const seq = el.getAttribute("data-seq");
      if (!(seq in window.__bars)) window.__bars[seq] = performance.timeOrigin + performance.now();
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
`;

/** An agent that waits for the page to follow it, then emits an event every 100 ms. */
const TICKER = [
  "sleep 3",
  "i=0",
  'while [ "$i" -lt 60 ]; do i=$((i+1)); echo "::paddock::{\\"type\\":\\"tick\\",\\"data\\":$i}"; sleep 0.1; done',
].join("\n");

async function signedIn(browser: Browser, url: string, key: string): Promise<BrowserContext> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  await page.goto(`${url}/ui`);
  await page.fill("#api-key", key);
  await page.click("button[type=submit]");
  await page.waitForSelector("[data-page=runs]");
  await page.close();
  return context;
}

export async function uiBench(options: {
  imagesDir: string;
  loads: number;
  storeRuns?: number;
  progress?: (line: string) => void;
}): Promise<UiBenchResult> {
  const skip = browserSkipReason();
  if (skip) throw new Error(skip);
  const progress = options.progress ?? (() => {});
  const storeRuns = options.storeRuns ?? 10_000;
  const build = await buildUi();
  const browser = await launchBrowser();
  try {
    // The runs list over 10,000 runs: a host's services without sandboxes, served over HTTP.
    const h = await startNoRootHost(undefined, { ui: true });
    const server = serve({ fetch: h.services.app.fetch, port: 0, hostname: "127.0.0.1" });
    await new Promise<void>((resolve) => server.once("listening", () => resolve()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    let initial: UiBenchResult["initial_load"];
    let runsPage: UiBenchResult["runs_page"];
    try {
      const tenant = (await h.services.identity.findTenant("default")).id;
      const agent = await h.services.agents.create(tenant, { name: "listed", instructions: "Say hi.", model: "m" });
      const spec = frozenSpec(agent);
      progress(`storing ${storeRuns} runs`);
      for (let i = 0; i < storeRuns; i++) {
        await h.services.runs.create(tenant, agent.row.id, spec, { n: i }, { trigger: "api" });
      }
      // A new context signed in from here: its first load starts with an empty cache.
      const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      await signedInCookies(context, url, h.adminKey);
      await context.addInitScript(WATCH_READY);
      const times: number[] = [];
      let first = Number.NaN;
      initial = { gzip_bytes: 0, requests: 0, budget_bytes: INITIAL_LOAD_BUDGET, build_gzip_bytes: build.gzip_bytes };
      for (let i = 0; i <= options.loads; i++) {
        // The first load is cold (an empty cache): it is also the one whose bytes are counted.
        const page = await context.newPage();
        await page.goto(`${url}/ui/runs`);
        // Waiting by selector: a predicate evaluated in the page would be refused by its CSP (no eval).
        await page.waitForSelector("[data-page=runs][data-ready] tr[data-run]", { timeout: 60_000 });
        const ms = Number(await page.evaluate("window.__readyAt"));
        if (i === 0) {
          first = ms;
          const sizes = (await page.evaluate(`performance.getEntriesByType("navigation")
            .concat(performance.getEntriesByType("resource"))
            .filter((e) => new URL(e.name).pathname.startsWith("/ui"))
            .map((e) => e.encodedBodySize)`)) as number[];
          initial = { ...initial, gzip_bytes: sizes.reduce((a, b) => a + b, 0), requests: sizes.length };
        } else times.push(ms);
        await page.close();
      }
      await context.close();
      const api: number[] = [];
      for (let i = 0; i < Math.max(options.loads, 10); i++) {
        const t0 = performance.now();
        const res = await fetch(`${url}/v1/runs?limit=50`, { headers: { authorization: `Bearer ${h.adminKey}` } });
        await res.json();
        api.push(performance.now() - t0);
      }
      runsPage = {
        runs_in_store: storeRuns,
        first_load_ms: Math.round(first * 10) / 10,
        interactive_ms: dist(times),
        target_ms: 1000,
        floor_api_list_ms: dist(api),
      };
      progress(`runs page: first ${runsPage.first_load_ms} ms, warm p50 ${runsPage.interactive_ms.p50} ms`);
    } finally {
      server.close();
      await h.close();
    }

    const cannot =
      process.getuid?.() !== 0
        ? "real sandboxes need root"
        : existsSync(join(options.imagesDir, "default"))
          ? null
          : `no base image in ${options.imagesDir} (run make base-image)`;
    const live = cannot ? { skipped: cannot } : await liveEvents(browser, options.imagesDir, progress);
    return { initial_load: initial, runs_page: runsPage, live_event: live };
  } finally {
    await browser.close();
  }
}

/** Gives a context the session cookie of a sign-in made from here, so its first page load is its first. */
async function signedInCookies(context: BrowserContext, url: string, key: string): Promise<void> {
  const res = await fetch(`${url}/v1/ui/session`, { method: "POST", headers: { authorization: `Bearer ${key}` } });
  const token = /paddock_session=([^;]+)/.exec(res.headers.get("set-cookie") ?? "")?.[1];
  if (!token) throw new Error("no session cookie");
  await context.addCookies([{ name: "paddock_session", value: token, url, httpOnly: true, sameSite: "Strict" }]);
}

async function liveEvents(
  browser: Browser,
  imagesDir: string,
  progress: (line: string) => void,
): Promise<UiBenchResult["live_event"]> {
  const b = await startBenchHost({ imagesDir, warmSandboxes: 1 });
  try {
    const key = b.host.adminKey as string;
    const agent = await b.api("POST", "/v1/agents", { name: "ticker", command: ["sh", "-c", TICKER] });
    const context = await signedIn(browser, b.host.url, key);
    await context.addInitScript(WATCH_BARS);
    const page = await context.newPage();
    const run = await b.api("POST", `/v1/agents/${agent.id}/runs`, {});
    // Node's own view of the same events: their arrival over SSE, the floor.
    const sse = sseArrivals(b.host.url, key, run.id);
    await page.goto(`${b.host.url}/ui/runs/${run.id}`);
    await page.waitForSelector("[data-page=run][data-status=succeeded]", { timeout: 120_000 });
    const seen = (await page.evaluate("window.__bars")) as Record<string, number>;
    const arrived = await sse;
    const events = await b.api<{ data: { seq: number; type: string; time: string; data: { type?: string } }[] }>(
      "GET",
      `/v1/runs/${run.id}/events?limit=1000`,
    );
    const ticks = events.data.filter((e) => e.type === "user" && e.data.type === "tick");
    const delay = (at: number | undefined, time: string) => (at === undefined ? [] : [at - Date.parse(time)]);
    const shown = ticks.flatMap((e) => delay(seen[e.seq], e.time));
    const floor = ticks.flatMap((e) => delay(arrived.get(e.seq), e.time));
    await context.close();
    const result = { timeline_ms: dist(shown), target_p50_ms: 100, floor_sse_node_ms: dist(floor) };
    progress(
      `live events: timeline p50 ${result.timeline_ms.p50} ms (n ${shown.length}), SSE in Node p50 ${result.floor_sse_node_ms.p50} ms`,
    );
    return result;
  } finally {
    await b.close();
  }
}

/** When each event of a run arrives over SSE in this process (epoch ms), until the run ends. */
async function sseArrivals(url: string, key: string, runId: string): Promise<Map<number, number>> {
  const res = await fetch(`${url}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
  });
  const arrived = new Map<number, number>();
  if (!res.body) return arrived;
  let buf = "";
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    const at = Date.now();
    buf += decoder.decode(chunk, { stream: true });
    for (let i = buf.indexOf("\n\n"); i !== -1; i = buf.indexOf("\n\n")) {
      const id = /^id: (\d+)$/m.exec(buf.slice(0, i))?.[1];
      if (id) arrived.set(Number(id), at);
      buf = buf.slice(i + 2);
    }
  }
  return arrived;
}
