/**
 * Model calls and bridge calls as tables: a run's (from its events) and the tenant's across runs
 * (where each row also names its run and agent).
 */
import { bytes, credits, dateTime, duration } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { Link } from "./ui.tsx";

/** Where a call's event is; a call from the cross-run lists also names its run and agent. */
interface CallPlace {
  seq: number;
  time: string;
  run_id?: string;
  agent_id?: string;
}

export interface ModelCallRow extends CallPlace {
  provider?: string | undefined;
  model?: string | undefined;
  input_tokens?: number | undefined;
  output_tokens?: number | undefined;
  latency_ms?: number | undefined;
  cost?: number | undefined;
  status?: number | undefined;
  code?: string | undefined;
  replayed?: boolean | undefined;
  aborted?: boolean | undefined;
}

export interface BridgeCallRow extends CallPlace {
  connection: string;
  method: string;
  path: string;
  status: number;
  code?: string | undefined;
  rule?: string | undefined;
  bytes_in: number;
  bytes_out: number;
  ms: number;
}

const rowKey = (c: CallPlace) => `${c.run_id ?? ""}-${c.seq}`;

/** The run (and agent) columns of a cross-run list. */
function RunCells({ call, agentName }: { call: CallPlace; agentName?: (id: string) => string }) {
  if (!call.run_id) return null;
  return (
    <>
      <td>
        <Link href={paths.run(call.run_id)} class="mono">
          {call.run_id}
        </Link>
      </td>
      {agentName ? <td>{agentName(call.agent_id ?? "")}</td> : null}
    </>
  );
}

export function ModelCallsTable(props: { calls: readonly ModelCallRow[]; agentName?: (id: string) => string }) {
  const acrossRuns = props.calls.some((c) => c.run_id);
  return (
    <table class="calls">
      <thead>
        <tr>
          <th>Time</th>
          {acrossRuns ? <th>Run</th> : null}
          {acrossRuns && props.agentName ? <th>Agent</th> : null}
          <th>Provider</th>
          <th>Model</th>
          <th class="num">Tokens in</th>
          <th class="num">Tokens out</th>
          <th class="num">Latency</th>
          <th class="num">Credits</th>
          <th>Outcome</th>
        </tr>
      </thead>
      <tbody>
        {props.calls.map((c) => (
          <tr key={rowKey(c)} class={c.code ? "failed" : ""}>
            <td>{dateTime(c.time)}</td>
            <RunCells call={c} {...(props.agentName ? { agentName: props.agentName } : {})} />
            <td>{c.provider ?? "—"}</td>
            <td>{c.model ?? "—"}</td>
            <td class="num">{c.input_tokens ?? "—"}</td>
            <td class="num">{c.output_tokens ?? "—"}</td>
            <td class="num">{duration(c.latency_ms)}</td>
            <td class="num">{credits(c.cost ?? 0)}</td>
            <td>
              {c.code ? <code>{c.code}</code> : `${c.status ?? ""}`}
              {c.replayed ? " (replayed)" : ""}
              {c.aborted ? " (aborted)" : ""}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function BridgeCallsTable({ calls }: { calls: readonly BridgeCallRow[] }) {
  const acrossRuns = calls.some((c) => c.run_id);
  return (
    <table class="calls">
      <thead>
        <tr>
          <th>Time</th>
          {acrossRuns ? <th>Run</th> : null}
          <th>Connection</th>
          <th>Method</th>
          <th>Path</th>
          <th class="num">Status</th>
          <th class="num">Bytes in</th>
          <th class="num">Bytes out</th>
          <th class="num">Latency</th>
          <th>Denied because</th>
        </tr>
      </thead>
      <tbody>
        {calls.map((c) => (
          <tr key={rowKey(c)} class={c.code ? "failed" : ""}>
            <td>{dateTime(c.time)}</td>
            <RunCells call={c} />
            <td class="mono">{c.connection}</td>
            <td>{c.method}</td>
            <td class="mono">{c.path}</td>
            <td class="num">{c.status}</td>
            <td class="num">{bytes(c.bytes_in)}</td>
            <td class="num">{bytes(c.bytes_out)}</td>
            <td class="num">{duration(c.ms)}</td>
            <td>
              {c.code ? <code>{c.code}</code> : "—"}
              {c.rule ? <span class="muted"> rule {c.rule}</span> : null}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
