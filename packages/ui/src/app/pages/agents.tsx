/** The agents list: each agent's kind, versions and when it was made; deleted ones on request. */
import type { Agent } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { Empty, ErrorNote, Link, useLoad } from "../components/ui.tsx";
import { dateTime } from "../lib/format.ts";
import { paths } from "../lib/router.ts";
import { api } from "../state.ts";

export function AgentsPage() {
  const [archived, setArchived] = useState(false);
  const agents = useLoad(
    () => api.get<{ data: Agent[] }>("/v1/agents", { limit: 200, archived: archived ? "true" : undefined }),
    [archived],
  );
  const list = agents.data?.data ?? [];
  return (
    <div class="page" data-page="agents">
      <header class="page-head">
        <h1>Agents</h1>
        <label class="actions">
          <input type="checkbox" checked={archived} onChange={() => setArchived(!archived)} /> show deleted
        </label>
      </header>
      <ErrorNote error={agents.error} />
      {agents.loading && !agents.data ? <p class="loading">Loading agents…</p> : null}
      {agents.data && list.length === 0 ? (
        <Empty>
          No agents yet: create one with <code>paddock agents create</code>.
        </Empty>
      ) : null}
      {list.length > 0 ? (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>Runs</th>
              <th class="num">Version</th>
              <th class="num">Environment</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {list.map((a) => (
              <tr key={a.id} class={a.archived_at ? "archived" : ""}>
                <td>
                  <Link href={paths.agent(a.id)}>{a.name}</Link>
                  {a.archived_at ? <span class="tag">deleted</span> : null}
                </td>
                <td class="mono">{a.builtin ? `built-in agent (${a.builtin.model})` : a.command.join(" ")}</td>
                <td class="num">v{a.version}</td>
                <td class="num">v{a.snapshot.version}</td>
                <td>{dateTime(a.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </div>
  );
}
