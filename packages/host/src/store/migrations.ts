/**
 * Schema migrations, written with Kysely's builder so that SQLite and PostgreSQL share them; where
 * the two must differ (0007's rebuild of agents, which SQLite cannot alter in place), a step
 * branches on the dialect.
 */
import { type Kysely, sql } from "kysely";
import { type Migration, type MigrationProvider, Migrator } from "kysely/migration";
import { dialectOf } from "./database.ts";

const migrations: Record<string, Migration> = {
  "0001_spine": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("tenants")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull().unique())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("api_keys")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
        .addColumn("role", "text", (c) => c.notNull())
        .addColumn("name", "text")
        .addColumn("secret_hash", "text", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("revoked_at", "bigint")
        .execute();
      await db.schema
        .createTable("agents")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("spec", "text", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addUniqueConstraint("agents_tenant_name", ["tenant_id", "name"])
        .execute();
      await db.schema
        .createTable("runs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
        .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("reason", "text")
        .addColumn("exit_code", "integer")
        .addColumn("attempt", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("max_attempts", "integer", (c) => c.notNull().defaultTo(1))
        .addColumn("input", "text")
        .addColumn("spec", "text", (c) => c.notNull())
        .addColumn("worker_id", "text")
        .addColumn("cancel_requested", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("started_at", "bigint")
        .addColumn("finished_at", "bigint")
        .execute();
      await db.schema.createIndex("runs_status").on("runs").columns(["status", "id"]).execute();
      await db.schema.createIndex("runs_tenant").on("runs").columns(["tenant_id", "id"]).execute();
      await db.schema
        .createTable("attempts")
        .addColumn("run_id", "text", (c) => c.notNull().references("runs.id"))
        .addColumn("n", "integer", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("reason", "text")
        .addColumn("exit_code", "integer")
        .addColumn("sandbox_id", "text")
        .addColumn("worker_id", "text", (c) => c.notNull())
        .addColumn("started_at", "bigint", (c) => c.notNull())
        .addColumn("finished_at", "bigint")
        .addPrimaryKeyConstraint("attempts_pk", ["run_id", "n"])
        .execute();
      await db.schema
        .createTable("events")
        .addColumn("run_id", "text", (c) => c.notNull().references("runs.id"))
        .addColumn("seq", "integer", (c) => c.notNull())
        .addColumn("attempt", "integer", (c) => c.notNull())
        .addColumn("type", "text", (c) => c.notNull())
        .addColumn("ts", "bigint", (c) => c.notNull())
        .addColumn("data", "text", (c) => c.notNull())
        .addPrimaryKeyConstraint("events_pk", ["run_id", "seq"])
        .execute();
      await db.schema
        .createTable("artifacts")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("run_id", "text", (c) => c.notNull().references("runs.id"))
        .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
        .addColumn("attempt", "integer", (c) => c.notNull())
        .addColumn("path", "text", (c) => c.notNull())
        .addColumn("size", "bigint", (c) => c.notNull())
        .addColumn("sha256", "text", (c) => c.notNull())
        .addColumn("content_type", "text", (c) => c.notNull())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addUniqueConstraint("artifacts_run_path", ["run_id", "attempt", "path"])
        .execute();
    },
  },
  "0002_snapshots": {
    // Environments become versioned snapshots (base, environment layers, runner) and runners get
    // versions; existing agents get version 1 from the environment their spec already named.
    // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
    async up(db: Kysely<any>) {
      await db.schema
        .createTable("runners")
        .addColumn("digest", "text", (c) => c.primaryKey())
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addColumn("published_at", "bigint")
        .execute();
      await db.schema
        .createTable("snapshots")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
        .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
        .addColumn("version", "integer", (c) => c.notNull())
        .addColumn("base", "text", (c) => c.notNull())
        .addColumn("layers", "text", (c) => c.notNull())
        .addColumn("runner", "text", (c) => c.notNull())
        .addColumn("reason", "text", (c) => c.notNull())
        .addColumn("parent_version", "integer")
        .addColumn("changes", "text")
        .addColumn("env_bytes", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("created_at", "bigint", (c) => c.notNull())
        .addUniqueConstraint("snapshots_agent_version", ["agent_id", "version"])
        .execute();
      await db.schema
        .alterTable("agents")
        .addColumn("current_version", "integer", (c) => c.notNull().defaultTo(1))
        .execute();
      await db.schema.alterTable("runs").addColumn("snapshot_version", "integer").execute();
      const agents = await db.selectFrom("agents").select(["id", "tenant_id", "spec", "created_at"]).execute();
      for (const a of agents) {
        const spec = JSON.parse(a.spec);
        await db
          .insertInto("snapshots")
          .values({
            id: `snp_${a.id.slice(4)}`,
            tenant_id: a.tenant_id,
            agent_id: a.id,
            version: 1,
            base: spec.image,
            layers: JSON.stringify(spec.layers ?? []),
            runner: "",
            reason: "create",
            parent_version: null,
            changes: null,
            env_bytes: 0,
            created_at: a.created_at,
          })
          .execute();
      }
    },
  },
};

migrations["0003_env_sessions"] = {
  // Environment edit sessions and their egress audit log; at most one active session per agent.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("env_sessions")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
      .addColumn("status", "text", (c) => c.notNull())
      .addColumn("base_version", "integer", (c) => c.notNull())
      .addColumn("allow", "text", (c) => c.notNull())
      .addColumn("disk_mb", "integer", (c) => c.notNull())
      .addColumn("memory_mb", "integer", (c) => c.notNull())
      .addColumn("idle_timeout_s", "integer", (c) => c.notNull())
      .addColumn("id_base", "bigint", (c) => c.notNull())
      .addColumn("commands", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("egress_allowed", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("egress_refused", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("last_used_at", "bigint", (c) => c.notNull())
      .addColumn("ended_at", "bigint")
      .addColumn("end_reason", "text")
      .addColumn("frozen_version", "integer")
      .execute();
    await db.schema
      .createIndex("env_sessions_one_active")
      .unique()
      .on("env_sessions")
      .column("agent_id")
      .where(sql.ref("status"), "=", sql.lit("active"))
      .execute();
    await db.schema
      .createTable("env_session_egress")
      .addColumn("session_id", "text", (c) => c.notNull().references("env_sessions.id"))
      .addColumn("seq", "integer", (c) => c.notNull())
      .addColumn("time", "bigint", (c) => c.notNull())
      .addColumn("method", "text", (c) => c.notNull())
      .addColumn("host", "text", (c) => c.notNull())
      .addColumn("port", "integer", (c) => c.notNull())
      .addColumn("decision", "text", (c) => c.notNull())
      .addColumn("reason", "text")
      .addColumn("status", "integer")
      .addColumn("bytes_in", "bigint", (c) => c.notNull())
      .addColumn("bytes_out", "bigint", (c) => c.notNull())
      .addColumn("ms", "real", (c) => c.notNull())
      .addPrimaryKeyConstraint("env_session_egress_pk", ["session_id", "seq"])
      .execute();
  },
};

migrations["0004_bridge"] = {
  // The secrets vault (envelope-encrypted values), connections (upstream, secret, policy) and the
  // keys that sign run tokens (private halves sealed by the vault).
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("secrets")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("sealed", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("version", "integer", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addUniqueConstraint("secrets_tenant_name", ["tenant_id", "name"])
      .execute();
    await db.schema
      .createTable("connections")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("secret_name", "text")
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addUniqueConstraint("connections_tenant_name", ["tenant_id", "name"])
      .execute();
    await db.schema
      .createTable("signing_keys")
      .addColumn("kid", "text", (c) => c.primaryKey())
      .addColumn("alg", "text", (c) => c.notNull())
      .addColumn("public_jwk", "text", (c) => c.notNull())
      .addColumn("sealed_private", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("retired_at", "bigint")
      .addColumn("verify_until", "bigint")
      .execute();
  },
};

migrations["0005_gateway"] = {
  // Model providers (the key is a secret of the admin tenant), the credits ledger (append-only)
  // and the accounts it keeps current in the same transactions (what reservations read).
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("providers")
      .addColumn("name", "text", (c) => c.primaryKey())
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema
      .createTable("credit_ledger")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("agent_id", "text")
      .addColumn("run_id", "text")
      .addColumn("call_id", "text")
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("amount", "bigint", (c) => c.notNull())
      .addColumn("detail", "text")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("credit_ledger_run").on("credit_ledger").columns(["run_id", "id"]).execute();
    await db.schema.createIndex("credit_ledger_call").on("credit_ledger").columns(["call_id"]).execute();
    // A call is settled or released once, whatever the code above the store does.
    await db.schema
      .createIndex("credit_ledger_closed_once")
      .on("credit_ledger")
      .column("call_id")
      .unique()
      .where(sql.ref("kind"), "in", ["settle", "release"])
      .execute();
    await db.schema
      .createTable("credit_accounts")
      .addColumn("key", "text", (c) => c.primaryKey())
      .addColumn("granted", "bigint", (c) => c.notNull().defaultTo(0))
      .addColumn("spent", "bigint", (c) => c.notNull().defaultTo(0))
      .addColumn("reserved", "bigint", (c) => c.notNull().defaultTo(0))
      .execute();
  },
};

migrations["0006_triggers"] = {
  // How runs are started and retried: trigger kinds, backoff, queue expiry and leases on runs;
  // idempotency keys, cron schedules with their slots, and signed webhooks with their deliveries.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .alterTable("runs")
      .addColumn("trigger", "text", (c) => c.notNull().defaultTo("api"))
      .execute();
    await db.schema.alterTable("runs").addColumn("not_before", "bigint").execute();
    await db.schema.alterTable("runs").addColumn("expires_at", "bigint").execute();
    await db.schema.alterTable("runs").addColumn("lease_until", "bigint").execute();
    await db.schema.alterTable("runs").addColumn("serial_key", "text").execute();
    // Child runs started by another run: their parent, the root of the tree (whose budget they
    // share) and the depth (bounded, so that agents calling each other cannot loop forever).
    await db.schema.alterTable("runs").addColumn("parent_run_id", "text").execute();
    await db.schema.alterTable("runs").addColumn("root_run_id", "text").execute();
    await db.schema.alterTable("runs").addColumn("root_agent_id", "text").execute();
    await db.schema
      .alterTable("runs")
      .addColumn("depth", "integer", (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema.createIndex("runs_parent").on("runs").columns(["parent_run_id"]).execute();
    // Answers of boundary calls by step, so that a retried attempt is answered from them.
    await db.schema
      .createTable("journal")
      .addColumn("run_id", "text", (c) => c.notNull())
      .addColumn("step", "text", (c) => c.notNull())
      .addColumn("request_hash", "text", (c) => c.notNull())
      .addColumn("attempt", "integer", (c) => c.notNull())
      .addColumn("status", "integer", (c) => c.notNull())
      .addColumn("headers", "text", (c) => c.notNull())
      .addColumn("body", dialectOf(db) === "postgres" ? "bytea" : "blob", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("journal_pk", ["run_id", "step"])
      .execute();
    await db.schema
      .createTable("idempotency_keys")
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("key", "text", (c) => c.notNull())
      .addColumn("request_hash", "text", (c) => c.notNull())
      .addColumn("run_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("idempotency_keys_pk", ["tenant_id", "key"])
      .execute();
    await db.schema
      .createTable("schedules")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
      .addColumn("cron", "text", (c) => c.notNull())
      .addColumn("timezone", "text", (c) => c.notNull())
      .addColumn("overlap", "text", (c) => c.notNull())
      .addColumn("catch_up_s", "integer", (c) => c.notNull())
      .addColumn("input", "text")
      .addColumn("paused", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("next_at", "bigint")
      .addColumn("last_slot_at", "bigint")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("schedules_next").on("schedules").columns(["paused", "next_at"]).execute();
    await db.schema
      .createTable("schedule_slots")
      .addColumn("schedule_id", "text", (c) => c.notNull().references("schedules.id").onDelete("cascade"))
      .addColumn("slot_at", "bigint", (c) => c.notNull())
      .addColumn("run_id", "text")
      .addColumn("outcome", "text", (c) => c.notNull())
      .addPrimaryKeyConstraint("schedule_slots_pk", ["schedule_id", "slot_at"])
      .execute();
    await db.schema
      .createTable("webhooks")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
      .addColumn("sealed_secret", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema
      .createTable("webhook_deliveries")
      .addColumn("webhook_id", "text", (c) => c.notNull().references("webhooks.id").onDelete("cascade"))
      .addColumn("delivery_id", "text", (c) => c.notNull())
      .addColumn("run_id", "text", (c) => c.notNull())
      .addColumn("received_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("webhook_deliveries_pk", ["webhook_id", "delivery_id"])
      .execute();
  },
};

migrations["0007_agent_versions"] = {
  // Agents get versions of their definition (each kept in agent_versions; the current one is also
  // agents.spec, with its number in agents.version) and can be archived; runs record the version
  // they were triggered with. A name is unique only among live agents, so archiving frees it.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    if (dialectOf(db) === "postgres") {
      await db.schema.alterTable("agents").dropConstraint("agents_tenant_name").execute();
      await db.schema
        .alterTable("agents")
        .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
        .execute();
      await db.schema.alterTable("agents").addColumn("archived_at", "bigint").execute();
    } else {
      await rebuildAgentsWithoutNameConstraint(db);
    }
    await db.schema
      .createIndex("agents_live_name")
      .unique()
      .on("agents")
      .columns(["tenant_id", "name"])
      .where(sql.ref("archived_at"), "is", null)
      .execute();
    await db.schema
      .createTable("agent_versions")
      .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
      .addColumn("version", "integer", (c) => c.notNull())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("agent_versions_pk", ["agent_id", "version"])
      .execute();
    await db
      .insertInto("agent_versions")
      .columns(["agent_id", "version", "tenant_id", "spec", "created_at"])
      .expression(db.selectFrom("agents").select(["id", sql.lit(1).as("version"), "tenant_id", "spec", "created_at"]))
      .execute();
    await db.schema
      .alterTable("runs")
      .addColumn("agent_version", "integer", (c) => c.notNull().defaultTo(1))
      .execute();
  },
};

migrations["0008_event_seq"] = {
  // Each run counts its own events: an append takes its sequence numbers by bumping the counter
  // (the row lock orders concurrent appends), where max(seq)+1 let two writers pick the same one.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .alterTable("runs")
      .addColumn("event_seq", "integer", (c) => c.notNull().defaultTo(0))
      .execute();
    await sql`update runs set event_seq = coalesce((select max(seq) from events where events.run_id = runs.id), 0)`.execute(
      db,
    );
  },
};

migrations["0009_nodes"] = {
  // The nodes sharing this store: each registers at start and heartbeats (on the database's
  // clock); a draining node claims no new runs. `process` (hostname:pid) tells a restart on the
  // same machine from a second live node with the same id.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("nodes")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("version", "text", (c) => c.notNull())
      .addColumn("internal_url", "text", (c) => c.notNull())
      .addColumn("sandbox_cidr", "text", (c) => c.notNull())
      .addColumn("process", "text", (c) => c.notNull())
      .addColumn("heartbeat_at", "bigint", (c) => c.notNull())
      .addColumn("started_at", "bigint", (c) => c.notNull())
      .addColumn("draining", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("stopped_at", "bigint")
      .execute();
    await db.schema.createIndex("runs_worker_active").on("runs").columns(["worker_id", "status"]).execute();
  },
};

/**
 * Makes `agents` again without the table's unique (tenant, name) constraint, adding `version`
 * and `archived_at`. SQLite cannot drop a table constraint, so this is its documented rebuild:
 * foreign keys off, copy into a new table, drop the old one, rename the new one (the other tables'
 * references to `agents` then name the new table), check every reference, foreign keys on.
 * (PostgreSQL instead drops the constraint agents_tenant_name and adds the two columns.)
 */
// biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
async function rebuildAgentsWithoutNameConstraint(db: Kysely<any>): Promise<void> {
  const columns = ["id", "tenant_id", "name", "spec", "created_at", "current_version"] as const;
  await sql`PRAGMA foreign_keys = OFF`.execute(db);
  try {
    await db.schema
      .createTable("agents_rebuilt")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("current_version", "integer", (c) => c.notNull().defaultTo(1))
      .addColumn("version", "integer", (c) => c.notNull().defaultTo(1))
      .addColumn("archived_at", "bigint")
      .execute();
    await db
      .insertInto("agents_rebuilt")
      .columns(columns)
      .expression(db.selectFrom("agents").select(columns))
      .execute();
    await db.schema.dropTable("agents").execute();
    await db.schema.alterTable("agents_rebuilt").renameTo("agents").execute();
    const broken = await sql`PRAGMA foreign_key_check`.execute(db);
    if (broken.rows.length > 0) throw new Error(`rows reference missing rows: ${JSON.stringify(broken.rows[0])}`);
  } finally {
    await sql`PRAGMA foreign_keys = ON`.execute(db);
  }
}

migrations["0010_tree_blobs"] = {
  // Environment layers and base images packed into the shared blob store, by kind and digest.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("tree_blobs")
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("digest", "text", (c) => c.notNull())
      .addColumn("sha256", "text", (c) => c.notNull())
      .addColumn("size", "bigint", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("tree_blobs_pk", ["kind", "digest"])
      .execute();
  },
};

migrations["0011_session_node"] = {
  // The node an environment session lives on (its writable layer is in that node's memory); other
  // nodes proxy the session's requests there. Null for sessions opened before nodes had ids.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema.alterTable("env_sessions").addColumn("node_id", "text").execute();
  },
};

migrations["0012_runner_sources"] = {
  // A runner's Node binary and bundle in the blob store, from which every node builds its own layer
  // of it. Null for runners published before, which only their own node has.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema.alterTable("runners").addColumn("node_sha256", "text").execute();
    await db.schema.alterTable("runners").addColumn("bundle_sha256", "text").execute();
  },
};

migrations["0013_notifications"] = {
  // Tenants' notification endpoints, the deliveries written with the events they announce (an
  // outbox the dispatcher drains) and every attempt at sending one.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("notification_subscriptions")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("url", "text", (c) => c.notNull())
      .addColumn("events", "text", (c) => c.notNull())
      .addColumn("description", "text")
      .addColumn("credits_below", "bigint")
      .addColumn("internal", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("status", "text", (c) => c.notNull())
      .addColumn("disabled_reason", "text")
      .addColumn("sealed_secrets", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("previous_until", "bigint")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex("notification_subscriptions_tenant")
      .on("notification_subscriptions")
      .columns(["tenant_id", "status"])
      .execute();
    await db.schema
      .createTable("notification_deliveries")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("subscription_id", "text", (c) =>
        c.notNull().references("notification_subscriptions.id").onDelete("cascade"),
      )
      .addColumn("tenant_id", "text", (c) => c.notNull())
      .addColumn("type", "text", (c) => c.notNull())
      .addColumn("run_id", "text")
      .addColumn("body", "text", (c) => c.notNull())
      .addColumn("status", "text", (c) => c.notNull())
      .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
      .addColumn("next_at", "bigint", (c) => c.notNull())
      .addColumn("retry_until", "bigint", (c) => c.notNull())
      .addColumn("claimed_by", "text")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("delivered_at", "bigint")
      .execute();
    // What the dispatcher looks for: pending deliveries by due time.
    await db.schema
      .createIndex("notification_deliveries_due")
      .on("notification_deliveries")
      .column("next_at")
      .where(sql.ref("status"), "=", sql.lit("pending"))
      .execute();
    await db.schema
      .createIndex("notification_deliveries_subscription")
      .on("notification_deliveries")
      .columns(["subscription_id", "id"])
      .execute();
    await db.schema
      .createTable("notification_attempts")
      .addColumn("delivery_id", "text", (c) => c.notNull().references("notification_deliveries.id").onDelete("cascade"))
      .addColumn("n", "integer", (c) => c.notNull())
      .addColumn("node_id", "text", (c) => c.notNull())
      .addColumn("started_at", "bigint", (c) => c.notNull())
      .addColumn("status", "integer")
      .addColumn("latency_ms", "real")
      .addColumn("error", "text")
      .addPrimaryKeyConstraint("notification_attempts_pk", ["delivery_id", "n"])
      .execute();
  },
};

migrations["0014_run_queries"] = {
  // What the run list's filters, the cross-run call lists and the stats read, kept fast with a
  // million runs (store/query-plans.test.ts reads their plans): runs record the run they replay;
  // each filter has an index of the tenant and its column that ends in the order a page is read
  // (ids are time-ordered, so a time range is an id range); llm.call and bridge.call events are
  // indexed in `calls`, which the event log writes in the same transaction as the event (filled
  // here from the events already written); settlements are indexed by tenant and time, with their
  // amounts, for spending per time bucket.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema.alterTable("runs").addColumn("replay_of", "text").execute();
    // A filter's index has no more columns than it needs: SQLite, without statistics, prefers
    // narrower indexes when a time range bounds the id on both sides.
    for (const name of ["runs_tenant", "runs_parent", "runs_status"]) await db.schema.dropIndex(name).execute();
    const runIndexes: [string, string[]][] = [
      // Also covers the counts by status and time of GET /v1/stats.
      ["runs_tenant_list", ["tenant_id", "id", "status", "created_at"]],
      ["runs_agent_list", ["tenant_id", "agent_id", "id"]],
      // Led by the status: also the queue and the runs going, over every tenant.
      ["runs_status", ["status", "tenant_id", "id"]],
      ["runs_trigger_list", ["tenant_id", "trigger", "id"]],
      // Led by the parent (root): also a run's children wherever the tenant is not asked for.
      ["runs_parent_list", ["parent_run_id", "tenant_id", "id"]],
      ["runs_root_list", ["root_run_id", "tenant_id", "id"]],
    ];
    for (const [name, columns] of runIndexes) await db.schema.createIndex(name).on("runs").columns(columns).execute();

    await db.schema
      .createTable("calls")
      .addColumn("run_id", "text", (c) => c.notNull().references("runs.id"))
      .addColumn("seq", "integer", (c) => c.notNull())
      .addColumn("tenant_id", "text", (c) => c.notNull())
      .addColumn("agent_id", "text", (c) => c.notNull())
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("ts", "bigint", (c) => c.notNull())
      .addColumn("target", "text", (c) => c.notNull())
      .addColumn("model", "text")
      .addColumn("ok", "integer", (c) => c.notNull())
      .addPrimaryKeyConstraint("calls_pk", ["run_id", "seq"])
      .execute();
    const order = ["ts", "run_id", "seq"];
    const callIndexes: [string, string[]][] = [
      ["calls_tenant", ["tenant_id", "kind", ...order]],
      ["calls_agent", ["tenant_id", "agent_id", "kind", ...order]],
      ["calls_target", ["tenant_id", "kind", "target", ...order]],
      ["calls_outcome", ["tenant_id", "kind", "ok", ...order]],
    ];
    for (const [name, columns] of callIndexes) await db.schema.createIndex(name).on("calls").columns(columns).execute();
    const field =
      dialectOf(db) === "postgres"
        ? (name: string) => sql`(e.data::jsonb ->> ${sql.lit(name)})`
        : (name: string) => sql`json_extract(e.data, ${sql.lit(`$.${name}`)})`;
    const status = dialectOf(db) === "postgres" ? sql`(${field("status")})::integer` : field("status");
    await sql`
      insert into calls (run_id, seq, tenant_id, agent_id, kind, ts, target, model, ok)
      select e.run_id, e.seq, r.tenant_id, r.agent_id,
        case when e.type = 'llm.call' then 'llm' else 'bridge' end,
        e.ts,
        coalesce(${field("provider")}, ${field("connection")}, ''),
        ${field("model")},
        case when ${field("code")} is not null or coalesce(${status}, 0) >= 400 then 0 else 1 end
      from events e join runs r on r.id = e.run_id
      where e.type in ('llm.call', 'bridge.call')`.execute(db);

    await db.schema
      .createIndex("credit_ledger_spend")
      .on("credit_ledger")
      .columns(["tenant_id", "kind", "created_at", "agent_id", "amount"])
      .execute();
  },
};

migrations["0015_run_trace_parent"] = {
  // The W3C traceparent a run's spans hang under: the one given when it was triggered, or for a
  // child run the span of the parent's attempt that started it. Null: the run's trace id is derived
  // from its root run's id.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema.alterTable("runs").addColumn("trace_parent", "text").execute();
  },
};

migrations["0016_ui_sessions"] = {
  // Dashboard sign-ins: the hash of each session cookie's token, the API key it is bound to (a
  // revoked key ends it) and when it ends.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("ui_sessions")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("key_id", "text", (c) => c.notNull().references("api_keys.id"))
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema.createIndex("ui_sessions_key").on("ui_sessions").columns(["key_id"]).execute();
  },
};

migrations["0017_approvals"] = {
  // Calls held for a person's approval: what the approver is shown, the exact request held (its
  // bytes, bound by their hash), the decision, and whether (and with what answer) it was sent. A
  // run records since when it waits for them.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    const bytes = dialectOf(db) === "postgres" ? "bytea" : "blob";
    await db.schema
      .createTable("approvals")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("run_id", "text", (c) => c.notNull().references("runs.id"))
      .addColumn("agent_id", "text", (c) => c.notNull())
      .addColumn("attempt", "integer", (c) => c.notNull())
      .addColumn("kind", "text", (c) => c.notNull())
      .addColumn("target", "text", (c) => c.notNull())
      .addColumn("rule_key", "text", (c) => c.notNull())
      .addColumn("step", "text")
      .addColumn("request_hash", "text", (c) => c.notNull())
      .addColumn("request", "text", (c) => c.notNull())
      .addColumn("held", "text", (c) => c.notNull())
      .addColumn("body", bytes, (c) => c.notNull())
      .addColumn("rule", "text", (c) => c.notNull())
      .addColumn("admin_approves", "integer", (c) => c.notNull())
      .addColumn("status", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .addColumn("deny_at", "bigint")
      .addColumn("decided_at", "bigint")
      .addColumn("decided_via", "text")
      .addColumn("decided_key", "text")
      .addColumn("note", "text")
      .addColumn("forward_state", "text")
      .addColumn("forwarded_at", "bigint")
      .addColumn("answer_status", "integer")
      .addColumn("answer_headers", "text")
      .addColumn("answer_body", bytes)
      .execute();
    await db.schema.createIndex("approvals_run").on("approvals").columns(["run_id", "request_hash"]).execute();
    await db.schema.createIndex("approvals_tenant").on("approvals").columns(["tenant_id", "status", "id"]).execute();
    // What the host's sweep looks for: pending approvals by when they run out.
    await db.schema
      .createIndex("approvals_due")
      .on("approvals")
      .column("expires_at")
      .where(sql.ref("status"), "=", sql.lit("pending"))
      .execute();
    await db.schema.alterTable("runs").addColumn("waiting_since", "bigint").execute();
  },
};

migrations["0018_runs_queue"] = {
  // Each tenant's queued child runs, oldest first, as a claim reads them when a node has no room
  // left for root runs (the whole queue is read through runs_status). Partial, so it holds only
  // queued child runs however many runs have ended; queries match it by naming its conditions
  // literally.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createIndex("runs_queue_children")
      .on("runs")
      .columns(["tenant_id", "id"])
      .where((eb) =>
        eb.and([eb(sql.ref("status"), "=", sql.lit("queued")), eb(sql.ref("root_run_id"), "is not", null)]),
      )
      .execute();
  },
};

migrations["0019_oauth_accounts"] = {
  // OAuth apps of tenants, pending connect sessions, and end users' accounts with sealed tokens.
  // One account per (tenant, app, end user); its row is what a refresh locks.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("oauth_apps")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("secret_name", "text")
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addUniqueConstraint("oauth_apps_tenant_name", ["tenant_id", "name"])
      .execute();
    await db.schema
      .createTable("connect_sessions")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("app_id", "text", (c) => c.notNull().references("oauth_apps.id").onDelete("cascade"))
      .addColumn("end_user", "text", (c) => c.notNull())
      .addColumn("token_hash", "text", (c) => c.notNull().unique())
      .addColumn("state_hash", "text", (c) => c.notNull().unique())
      .addColumn("sealed_verifier", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("scopes", "text", (c) => c.notNull())
      .addColumn("redirect_uri", "text", (c) => c.notNull())
      .addColumn("redirect_after", "text")
      .addColumn("expires_at", "bigint", (c) => c.notNull())
      .addColumn("used_at", "bigint")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .execute();
    await db.schema
      .createTable("oauth_accounts")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("app_id", "text", (c) => c.notNull().references("oauth_apps.id"))
      .addColumn("end_user", "text", (c) => c.notNull())
      .addColumn("status", "text", (c) => c.notNull())
      .addColumn("scopes", "text", (c) => c.notNull())
      .addColumn("sealed_tokens", "text", (c) => c.notNull())
      .addColumn("master_key_id", "text", (c) => c.notNull())
      .addColumn("access_expires_at", "bigint")
      .addColumn("refreshed_at", "bigint")
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addUniqueConstraint("oauth_accounts_user_app", ["tenant_id", "end_user", "app_id"])
      .execute();
  },
};

migrations["0020_run_end_user"] = {
  // The end user a run acts for (its OAuth connections attach that user's accounts), fixed when it
  // is triggered; and the end user of the runs a schedule or a webhook starts.
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    for (const table of ["runs", "schedules", "webhooks"]) {
      await db.schema.alterTable(table).addColumn("end_user", "text").execute();
    }
  },
};

migrations["0021_mcp"] = {
  // Remote MCP servers of tenants (URL, credential, limits, like connections), and the tool
  // definitions an agent version's MCP policy was pinned to (JSON, by server and tool).
  // biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
  async up(db: Kysely<any>) {
    await db.schema
      .createTable("mcp_servers")
      .addColumn("id", "text", (c) => c.primaryKey())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("secret_name", "text")
      .addColumn("spec", "text", (c) => c.notNull())
      .addColumn("created_at", "bigint", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addUniqueConstraint("mcp_servers_tenant_name", ["tenant_id", "name"])
      .execute();
    await db.schema
      .createTable("mcp_pins")
      .addColumn("agent_id", "text", (c) => c.notNull().references("agents.id"))
      .addColumn("version", "integer", (c) => c.notNull())
      .addColumn("tenant_id", "text", (c) => c.notNull().references("tenants.id"))
      .addColumn("pins", "text", (c) => c.notNull())
      .addColumn("updated_at", "bigint", (c) => c.notNull())
      .addPrimaryKeyConstraint("mcp_pins_pk", ["agent_id", "version"])
      .execute();
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

/** The advisory lock that lets one process at a time migrate a PostgreSQL store. */
const MIGRATION_LOCK = 742_000_001;

/**
 * Applies every migration not applied yet (tests may stop after the one named `to`). On
 * PostgreSQL, several hosts starting at once take turns under a session advisory lock, held on the
 * one connection the migrator then uses; a later one finds nothing left to do.
 */
// biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
export async function migrate(db: Kysely<any>, to?: string): Promise<void> {
  if (dialectOf(db) === "sqlite") return migrateOn(db, to);
  await db.connection().execute(async (conn) => {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`.execute(conn);
    try {
      await migrateOn(conn, to);
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`.execute(conn);
    }
  });
}

// biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
async function migrateOn(db: Kysely<any>, to: string | undefined): Promise<void> {
  const migrator = new Migrator({ db, provider });
  const { error, results } = await (to === undefined ? migrator.migrateToLatest() : migrator.migrateTo(to));
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    throw new Error(`database migration ${failed?.migrationName ?? ""} failed: ${String(error)}`);
  }
}
