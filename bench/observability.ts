/**
 * What the bridge and gateway benchmarks compare side by side to price the host's observability:
 * variants of the same service, each built with its own settings (everything off, tracing on,
 * metrics and tracing on), each on its own port, called interleaved from the same sandbox; the
 * scenarios build every variant through `depsOf` and report every one against `off`.
 *
 * Traced variants export to an OTLP/HTTP sink in its own process (a collector elsewhere costs the
 * host only the export), which counts the spans it gets.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { toolEnv } from "../packages/host/src/fs/tool-env.ts";
import { Metrics } from "../packages/host/src/metrics/metrics.ts";
import { traceIdOfRun } from "../packages/host/src/tracing/trace-context.ts";
import { type OpenSpan, openTracing, type Tracing } from "../packages/host/src/tracing/tracing.ts";
import { type Dist, dist } from "./stats.ts";

/** One way of running the measured service. */
export interface ObservabilityVariant {
  name: string;
  tracing: boolean;
  metrics: boolean;
}

/** Every variant measured; the first is the baseline the others are compared with. */
export const VARIANTS: readonly ObservabilityVariant[] = [
  { name: "off", tracing: false, metrics: false },
  { name: "tracing", tracing: true, metrics: false },
  { name: "metrics+tracing", tracing: true, metrics: true },
];

/** How much each variant adds to the baseline, at most `target.p50` ms at the median. */
export interface ObservabilityResult {
  latency_ms: Record<string, Dist>;
  rise_ms: Record<string, { p50: number; p99: number }>;
  target: { p50: number };
  spans: { exported: number; dropped: number };
}

/** The sink: answers every export with 200 and counts spans; GET answers the counts. */
const SINK = `
import http from "node:http";
let requests = 0, spans = 0;
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    if (req.method === "GET") return res.end(JSON.stringify({ requests, spans }));
    requests++;
    try {
      for (const rs of JSON.parse(Buffer.concat(chunks).toString()).resourceSpans ?? [])
        for (const ss of rs.scopeSpans ?? []) spans += (ss.spans ?? []).length;
    } catch {}
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
`;

export interface Observability {
  /** What a variant's service is built with. */
  depsOf(variant: ObservabilityVariant): { tracing: Tracing | null; metrics?: Metrics };
  /** An attempt span for a bench sandbox, which its calls' spans hang under. */
  attemptSpan(runId: string): OpenSpan;
  /** The comparison, from each variant's samples (by name). */
  result(samples: Record<string, number[]>): Promise<ObservabilityResult>;
  close(): Promise<void>;
}

const round = (x: number) => Math.round(x * 1000) / 1000;

/** Starts the sink and the tracing the traced variants share. */
export async function startObservability(): Promise<Observability> {
  const sink: ChildProcess = spawn(process.execPath, ["--input-type=module", "-e", SINK], {
    env: toolEnv({}),
    stdio: ["ignore", "pipe", "inherit"],
  });
  const [line] = (await once(sink.stdout?.setEncoding("utf8") ?? sink, "data")) as [string];
  const url = `http://127.0.0.1:${Number.parseInt(line, 10)}`;
  const options = { endpoint: url, content: false, version: "bench", nodeId: "bench", log: () => {} };
  const tracing = (await openTracing(options)) as Tracing;
  const spans: OpenSpan[] = [];
  // The metrics variants share one registry, as a host's services do.
  const metrics = new Metrics({ version: "bench", node: "bench" });
  return {
    depsOf: (variant) => ({ tracing: variant.tracing ? tracing : null, ...(variant.metrics ? { metrics } : {}) }),
    attemptSpan(runId) {
      const span = tracing.start(
        { traceId: traceIdOfRun(runId), spanId: null },
        { name: "invoke_agent bench", attributes: { "paddock.run.id": runId } },
      );
      spans.push(span);
      return span;
    },
    async result(samples) {
      await tracing.flush();
      const counts = (await (await fetch(url)).json()) as { spans: number };
      const base = dist(samples[VARIANTS[0]?.name ?? ""] ?? []);
      const latency: Record<string, Dist> = {};
      const rise: Record<string, { p50: number; p99: number }> = {};
      for (const v of VARIANTS) {
        const d = dist(samples[v.name] ?? []);
        latency[v.name] = d;
        if (v !== VARIANTS[0]) rise[v.name] = { p50: round(d.p50 - base.p50), p99: round(d.p99 - base.p99) };
      }
      return {
        latency_ms: latency,
        rise_ms: rise,
        target: { p50: 0.1 },
        spans: { exported: counts.spans, dropped: tracing.droppedSpans },
      };
    },
    async close() {
      for (const span of spans) span.end();
      await tracing.close();
      if (sink.exitCode === null && sink.signalCode === null) {
        const exited = once(sink, "exit");
        sink.kill();
        await exited;
      }
    },
  };
}

/**
 * The sandbox side of the comparison, for a bench's caller script: `n` rounds over the variants,
 * the order turning every round so that none always follows the same one. `call(name)` makes one
 * call through that variant and resolves to its time in ms.
 */
export const INTERLEAVE = `
async function interleave(names, n, call) {
  const out = Object.fromEntries(names.map((name) => [name, []]));
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + k) % names.length];
      out[name].push(await call(name));
    }
  }
  return out;
}
`;
