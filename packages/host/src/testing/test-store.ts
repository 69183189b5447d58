/**
 * A migrated SQLite store in a temporary folder holding one tenant and one agent, for tests of
 * the store's services without a host.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Kysely } from "kysely";
import { newId } from "../store/ids.ts";
import { migrate } from "../store/migrations.ts";
import type { Database, RunsTable } from "../store/schema.ts";
import { openSqlite } from "../store/sqlite.ts";

export interface TestStore {
  db: Kysely<Database>;
  tenant: string;
  agent: string;
  /** Closes the store and removes its folder. */
  close(): Promise<void>;
}

/** A new tenant (named by its id, so that a store holds as many as asked for) and an agent of it in `db`, for rows that must name them. */
export async function seedAgent(db: Kysely<Database>): Promise<{ tenant: string; agent: string }> {
  const tenant = newId("ten");
  await db.insertInto("tenants").values({ id: tenant, name: tenant, created_at: 0 }).execute();
  return { tenant, agent: await seedAgentOf(db, tenant) };
}

/** A new agent of `tenant` (named by its id) in `db`; returns its id. */
export async function seedAgentOf(db: Kysely<Database>, tenant: string): Promise<string> {
  const agent = newId("agt");
  await db
    .insertInto("agents")
    .values({
      id: agent,
      tenant_id: tenant,
      name: agent,
      spec: "{}",
      current_version: 1,
      version: 1,
      archived_at: null,
      created_at: 0,
    })
    .execute();
  return agent;
}

/** @example const store = await openTestStore("event-log"); after(() => store.close()); */
export async function openTestStore(name: string): Promise<TestStore> {
  const dir = await mkdtemp(join(tmpdir(), `paddock-${name}-`));
  const db = openSqlite(join(dir, "paddock.db"));
  await migrate(db);
  const { tenant, agent } = await seedAgent(db);
  return {
    db,
    tenant,
    agent,
    async close() {
      await db.destroy();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A run row of `agent`, as the engine leaves one it is running (or queued). */
export function runRow(tenant: string, agent: string, patch: Partial<RunsTable>): RunsTable {
  return {
    id: newId("run"),
    end_user: null,
    tenant_id: tenant,
    agent_id: agent,
    status: "running",
    reason: null,
    exit_code: null,
    attempt: 1,
    max_attempts: 1,
    input: null,
    spec: "{}",
    worker_id: null,
    cancel_requested: 0,
    snapshot_version: null,
    agent_version: 1,
    created_at: Date.now(),
    started_at: Date.now(),
    finished_at: null,
    trigger: "api",
    not_before: null,
    expires_at: null,
    lease_until: null,
    serial_key: null,
    parent_run_id: null,
    root_run_id: null,
    root_agent_id: null,
    depth: 0,
    event_seq: 0,
    replay_of: null,
    trace_parent: null,
    ...patch,
  };
}
