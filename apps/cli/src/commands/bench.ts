/** `paddock bench SCENARIO --json`: measured figures beside their floors, as one JSON object. */
import { join } from "node:path";
import { parseLocalCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, dataDirOf } from "../context.ts";

const SCENARIOS = [
  "approvals",
  "boot",
  "bridge",
  "cluster",
  "density",
  "gateway",
  "mcp",
  "notifications",
  "oauth",
  "queue",
  "snapshot",
  "swap",
  "ui",
] as const;

export const bench: Command = {
  name: "bench",
  summary: "run a benchmark scenario and print its figures",
  usage: `Usage: paddock bench SCENARIO [--json] [--runs N] [--data-dir DIR]

Scenarios:
  approvals  how soon an approved call leaves: from POST /v1/approvals/{id} (approve) to the held
          call's arrival at an upstream on loopback (N calls of a sandbox, one at a time), beside
          the target (p50 at most 10 ms); and calls that match no approval rule (N×100 pairs,
          interleaved in one sandbox) through a connection with approval rules and one without
  boot    trigger-to-first-event and trigger-to-finish of a trivial agent over HTTP (N sequential
          runs, then 20 at once), beside floors measured in the same run: bwrap running true, and
          node -e 0 through the full sandbox recipe
  bridge  what the host bridge adds to a call from inside a sandbox (N request pairs, direct and
          bridged, interleaved, to the same local upstream over the same link), run-token checks
          per second with and without the verified-token cache, calls per second with
          --sandboxes sandboxes calling at once, bridged and direct, and what tracing adds to a
          bridged call (the bridge with tracing and metrics off and on, side by side, N×100 rounds)
  cluster three paddock serve nodes on one PostgreSQL (a private server the bench starts) and one
          blob folder: failover_ms from SIGKILL of a node to its run's retry on another (N/10
          trials, at least 3), cross_node_event_ms from an event written on one node to its arrival
          over SSE on another, duplicate executions, lost events and overspent credits (all must
          be 0); then claims per second of runs that boot no sandbox on 1 and 3 nodes beside
          graphile-worker doing as many no-op jobs (--claims runs per pass, default 2000)
  density live sandboxes one machine holds: runs of an agent running sleep at each of --levels
          (cumulative), with the sandboxes' PSS and the host's RSS growth per sandbox, boot p50
          and the API's p99 while they run; and runs per second of N×10 runs of true, 25 at a
          time, beside the floor: the sandbox driver booting and tearing down the same recipe
  gateway what the LLM gateway adds to a model call from inside a sandbox (N×10 pairs of whole
          chat completions, direct to a local stand-in provider and through the gateway with
          metering, interleaved over the same link), to the first chunk of a stream, and what
          tracing and metrics add to a call (the gateway with them off and on, side by side, N×10 rounds)
  mcp     what the host adds to an MCP tools/call: N×100 pairs of calls from one run, interleaved,
          through the run's MCP endpoint (checked, forwarded with the server's secret, recorded) and
          straight to the same stand-in MCP server over the same link (p50 target +2 ms)
  notifications  how soon a notification leaves after its event: from a run's terminal event to
          its signed delivery's arrival at an endpoint on loopback (N runs one at a time, then N
          at once), beside the target (p50 under 1 s)
  oauth   what an end user's OAuth token costs a bridge call: N×100 pairs of calls from one run,
          interleaved, through a connection with a static secret and one attaching the run's end
          user's fresh token (an OpenID Connect stand-in issued it), side by side; then N calls that
          each refresh the token on their path (p50 of the calls and of the refreshes)
  queue   the run queue on SQLite: runs claimed per second with N×10 trivial runs queued at once,
          claim latency with the engine idle (N runs), and the delay from a cron slot to the
          run (a per-second schedule, N slots)
  snapshot  freeze time of environments of 10 MiB, 300 MiB and 1 GiB (a tmpfs writable layer
            shaped like a pip install), and trigger-to-first-event of agents booting the smallest
            and the largest (N runs each, interleaved, warm pool off)
  swap    what the runner hot-swap adds to trigger-to-first-event (runs whose snapshot names an
          older runner vs. the current one, N each, interleaved, warm pool on and off), and runner
          start with and without the runner layer's compile cache, through the sandbox driver
  ui      the dashboard in Debian's chromium: the bytes of a first visit to /ui (gzipped, budget
          100 KB), the runs page from navigation to its list shown with 10,000 runs in the store
          (the first load, then N/3 warm ones, beside the list's API call alone), and a live
          event's delay from the host writing it to its bar in the run's timeline (p50, measured
          in the page, beside its arrival over SSE in Node)

Starts its own host on a temporary data folder; uses the base image in DIR/images.

Options:
  --runs N          sequential runs to measure (default 30; bridge: N×100 request pairs)
  --sizes A,B,...   snapshot: environment sizes in MiB (default 10,300,1024)
  --sandboxes N     bridge: sandboxes calling at once (default 50), each sending 200 calls
  --claims N        cluster: runs per claims pass (0 skips that part)
  --levels A,B,...  density: live sandboxes at each level (default 100,500,1000)
  --sandbox-cidr C  density: the IPv4 range of the bench host's sandbox addresses (default 10.220.0.0/16)
  --json            print one JSON object (the default output is the same JSON, indented)
  --data-dir DIR    where the base image lives (env PADDOCK_DATA_DIR; default ./.paddock)`,
  async run(argv, ctx) {
    const { values, positionals } = parseLocalCommand(argv, {
      command: "bench",
      options: {
        json: { type: "boolean" },
        runs: { type: "string" },
        sizes: { type: "string" },
        sandboxes: { type: "string" },
        levels: { type: "string" },
        claims: { type: "string" },
        "sandbox-cidr": { type: "string" },
        "data-dir": { type: "string" },
      },
      positionals: { min: 1, max: 1 },
    });
    const scenario = positionals[0];
    if (!SCENARIOS.some((s) => s === scenario))
      throw new UsageError(`unknown scenario '${scenario}' (one of: ${SCENARIOS.join(", ")})`, "bench");
    const runs = parseNumber(values.runs, "runs") ?? 30;
    if (scenario === "snapshot") {
      const { snapshotBench } = await import("../../../../bench/snapshot.ts");
      const sizesMb = values.sizes?.split(",").map((mb) => parseNumber(mb, "sizes") ?? 0);
      const result = await snapshotBench({ imagesDir: join(dataDirOf(values, ctx), "images"), runs, sizesMb });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "approvals") {
      const { approvalsBench } = await import("../../../../bench/approvals.ts");
      const result = await approvalsBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        calls: Math.max(runs, 1),
        pairs: Math.max(runs, 1) * 100,
        progress: (line) => ctx.err(`bench approvals: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "bridge") {
      const { bridgeBench } = await import("../../../../bench/bridge.ts");
      const result = await bridgeBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        calls: Math.max(runs, 1) * 100,
        sandboxes: parseNumber(values.sandboxes, "sandboxes") ?? 50,
        callsPerSandbox: 200,
        progress: (line) => ctx.err(`bench bridge: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "cluster") {
      const { clusterBench } = await import("../../../../bench/cluster.ts");
      const result = await clusterBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        failovers: Math.max(3, Math.round(runs / 10)),
        events: 200,
        claimRuns: parseNumber(values.claims, "claims") ?? 2000,
        progress: (line) => ctx.err(`bench cluster: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "density") {
      const { densityBench } = await import("../../../../bench/density.ts");
      const levels = (values.levels ?? "100,500,1000").split(",").map((n) => parseNumber(n, "levels") ?? 0);
      if (levels.some((n) => n < 1)) throw new UsageError("--levels takes positive counts, e.g. 100,500,1000", "bench");
      const result = await densityBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        levels,
        throughputRuns: Math.max(runs, 1) * 10,
        concurrency: 25,
        apiSamples: 200,
        sandboxRange: values["sandbox-cidr"] ?? "10.220.0.0/16",
        // Bounded: about a minute per 100 sandboxes of the top level, plus the throughput part.
        timeoutMs: 120_000 + Math.max(...levels) * 600 + runs * 10 * 1000,
        progress: (line) => ctx.err(`bench density: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "gateway") {
      const { gatewayBench } = await import("../../../../bench/gateway.ts");
      const result = await gatewayBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        calls: Math.max(runs, 1) * 10,
        progress: (line) => ctx.err(`bench gateway: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "notifications") {
      const { notificationsBench } = await import("../../../../bench/notifications.ts");
      const result = await notificationsBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        runs: Math.max(runs, 1),
        progress: (line) => ctx.err(`bench notifications: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "mcp") {
      const { mcpBench } = await import("../../../../bench/mcp.ts");
      const result = await mcpBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        pairs: Math.max(runs, 1) * 100,
        progress: (line) => ctx.err(`bench mcp: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "oauth") {
      const { oauthBench } = await import("../../../../bench/oauth.ts");
      const result = await oauthBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        pairs: Math.max(runs, 1) * 100,
        refreshes: Math.max(runs, 1),
        progress: (line) => ctx.err(`bench oauth: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "queue") {
      const { queueBench } = await import("../../../../bench/queue.ts");
      const result = await queueBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        runs: Math.max(runs, 1) * 10,
        samples: Math.max(runs, 1),
        progress: (line) => ctx.err(`bench queue: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "ui") {
      const { uiBench } = await import("../../../../bench/ui.ts");
      const result = await uiBench({
        imagesDir: join(dataDirOf(values, ctx), "images"),
        loads: Math.max(3, Math.round(runs / 3)),
        progress: (line) => ctx.err(`bench ui: ${line}`),
      });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    if (scenario === "swap") {
      const { swapBench } = await import("../../../../bench/swap.ts");
      const result = await swapBench({ imagesDir: join(dataDirOf(values, ctx), "images"), runs });
      ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
      return 0;
    }
    const { bootBench } = await import("../../../../bench/boot.ts");
    const result = await bootBench({ imagesDir: join(dataDirOf(values, ctx), "images"), runs, concurrent: 20 });
    ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
    return 0;
  },
};
