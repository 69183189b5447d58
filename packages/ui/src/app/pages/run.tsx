/**
 * One run: its header (kept current while it goes), its actions (cancel, replay with the same or an
 * edited input, open parent and children), and, folded live from its event stream, its timeline,
 * log, input and result, artifacts, model calls, bridge calls and MCP calls.
 */
import type { Agent, Artifact, Run, RunCredits } from "@paddock/protocol";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Artifacts } from "../components/artifacts.tsx";
import { BridgeCallsTable, ModelCallsTable } from "../components/calls.tsx";
import { JsonTree } from "../components/json-tree.tsx";
import { LogPane } from "../components/log-pane.tsx";
import { McpCallsTable } from "../components/mcp.tsx";
import { Waterfall } from "../components/timeline.tsx";
import { ActionButton, Empty, ErrorNote, Facts, Link, Section, Status } from "../components/ui.tsx";
import { ApiError } from "../lib/api.ts";
import { followRunEvents } from "../lib/follow.ts";
import { credits, dateTime, duration, span } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { RunView } from "../lib/run-view.ts";
import { cancelable } from "../lib/runs-live.ts";
import { api, caps, navigate, now, session } from "../state.ts";

const TABS = ["timeline", "log", "io", "artifacts", "model calls", "bridge calls", "MCP calls"] as const;
type Tab = (typeof TABS)[number];

