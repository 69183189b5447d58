/**
 * One agent: a form to run it now, its definition (what it runs, policy, budget, limits, retry),
 * the MCP tools its policy names as pinned, with a re-pin that shows what changed,
 * its definition versions and what changed between them, its environment versions with rollback,
 * its schedules (next fire time, pause and resume, recent runs), its webhooks and recent runs.
 */
import type { Agent, AgentVersion, McpPinDiff, Run, Schedule, Snapshot, Webhook } from "@paddock/protocol";
import { useMemo, useState } from "preact/hooks";
import { JsonTree } from "../components/json-tree.tsx";
import { McpPinChanges } from "../components/mcp.tsx";
import { ActionButton, Empty, ErrorNote, Facts, Link, Section, Status, useLoad } from "../components/ui.tsx";
import { diffLines } from "../lib/diff.ts";
import { ago, bytes, dateTime, duration, span } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { api, caps, navigate, now } from "../state.ts";

export function AgentPage({ id }: { id: string }) {
  const agent = useLoad(() => api.get<Agent>(`/v1/agents/${id}`), [id]);
  const a = agent.data;
  if (agent.error && !a) {
    return (
      <div class="page">
        <ErrorNote error={agent.error} />
        <Link href={paths.agents()}>All agents</Link>
      </div>
    );
  }
  if (!a) return <p class="loading">Loading agent…</p>;
  return (
    <div class="page" data-page="agent" data-agent={a.id}>
      <header class="page-head">
        <h1>
          {a.name} <span class="muted">v{a.version}</span>
          {a.archived_at ? <span class="tag">deleted {dateTime(a.archived_at)}</span> : null}
        </h1>
        <div class="actions">
          <Link href={paths.runs(`?agent=${a.id}`)}>Its runs</Link>
        </div>
      </header>
      {a.archived_at ? null : <RunNow agent={a} />}
      <Definition agent={a} />
      {(a.policy.mcp ?? []).length > 0 ? <McpTools agent={a} onChanged={agent.reload} /> : null}
      {caps.value.has("get", "/v1/agents/{id}/versions") ? <Versions agent={a} /> : null}
      <Environments agent={a} onChanged={agent.reload} />
      <Schedules agent={a} />
      <Webhooks agent={a} />
      <RecentRuns agentId={a.id} />
    </div>
  );
}

function RunNow({ agent }: { agent: Agent }) {
  const [text, setText] = useState("{}");
  const parsed = useMemo(() => {
    if (text.trim() === "") return { ok: true as const, value: undefined };
    try {
      return { ok: true as const, value: JSON.parse(text) as unknown };
    } catch (err) {
      return { ok: false as const, message: (err as Error).message };
    }
  }, [text]);
  return (
    <Section title="Run now" id="run-now">
      <form class="run-now" onSubmit={(e) => e.preventDefault()}>
        <label for="run-input">Input (JSON; empty for none)</label>
        <textarea
          id="run-input"
          rows={6}
          spellcheck={false}
          value={text}
          onInput={(e) => setText(e.currentTarget.value)}
        />
        {parsed.ok ? null : <p class="error">Not JSON yet: {parsed.message}</p>}
        <ActionButton
          label="Run"
          busyLabel="Starting…"
          disabled={!parsed.ok}
          onAction={async () => {
            if (!parsed.ok) return;
            const run = await api.send<Run>(
              "POST",
              `/v1/agents/${agent.id}/runs`,
              parsed.value === undefined ? {} : { input: parsed.value },
            );
            navigate(paths.run(run.id));
          }}
        />
      </form>
    </Section>
  );
}

