/**
 * Accounts: the tenant's end users' connected OAuth accounts (app, end user, status, scopes, when
 * the token expires), revoked here. The API never returns a token, so none can be shown; end
 * users' ids are the product's own strings and are rendered as text.
 */
import type { Account } from "@paddock/protocol";
import { useState } from "preact/hooks";
import { ActionButton, Empty, ErrorNote, Section, Status, useLoad } from "../components/ui.tsx";
import { dateTime } from "../lib/format.ts";
import { api } from "../state.ts";

type AccountPage = { data: Account[]; next_cursor: string | null };

export function AccountsPage() {
  const [endUser, setEndUser] = useState("");
  const [app, setApp] = useState("");
  const list = useLoad(
    () =>
      api.get<AccountPage>("/v1/accounts", {
        ...(endUser.trim() ? { end_user: endUser.trim() } : {}),
        ...(app.trim() ? { app: app.trim() } : {}),
      }),
    [endUser, app],
  );
  const rows = list.data?.data ?? [];
  return (
    <div class="page" data-page="accounts" data-ready={list.data ? "" : undefined}>
      <header class="page-head">
        <h1>Accounts</h1>
        <form class="filters" onSubmit={(e) => e.preventDefault()}>
          <label>
            End user <input value={endUser} maxLength={256} onInput={(e) => setEndUser(e.currentTarget.value)} />
          </label>
          <label>
            App <input value={app} maxLength={64} onInput={(e) => setApp(e.currentTarget.value)} />
          </label>
        </form>
      </header>
      <ErrorNote error={list.error} />
      <Section title="End users' accounts">
        {list.data && rows.length === 0 ? (
          <Empty>No accounts. A product connects one with POST /v1/connect-sessions.</Empty>
        ) : (
          <table class="accounts">
            <thead>
              <tr>
                <th>End user</th>
                <th>App</th>
                <th>Status</th>
                <th>Scopes</th>
                <th>Token expires</th>
                <th>Refreshed</th>
                <th>Connected</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {rows.map((a) => (
                <tr key={a.id} data-account={a.id} data-status={a.status}>
                  <td>{a.end_user}</td>
                  <td>{a.app}</td>
                  <td>
                    <Status status={a.status} />
                  </td>
                  <td>{a.scopes.join(" ")}</td>
                  <td>{a.expires_at ? dateTime(a.expires_at) : "—"}</td>
                  <td>{a.refreshed_at ? dateTime(a.refreshed_at) : "—"}</td>
                  <td>{dateTime(a.created_at)}</td>
                  <td>
                    <ActionButton
                      label="Revoke"
                      class="danger"
                      confirm={`Revoke ${a.end_user}'s ${a.app} account?`}
                      onAction={async () => {
                        await api.send("DELETE", `/v1/accounts/${encodeURIComponent(a.id)}`);
                        await list.reload();
                      }}
                    />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
    </div>
  );
}