export function RunPage({ id }: { id: string }) {
  const [run, setRun] = useState<Run | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [agent, setAgent] = useState<Agent | null>(null);
  const [bill, setBill] = useState<RunCredits | null>(null);
  const [artifacts, setArtifacts] = useState<Artifact[]>([]);
  const [children, setChildren] = useState<Run[]>([]);
  const [tab, setTab] = useState<Tab>("timeline");
  const view = useMemo(() => new RunView(), []);
  const [version, setVersion] = useState(0);
  const pending = useRef(0);

  // The run record: read at first, again when its events say its state changed.
  const refresh = async () => {
    try {
      const r = await api.get<Run>(`/v1/runs/${id}`);
      setRun(r);
      setError(null);
      return r;
    } catch (err) {
      setError(err);
      return null;
    }
  };

  useEffect(() => {
    const abort = new AbortController();
    void refresh().then((r) => {
      if (!r) return;
      api.get<Agent>(`/v1/agents/${r.agent_id}`).then(setAgent, () => {});
    });
    // Events arrive in bursts: they are folded at once, and the page redraws once per frame.
    void followRunEvents({
      fetch: (input, init) => fetch(input, init),
      runId: id,
      signal: abort.signal,
      onEvents: (events) => {
        const status = view.status;
        const artifactCount = view.artifactEvents;
        view.apply(events);
        if (view.status !== status) void refresh();
        if (view.artifactEvents !== artifactCount) void loadArtifacts();
        cancelAnimationFrame(pending.current);
        pending.current = requestAnimationFrame(() => setVersion(view.count));
      },
      onError: (status) => {
        if (status === 404) setError(new ApiError(404, "not_found", `No run '${id}'.`));
        // The session ended (signed out elsewhere, expired, or its key revoked): sign in again.
        if (status === 401) session.value = null;
      },
    });
    const loadArtifacts = () =>
      api.get<{ data: Artifact[] }>(`/v1/runs/${id}/artifacts`).then(
        (a) => setArtifacts(a.data),
        () => {},
      );
    void loadArtifacts();
    return () => {
      abort.abort();
      cancelAnimationFrame(pending.current);
    };
  }, [id]);

  // The bill, read again when the run ends or a model call is recorded.
  useEffect(() => {
    api.get<RunCredits>(`/v1/runs/${id}/credits`).then(setBill, () => {});
  }, [id, view.llmCalls.length, view.finished]);

  // Child runs: their state, for their bars and the list.
  const childIds = view.timeline.children().join(",");
  useEffect(() => {
    if (!childIds) return;
    let stopped = false;
    const load = async () => {
      const list: Run[] = [];
      for (const cid of childIds.split(",").slice(0, 50)) {
        const child = await api.get<Run>(`/v1/runs/${cid}`).catch(() => null);
        if (child) {
          list.push(child);
          view.timeline.setChild(child.id, child.status, child.finished_at);
        }
      }
      if (stopped) return;
      setChildren(list);
      setVersion((v) => v + 1);
      if (list.some(cancelable)) setTimeout(() => !stopped && void load(), 2000);
    };
    void load();
    return () => {
      stopped = true;
    };
  }, [childIds, view.finished]);

  if (error && !run) {
    return (
      <div class="page">
        <ErrorNote error={error} />
        <Link href={paths.runs()}>All runs</Link>
      </div>
    );
  }
  if (!run) return <p class="loading">Loading run…</p>;

  const status = view.status ?? run.status;
  // A replay names the run it replays (hosts before replays have no such field).
  const replayOf = (run as Run & { replay_of?: string | null }).replay_of ?? null;
  return (
    <div class="page" data-page="run" data-run={run.id} data-status={status} data-version={version}>
      <header class="page-head">
        <h1>
          Run <span class="mono">{run.id}</span> <Status status={status} />
        </h1>
        <RunActions run={run} status={status} onChanged={refresh} />
      </header>
      <Facts
        items={[
          ["Agent", <Link href={paths.agent(run.agent_id)}>{agent?.name ?? run.agent_id}</Link>],
          ["Agent version", `v${run.agent_version}`],
          ["Status", status],
          ["Reason", view.reason ?? run.reason ?? "—"],
          ["Exit code", String(view.exitCode ?? run.exit_code ?? "—")],
          ["Attempt", `${Math.max(run.attempt, view.attempt)} of ${run.max_attempts}`],
          [
            "Trigger",
            replayOf ? (
              <>
                replay of{" "}
                <Link href={paths.run(replayOf)} class="mono">
                  {replayOf}
                </Link>
              </>
            ) : (
              run.trigger
            ),
          ],
          ["Created", dateTime(run.created_at)],
          ["Started", dateTime(run.started_at)],
          ["Finished", dateTime(run.finished_at)],
          ["Duration", duration(span(run.started_at, run.finished_at, now.value))],
          [
            "Credits",
            bill ? `${credits(bill.spent)}${bill.reserved > 0 ? ` (+${credits(bill.reserved)} held)` : ""}` : "…",
          ],
          [
            "Parent",
            run.parent_run_id ? (
              <Link href={paths.run(run.parent_run_id)} class="mono">
                {run.parent_run_id}
              </Link>
            ) : (
              "—"
            ),
          ],
          [
            "Root",
            run.root_run_id && run.root_run_id !== run.id ? (
              <Link href={paths.run(run.root_run_id)} class="mono">
                {run.root_run_id}
              </Link>
            ) : (
              "—"
            ),
          ],
        ]}
      />
      {children.length > 0 ? (
        <p class="children">
          Child runs:{" "}
          {children.map((c) => (
            <span key={c.id} class="child">
              <Link href={paths.run(c.id)} class="mono">
                {c.id}
              </Link>{" "}
              <Status status={c.status} />
            </span>
          ))}
        </p>
      ) : null}
      <div class="tabs" role="tablist">
        {TABS.map((t) => (
          <button
            key={t}
            type="button"
            role="tab"
            aria-selected={tab === t}
            class={tab === t ? "current" : ""}
            onClick={() => setTab(t)}
          >
            {t === "io" ? "input & result" : t}
            {t === "log" ? ` (${view.log.lines.length})` : ""}
            {t === "artifacts" ? ` (${artifacts.length})` : ""}
            {t === "model calls" ? ` (${view.llmCalls.length})` : ""}
            {t === "bridge calls" ? ` (${view.bridgeCalls.length})` : ""}
            {t === "MCP calls" ? ` (${view.mcpCalls.length})` : ""}
          </button>
        ))}
      </div>
      <div class="tab-body" role="tabpanel">
        {tab === "timeline" && <Waterfall timeline={view.timeline} now={now.value} />}
        {tab === "log" && <LogPane log={view.log} version={version} runId={run.id} />}
        {tab === "io" && (
          <div class="io">
            <Section title="Input">
              {run.input === undefined || run.input === null ? (
                <Empty>No input.</Empty>
              ) : (
                <JsonTree value={run.input} label="Input" />
              )}
            </Section>
            <Section title="Result">
              {view.hasResult ? (
                <JsonTree value={view.result} label="Result" />
              ) : (
                <Empty>No result: an agent gives one with a `result` event.</Empty>
              )}
            </Section>
          </div>
        )}
        {tab === "artifacts" && <Artifacts artifacts={artifacts} />}
        {tab === "model calls" && <ModelCalls view={view} bill={bill} />}
        {tab === "bridge calls" && <BridgeCalls view={view} />}
        {tab === "MCP calls" &&
          (view.mcpCalls.length === 0 ? <Empty>No MCP calls.</Empty> : <McpCallsTable calls={view.mcpCalls} />)}
      </div>
    </div>
  );
}