function Definition({ agent: a }: { agent: Agent }) {
  return (
    <Section title="Definition">
      <Facts
        items={[
          ["Id", <span class="mono">{a.id}</span>],
          ["Runs", a.builtin ? "the built-in agent" : "its own command (below)"],
          ...(a.builtin
            ? ([
                ["Model", a.builtin.model],
                ["Tools", a.builtin.tools.join(", ")],
                ["Most steps", String(a.builtin.max_steps)],
              ] as [string, string][])
            : []),
          ["Runs at once", a.max_concurrent_runs === null ? "no limit of its own" : String(a.max_concurrent_runs)],
          ["Queue expiry", a.queue_ttl_s === null ? "never" : duration(a.queue_ttl_s * 1000)],
          [
            "Files",
            a.files.length === 0 ? "none" : `${a.files.length} (${bytes(a.files.reduce((n, f) => n + f.size, 0))})`,
          ],
          ["Created", dateTime(a.created_at)],
        ]}
      />
      {a.builtin ? null : (
        <>
          <h3>Command</h3>
          <pre class="wrap command">{a.command.join(" ")}</pre>
        </>
      )}
      {a.builtin ? (
        <details>
          <summary>Instructions</summary>
          <pre class="wrap">{a.builtin.instructions}</pre>
        </details>
      ) : null}
      <div class="grid">
        <div>
          <h3>Policy</h3>
          <JsonTree value={a.policy} label="Policy" />
        </div>
        <div>
          <h3>Budget</h3>
          {Object.keys(a.budget).length === 0 ? (
            <p class="muted">None: the tenant's balance bounds it.</p>
          ) : (
            <JsonTree value={a.budget} label="Budget" />
          )}
        </div>
        <div>
          <h3>Limits</h3>
          <JsonTree value={a.limits} label="Limits" />
        </div>
        <div>
          <h3>Retry</h3>
          <JsonTree value={a.retry} label="Retry" />
        </div>
        <div>
          <h3>Environment variables</h3>
          {Object.keys(a.env).length === 0 ? (
            <p class="muted">None.</p>
          ) : (
            <JsonTree value={a.env} label="Environment" />
          )}
        </div>
      </div>
    </Section>
  );
}

/**
 * The MCP servers its policy names and the tools pinned of each. Re-pinning is two steps: the
 * differences from the servers' definitions now are shown first (a dry run, nothing taken), and
 * only those reviewed definitions are pinned (bound by their digest: a server that changes them
 * again in between gets nothing pinned).
 */
function McpTools({ agent: a, onChanged }: { agent: Agent; onChanged: () => Promise<unknown> }) {
  const [review, setReview] = useState<McpPinDiff | null>(null);
  const [diff, setDiff] = useState<McpPinDiff | null>(null);
  const pins = a.mcp_pins ?? {};
  const canRepin = !a.archived_at && caps.value.has("post", "/v1/agents/{id}/mcp-pin");
  const path = `/v1/agents/${a.id}/mcp-pin`;
  const changes = review ? review.added.length + review.removed.length + review.changed.length : 0;
  return (
    <Section
      title="MCP tools"
      id="mcp-tools"
      actions={
        canRepin ? (
          <ActionButton
            label="Re-pin…"
            busyLabel="Reading the servers…"
            onAction={async () => {
              setDiff(null);
              setReview(await api.send<McpPinDiff>("POST", path, { dry_run: true }));
            }}
          />
        ) : null
      }
    >
      {review ? (
        <div class="mcp-review" data-review={review.pins_sha256}>
          <h3>What pinning now would change</h3>
          <McpPinChanges diff={review} />
          <div class="actions">
            {changes > 0 ? (
              <ActionButton
                label="Pin these definitions"
                busyLabel="Pinning…"
                class="danger"
                confirm="Runs will be offered these tools as described above. Pin them?"
                onAction={async () => {
                  setDiff(await api.send<McpPinDiff>("POST", path, { pins_sha256: review.pins_sha256 }));
                  setReview(null);
                  await onChanged();
                }}
              />
            ) : null}
            <button type="button" onClick={() => setReview(null)}>
              {changes > 0 ? "Cancel" : "Close"}
            </button>
          </div>
        </div>
      ) : null}
      {diff ? (
        <div class="mcp-repinned" data-repinned={diff.version}>
          <h3>What the re-pin changed</h3>
          <McpPinChanges diff={diff} />
        </div>
      ) : null}
      <table class="mcp-pins">
        <thead>
          <tr>
            <th>Server</th>
            <th>Policy</th>
            <th>Pinned tool</th>
            <th>Description (as pinned)</th>
            <th>Hash</th>
          </tr>
        </thead>
        <tbody>
          {(a.policy.mcp ?? []).flatMap((entry) => {
            const pinned = Object.values(pins[entry.server] ?? {});
            const policy = [
              `tools ${entry.tools.join(", ") || "none"}`,
              entry.approval ? `; approval for ${entry.approval.tools.join(", ")}` : "",
              entry.resources ? "; resources" : "",
              entry.prompts ? "; prompts" : "",
            ].join("");
            if (pinned.length === 0) {
              return [
                <tr key={entry.server} data-mcp-entry={entry.server}>
                  <td class="mono">{entry.server}</td>
                  <td class="mono">{policy}</td>
                  <td colSpan={3} class="muted">
                    No tool pinned.
                  </td>
                </tr>,
              ];
            }
            return pinned.map((p, i) => (
              <tr key={`${entry.server}-${p.name}`} data-mcp-entry={entry.server} data-pin={p.name}>
                <td class="mono">{i === 0 ? entry.server : ""}</td>
                <td class="mono">{i === 0 ? policy : ""}</td>
                <td class="mono">{p.name}</td>
                <td class="wrap capped">{p.description ?? "—"}</td>
                <td class="mono" title={p.sha256}>
                  {p.sha256.slice(0, 12)}
                </td>
              </tr>
            ));
          })}
        </tbody>
      </table>
    </Section>
  );
}

