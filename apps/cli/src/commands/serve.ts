/** `paddock serve`: runs the host in this process until SIGINT or SIGTERM. */
import { resolve as absolute, join } from "node:path";
import { parseLocalCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, dataDirOf } from "../context.ts";

export const DEFAULT_PORT = 7420;

/** Where a host serves its dashboard. */
export const dashboardUrl = (hostUrl: string) => `${hostUrl.replace(/\/+$/, "")}/ui`;

export const serve: Command = {
  name: "serve",
  summary: "run the host (API, engine, sandboxes)",
  usage: `Usage: paddock serve [--data-dir DIR] [--port PORT] [--listen ADDR] [--images-dir DIR]
                     [--node-id NAME] [--sandbox-cidr CIDR] [--max-runs N] [--internal-url URL]
                     [--public-url URL]
                     [--max-runs-per-tenant N] [--lease-ms MS]
                     [--database postgres://USER@HOST/DB]
                     [--egress-trust CIDR]... [--master-key-file FILE]
                     [--old-master-key-file FILE]... [--llm-rpm N] [--llm-tpm N]
                     [--blobs URL] [--starting-credits N] [--metrics-token-file FILE]
                     [--log-format json|pretty] [--trace-content]

Runs the host: the HTTP API, the run engine, the sandboxes and the dashboard (URL/ui, signed in
with an API key). On the first start of a data folder it creates the admin API key, prints it
once and writes it to DIR/admin.key. Stops cleanly on Ctrl-C (SIGINT) or SIGTERM.

Options:
  --data-dir DIR    data folder: database, artifacts, layers (env PADDOCK_DATA_DIR;
                    default ./.paddock)
  --port PORT       port to listen on (default ${DEFAULT_PORT}; 0 picks a free one)
  --listen ADDR     address to listen on (default 127.0.0.1)
  --images-dir DIR  where base images live (default DIR/images)
  --node-id NAME    this node's id among the nodes sharing the store (default: one made from
                    the machine's name and DIR, the same at every start); a second live node
                    with the same id refuses to start
  --sandbox-cidr CIDR
                    the IPv4 range sandboxes take addresses from (default 10.209.0.0/16); a
                    range overlapping a live node's refuses to start
  --max-runs N      runs at once on this node (default 32)
  --max-runs-per-tenant N
                    runs of one tenant at once over every node sharing the store (default:
                    no limit beyond the nodes' own; give every node the same value)
  --internal-url URL
                    the API URL other nodes reach this one at (default its own URL)
  --public-url URL  the URL people reach this host at, for the links notifications carry (an
                    approval's one-time link, a run's page; default --internal-url, else its
                    own URL) and for end users' connect links and the OAuth callback (default
                    the address the API was called at)
  --lease-ms MS     how long this node's claim on a run holds without renewal (default
                    30000, at least 1000); it renews every third of it, and another node
                    retries the runs of a node silent for longer
  --database URL    a PostgreSQL database to keep the store in instead of SQLite in DIR,
                    which several hosts may share: postgres://USER[:PASSWORD]@HOST[:PORT]/DB,
                    or over a unix socket postgres://USER@/DB?host=/run/postgresql
                    (env PADDOCK_DATABASE; default DIR/paddock.db)
  --egress-trust CIDR
                    a non-public address or range (10.0.0.0/8, fd00::/8) that environment
                    sessions may reach when an allowed host name resolves there, such as an
                    internal package mirror (repeatable; default: public addresses only)
  --master-key-file FILE
                    the key that seals secrets at rest: 32 random bytes as base64 or hex
                    (openssl rand -base64 32 > FILE; chmod 600 FILE). Default: env
                    PADDOCK_MASTER_KEY, else DIR/master.key, made on the first start
  --old-master-key-file FILE
                    an earlier master key (repeatable): what it sealed is re-sealed under
                    the master key at start, after which it is no longer needed
  --llm-rpm N       LLM calls per minute each tenant may make through the gateway
  --llm-tpm N       LLM tokens per minute each tenant may use (input bound plus output asked)
  --blobs URL       the blob store shared by every node, for artifacts and packed layers:
                    file:///FOLDER (a local or NFS folder) or
                    s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME&force_path_style=true
                    (AWS S3, MinIO, Ceph, R2; credentials from the AWS environment or
                    credential files, never the URL). Each node keeps a verified copy of
                    what it reads in DIR/cache/blobs. Default: DIR/blobs
  --starting-credits N
                    credits granted to the host's own tenant (the admin key's) when a new
                    store creates it, so that first model calls can be paid (default 10; 0
                    grants none). Tenants created later start with none: 'paddock credits
                    grant TENANT N'
  --metrics-token-file FILE
                    a token (at least 16 characters) that may read GET /metrics besides the
                    admin API key, for a Prometheus scraper that should hold no API key
  --log-format json|pretty
                    log lines on stderr as JSON objects (time, level, node, run_id,
                    tenant_id, msg) or as text for people (default: pretty when stderr is
                    a terminal, else json)
  --trace-content   put prompts, completions and tools' arguments and results in spans
                    (only with traces, below; they may hold what agents read and write)

Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set (http://HOST:4318), the host sends OpenTelemetry
spans over OTLP/HTTP to its /v1/traces: one trace per root run. Without it no tracing code is
loaded. OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS apply.`,
  async run(argv, ctx) {
    const { values } = parseLocalCommand(argv, {
      command: "serve",
      options: {
        "data-dir": { type: "string" },
        port: { type: "string" },
        listen: { type: "string" },
        "images-dir": { type: "string" },
        "node-id": { type: "string" },
        "sandbox-cidr": { type: "string" },
        "max-runs": { type: "string" },
        "internal-url": { type: "string" },
        "public-url": { type: "string" },
        "lease-ms": { type: "string" },
        "max-runs-per-tenant": { type: "string" },
        database: { type: "string" },
        "egress-trust": { type: "string", multiple: true },
        "master-key-file": { type: "string" },
        "old-master-key-file": { type: "string", multiple: true },
        "llm-rpm": { type: "string" },
        "llm-tpm": { type: "string" },
        blobs: { type: "string" },
        "starting-credits": { type: "string" },
        "metrics-token-file": { type: "string" },
        "log-format": { type: "string" },
        "trace-content": { type: "boolean" },
      },
    });
    const logFormat = values["log-format"];
    if (logFormat !== undefined && logFormat !== "json" && logFormat !== "pretty") {
      throw new UsageError("--log-format must be json or pretty", "serve");
    }
    const port = parseNumber(values.port, "port") ?? DEFAULT_PORT;
    if (port < 0 || port > 65535) throw new UsageError("--port must be between 0 and 65535", "serve");
    const dataDir = dataDirOf(values, ctx);
    const rpm = parseNumber(values["llm-rpm"], "llm-rpm");
    const tpm = parseNumber(values["llm-tpm"], "llm-tpm");
    const maxRuns = parseNumber(values["max-runs"], "max-runs");
    const leaseMs = parseNumber(values["lease-ms"], "lease-ms");
    const perTenant = parseNumber(values["max-runs-per-tenant"], "max-runs-per-tenant");
    const startingCredits = parseNumber(values["starting-credits"], "starting-credits", true);
    if (startingCredits !== undefined && startingCredits < 0) {
      throw new UsageError("--starting-credits must be 0 or more", "serve");
    }
    if (leaseMs !== undefined && leaseMs < 1000) throw new UsageError("--lease-ms must be at least 1000", "serve");
    const database = values.database ?? ctx.settings.database;
    if (database !== undefined && !/^postgres(ql)?:\/\//.test(database)) {
      throw new UsageError("--database must be a postgres:// URL", "serve");
    }
    const { startHost, VERSION } = await import("@paddock/host");
    const host = await startHost({
      dataDir,
      port,
      ...(values.listen ? { listen: values.listen } : {}),
      imagesDir: values["images-dir"] ?? join(dataDir, "images"),
      ...(values["node-id"] ? { nodeId: values["node-id"] } : {}),
      ...(values["sandbox-cidr"] ? { sandboxCidr: values["sandbox-cidr"] } : {}),
      ...(maxRuns !== undefined ? { maxConcurrentRuns: maxRuns } : {}),
      ...(values["internal-url"] ? { internalUrl: values["internal-url"] } : {}),
      ...(values["public-url"] ? { publicUrl: values["public-url"] } : {}),
      ...(leaseMs !== undefined ? { leaseMs } : {}),
      ...(perTenant !== undefined ? { maxRunsPerTenant: perTenant } : {}),
      ...(startingCredits !== undefined ? { startingCredits } : {}),
      ...(values.blobs ? { blobs: values.blobs } : {}),
      ...(values["metrics-token-file"] ? { metricsTokenFile: absolute(values["metrics-token-file"]) } : {}),
      ...(logFormat ? { logFormat } : {}),
      ...(database ? { database } : {}),
      ...(values["egress-trust"] ? { egressTrustedAddresses: values["egress-trust"] } : {}),
      ...(values["master-key-file"] ? { masterKeyFile: absolute(values["master-key-file"]) } : {}),
      ...(values["old-master-key-file"]
        ? { oldMasterKeyFiles: values["old-master-key-file"].map((f) => absolute(f)) }
        : {}),
      ...(ctx.settings.otlpEndpoint ? { otlpEndpoint: ctx.settings.otlpEndpoint } : {}),
      ...(values["trace-content"] ? { traceContent: true } : {}),
      ...(rpm || tpm
        ? { llmTenantLimits: { ...(rpm ? { requestsPerMinute: rpm } : {}), ...(tpm ? { tokensPerMinute: tpm } : {}) } }
        : {}),
    });
    // Signals stop the host cleanly from the moment the banner says it serves.
    const stopped = new Promise<void>((resolve) => {
      let stopping = false;
      const stop = (signal: NodeJS.Signals) => {
        if (stopping) {
          ctx.err(`${signal} again: exiting without waiting`);
          process.exit(1);
        }
        stopping = true;
        ctx.err(`${signal}: stopping the host`);
        host.close().then(resolve, (err: unknown) => {
          ctx.err(`error while stopping: ${err instanceof Error ? err.message : String(err)}`);
          process.exitCode = 1;
          resolve();
        });
      };
      process.on("SIGINT", stop);
      process.on("SIGTERM", stop);
    });
    ctx.out(`paddock ${VERSION} serving ${host.url} (data: ${dataDir}${database ? ", database: PostgreSQL" : ""})`);
    if (host.startingCredits !== null) {
      ctx.out(`the host's own tenant starts with ${host.startingCredits} credits (--starting-credits)`);
    }
    ctx.out(`dashboard: ${dashboardUrl(host.url)} (sign in with the admin API key)`);
    if (host.adminKey) {
      ctx.out(`admin API key (shown once; saved to ${host.adminKeyPath}):`);
      ctx.out(`  ${host.adminKey}`);
    } else {
      ctx.out(`admin API key: in ${host.adminKeyPath}`);
    }
    await stopped;
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  },
};
