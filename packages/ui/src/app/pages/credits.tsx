/**
 * Credits: the tenant's balance, each agent's spending against its budget, spending per agent over
 * time (from the model calls, where the host lists them), a run's bill, and grants (admin).
 */
import type { Balance, CreditsView, RunCredits, Tenant } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { type ModelCallRow, ModelCallsTable } from "../components/calls.tsx";
import { ActionButton, Empty, ErrorNote, Facts, Link, Section, useLoad } from "../components/ui.tsx";
import { niceTicks, scale, spendSeries, stack } from "../lib/chart.ts";
import { credits, dateTime } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { api, caps, session } from "../state.ts";

const SERIES_COLORS = ["#2f7d5b", "#3b6fb6", "#c77d1d", "#8a4fb0", "#b8434b", "#4a9aa5", "#777"];

export function CreditsPage() {
  const view = useLoad(() => api.get<CreditsView>("/v1/credits"), []);
  const b = view.data?.tenant;
  const names = new Map((view.data?.agents ?? []).map((a) => [a.agent_id, a.name]));
  return (
    <div class="page" data-page="credits">
      <header class="page-head">
        <h1>Credits</h1>
      </header>
      <ErrorNote error={view.error} />
      {b ? (
        <Facts
          items={[
            ["Available", <strong data-testid="available">{credits(b.available)}</strong>],
            ["Granted", credits(b.granted)],
            ["Spent", credits(b.spent)],
            ["Held by calls in flight", credits(b.reserved)],
          ]}
        />
      ) : null}
      <Section title="Spending per agent">
        {view.data && view.data.agents.length > 0 ? <AgentBars agents={view.data.agents} /> : <Empty>No agents.</Empty>}
      </Section>
      {caps.value.has("get", "/v1/stats") ? <SpendOverTime names={names} /> : null}
      {caps.value.has("get", "/v1/llm-calls") ? <RecentModelCalls names={names} /> : null}
      <RunBill />
      {session.value?.role === "admin" ? <Grants onGranted={view.reload} /> : null}
    </div>
  );
}

