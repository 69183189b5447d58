/**
 * `paddock serve` refusing to start beside a live node with its id or an overlapping sandbox
 * range: a clear message, exit status 1, and nothing made in the data folder. The refusal comes
 * before anything needing root, so this runs anywhere.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { migrate } from "../store/migrations.ts";
import { openSqlite } from "../store/sqlite.ts";

const PADDOCK = new URL("../../../../bin/paddock", import.meta.url).pathname;

function serve(args: string[]): Promise<{ code: number; stderr: string }> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PADDOCK_")));
  return new Promise((resolve) => {
    execFile(PADDOCK, ["serve", "--port", "0", ...args], { env, timeout: 60_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stderr });
    });
  });
}

describe("paddock serve beside a live node", () => {
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-serve-refusal-"));
    // Another machine's node heartbeating now, in this data folder's store.
    const db = openSqlite(join(dataDir, "paddock.db"));
    await migrate(db);
    await db
      .insertInto("nodes")
      .values({
        id: "twin",
        version: "0.1.0",
        internal_url: "http://10.0.0.2:7420",
        sandbox_cidr: "10.209.0.0/16",
        process: "elsewhere:4242",
        heartbeat_at: Date.now(),
        started_at: Date.now(),
        draining: 0,
        stopped_at: null,
      })
      .execute();
    await db.destroy();
  });
  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  const nothingMade = () => {
    for (const file of ["admin.key", "master.key", "host.pid", "layers", "runners"]) {
      assert.ok(!existsSync(join(dataDir, file)), `${file} was not made`);
    }
  };

  it("exits 1 naming the live node when its id is taken", async () => {
    const r = await serve(["--data-dir", dataDir, "--node-id", "twin", "--sandbox-cidr", "10.50.0.0/16"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /error node_refused: Node 'twin' is already running \(elsewhere:4242/);
    nothingMade();
  });

  it("exits 1 naming the live node whose sandbox range overlaps", async () => {
    const r = await serve(["--data-dir", dataDir, "--node-id", "other"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /error node_refused: The sandbox range 10\.209\.0\.0\/16 overlaps 10\.209\.0\.0\/16 of live node 'twin'/,
    );
    nothingMade();
  });
});
