/** Tenants, their API keys (create, shown once; revoke) and the nodes sharing the store (admin). */
import type { ApiKey, NodeInfo, Tenant } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { ActionButton, Empty, ErrorNote, Section, useLoad } from "../components/ui.tsx";
import { ago, dateTime } from "../lib/format.ts";
import { api, now } from "../state.ts";

export function AdminPage() {
  const tenants = useLoad(() => api.get<{ data: Tenant[] }>("/v1/tenants"), []);
  const [name, setName] = useState("");
  const [chosen, setChosen] = useState<string | null>(null);
  const list = tenants.data?.data ?? [];
  const tenant = list.find((t) => t.id === chosen) ?? list[0];
  return (
    <div class="page" data-page="admin">
      <header class="page-head">
        <h1>Admin</h1>
      </header>
      <Section title="Tenants">
        <ErrorNote error={tenants.error} />
        <table>
          <tbody>
            {list.map((t) => (
              <tr key={t.id} class={t.id === tenant?.id ? "current" : ""}>
                <td>
                  <button type="button" class="link" onClick={() => setChosen(t.id)}>
                    {t.name}
                  </button>
                </td>
                <td class="mono">{t.id}</td>
                <td>{dateTime(t.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <form class="filters" onSubmit={(e) => e.preventDefault()}>
          <label>
            New tenant
            <input value={name} placeholder="acme" onInput={(e) => setName(e.currentTarget.value)} />
          </label>
          <ActionButton
            label="Create tenant"
            disabled={!name.trim()}
            onAction={async () => {
              const t = await api.send<Tenant>("POST", "/v1/tenants", { name: name.trim() });
              setName("");
              await tenants.reload();
              setChosen(t.id);
            }}
          />
        </form>
      </Section>
      {tenant ? <Keys key={tenant.id} tenant={tenant} /> : null}
      <Nodes />
    </div>
  );
}

function Keys({ tenant }: { tenant: Tenant }) {
  const keys = useLoad(() => api.get<{ data: ApiKey[] }>(`/v1/tenants/${tenant.id}/keys`), [tenant.id]);
  const [name, setName] = useState("");
  const [created, setCreated] = useState<ApiKey | null>(null);
  return (
    <Section title={`API keys of ${tenant.name}`}>
      <ErrorNote error={keys.error} />
      {(keys.data?.data ?? []).length === 0 ? (
        <Empty>No keys.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Key</th>
              <th>Name</th>
              <th>Role</th>
              <th>Created</th>
              <th>Revoked</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {(keys.data?.data ?? []).map((k) => (
              <tr key={k.id} data-key={k.id} class={k.revoked_at ? "archived" : ""}>
                <td class="mono">{k.id}</td>
                <td>{k.name ?? "—"}</td>
                <td>{k.role}</td>
                <td>{dateTime(k.created_at)}</td>
                <td>{dateTime(k.revoked_at)}</td>
                <td>
                  {k.revoked_at || k.role === "admin" ? null : (
                    <ActionButton
                      label="Revoke"
                      class="danger"
                      confirm={`Revoke ${k.id}? Its sessions end now.`}
                      onAction={async () => {
                        await api.send("DELETE", `/v1/tenants/${tenant.id}/keys/${k.id}`);
                        await keys.reload();
                      }}
                    />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Name (optional)
          <input value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <ActionButton
          label="Create a key"
          onAction={async () => {
            setCreated(
              await api.send<ApiKey>("POST", `/v1/tenants/${tenant.id}/keys`, name.trim() ? { name: name.trim() } : {}),
            );
            setName("");
            await keys.reload();
          }}
        />
      </form>
      {created?.key ? (
        <div class="note">
          The new key, shown this once:{" "}
          <input class="mono" readOnly value={created.key} size={60} aria-label="New API key" />
        </div>
      ) : null}
    </Section>
  );
}

function Nodes() {
  const nodes = useLoad(() => api.get<{ data: NodeInfo[] }>("/v1/nodes"), []);
  return (
    <Section title="Nodes">
      <ErrorNote error={nodes.error} />
      <table>
        <thead>
          <tr>
            <th>Node</th>
            <th>Version</th>
            <th>State</th>
            <th class="num">Active runs</th>
            <th>Heartbeat</th>
          </tr>
        </thead>
        <tbody>
          {(nodes.data?.data ?? []).map((n) => (
            <tr key={n.id}>
              <td class="mono">{n.id}</td>
              <td>{n.version}</td>
              <td>{n.live ? (n.draining ? "draining" : "live") : "down"}</td>
              <td class="num">{n.active_runs}</td>
              <td>{ago(n.heartbeat_at, now.value)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </Section>
  );
}