function RunActions({ run, status, onChanged }: { run: Run; status: string; onChanged: () => Promise<unknown> }) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState("");
  const [parseError, setParseError] = useState<string | null>(null);
  const canReplay = caps.value.has("post", "/v1/runs/{id}/replay");
  const replay = async (body: unknown) => {
    const created = await api.send<Run>("POST", `/v1/runs/${run.id}/replay`, body);
    navigate(paths.run(created.id));
  };
  return (
    <div class="actions">
      {cancelable({ ...run, status: status as Run["status"] }) ? (
        <ActionButton
          label="Cancel"
          class="danger"
          confirm="Cancel this run?"
          onAction={async () => {
            await api.send("POST", `/v1/runs/${run.id}/cancel`, {});
            await onChanged();
          }}
        />
      ) : null}
      {canReplay ? (
        <>
          <ActionButton label="Replay" onAction={() => replay({})} />
          <button
            type="button"
            onClick={() => {
              setText(JSON.stringify(run.input ?? null, null, 2));
              setEditing(!editing);
            }}
          >
            Replay with edited input
          </button>
        </>
      ) : null}
      {editing ? (
        <form
          class="replay-form"
          onSubmit={(e) => {
            e.preventDefault();
          }}
        >
          <label for="replay-input">Input (JSON)</label>
          <textarea
            id="replay-input"
            rows={8}
            value={text}
            onInput={(e) => {
              setText(e.currentTarget.value);
              setParseError(null);
            }}
          />
          {parseError ? <p class="error">{parseError}</p> : null}
          <ActionButton
            label="Replay with this input"
            onAction={async () => {
              let input: unknown;
              try {
                input = JSON.parse(text);
              } catch (err) {
                setParseError(`Not JSON: ${(err as Error).message}`);
                return;
              }
              await replay({ input });
            }}
          />
        </form>
      ) : null}
    </div>
  );
}

function ModelCalls({ view, bill }: { view: RunView; bill: RunCredits | null }) {
  if (view.llmCalls.length === 0) return <Empty>No model calls.</Empty>;
  return (
    <div>
      {bill ? (
        <p>
          Billed: {credits(bill.spent)} credits over {bill.calls.length} call(s)
          {bill.reserved > 0 ? `, ${credits(bill.reserved)} held by calls in flight` : ""}.
        </p>
      ) : null}
      <ModelCallsTable calls={view.llmCalls} />
    </div>
  );
}

function BridgeCalls({ view }: { view: RunView }) {
  if (view.bridgeCalls.length === 0) return <Empty>No bridge calls.</Empty>;
  return <BridgeCallsTable calls={view.bridgeCalls} />;
}
