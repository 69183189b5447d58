/** Row types of the store. Times are integer milliseconds since the epoch; JSON is stored as text. */
import type { Generated } from "kysely";

export interface TenantsTable {
  id: string;
  name: string;
  created_at: number;
}

export interface ApiKeysTable {
  id: string;
  tenant_id: string;
  role: "admin" | "tenant";
  name: string | null;
  secret_hash: string;
  created_at: number;
  revoked_at: number | null;
}

/** A dashboard sign-in: the SHA-256 of its cookie's token, bound to the API key it signed in with. */
export interface UiSessionsTable {
  id: string;
  key_id: string;
  created_at: number;
  expires_at: number;
}

export interface AgentsTable {
  id: string;
  tenant_id: string;
  name: string;
  /** JSON of the current AgentDefinition (what runs); the environment is in its current snapshot. */
  spec: string;
  /** The current environment version (snapshots.version). */
  current_version: number;
  /** The current definition version (agent_versions.version). */
  version: number;
  /** When the agent was archived (deleted); null while it is live. */
  archived_at: number | null;
  created_at: number;
}

/** Every version of an agent's definition, the current one included. */
export interface AgentVersionsTable {
  agent_id: string;
  version: number;
  tenant_id: string;
  /** JSON of AgentDefinition. */
  spec: string;
  created_at: number;
}

/** A version of an agent's environment: a manifest naming immutable, content-addressed parts. */
export interface SnapshotsTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  version: number;
  /** Base image digest. */
  base: string;
  /** JSON array of environment layer digests, top-most first. */
  layers: string;
  /** Runner layer digest this snapshot was made (or last re-made) with; "" when unknown. */
  runner: string;
  /** create | update | freeze | rollback | runner | import */
  reason: string;
  parent_version: number | null;
  /** JSON of the change summary against the parent, for freezes. */
  changes: string | null;
  env_bytes: number;
  created_at: number;
}

/** An environment edit session: a writable layer over an agent's snapshot, until frozen or discarded. */
export interface EnvSessionsTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  /** active | frozen | discarded | expired | lost */
  status: string;
  base_version: number;
  /** JSON array of allowed egress host patterns. */
  allow: string;
  disk_mb: number;
  memory_mb: number;
  idle_timeout_s: number;
  /** First host id of the session's id range (see envs/unshift.ts). */
  id_base: number;
  commands: number;
  egress_allowed: number;
  egress_refused: number;
  created_at: number;
  last_used_at: number;
  ended_at: number | null;
  end_reason: string | null;
  frozen_version: number | null;
  /** The node the session lives on; null for a session opened before nodes had ids. */
  node_id: string | null;
}

/** One request through a session's egress proxy (never headers or bodies). */
export interface EnvSessionEgressTable {
  session_id: string;
  seq: number;
  time: number;
  method: string;
  host: string;
  port: number;
  decision: string;
  reason: string | null;
  status: number | null;
  bytes_in: number;
  bytes_out: number;
  ms: number;
}

export interface RunnersTable {
  digest: string;
  created_at: number;
  /** The runner published last is current. */
  published_at: number | null;
  /** The sha256 of its Node binary and of its bundle in the blob store, for nodes to build it from. */
  node_sha256: string | null;
  bundle_sha256: string | null;
}

export interface RunsTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  status: string;
  reason: string | null;
  exit_code: number | null;
  attempt: number;
  max_attempts: number;
  /** JSON of the run's input, or null. */
  input: string | null;
  /** JSON of the AgentSpec as it was when the run was triggered. */
  spec: string;
  worker_id: string | null;
  cancel_requested: number;
  snapshot_version: number | null;
  /** The agent's definition version the run was triggered with. */
  agent_version: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  /** api, schedule, webhook, agent or replay. */
  trigger: string;
  /** A queued run is not claimed before this time (a retry's backoff). */
  not_before: number | null;
  /** A run still queued at this time expires. */
  expires_at: number | null;
  /** The claiming worker's lease, renewed while the attempt runs. */
  lease_until: number | null;
  /** Runs sharing a serial key run one at a time (a schedule that queues one). */
  serial_key: string | null;
  /** For a child run: the run that started it, the root of its tree and the root's agent. */
  parent_run_id: string | null;
  root_run_id: string | null;
  root_agent_id: string | null;
  depth: number;
  /** The run's last event sequence number; appends take theirs by raising it. */
  event_seq: number;
  /** For a replay: the run it replays. */
  replay_of: string | null;
  /**
   * The W3C traceparent its spans hang under (a caller's, or the parent attempt's span for a child
   * run); null: its trace id is derived from its root run (see tracing/trace-context.ts).
   */
  trace_parent: string | null;
  /** The end user (of the tenant) whose accounts its OAuth connections attach, if any. */
  end_user: string | null;
  /** Since when the run waits for approvals (status waiting); null otherwise. */
  waiting_since?: number | null;
}

