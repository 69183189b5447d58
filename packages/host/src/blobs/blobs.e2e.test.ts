/**
 * A real host with `--blobs s3://…` against the s3rver stand-in: a run's artifacts land in the
 * bucket, download through the API, and still download after the node's cache is emptied.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, runAgent, startTestHost, type TestHost, uniqueName } from "../testing/harness.ts";
import { type S3StandIn, startS3StandIn } from "../testing/s3-stand-in.ts";
import type { BlobStore } from "./blobs.ts";
import { openBlobStore } from "./open-store.ts";

const skip = e2eSkip(hostSkipReason());

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

describe("artifacts in an S3 blob store", { skip }, () => {
  let s3: S3StandIn;
  let t: TestHost;
  let bucket: BlobStore;
  let spool: string;
  before(async () => {
    s3 = await startS3StandIn();
    spool = await mkdtemp(join(tmpdir(), "paddock-spool-"));
    bucket = openBlobStore(s3.url, spool);
    t = await startTestHost({ blobs: s3.url });
  });
  after(async () => {
    await t?.close();
    await s3?.stop();
    if (spool) await rm(spool, { recursive: true, force: true });
  });

  it("stores a run's artifacts in the bucket and serves them from any node's cache", async () => {
    const content = "# report from the sandbox\n".repeat(2000);
    const { run } = await runAgent(t, {
      name: uniqueName("s3-art"),
      command: ["sh", "-c", "yes '# report from the sandbox' | head -n 2000 > /outputs/report.md"],
    });
    assert.equal(run.status, "succeeded");
    const arts = (await t.api("GET", `/v1/runs/${run.id}/artifacts`)).body.data;
    assert.equal(arts.length, 1);
    const sha256 = createHash("sha256").update(content).digest("hex");
    assert.equal(arts[0].sha256, sha256);
    assert.equal((await bucket.head(sha256))?.size, content.length, "the artifact is in the bucket");
    assert.deepEqual(await filesUnder(join(t.dataDir, "blobs")), [], "nothing is stored in the data folder");

    const download = async () => {
      const res = await fetch(`${t.host.url}/v1/runs/${run.id}/artifacts/${arts[0].id}/content`, {
        headers: { authorization: `Bearer ${t.adminKey}` },
      });
      assert.equal(res.status, 200);
      return res.text();
    };
    assert.equal(await download(), content);

    // A node that has never read it: an empty cache fetches it from the bucket, once.
    await t.restart();
    await rm(join(t.dataDir, "cache"), { recursive: true, force: true });
    assert.equal(await download(), content);
    const cached = await filesUnder(join(t.dataDir, "cache", "blobs"));
    assert.deepEqual(
      cached.map((f) => f.split("/").at(-1)),
      [sha256],
    );
  });
});
