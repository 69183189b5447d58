/**
 * What the approvals' end-to-end tests (and `paddock bench approvals`) share: an agent that makes
 * the bridge calls its input lists through the SDK, which waits out approvals, and writes what each
 * got to /outputs/result.json; and ways to start a run and find the approvals it waits on.
 */
import type { TestHost } from "./harness.ts";
import { waitFor } from "./wait.ts";

/**
 * For each call of its input (`{connection, method?, path, body?, headers?}`), a bridge.fetch
 * through the SDK; records status, the replay mark and the body of each answer.
 */
export const CALLS_AGENT = `
import { readFileSync, writeFileSync } from "node:fs";
const { bridge } = await import(process.env.PADDOCK_SDK);
const input = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const results = [];
for (const call of input.calls ?? []) {
  const res = await bridge.fetch(call.connection, call.path, {
    method: call.method ?? "POST",
    headers: call.headers ?? {},
    ...(call.body === undefined ? {} : { body: call.body }),
  });
  results.push({ status: res.status, replayed: res.headers.get("paddock-replayed") === "true", body: await res.text() });
}
writeFileSync("/outputs/result.json", JSON.stringify(results));
`;

/** What CALLS_AGENT recorded for one call. */
export interface CallResult {
  status: number;
  replayed: boolean;
  body: string;
}

/** Creates an agent and starts one run of it; returns the agent's and the run's ids. */
export async function startRun(
  t: TestHost,
  agent: Record<string, unknown>,
  input?: unknown,
  key?: string,
): Promise<{ agentId: string; runId: string }> {
  const created = await t.api("POST", "/v1/agents", agent, key);
  if (created.status !== 201) throw new Error(`agent create: ${created.status} ${JSON.stringify(created.body)}`);
  const started = await t.api("POST", `/v1/agents/${created.body.id}/runs`, input === undefined ? {} : { input }, key);
  if (started.status !== 201) throw new Error(`run create: ${started.status} ${JSON.stringify(started.body)}`);
  return { agentId: created.body.id, runId: started.body.id };
}

/** The run's pending approvals once there are `count` of them (oldest first). */
// biome-ignore lint/suspicious/noExplicitAny: approval JSON.
export async function pendingApprovals(t: TestHost, runId: string, count = 1, key?: string): Promise<any[]> {
  return waitFor(
    async () => {
      const res = await t.api("GET", `/v1/approvals?status=pending&run_id=${runId}`, undefined, key);
      return res.body?.data?.length >= count && [...res.body.data].reverse();
    },
    { what: `${count} pending approval(s) of run ${runId}`, timeoutMs: 60_000 },
  );
}