export interface AttemptsTable {
  run_id: string;
  n: number;
  status: string;
  reason: string | null;
  exit_code: number | null;
  sandbox_id: string | null;
  worker_id: string;
  started_at: number;
  finished_at: number | null;
}

export interface EventsTable {
  run_id: string;
  seq: number;
  attempt: number;
  type: string;
  ts: number;
  data: string;
}

/**
 * An `llm.call` or `bridge.call` event, indexed for lists over all of a tenant's runs (the event
 * itself holds the call's data). Written in the transaction that appends the event.
 */
export interface CallsTable {
  run_id: string;
  seq: number;
  tenant_id: string;
  agent_id: string;
  kind: "llm" | "bridge";
  ts: number;
  /** The provider (llm; "" when the call was refused before one was known) or the connection (bridge). */
  target: string;
  /** The model asked for (llm); null for bridge calls. */
  model: string | null;
  /** 1 when the call went through, 0 when it failed (see callOutcome). */
  ok: number;
}

export interface ArtifactsTable {
  id: string;
  run_id: string;
  tenant_id: string;
  attempt: number;
  path: string;
  size: number;
  sha256: string;
  content_type: string;
  created_at: number;
}

/** A secret of the vault: its value sealed (AES-256-GCM under a data key wrapped by the master key). */
export interface SecretsTable {
  id: string;
  tenant_id: string;
  name: string;
  /** JSON of the vault's sealed box; never the value. */
  sealed: string;
  /** Which master key wrapped the data key (a fingerprint, not the key). */
  master_key_id: string;
  /** Counts the values set under this name, from 1. */
  version: number;
  created_at: number;
  updated_at: number;
}

/** A named upstream the bridge forwards to, with the secret it attaches and its policy. */
export interface ConnectionsTable {
  id: string;
  tenant_id: string;
  name: string;
  /** The secret the connection attaches (also in spec); null for none. Kept apart to find users of a secret. */
  secret_name: string | null;
  /** JSON of the connection's definition (base URL, auth, policy, limits). */
  spec: string;
  created_at: number;
  updated_at: number;
}

/**
 * A remote MCP server the host is the client of (see mcp/servers.ts): the same columns as a
 * connection, its spec the server's definition (URL, auth, headers, limits).
 */
export type McpServersTable = ConnectionsTable;

/** The MCP tool definitions an agent version's policy is pinned to (JSON McpPins). */
export interface McpPinsTable {
  agent_id: string;
  version: number;
  tenant_id: string;
  pins: string;
  updated_at: number;
}

/** A key that signs run tokens. The private half is sealed by the vault. */
export interface SigningKeysTable {
  kid: string;
  alg: string;
  public_jwk: string;
  sealed_private: string;
  master_key_id: string;
  created_at: number;
  /** When it stopped signing; null while it is the signing key. */
  retired_at: number | null;
  /** Tokens it signed verify until this time (retired_at plus the longest token lifetime). */
  verify_until: number | null;
}

/** A model provider: kind, base URL, the admin secret holding its key, prices (JSON in spec). */
export interface ProvidersTable {
  name: string;
  spec: string;
  created_at: number;
  updated_at: number;
}

/** One line of the credits ledger, never updated or deleted. Amounts are micro-credits. */
export interface CreditLedgerTable {
  id: string;
  tenant_id: string;
  agent_id: string | null;
  run_id: string | null;
  call_id: string | null;
  kind: "grant" | "reserve" | "settle" | "release";
  amount: number;
  /** JSON: for settlements the provider, model and token counts; for grants the note. */
  detail: string | null;
  created_at: number;
}

/** Running totals of the ledger per tenant, agent and run (`tenant:<id>`, `agent:<id>`, `run:<id>`). */
export interface CreditAccountsTable {
  key: string;
  granted: number;
  spent: number;
  reserved: number;
}

/** An `Idempotency-Key` of an API trigger: the same key answers with the same run for a day. */
export interface IdempotencyKeysTable {
  tenant_id: string;
  key: string;
  /** What the request asked for (agent and body), so a reused key with another request is refused. */
  request_hash: string;
  run_id: string;
  created_at: number;
}

