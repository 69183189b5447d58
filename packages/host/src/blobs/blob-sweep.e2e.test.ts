/**
 * The leader sweeps the shared blob store while it runs, not only when it starts: a blob nothing
 * references goes once it is older than the grace period; an artifact's blob stays.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { waitFor } from "../testing/wait.ts";
import { FileBlobStore } from "./file-store.ts";

describe("sweeping the shared blob store", { skip: e2eSkip(hostSkipReason()) }, () => {
  let t: TestHost;
  let shared: string;
  before(async () => {
    shared = await mkdtemp(join(tmpdir(), "paddock-sweep-"));
    t = await startTestHost({ blobs: `file://${shared}`, blobGraceMs: 0, blobGcIntervalMs: 300, warmSandboxes: 0 });
  });
  after(async () => {
    await t?.close();
    await rm(shared, { recursive: true, force: true });
  });

  it("removes what nothing references on the leader's next sweep and keeps artifacts", async () => {
    const store = new FileBlobStore(shared);
    const { run } = await runAgent(t, {
      name: uniqueName("sweep"),
      command: ["sh", "-c", "echo kept > /outputs/kept.txt"],
    });
    assert.equal(run.status, "succeeded");
    const artifact = (await t.api("GET", `/v1/runs/${run.id}/artifacts`)).body.data[0] as { sha256: string };
    const stray = await store.put(Readable.from([Buffer.from(`stray ${Date.now()}`)]));
    assert.ok(await store.head(stray.sha256), "the stray blob is stored");
    await waitFor(async () => (await store.head(stray.sha256)) === null, {
      what: "the sweep to remove the stray blob",
    });
    assert.ok(await store.head(artifact.sha256), "the artifact's blob is kept");
    assert.ok(t.logs.some((l) => l.includes("unreferenced blob(s)")));
  });
});
