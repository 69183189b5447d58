/**
 * Secrets, connections, MCP servers (and their tools, asked live), model providers and models:
 * names and metadata only, never a value. A
 * secret's value can be set here: typed into a password field and sent once, never shown again.
 */
import type { Connection, McpServer, McpToolList, Model, Provider, Secret } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { type BridgeCallRow, BridgeCallsTable } from "../components/calls.tsx";
import { McpToolsTable } from "../components/mcp.tsx";
import { ActionButton, Empty, ErrorNote, Section, useLoad } from "../components/ui.tsx";
import { credits, dateTime, duration } from "../lib/format.ts";
import { api, caps, session } from "../state.ts";

export function SettingsPage() {
  return (
    <div class="page" data-page="settings">
      <header class="page-head">
        <h1>Settings</h1>
      </header>
      <Secrets />
      <Connections />
      {caps.value.has("get", "/v1/mcp-servers") ? <McpServers /> : null}
      {caps.value.has("get", "/v1/bridge-calls") ? <RecentBridgeCalls /> : null}
      {session.value?.role === "admin" ? <Providers /> : null}
      <Models />
    </div>
  );
}

function Secrets() {
  const secrets = useLoad(() => api.get<{ data: Secret[] }>("/v1/secrets"), []);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [saved, setSaved] = useState<string | null>(null);
  return (
    <Section title="Secrets">
      <ErrorNote error={secrets.error} />
      {(secrets.data?.data ?? []).length === 0 ? (
        <Empty>No secrets.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th class="num">Version</th>
              <th>Set</th>
              <th>Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {(secrets.data?.data ?? []).map((s) => (
              <tr key={s.name} data-secret={s.name}>
                <td class="mono">{s.name}</td>
                <td class="num">{s.version}</td>
                <td>{dateTime(s.updated_at)}</td>
                <td>{dateTime(s.created_at)}</td>
                <td>
                  <ActionButton
                    label="Delete"
                    class="danger"
                    confirm={`Delete the secret ${s.name}?`}
                    onAction={async () => {
                      await api.send("DELETE", `/v1/secrets/${encodeURIComponent(s.name)}`);
                      await secrets.reload();
                    }}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form class="filters" onSubmit={(e) => e.preventDefault()} autocomplete="off">
        <label>
          Name
          <input value={name} placeholder="github-token" onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <label>
          Value
          <input
            type="password"
            autocomplete="new-password"
            value={value}
            onInput={(e) => setValue(e.currentTarget.value)}
          />
        </label>
        <ActionButton
          label="Set secret"
          disabled={!name.trim() || !value}
          onAction={async () => {
            const s = await api.send<Secret>("PUT", `/v1/secrets/${encodeURIComponent(name.trim())}`, { value });
            // The value is sent once and forgotten here.
            setValue("");
            setSaved(`${s.name} is at version ${s.version}.`);
            await secrets.reload();
          }}
        />
      </form>
      {saved ? <p class="note">{saved}</p> : null}
    </Section>
  );
}

function Connections() {
  const conns = useLoad(() => api.get<{ data: Connection[] }>("/v1/connections"), []);
  return (
    <Section title="Connections">
      <ErrorNote error={conns.error} />
      {(conns.data?.data ?? []).length === 0 ? (
        <Empty>
          No connections: <code>paddock connections create</code>.
        </Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>Upstream</th>
              <th>Secret</th>
              <th>Auth</th>
              <th>Allowed</th>
              <th>Changed</th>
            </tr>
          </thead>
          <tbody>
            {(conns.data?.data ?? []).map((c) => (
              <tr key={c.name}>
                <td class="mono">{c.name}</td>
                <td class="mono">{c.base_url}</td>
                <td class="mono">{c.secret ?? "—"}</td>
                <td>{c.auth.type}</td>
                <td>
                  {c.policy.allow.map((r, i) => (
                    <div key={i} class="mono">
                      {r.methods.join(",")} {r.path}
                    </div>
                  ))}
                </td>
                <td>{dateTime(c.updated_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function McpServers() {
  const servers = useLoad(() => api.get<{ data: McpServer[] }>("/v1/mcp-servers"), []);
  const [open, setOpen] = useState<string | null>(null);
  const list = servers.data?.data ?? [];
  return (
    <Section title="MCP servers">
      <ErrorNote error={servers.error} />
      {list.length === 0 ? (
        <Empty>
          No MCP servers: <code>paddock mcp-servers set</code>.
        </Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>URL</th>
              <th>Secret</th>
              <th>Auth</th>
              <th>Internal</th>
              <th class="num">Timeout</th>
              <th>Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((s) => (
              <tr key={s.name} data-mcp-server={s.name}>
                <td class="mono">{s.name}</td>
                <td class="mono">{s.url}</td>
                <td class="mono">{s.secret ?? "—"}</td>
                <td>{s.auth.type === "oauth" ? `oauth (${s.auth.app})` : s.auth.type}</td>
                <td>{s.internal ? "yes" : "no"}</td>
                <td class="num">{duration(s.timeout_ms)}</td>
                <td>{dateTime(s.created_at)}</td>
                <td>
                  <button type="button" onClick={() => setOpen(open === s.name ? null : s.name)}>
                    {open === s.name ? "Hide tools" : "Tools"}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {open ? <McpServerTools key={open} name={open} /> : null}
    </Section>
  );
}

/** A server's tools as the host sees them now: asked when opened, again on demand. */
function McpServerTools({ name }: { name: string }) {
  const tools = useLoad(() => api.get<McpToolList>(`/v1/mcp-servers/${encodeURIComponent(name)}/tools`), [name]);
  return (
    <div class="mcp-server-tools" data-tools-of={name}>
      <h3>
        Tools of <span class="mono">{name}</span>, now{" "}
        <button type="button" onClick={() => void tools.reload()} disabled={tools.loading}>
          {tools.loading ? "Asking…" : "Ask again"}
        </button>
      </h3>
      <ErrorNote error={tools.error} />
      {tools.data && !tools.loading ? <McpToolsTable tools={tools.data.tools} /> : null}
    </div>
  );
}

function Providers() {
  const providers = useLoad(() => api.get<{ data: Provider[] }>("/v1/providers"), []);
  return (
    <Section title="Model providers (admin)">
      <ErrorNote error={providers.error} />
      {(providers.data?.data ?? []).length === 0 ? (
        <Empty>
          No providers: <code>paddock providers set</code>.
        </Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>Kind</th>
              <th>Base URL</th>
              <th>Key (secret)</th>
              <th>Models</th>
            </tr>
          </thead>
          <tbody>
            {(providers.data?.data ?? []).map((p) => (
              <tr key={p.name}>
                <td class="mono">{p.name}</td>
                <td>{p.kind}</td>
                <td class="mono">{p.base_url}</td>
                <td class="mono">{p.secret ?? "—"}</td>
                <td>{Object.keys(p.models).join(", ")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function Models() {
  const models = useLoad(() => api.get<{ data: Model[] }>("/v1/models"), []);
  return (
    <Section title="Models">
      <ErrorNote error={models.error} />
      {(models.data?.data ?? []).length === 0 ? (
        <Empty>No models: an admin registers providers and their models.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Model</th>
              <th>Provider</th>
              <th>Wire format</th>
              <th class="num">Input (per M tokens)</th>
              <th class="num">Output (per M tokens)</th>
            </tr>
          </thead>
          <tbody>
            {(models.data?.data ?? []).map((m) => (
              <tr key={m.model}>
                <td class="mono">{m.model}</td>
                <td>{m.provider}</td>
                <td>{m.api}</td>
                <td class="num">{credits(m.price.input)}</td>
                <td class="num">{credits(m.price.output)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function RecentBridgeCalls() {
  const calls = useLoad(() => api.get<{ data: BridgeCallRow[] }>("/v1/bridge-calls", { limit: 25 }), []);
  return (
    <Section title="Recent bridge calls">
      <ErrorNote error={calls.error} />
      {(calls.data?.data ?? []).length === 0 ? (
        <Empty>No bridge calls yet.</Empty>
      ) : (
        <BridgeCallsTable calls={calls.data?.data ?? []} />
      )}
    </Section>
  );
}