export interface SchedulesTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  cron: string;
  timezone: string;
  overlap: string;
  catch_up_s: number;
  input: string | null;
  paused: number;
  /** The next slot, in ms; null when the expression has no more. */
  next_at: number | null;
  last_slot_at: number | null;
  /** The end user of the runs it starts, if any. */
  end_user: string | null;
  created_at: number;
}

/** Which slot of a schedule made which run: a slot runs at most once. */
export interface ScheduleSlotsTable {
  schedule_id: string;
  slot_at: number;
  run_id: string | null;
  /** run, skipped (overlap), or missed (downtime beyond the catch-up window). */
  outcome: string;
}

export interface WebhooksTable {
  id: string;
  tenant_id: string;
  agent_id: string;
  sealed_secret: string;
  master_key_id: string;
  /** The end user of the runs it starts, if any. */
  end_user: string | null;
  created_at: number;
}

export interface WebhookDeliveriesTable {
  webhook_id: string;
  delivery_id: string;
  run_id: string;
  received_at: number;
}

/** A boundary call's answer, by run and step (see engine/journal.ts). */
export interface JournalTable {
  run_id: string;
  step: string;
  request_hash: string;
  attempt: number;
  status: number;
  /** JSON of the answer's headers as passed to the sandbox. */
  headers: string;
  body: Uint8Array;
  created_at: number;
}

/** A call held for a person's approval (see store/approvals.ts). */
export interface ApprovalsTable {
  id: string;
  tenant_id: string;
  run_id: string;
  agent_id: string;
  /** The attempt that asked last. */
  attempt: number;
  /** bridge | llm | agent */
  kind: string;
  /** The connection, model or agent called. */
  target: string;
  /** Which policy rule asked (max_pending counts per rule and run). */
  rule_key: string;
  /** The call's journal step in that attempt. */
  step: string | null;
  /** Binds the held request: method, target, path, query, headers and body hashed together. */
  request_hash: string;
  /** JSON of the ApprovalRequest the approvers are shown. */
  request: string;
  /** JSON of what is sent besides the body (see HeldCall). */
  held: string;
  body: Uint8Array;
  /** JSON of the ApprovalRule. */
  rule: string;
  /** The rule names the admin among its approvers. */
  admin_approves: number;
  /** pending | approved | denied | expired | canceled */
  status: string;
  created_at: number;
  expires_at: number;
  /** Denied on its own at this time when still pending (auto_deny_after_s). */
  deny_at: number | null;
  decided_at: number | null;
  /** api | link | auto | host */
  decided_via: string | null;
  decided_key: string | null;
  note: string | null;
  /** null until sent; sending while on the way; sent once the answer came. */
  forward_state: string | null;
  forwarded_at: number | null;
  answer_status: number | null;
  answer_headers: string | null;
  answer_body: Uint8Array | null;
}

/** A node sharing the store (see nodes/nodes.ts); times are the database's clock, in ms. */
export interface NodesTable {
  id: string;
  version: string;
  /** The API URL other nodes use to reach it. */
  internal_url: string;
  sandbox_cidr: string;
  /** hostname:pid of the process that registered it. */
  process: string;
  heartbeat_at: number;
  started_at: number;
  draining: number;
  stopped_at: number | null;
}

export interface Database {
  tenants: TenantsTable;
  api_keys: ApiKeysTable;
  ui_sessions: UiSessionsTable;
  agents: AgentsTable;
  agent_versions: AgentVersionsTable;
  runs: RunsTable;
  attempts: AttemptsTable;
  events: EventsTable;
  calls: CallsTable;
  artifacts: ArtifactsTable;
  snapshots: SnapshotsTable;
  runners: RunnersTable;
  env_sessions: EnvSessionsTable;
  env_session_egress: EnvSessionEgressTable;
  secrets: SecretsTable;
  connections: ConnectionsTable;
  mcp_servers: McpServersTable;
  mcp_pins: McpPinsTable;
  signing_keys: SigningKeysTable;
  providers: ProvidersTable;
  credit_ledger: CreditLedgerTable;
  credit_accounts: CreditAccountsTable;
  idempotency_keys: IdempotencyKeysTable;
  schedules: SchedulesTable;
  schedule_slots: ScheduleSlotsTable;
  webhooks: WebhooksTable;
  webhook_deliveries: WebhookDeliveriesTable;
  journal: JournalTable;
  nodes: NodesTable;
  tree_blobs: TreeBlobsTable;
  notification_subscriptions: NotificationSubscriptionsTable;
  notification_deliveries: NotificationDeliveriesTable;
  notification_attempts: NotificationAttemptsTable;
  oauth_apps: OAuthAppsTable;
  connect_sessions: ConnectSessionsTable;
  oauth_accounts: OAuthAccountsTable;
  approvals: ApprovalsTable;
  /** Kysely's own bookkeeping tables are not listed here. */
  _unused?: { id: Generated<number> };
}

