import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { describe, it } from "node:test";
import { resolveHostConfig } from "./config.ts";

describe("host configuration", () => {
  it("fills every default in, the derived ones from what was given", () => {
    const config = resolveHostConfig({ dataDir: "/srv/paddock", port: 7420 });
    assert.equal(config.listen, "127.0.0.1");
    assert.equal(config.imagesDir, "/srv/paddock/images");
    assert.equal(config.maxConcurrentRuns, 32);
    assert.equal(config.heartbeatMs, 2000);
    assert.equal(config.heartbeatTimeoutMs, 15_000);
    assert.deepEqual(config.maxLimits, {
      memory_mb: 8192,
      pids: 4096,
      cpus: availableParallelism(),
      timeout_s: 86_400,
      disk_mb: 8192,
      log_kb: 16_384,
      artifacts_mb: 4096,
      max_wait_s: 604_800,
    });
    assert.equal(config.approvalHoldMs, 50_000);
    assert.equal(config.publicUrl, undefined);
    assert.equal(config.warmSandboxes, 4);
    assert.equal(config.maxSessions, 16);
    assert.deepEqual(config.egressTrustedAddresses, []);
    assert.equal(config.schedulerTickMs, 1000);
    assert.equal(config.llmTenantLimits, undefined);
    assert.equal(config.blobs, undefined);
    assert.equal(config.blobGraceMs, 3_600_000);
    assert.equal(config.startingCredits, 10);
    assert.deepEqual(config.bridgeLimits, { requestsPerSandbox: 64, connectionsPerSandbox: 128 });
    assert.deepEqual(
      resolveHostConfig({ dataDir: "/d", port: 0, bridgeLimits: { requestsPerSandbox: 8 } }).bridgeLimits,
      { requestsPerSandbox: 8, connectionsPerSandbox: 128 },
    );
  });

  it("takes the node's settings, with the sandbox range from either key", () => {
    const defaults = resolveHostConfig({ dataDir: "/d", port: 0 });
    assert.deepEqual(
      [defaults.nodeId, defaults.sandboxCidr, defaults.leaseMs, defaults.internalUrl],
      [undefined, "10.209.0.0/16", 30_000, undefined],
    );
    const old = resolveHostConfig({ dataDir: "/d", port: 0, sandboxNetwork: { range: "10.50.0.0/16" } });
    assert.equal(old.sandboxCidr, "10.50.0.0/16");
    const given = resolveHostConfig({
      dataDir: "/d",
      port: 0,
      nodeId: "node-1",
      sandboxCidr: "10.60.0.0/16",
      maxConcurrentRuns: 500,
      internalUrl: "http://10.0.0.1:7420",
    });
    assert.deepEqual(
      [given.nodeId, given.sandboxCidr, given.maxConcurrentRuns, given.internalUrl],
      ["node-1", "10.60.0.0/16", 500, "http://10.0.0.1:7420"],
    );
    assert.throws(() => resolveHostConfig({ dataDir: "/d", port: 0, nodeId: "no spaces" }), /nodeId/);
  });

  it("keeps what was given, and derives from it", () => {
    const config = resolveHostConfig({
      dataDir: "/d",
      port: 0,
      imagesDir: "/images",
      heartbeatMs: 10_000,
      maxLimits: { disk_mb: 8 },
      log: () => {},
    });
    assert.equal(config.imagesDir, "/images");
    assert.equal(config.heartbeatTimeoutMs, 50_000);
    assert.equal(config.maxLimits.disk_mb, 8);
    assert.equal(config.maxLimits.memory_mb, 8192);
    assert.ok(!("log" in config), "hooks stay outside the configuration's data");
  });

  it("refuses a value out of range, naming it", () => {
    assert.throws(() => resolveHostConfig({ dataDir: "/d", port: 70_000 }), /invalid host configuration[\s\S]*port/);
    assert.throws(
      () => resolveHostConfig({ dataDir: "/d", port: 1, maxLimits: { memory_mb: 1 } }),
      /maxLimits\.memory_mb/,
    );
    assert.throws(() => resolveHostConfig({ dataDir: "", port: 1 }), /dataDir/);
    assert.throws(() => resolveHostConfig({ dataDir: "/d", port: 1, startingCredits: -1 }), /startingCredits/);
    assert.equal(resolveHostConfig({ dataDir: "/d", port: 1, startingCredits: 0 }).startingCredits, 0);
    assert.throws(
      () => resolveHostConfig({ dataDir: "/d", port: 1, blobs: "s3://KEY:SECRET@bucket" }),
      (err: Error) => /must not carry credentials[\s\S]*at blobs/.test(err.message) && !err.message.includes("SECRET"),
    );
    assert.equal(resolveHostConfig({ dataDir: "/d", port: 1, blobs: "file:///shared" }).blobs, "file:///shared");
  });
});