function AgentBars({ agents }: { agents: CreditsView["agents"] }) {
  const max = Math.max(1e-9, ...agents.map((a) => Math.max(a.spent + a.reserved, a.budget.total ?? 0)));
  const x = scale(0, max, 0, 600);
  const rowH = 24;
  return (
    <table class="agent-spend">
      <thead>
        <tr>
          <th>Agent</th>
          <th class="num">Spent</th>
          <th class="num">Held</th>
          <th class="num">Budget</th>
          <th>Spent of the largest</th>
        </tr>
      </thead>
      <tbody>
        {agents.map((a) => (
          <tr key={a.agent_id}>
            <td>
              <Link href={paths.agent(a.agent_id)}>{a.name}</Link>
            </td>
            <td class="num">{credits(a.spent)}</td>
            <td class="num">{credits(a.reserved)}</td>
            <td class="num">
              {a.budget.total === undefined ? "—" : `${credits(a.budget.total)} total`}
              {a.budget.per_run === undefined ? "" : `, ${credits(a.budget.per_run)} per run`}
            </td>
            <td>
              <svg
                class="spend-bar"
                viewBox={`0 0 600 ${rowH}`}
                preserveAspectRatio="none"
                role="img"
                aria-label={`${a.name}: ${credits(a.spent)} spent`}
              >
                <rect x={0} y={6} width={x(a.spent)} height={rowH - 12} class="spent" />
                <rect x={x(a.spent)} y={6} width={x(a.reserved)} height={rowH - 12} class="held" />
                {a.budget.total !== undefined ? (
                  <rect x={x(a.budget.total) - 1} y={0} width={2} height={rowH} class="budget" />
                ) : null}
              </svg>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** What the chart reads of GET /v1/stats: its buckets, each with the credits spent by agent id. */
interface StatsView {
  buckets: { start: string; end: string; spent: number; spent_by_agent: Record<string, number> }[];
}

const SPANS = {
  "24h": { ms: 86_400_000, bucket_s: 3600 },
  "7d": { ms: 7 * 86_400_000, bucket_s: 6 * 3600 },
  "30d": { ms: 30 * 86_400_000, bucket_s: 86_400 },
} as const;

function SpendOverTime({ names }: { names: Map<string, string> }) {
  const [span, setSpan] = useState<keyof typeof SPANS>("24h");
  const stats = useLoad(
    () =>
      api.get<StatsView>("/v1/stats", {
        from: new Date(Date.now() - SPANS[span].ms).toISOString(),
        bucket_s: SPANS[span].bucket_s,
      }),
    [span],
  );
  const buckets = stats.data?.buckets ?? [];
  const series = spendSeries(buckets, (id) => names.get(id) ?? id);
  const tops = stack(series, buckets.length);
  const totals = tops.at(-1) ?? [];
  const maxY = Math.max(1e-9, ...totals);
  const W = 720;
  const H = 180;
  const y = scale(0, maxY, H - 20, 6);
  const bw = (W - 50) / Math.max(1, buckets.length);
  return (
    <Section
      title="Spending over time"
      actions={
        <select value={span} aria-label="Period" onChange={(e) => setSpan(e.currentTarget.value as keyof typeof SPANS)}>
          {Object.keys(SPANS).map((k) => (
            <option key={k} value={k}>
              last {k}
            </option>
          ))}
        </select>
      }
    >
      <ErrorNote error={stats.error} />
      {series.length === 0 ? (
        <Empty>Nothing spent in this period.</Empty>
      ) : (
        <figure class="chart">
          <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label="Credits spent per agent over time">
            {niceTicks(0, maxY, 4).map((t) => (
              <g key={t}>
                <line x1={50} x2={W} y1={y(t)} y2={y(t)} class="grid" />
                <text x={44} y={y(t) + 4} class="tick" text-anchor="end">
                  {credits(t)}
                </text>
              </g>
            ))}
            {series.map((s, si) =>
              s.values.map((v, i) => {
                if (v <= 0) return null;
                const top = tops[si]?.[i] ?? 0;
                return (
                  <rect
                    key={`${s.name}-${buckets[i]?.start}`}
                    x={50 + i * bw + 1}
                    y={y(top)}
                    width={Math.max(1, bw - 2)}
                    height={y(top - v) - y(top)}
                    fill={SERIES_COLORS[si % SERIES_COLORS.length]}
                  >
                    <title>{`${s.name}: ${credits(v)} (${dateTime(buckets[i]?.start)})`}</title>
                  </rect>
                );
              }),
            )}
            <text x={50} y={H - 4} class="tick">
              {dateTime(buckets[0]?.start)}
            </text>
            <text x={W} y={H - 4} class="tick" text-anchor="end">
              {dateTime(buckets.at(-1)?.end)}
            </text>
          </svg>
          <figcaption>
            {series.map((s, i) => (
              <span key={s.name} class="legend">
                <svg width="10" height="10" aria-hidden="true">
                  <rect width="10" height="10" fill={SERIES_COLORS[i % SERIES_COLORS.length]} />
                </svg>{" "}
                {s.name}
              </span>
            ))}
          </figcaption>
        </figure>
      )}
    </Section>
  );
}

function RecentModelCalls({ names }: { names: Map<string, string> }) {
  const calls = useLoad(() => api.get<{ data: ModelCallRow[] }>("/v1/llm-calls", { limit: 25 }), []);
  return (
    <Section title="Recent model calls">
      <ErrorNote error={calls.error} />
      {(calls.data?.data ?? []).length === 0 ? (
        <Empty>No model calls yet.</Empty>
      ) : (
        <ModelCallsTable calls={calls.data?.data ?? []} agentName={(id) => names.get(id) ?? id} />
      )}
    </Section>
  );
}

function RunBill() {
  const [id, setId] = useState("");
  const [bill, setBill] = useState<RunCredits | null>(null);
  const [error, setError] = useState<unknown>(null);
  return (
    <Section title="A run's bill">
      <form
        class="filters"
        onSubmit={async (e) => {
          e.preventDefault();
          setError(null);
          try {
            setBill(await api.get<RunCredits>(`/v1/runs/${encodeURIComponent(id.trim())}/credits`));
          } catch (err) {
            setBill(null);
            setError(err);
          }
        }}
      >
        <label>
          Run id
          <input value={id} placeholder="run_…" onInput={(e) => setId(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={id.trim() === ""}>
          Show
        </button>
      </form>
      <ErrorNote error={error} />
      {bill ? (
        <>
          <p>
            <Link href={paths.run(bill.run_id)} class="mono">
              {bill.run_id}
            </Link>
            : {credits(bill.spent)} spent{bill.reserved > 0 ? `, ${credits(bill.reserved)} held` : ""}.
          </p>
          {bill.calls.length === 0 ? (
            <Empty>No model calls.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Time</th>
                  <th>Provider</th>
                  <th>Model</th>
                  <th class="num">Tokens in</th>
                  <th class="num">Tokens out</th>
                  <th class="num">Credits</th>
                  <th>State</th>
                </tr>
              </thead>
              <tbody>
                {bill.calls.map((c) => (
                  <tr key={c.call_id}>
                    <td>{dateTime(c.created_at)}</td>
                    <td>{c.provider}</td>
                    <td>{c.model}</td>
                    <td class="num">{c.input_tokens}</td>
                    <td class="num">{c.output_tokens}</td>
                    <td class="num">{credits(c.cost)}</td>
                    <td>{c.status}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      ) : null}
    </Section>
  );
}

function Grants({ onGranted }: { onGranted: () => Promise<void> }) {
  const tenants = useLoad(() => api.get<{ data: Tenant[] }>("/v1/tenants"), []);
  const [tenant, setTenant] = useState("");
  const [amount, setAmount] = useState("");
  const [note, setNote] = useState("");
  const [result, setResult] = useState<Balance | null>(null);
  return (
    <Section title="Grant credits (admin)">
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Tenant
          <select value={tenant} onChange={(e) => setTenant(e.currentTarget.value)}>
            <option value="">choose…</option>
            {(tenants.data?.data ?? []).map((t) => (
              <option key={t.id} value={t.id}>
                {t.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Credits (negative takes back)
          <input type="number" step="any" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />
        </label>
        <label>
          Note
          <input value={note} maxLength={500} onInput={(e) => setNote(e.currentTarget.value)} />
        </label>
        <ActionButton
          label="Grant"
          disabled={!tenant || !Number(amount)}
          onAction={async () => {
            setResult(
              await api.send<Balance>("POST", "/v1/credits/grants", {
                tenant,
                credits: Number(amount),
                ...(note.trim() ? { note: note.trim() } : {}),
              }),
            );
            setAmount("");
            await onGranted();
          }}
        />
      </form>
      {result ? <p class="note">The tenant now has {credits(result.available)} credits available.</p> : null}
    </Section>
  );
}
