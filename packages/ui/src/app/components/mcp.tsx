/**
 * MCP as the dashboard shows it: a server's tools (asked live), a run's MCP calls, and what a
 * re-pin of an agent's tools changed. Descriptions and previews come from MCP servers and
 * sandboxes: they are drawn as text only, never as markup.
 */
import type { McpCallData, McpPinDiff, McpToolDefinition } from "@paddock/protocol";
import { bytes, dateTime, duration } from "../lib/format.ts";
import { Empty } from "./ui.tsx";

export type McpCallRow = McpCallData & { seq: number; time: string };

/** A tool's description, or a dash when it has none. */
const described = (d: string | null | undefined) => d ?? "—";

export function McpToolsTable({ tools }: { tools: readonly McpToolDefinition[] }) {
  if (tools.length === 0) return <Empty>The server offers no tools.</Empty>;
  return (
    <table class="mcp-tools">
      <thead>
        <tr>
          <th>Tool</th>
          <th>Description</th>
          <th>Arguments</th>
        </tr>
      </thead>
      <tbody>
        {tools.map((t) => (
          <tr key={t.name} data-tool={t.name}>
            <td class="mono">{t.name}</td>
            <td class="wrap">{described(t.description)}</td>
            <td class="mono">{Object.keys((t.input_schema.properties ?? {}) as object).join(", ") || "—"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function McpCallsTable({ calls }: { calls: readonly McpCallRow[] }) {
  return (
    <table class="calls mcp-calls">
      <thead>
        <tr>
          <th>Time</th>
          <th>Server</th>
          <th>Method</th>
          <th>Tool</th>
          <th>Outcome</th>
          <th class="num">Latency</th>
          <th class="num">Bytes</th>
          <th>Arguments</th>
          <th>Answer</th>
        </tr>
      </thead>
      <tbody>
        {calls.map((c) => (
          <tr key={c.seq} data-mcp-call={c.seq} class={c.status === "ok" ? "" : "failed"}>
            <td>{dateTime(c.time)}</td>
            <td class="mono">{c.server}</td>
            <td>{c.method}</td>
            <td class="mono">{c.tool}</td>
            <td>
              {c.status}
              {c.code ? (
                <>
                  {" "}
                  <code>{c.code}</code>
                </>
              ) : null}
              {c.replayed ? " (replayed)" : ""}
            </td>
            <td class="num">{duration(c.latency_ms)}</td>
            <td class="num">{bytes(c.bytes)}</td>
            <td class="mono wrap capped">{c.args_preview ?? "—"}</td>
            <td class="mono wrap capped">{c.result_preview ?? "—"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** What re-pinning changed (or would change): tools added, removed, and changed with old and new description. */
export function McpPinChanges({ diff }: { diff: Pick<McpPinDiff, "added" | "removed" | "changed"> }) {
  if (diff.added.length + diff.removed.length + diff.changed.length === 0) {
    return <p class="note">No change: every pinned tool is as its server defines it.</p>;
  }
  return (
    <table class="mcp-diff">
      <thead>
        <tr>
          <th>Change</th>
          <th>Server</th>
          <th>Tool</th>
          <th>Before</th>
          <th>After</th>
        </tr>
      </thead>
      <tbody>
        {diff.added.map((t) => (
          <tr key={`a-${t.server}-${t.tool}`} data-change="added">
            <td>added</td>
            <td class="mono">{t.server}</td>
            <td class="mono">{t.tool}</td>
            <td>—</td>
            <td class="wrap">{described(t.description)}</td>
          </tr>
        ))}
        {diff.removed.map((t) => (
          <tr key={`r-${t.server}-${t.tool}`} data-change="removed">
            <td>removed</td>
            <td class="mono">{t.server}</td>
            <td class="mono">{t.tool}</td>
            <td class="wrap">{described(t.description)}</td>
            <td>—</td>
          </tr>
        ))}
        {diff.changed.map((t) => (
          <tr key={`c-${t.server}-${t.tool}`} data-change="changed">
            <td>changed{t.schema_changed ? " (arguments too)" : ""}</td>
            <td class="mono">{t.server}</td>
            <td class="mono">{t.tool}</td>
            <td class="wrap old">{described(t.old_description)}</td>
            <td class="wrap new">{described(t.new_description)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