/** Where an environment layer or base image is in the shared blob store: its packed archive's sha256. */
export interface TreeBlobsTable {
  /** layer | image */
  kind: string;
  /** The tree's digest (sha256-…). */
  digest: string;
  sha256: string;
  size: number;
  created_at: number;
}

/** A tenant's endpoint subscribed to event types (see notifications/). */
export interface NotificationSubscriptionsTable {
  id: string;
  tenant_id: string;
  url: string;
  /** JSON array of NotificationEventType. */
  events: string;
  description: string | null;
  /** With credits.low: the balance in micro-credits under which it is sent. */
  credits_below: number | null;
  /** 1: set by the admin, the URL may resolve to a private or loopback address. */
  internal: number;
  /** active | disabled */
  status: string;
  disabled_reason: string | null;
  /** The vault's sealed box of the signing secrets (JSON {current, previous}); never a value. */
  sealed_secrets: string;
  master_key_id: string;
  /** Until when the previous secret signs beside the current one; null for none. */
  previous_until: number | null;
  created_at: number;
  updated_at: number;
}

/** One notification to send: written in the transaction of the event it announces (the outbox). */
export interface NotificationDeliveriesTable {
  id: string;
  subscription_id: string;
  tenant_id: string;
  type: string;
  run_id: string | null;
  /** The JSON payload, byte for byte what is signed and sent. */
  body: string;
  /** pending | delivered | failed | canceled */
  status: string;
  /** Attempts claimed so far (each has a notification_attempts row once it ends). */
  attempts: number;
  /** When it is due (the database's clock); while a node sends it, when that node's claim lapses. */
  next_at: number;
  /** No automatic attempt starts after this time: the delivery fails instead. */
  retry_until: number;
  /** The node sending it now; null between attempts. */
  claimed_by: string | null;
  created_at: number;
  delivered_at: number | null;
}

export interface NotificationAttemptsTable {
  delivery_id: string;
  n: number;
  node_id: string;
  started_at: number;
  /** The endpoint's HTTP status; null when it gave none. */
  status: number | null;
  latency_ms: number | null;
  error: string | null;
}

/** A tenant's OAuth app: its resolved endpoints and client, as JSON (see oauth/apps.ts). */
export interface OAuthAppsTable {
  id: string;
  tenant_id: string;
  name: string;
  /** The client secret's name, kept as a column so a secret in use is not deleted. */
  secret_name: string | null;
  /** JSON of the resolved app (endpoints, client id, scopes, PKCE, extra parameters). */
  spec: string;
  created_at: number;
  updated_at: number;
}

/** A pending authorization of an end user at an app (see oauth/accounts.ts). */
export interface ConnectSessionsTable {
  id: string;
  tenant_id: string;
  app_id: string;
  end_user: string;
  /** sha256 of the connect URL's token and of the `state` sent to the provider. */
  token_hash: string;
  state_hash: string;
  /** The PKCE verifier, sealed by the vault. */
  sealed_verifier: string;
  master_key_id: string;
  /** JSON array of the scopes asked for. */
  scopes: string;
  redirect_uri: string;
  redirect_after: string | null;
  expires_at: number;
  /** Set once when the callback takes it: a state is good once. */
  used_at: number | null;
  created_at: number;
}

/** An end user's account at an app: its tokens sealed, never readable through the API. */
export interface OAuthAccountsTable {
  id: string;
  tenant_id: string;
  app_id: string;
  end_user: string;
  /** active | needs_reauth */
  status: string;
  /** JSON array of the scopes granted. */
  scopes: string;
  /** JSON {access_token, refresh_token, token_type}, sealed by the vault. */
  sealed_tokens: string;
  master_key_id: string;
  /** When the access token expires (ms since the epoch); null when the provider did not say. */
  access_expires_at: number | null;
  refreshed_at: number | null;
  created_at: number;
  updated_at: number;
}
