/**
 * Benchmark of run tokens: microseconds per mint, per full verify (signature and claims) and per
 * cached verify, against a real SQLite store in a temporary folder. Not a test: it asserts
 * nothing about time.
 *
 *   node packages/host/src/bridge/tokens-bench.ts [--rounds N] [--tokens N]
 *
 * Threat model: none beyond the tests': throwaway keys under a throwaway master key, in a
 * temporary folder removed on exit.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { parseMasterKey, Vault } from "../secrets/vault.ts";
import { migrate } from "../store/migrations.ts";
import { openSqlite } from "../store/sqlite.ts";
import { RunTokens } from "./tokens.ts";

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "20000" }, tokens: { type: "string", default: "100" } },
});
const rounds = Number(values.rounds);
const tokenCount = Number(values.tokens);

/** Mean microseconds per call of `fn` over `rounds` calls, after a warm-up of a tenth of that. */
async function measure(label: string, fn: (i: number) => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.max(100, rounds / 10); i++) await fn(i);
  const start = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) await fn(i);
  const us = Number(process.hrtime.bigint() - start) / 1000 / rounds;
  console.log(`${label.padEnd(18)} ${us.toFixed(1).padStart(8)} µs`);
  return us;
}

const dir = await mkdtemp(join(tmpdir(), "paddock-tokens-bench-"));
const db = openSqlite(join(dir, "paddock.db"));
try {
  await migrate(db);
  const sealer = new Vault(parseMasterKey(randomBytes(32).toString("base64"), "bench"));
  const tokens = new RunTokens({ db, sealer, issuer: "paddock-host" });
  await tokens.start();
  const grant = (i: number) => ({
    run: `run_${i}`,
    attempt: 1,
    tenant: "ten_bench",
    agent: "agt_bench",
    addr: `10.209.${(i >> 8) & 255}.${i & 255}`,
    sandbox: `sbx-${i}`,
    scopes: ["bridge:github", "bridge:slack", "llm"],
  });
  const minted = await Promise.all(Array.from({ length: tokenCount }, (_, i) => tokens.mint(grant(i))));
  const pick = (i: number) => (minted[i % minted.length] as { token: string }).token;
  console.log(`run tokens: ${rounds} rounds over ${tokenCount} tokens of ~${pick(0).length} characters`);
  await measure("mint", (i) => tokens.mint(grant(i)));
  await measure("verify (uncached)", (i) => tokens.verifyUncached(pick(i)));
  await measure("verify (cached)", (i) => tokens.verify(pick(i)));
} finally {
  await db.destroy();
  await rm(dir, { recursive: true, force: true });
}
