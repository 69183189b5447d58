/** The dashboard's frame: sign-in when nobody is, else the navigation and the page the URL names. */
import { Link } from "./components/ui.tsx";
import icon from "./icon.svg";
import { matchRoute, paths } from "./lib/router.ts";
import { AccountsPage } from "./pages/accounts.tsx";
import { AdminPage } from "./pages/admin.tsx";
import { AgentPage } from "./pages/agent.tsx";
import { AgentsPage } from "./pages/agents.tsx";
import { ApprovalsPage } from "./pages/approvals.tsx";
import { CreditsPage } from "./pages/credits.tsx";
import { RunPage } from "./pages/run.tsx";
import { RunsPage } from "./pages/runs.tsx";
import { SettingsPage } from "./pages/settings.tsx";
import { SignIn } from "./pages/sign-in.tsx";
import { here, session, signOut } from "./state.ts";

export function App() {
  const who = session.value;
  if (who === undefined) return <p class="loading">Loading…</p>;
  if (who === null) return <SignIn />;
  const route = matchRoute(here.value.path);
  const nav: [string, string, boolean][] = [
    ["Runs", paths.runs(), route.page === "runs" || route.page === "run"],
    ["Agents", paths.agents(), route.page === "agents" || route.page === "agent"],
    ["Credits", paths.credits(), route.page === "credits"],
    ["Approvals", paths.approvals(), route.page === "approvals"],
    ["Accounts", paths.accounts(), route.page === "accounts"],
    ["Settings", paths.settings(), route.page === "settings"],
  ];
  if (who.role === "admin") nav.push(["Admin", paths.admin(), route.page === "admin"]);
  return (
    <div class="frame">
      <header class="top">
        <Link href={paths.runs()} class="brand">
          <img src={icon} alt="" width={22} height={22} />
          Paddock
        </Link>
        <nav>
          {nav.map(([label, href, current]) => (
            <Link key={href} href={href} class={current ? "current" : ""} aria-current={current ? "page" : undefined}>
              {label}
            </Link>
          ))}
        </nav>
        <span class="who" title={`key ${who.key_id}`}>
          {who.tenant_name}
          {who.role === "admin" ? " (admin)" : ""}
        </span>
        <button type="button" class="link" onClick={() => void signOut()}>
          Sign out
        </button>
      </header>
      <main>
        {route.page === "runs" && <RunsPage />}
        {route.page === "run" && <RunPage key={route.id} id={route.id} />}
        {route.page === "agents" && <AgentsPage />}
        {route.page === "agent" && <AgentPage key={route.id} id={route.id} />}
        {route.page === "credits" && <CreditsPage />}
        {route.page === "approvals" && <ApprovalsPage />}
        {route.page === "accounts" && <AccountsPage />}
        {route.page === "settings" && <SettingsPage />}
        {route.page === "admin" && (who.role === "admin" ? <AdminPage /> : <p>This page needs the admin key.</p>)}
        {route.page === "not_found" && (
          <p class="empty">
            No page at <code>{route.path}</code>. <Link href={paths.runs()}>See the runs.</Link>
          </p>
        )}
      </main>
    </div>
  );
}
