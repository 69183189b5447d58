/**
 * Approvals: the calls agents' runs wait on, each shown as the host would send it (the credential
 * as its secret's name, the body as a preview with its size and sha256), approved or denied with a
 * note here. Everything is rendered as text; nothing the agent sent is markup.
 */
import type { Approval } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { ActionButton, Empty, ErrorNote, Facts, Link, Section, useLoad } from "../components/ui.tsx";
import { dateTime } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { api } from "../state.ts";

const STATUSES = ["pending", "approved", "denied", "expired", "canceled"] as const;
type ApprovalPage = { data: Approval[]; next_cursor: string | null };

export function ApprovalsPage() {
  const [status, setStatus] = useState<(typeof STATUSES)[number]>("pending");
  const list = useLoad(() => api.get<ApprovalPage>("/v1/approvals", { status, limit: 50 }), [status]);
  return (
    <div class="page" data-page="approvals">
      <header class="page-head">
        <h1>Approvals</h1>
        <label>
          Status{" "}
          <select
            value={status}
            onChange={(e) => setStatus((e.currentTarget as HTMLSelectElement).value as (typeof STATUSES)[number])}
          >
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
      </header>
      <ErrorNote error={list.error} />
      {list.data && list.data.data.length === 0 ? <Empty>No {status} approvals.</Empty> : null}
      {(list.data?.data ?? []).map((a) => (
        <ApprovalCard key={a.id} approval={a} onDecided={list.reload} />
      ))}
    </div>
  );
}

function ApprovalCard({ approval: a, onDecided }: { approval: Approval; onDecided: () => unknown }) {
  const [note, setNote] = useState("");
  const r = a.request;
  const decide = (decision: "approve" | "deny") => async () => {
    await api.send("POST", `/v1/approvals/${encodeURIComponent(a.id)}`, {
      decision,
      ...(note.trim() ? { note: note.trim() } : {}),
    });
    await onDecided();
  };
  return (
    <Section title={`${r.kind} ${r.method} ${r.target}`} id={a.id}>
      <Facts
        items={[
          ["Status", <strong data-testid="approval-status">{a.status}</strong>],
          ["Run", <Link href={paths.run(a.run_id)}>{a.run_id}</Link>],
          ["Attempt", String(a.attempt)],
          ["Asked", dateTime(a.created_at)],
          ["Expires", dateTime(a.expires_at)],
          ["Approvers", a.rule.approvers.join(", ")],
          ["Decided", a.decided_at ? `${dateTime(a.decided_at)} (${a.decided_by?.via ?? ""})` : null],
          ["Note", a.note],
        ]}
      />
      <h3>Request</h3>
      <pre class="approval-request">{`${r.method} ${r.url ?? `${r.path}${r.query ? `?${r.query}` : ""}`}\n${Object.entries(
        r.headers,
      )
        .map(([k, v]) => `${k}: ${v}`)
        .join("\n")}`}</pre>
      {r.credits ? (
        <p>
          May cost up to {r.credits.reserve} credits; the run has spent {r.credits.run_spent} (asks above{" "}
          {r.credits.approve_above}).
        </p>
      ) : null}
      <p>
        Body: {r.body.size} bytes{r.body.binary ? ", binary (base64 below)" : ""}
        {r.body.truncated ? ", shown in part" : ""}; sha256 <code>{r.body.sha256}</code>
      </p>
      {r.body.size > 0 ? <pre class="approval-body">{r.body.preview}</pre> : null}
      {a.status === "pending" ? (
        <div class="actions">
          <input
            type="text"
            placeholder="Note (shown to the agent when denied)"
            value={note}
            maxLength={2000}
            onInput={(e) => setNote((e.currentTarget as HTMLInputElement).value)}
          />
          <ActionButton label="Approve" onAction={decide("approve")} />
          <ActionButton label="Deny" class="danger" onAction={decide("deny")} />
        </div>
      ) : null}
    </Section>
  );
}
