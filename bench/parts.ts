/**
 * What the bridge and gateway benchmarks assemble alike from the host's own parts: a store with a
 * bench tenant, its vault, secrets and run tokens; and a booted sandbox given its run token and
 * listed with the bridge, the way a run's attempt does it.
 */
import { randomBytes } from "node:crypto";
import { rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Kysely } from "kysely";
import type { LiveSandbox, LiveSandboxes } from "../packages/host/src/bridge/live.ts";
import { RunTokens } from "../packages/host/src/bridge/tokens.ts";
import type { SandboxHandle } from "../packages/host/src/sandbox/driver.ts";
import { Secrets } from "../packages/host/src/secrets/secrets.ts";
import { parseMasterKey, Vault } from "../packages/host/src/secrets/vault.ts";
import { migrate } from "../packages/host/src/store/migrations.ts";
import type { Database } from "../packages/host/src/store/schema.ts";

export const BENCH_TENANT = "ten_bench";

export async function openBenchStore(
  db: Kysely<Database>,
  id: string,
): Promise<{ secrets: Secrets; tokens: RunTokens }> {
  await migrate(db);
  await db
    .insertInto("tenants")
    .values({ id: BENCH_TENANT, name: `bench-${id}`, created_at: Date.now() })
    .execute();
  const vault = new Vault(parseMasterKey(randomBytes(32).toString("base64"), "bench"));
  const tokens = new RunTokens({ db, sealer: vault, issuer: `paddock:bench-${id}` });
  await tokens.start();
  return { secrets: new Secrets(db, vault), tokens };
}

/**
 * Puts a run token for `run` in the sandbox and lists it with the bridge; `record` counts its
 * events; `trace`, an attempt span, is where traced services put its calls' spans.
 */
export async function admitSandbox(
  handle: SandboxHandle,
  deps: { tokens: RunTokens; live: LiveSandboxes },
  as: { run: string; scopes: string[]; record: () => void; trace?: LiveSandbox["trace"] },
): Promise<void> {
  const { run, scopes, record, trace } = as;
  const address = handle.address as string;
  const common = { attempt: 1, tenant: BENCH_TENANT, agent: "agt_bench" };
  const { token } = await deps.tokens.mint({ ...common, run, addr: address, sandbox: handle.id, scopes });
  await writeFile(join(handle.runtimeDir, "token.tmp"), token, { mode: 0o444 });
  await rename(join(handle.runtimeDir, "token.tmp"), join(handle.runtimeDir, "token"));
  deps.live.add({
    address,
    sandboxId: handle.id,
    runId: run,
    attempt: 1,
    tenantId: BENCH_TENANT,
    agentId: common.agent,
    record,
    ...(trace ? { trace } : {}),
  });
}
