/**
 * The runs list: filters kept in the URL, cursor paging, kept current by polling its page (new runs
 * appear on top, status changes in place), and bulk cancel.
 */
import type { Agent, Run } from "@paddock/protocol";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ActionButton, Empty, ErrorNote, Link, Status, useLoad } from "../components/ui.tsx";
import { credits, dateTime, duration, span } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { cancelable, mergeRuns } from "../lib/runs-live.ts";
import {
  activeCount,
  FILTER_PARAMS,
  formatFilters,
  parseFilters,
  RANGES,
  type RunFilters,
  runsQuery,
  STATUSES,
  TRIGGERS,
  withFilter,
} from "../lib/url-state.ts";
import { api, caps, here, navigate, now } from "../state.ts";

const POLL_MS = 2000;
const PAGE = 50;

/** Runs' bills, by run id: a finished run's is final. */
const bills = new Map<string, { spent: number; final: boolean; at: number }>();

type Page = { data: Run[]; next_cursor: string | null };

export function RunsPage() {
  const filters = useMemo(() => parseFilters(here.value.search), [here.value.search]);
  const takes = (param: string) => caps.value.takes("get", "/v1/runs", param);
  const setFilters = (patch: Partial<RunFilters>) =>
    navigate(paths.runs(formatFilters(withFilter(filters, patch))), { replace: !("cursor" in patch) });

  const agents = useLoad(() => api.get<{ data: Agent[] }>("/v1/agents", { limit: 200, archived: "true" }), []);
  const agentName = useMemo(() => new Map((agents.data?.data ?? []).map((a) => [a.id, a.name])), [agents.data]);

  const [runs, setRuns] = useState<Run[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [, setBillsVersion] = useState(0);
  const { query, unsupported } = runsQuery(filters, Date.now(), takes, PAGE);
  const queryKey = JSON.stringify({ ...query, created_after: filters.range || query.created_after });
  const listRef = useRef<Run[] | null>(null);
  listRef.current = runs;

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    setRuns(null);
    setSelected(new Set());
    const load = async (first: boolean) => {
      try {
        const { query: q } = runsQuery(filters, Date.now(), takes, PAGE);
        const page = await api.get<Page>("/v1/runs", q);
        if (stopped) return;
        setRuns(first ? page.data : mergeRuns(listRef.current ?? [], page.data, !filters.cursor));
        if (first) setNext(page.next_cursor);
        setError(null);
        void fetchBills(page.data, () => !stopped && setBillsVersion((v) => v + 1));
      } catch (err) {
        if (!stopped) setError(err);
      }
      // Poll while the page is seen; a hidden tab waits until it is shown again.
      if (!stopped) timer = setTimeout(() => void poll(), POLL_MS);
    };
    const poll = async () => {
      if (document.hidden) {
        timer = setTimeout(() => void poll(), POLL_MS);
        return;
      }
      await load(false);
    };
    void load(true);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [queryKey, caps.value]);

  const toCancel = (runs ?? []).filter((r) => selected.has(r.id) && cancelable(r));
  const toggle = (id: string) => {
    const s = new Set(selected);
    if (s.has(id)) s.delete(id);
    else s.add(id);
    setSelected(s);
  };

  return (
    <div class="page" data-page="runs" data-ready={runs !== null ? "true" : undefined}>
      <header class="page-head">
        <h1>Runs</h1>
        <div class="actions">
          <ActionButton
            label={`Cancel ${toCancel.length} selected`}
            disabled={toCancel.length === 0}
            confirm={`Cancel ${toCancel.length} run(s)?`}
            class="danger"
            onAction={async () => {
              const failed: string[] = [];
              for (const r of toCancel) {
                await api.send("POST", `/v1/runs/${r.id}/cancel`, {}).catch(() => failed.push(r.id));
              }
              setSelected(new Set());
              if (failed.length > 0) throw new Error(`Could not cancel ${failed.join(", ")}.`);
            }}
          />
        </div>
      </header>
      <Filters filters={filters} agents={agents.data?.data ?? []} takes={takes} setFilters={setFilters} />
      {unsupported.length > 0 ? (
        <p class="note">
          This host cannot filter by {unsupported.map((u) => FILTER_PARAMS[u]).join(", ")}; those filters are left out.
        </p>
      ) : null}
      <ErrorNote error={error} />
      {runs === null ? (
        <p class="loading">Loading runs…</p>
      ) : runs.length === 0 ? (
        <Empty>
          No runs{activeCount(filters) > 0 ? " match these filters" : " yet"}.{" "}
          {activeCount(filters) > 0 ? <Link href={paths.runs()}>Clear the filters.</Link> : null}
        </Empty>
      ) : (
        <table class="runs">
          <thead>
            <tr>
              <th>
                <input
                  type="checkbox"
                  aria-label="Select all"
                  checked={runs.length > 0 && runs.every((r) => selected.has(r.id))}
                  onChange={(e) => setSelected(new Set(e.currentTarget.checked ? runs.map((r) => r.id) : []))}
                />
              </th>
              <th>Run</th>
              <th>Agent</th>
              <th>Status</th>
              <th>Trigger</th>
              <th>Created</th>
              <th class="num">Duration</th>
              <th class="num">Attempts</th>
              <th class="num">Credits</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.id} data-run={r.id} data-status={r.status}>
                <td>
                  <input
                    type="checkbox"
                    aria-label={`Select ${r.id}`}
                    checked={selected.has(r.id)}
                    onChange={() => toggle(r.id)}
                  />
                </td>
                <td>
                  <Link href={paths.run(r.id)} class="mono">
                    {r.id}
                  </Link>
                  {r.parent_run_id ? <span class="tag">child</span> : null}
                </td>
                <td>
                  <Link href={paths.agent(r.agent_id)}>{agentName.get(r.agent_id) ?? r.agent_id}</Link>
                  <span class="muted"> v{r.agent_version}</span>
                </td>
                <td>
                  <Status status={r.status} />
                  {r.reason && r.reason !== "completed" && r.reason !== r.status ? (
                    <span class="muted"> {r.reason}</span>
                  ) : null}
                </td>
                <td>{r.trigger}</td>
                <td title={r.created_at}>{dateTime(r.created_at)}</td>
                <td class="num">{duration(span(r.started_at, r.finished_at, now.value))}</td>
                <td class="num">
                  {r.attempt}/{r.max_attempts}
                </td>
                <td class="num">{bills.has(r.id) ? credits(bills.get(r.id)?.spent) : "…"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <nav class="pager">
        {filters.cursor ? (
          <Link href={paths.runs(formatFilters(withFilter(filters, { cursor: "" })))}>Newest</Link>
        ) : null}
        {next ? (
          <Link href={paths.runs(formatFilters(withFilter(filters, { cursor: next })))} rel="next">
            Older
          </Link>
        ) : null}
      </nav>
    </div>
  );
}

function Filters(props: {
  filters: RunFilters;
  agents: Agent[];
  takes: (param: string) => boolean;
  setFilters: (patch: Partial<RunFilters>) => void;
}) {
  const { filters: f, takes, setFilters } = props;
  const [q, setQ] = useState(f.q);
  useEffect(() => setQ(f.q), [f.q]);
  const localTime = (iso: string) => (iso ? new Date(iso).toISOString().slice(0, 16) : "");
  return (
    <form
      class="filters"
      onSubmit={(e) => {
        e.preventDefault();
        setFilters({ q: q.trim() });
      }}
    >
      <label>
        Status
        <select
          value={f.status}
          onChange={(e) => setFilters({ status: e.currentTarget.value as RunFilters["status"] })}
        >
          <option value="">any</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </label>
      <label>
        Agent
        <select value={f.agent} onChange={(e) => setFilters({ agent: e.currentTarget.value })}>
          <option value="">any</option>
          {props.agents.map((a) => (
            <option key={a.id} value={a.id}>
              {a.name}
              {a.archived_at ? " (deleted)" : ""}
            </option>
          ))}
        </select>
      </label>
      {takes("trigger") ? (
        <label>
          Trigger
          <select
            value={f.trigger}
            onChange={(e) => setFilters({ trigger: e.currentTarget.value as RunFilters["trigger"] })}
          >
            <option value="">any</option>
            {TRIGGERS.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </label>
      ) : null}
      {takes("created_after") ? (
        <>
          <label>
            Created
            <select
              value={f.range || (f.from || f.to ? "custom" : "")}
              onChange={(e) => {
                const v = e.currentTarget.value;
                if (v === "custom") setFilters({ from: new Date(Date.now() - 86_400_000).toISOString(), to: "" });
                else setFilters({ range: v as RunFilters["range"], from: "", to: "" });
              }}
            >
              <option value="">any time</option>
              {Object.keys(RANGES).map((r) => (
                <option key={r} value={r}>
                  last {r}
                </option>
              ))}
              <option value="custom">between…</option>
            </select>
          </label>
          {f.from || f.to ? (
            <>
              <label>
                From (UTC)
                <input
                  type="datetime-local"
                  value={localTime(f.from)}
                  onChange={(e) => setFilters({ from: e.currentTarget.value ? `${e.currentTarget.value}:00Z` : "" })}
                />
              </label>
              <label>
                To (UTC)
                <input
                  type="datetime-local"
                  value={localTime(f.to)}
                  onChange={(e) => setFilters({ to: e.currentTarget.value ? `${e.currentTarget.value}:00Z` : "" })}
                />
              </label>
            </>
          ) : null}
        </>
      ) : null}
      {takes("parent_run_id") ? (
        <label>
          Parent run
          <input
            value={f.parent}
            placeholder="run_…"
            size={14}
            onChange={(e) => setFilters({ parent: e.currentTarget.value.trim() })}
          />
        </label>
      ) : null}
      {takes("root_run_id") ? (
        <label>
          Root run
          <input
            value={f.root}
            placeholder="run_…"
            size={14}
            onChange={(e) => setFilters({ root: e.currentTarget.value.trim() })}
          />
        </label>
      ) : null}
      {takes("id_prefix") ? (
        <label>
          Run id
          <input
            type="search"
            value={q}
            placeholder="run_… (start of the id)"
            onInput={(e) => setQ(e.currentTarget.value)}
          />
        </label>
      ) : null}
      {activeCount(f) > 0 ? (
        <Link href={paths.runs()} class="clear">
          Clear filters
        </Link>
      ) : null}
    </form>
  );
}

/** Fetches the bills of runs not known yet (or still going), a few at a time. */
async function fetchBills(runs: Run[], changed: () => void): Promise<void> {
  const stale = runs.filter((r) => {
    const b = bills.get(r.id);
    return !b || (!b.final && Date.now() - b.at > 10_000);
  });
  const queue = [...stale];
  const worker = async () => {
    for (let r = queue.shift(); r; r = queue.shift()) {
      try {
        const bill = await api.get<{ spent: number }>(`/v1/runs/${r.id}/credits`);
        const final =
          r.status === "succeeded" || r.status === "failed" || r.status === "timed_out" || r.status === "canceled";
        bills.set(r.id, { spent: bill.spent, final, at: Date.now() });
      } catch {
        bills.set(r.id, { spent: Number.NaN, final: true, at: Date.now() });
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  if (stale.length > 0) changed();
}