function Versions({ agent }: { agent: Agent }) {
  const versions = useLoad(
    () => api.get<{ data: AgentVersion[] }>(`/v1/agents/${agent.id}/versions`),
    [agent.id, agent.version],
  );
  const list = versions.data?.data ?? [];
  const [pair, setPair] = useState<[number, number] | null>(null);
  const newest = list[0]?.version ?? agent.version;
  const [from, to] = pair ?? [Math.max(1, newest - 1), newest];
  const text = (v: number) => JSON.stringify(list.find((x) => x.version === v)?.definition ?? null, null, 2);
  const diff = list.length > 1 ? diffLines(text(from), text(to)) : [];
  return (
    <Section title="Definition versions">
      <ErrorNote error={versions.error} />
      {list.length <= 1 ? (
        <Empty>One version so far.</Empty>
      ) : (
        <>
          <div class="filters">
            {(["From", "To"] as const).map((label, i) => (
              <label key={label}>
                {label}
                <select
                  value={i === 0 ? from : to}
                  onChange={(e) => {
                    const v = Number(e.currentTarget.value);
                    setPair(i === 0 ? [v, to] : [from, v]);
                  }}
                >
                  {list.map((v) => (
                    <option key={v.version} value={v.version}>
                      v{v.version} ({dateTime(v.created_at)})
                    </option>
                  ))}
                </select>
              </label>
            ))}
          </div>
          <pre class="diff">
            {diff.map((l, i) => (
              <div key={i} class={l.op === "+" ? "add" : l.op === "-" ? "del" : ""}>
                {l.op} {l.text}
              </div>
            ))}
          </pre>
        </>
      )}
    </Section>
  );
}

function Environments({ agent, onChanged }: { agent: Agent; onChanged: () => Promise<void> }) {
  const snaps = useLoad(
    () => api.get<{ data: Snapshot[] }>(`/v1/agents/${agent.id}/snapshots`),
    [agent.id, agent.snapshot.version],
  );
  return (
    <Section title="Environment versions">
      <ErrorNote error={snaps.error} />
      <table>
        <thead>
          <tr>
            <th class="num">Version</th>
            <th>Why</th>
            <th class="num">Size</th>
            <th>Made</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {(snaps.data?.data ?? []).map((s) => (
            <tr key={s.version} class={s.current ? "current" : ""}>
              <td class="num">v{s.version}</td>
              <td>
                {s.reason}
                {s.parent_version ? <span class="muted"> from v{s.parent_version}</span> : null}
              </td>
              <td class="num">{bytes(s.env_bytes)}</td>
              <td>{dateTime(s.created_at)}</td>
              <td>
                {s.current ? (
                  <span class="tag">current</span>
                ) : agent.archived_at ? null : (
                  <ActionButton
                    label="Roll back to this"
                    confirm={`Make v${s.version} current again?`}
                    onAction={async () => {
                      await api.send("POST", `/v1/agents/${agent.id}/rollback`, { version: s.version });
                      await snaps.reload();
                      await onChanged();
                    }}
                  />
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </Section>
  );
}

function Schedules({ agent }: { agent: Agent }) {
  const schedules = useLoad(() => api.get<{ data: Schedule[] }>("/v1/schedules"), []);
  const mine = (schedules.data?.data ?? []).filter((s) => s.agent_id === agent.id);
  const scheduled = useLoad(
    () =>
      caps.value.takes("get", "/v1/runs", "trigger")
        ? api.get<{ data: Run[] }>("/v1/runs", { agent_id: agent.id, trigger: "schedule", limit: 5 })
        : Promise.resolve({ data: [] as Run[] }),
    [agent.id, caps.value],
  );
  const setPaused = async (s: Schedule, paused: boolean) => {
    await api.send("POST", `/v1/schedules/${s.id}/${paused ? "pause" : "resume"}`);
    await schedules.reload();
  };
  return (
    <Section title="Schedules">
      <ErrorNote error={schedules.error} />
      {mine.length === 0 ? (
        <Empty>
          No schedules: <code>paddock schedules create {agent.name} --cron "0 9 * * *"</code>.
        </Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Cron</th>
              <th>Time zone</th>
              <th>Overlap</th>
              <th>Next fire</th>
              <th>Last slot</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {mine.map((s) => {
              const next = (s as Schedule & { next_fire_at?: string | null }).next_fire_at ?? s.next_at;
              return (
                <tr key={s.id} data-schedule={s.id}>
                  <td>
                    <code>{s.cron}</code>
                  </td>
                  <td>{s.timezone}</td>
                  <td>{s.overlap}</td>
                  <td title={next ?? ""}>
                    {s.paused ? "paused" : next ? `${dateTime(next)} (${ago(next, now.value)})` : "—"}
                  </td>
                  <td>{dateTime(s.last_slot_at)}</td>
                  <td>
                    <ActionButton label={s.paused ? "Resume" : "Pause"} onAction={() => setPaused(s, !s.paused)} />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {(scheduled.data?.data.length ?? 0) > 0 ? (
        <>
          <h3>Recent scheduled runs</h3>
          <RunList runs={scheduled.data?.data ?? []} />
        </>
      ) : null}
    </Section>
  );
}

function Webhooks({ agent }: { agent: Agent }) {
  const hooks = useLoad(() => api.get<{ data: Webhook[] }>(`/v1/agents/${agent.id}/webhooks`), [agent.id]);
  const [created, setCreated] = useState<Webhook | null>(null);
  return (
    <Section
      title="Webhooks"
      actions={
        agent.archived_at ? null : (
          <ActionButton
            label="Add a webhook"
            onAction={async () => {
              setCreated(await api.send<Webhook>("POST", `/v1/agents/${agent.id}/webhooks`));
              await hooks.reload();
            }}
          />
        )
      }
    >
      <ErrorNote error={hooks.error} />
      {created?.secret ? (
        <div class="note">
          <p>
            The new webhook's signing secret, shown this once: <code>{created.secret}</code>
          </p>
          <p>
            Deliveries go to <code>{`${window.location.origin}${created.path}`}</code>, signed with it.
          </p>
        </div>
      ) : null}
      {(hooks.data?.data ?? []).length === 0 ? (
        <Empty>No webhooks.</Empty>
      ) : (
        <table>
          <tbody>
            {(hooks.data?.data ?? []).map((w) => (
              <tr key={w.id}>
                <td class="mono">{w.path}</td>
                <td>{dateTime(w.created_at)}</td>
                <td>
                  <ActionButton
                    label="Delete"
                    class="danger"
                    confirm="Delete this webhook?"
                    onAction={async () => {
                      await api.send("DELETE", `/v1/webhooks/${w.id}`);
                      await hooks.reload();
                    }}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function RecentRuns({ agentId }: { agentId: string }) {
  const runs = useLoad(() => api.get<{ data: Run[] }>("/v1/runs", { agent_id: agentId, limit: 10 }), [agentId]);
  return (
    <Section title="Recent runs" actions={<Link href={paths.runs(`?agent=${agentId}`)}>All</Link>}>
      <ErrorNote error={runs.error} />
      {(runs.data?.data ?? []).length === 0 ? <Empty>No runs yet.</Empty> : <RunList runs={runs.data?.data ?? []} />}
    </Section>
  );
}

export function RunList({ runs }: { runs: Run[] }) {
  return (
    <table>
      <tbody>
        {runs.map((r) => (
          <tr key={r.id}>
            <td>
              <Link href={paths.run(r.id)} class="mono">
                {r.id}
              </Link>
            </td>
            <td>
              <Status status={r.status} />
            </td>
            <td>{r.trigger}</td>
            <td>{dateTime(r.created_at)}</td>
            <td class="num">{duration(span(r.started_at, r.finished_at, now.value))}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
