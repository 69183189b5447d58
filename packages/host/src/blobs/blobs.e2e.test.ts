/**
 * A real host with `--blobs s3://…` against the s3rver stand-in: a run's artifacts land in the
 * bucket, download through the API, and still download after the node's cache is emptied; an
 * agent's layer this node lacks (made at create or by a freeze) is fetched from the bucket before
 * boot, and a corrupt one fails the run with sandbox_error naming the blob.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { isEvent } from "@paddock/protocol";
import { removeTree } from "../fs/store-fs.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import {
  hostSkipReason,
  runAgent,
  runEvents,
  startTestHost,
  type TestHost,
  uniqueName,
  waitForRun,
} from "../testing/harness.ts";
import { type S3StandIn, startS3StandIn } from "../testing/s3-stand-in.ts";
import type { BlobStore } from "./blobs.ts";
import { openBlobStore } from "./open-store.ts";

const skip = e2eSkip(hostSkipReason());

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

describe("a host on an S3 blob store", { skip }, () => {
  let s3: S3StandIn;
  let t: TestHost;
  let bucket: BlobStore;
  let spool: string;
  before(async () => {
    s3 = await startS3StandIn();
    spool = await mkdtemp(join(tmpdir(), "paddock-spool-"));
    bucket = openBlobStore(s3.url, spool);
    t = await startTestHost({ blobs: s3.url, warmSandboxes: 0 });
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

  it("boots an agent whose layer this node lacks, and fails naming a corrupt layer blob", async () => {
    const layersDir = join(t.dataDir, "layers");
    const layersBefore = new Set(await readdir(layersDir).catch(() => []));
    const blobsBefore = new Set((await collect(bucket.list())).map((b) => b.sha256));
    const created = await t.api("POST", "/v1/agents", {
      name: uniqueName("s3-layer"),
      command: ["sh", "main.sh"],
      files: { "main.sh": "echo from-the-layer > /outputs/out.txt\n" },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const [layer] = (await readdir(layersDir)).filter((n) => n.startsWith("sha256-") && !layersBefore.has(n));
    const [blob] = (await collect(bucket.list())).map((b) => b.sha256).filter((b) => !blobsBefore.has(b));
    assert.ok(layer && blob, "the agent's layer was made here and published to the bucket");

    const runOnce = async () => {
      const started = await t.api("POST", `/v1/agents/${created.body.id}/runs`, {});
      const run = await waitForRun(t, started.body.id);
      return { run, events: await runEvents(t, run.id) };
    };
    // A node that never saw the layer: it is fetched through the cache and unpacked before boot.
    await removeTree(join(layersDir, layer));
    await rm(join(t.dataDir, "cache"), { recursive: true, force: true });
    const fetched = await runOnce();
    assert.equal(fetched.run.status, "succeeded");
    assert.ok(existsSync(join(layersDir, layer)));

    const client = new S3Client({ endpoint: s3.endpoint, region: "us-east-1", forcePathStyle: true });
    try {
      const good = Buffer.from(await (await bucket.get(blob)).toArray().then((c) => Buffer.concat(c)));
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `sha256/${blob}`, Body: good.subarray(1) }));
      await removeTree(join(layersDir, layer));
      await rm(join(t.dataDir, "cache"), { recursive: true, force: true });
      const failed = await runOnce();
      assert.equal(failed.run.status, "failed");
      assert.equal(failed.run.reason, "sandbox_error");
      const error = failed.events.find(isEvent("attempt.error"));
      assert.match(JSON.stringify(error?.data), new RegExp(`sha256:${blob}`));

      // Repaired in the bucket: the next run fetches it again.
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `sha256/${blob}`, Body: good }));
      assert.equal((await runOnce()).run.status, "succeeded");
    } finally {
      client.destroy();
    }
  });

  it("publishes a frozen layer, which a node that lacks it fetches before boot", async () => {
    const created = await t.api("POST", "/v1/agents", {
      name: uniqueName("s3-freeze"),
      command: ["sh", "-c", "cat /srv/frozen.txt > /outputs/out.txt"],
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.id;
    assert.equal((await t.api("POST", `/v1/agents/${id}/env/session`, {})).status, 201);
    const exec = await t.api("POST", `/v1/agents/${id}/env/session/exec`, {
      argv: ["sh", "-c", "mkdir -p /srv && echo frozen-here > /srv/frozen.txt"],
    });
    assert.equal(exec.status, 200, JSON.stringify(exec.body));
    const blobsBefore = new Set((await collect(bucket.list())).map((b) => b.sha256));
    const frozen = await t.api("POST", `/v1/agents/${id}/env/freeze`, {});
    assert.equal(frozen.status, 201, JSON.stringify(frozen.body));
    const layer = frozen.body.snapshot.changes.layer as string;
    const added = (await collect(bucket.list())).filter((b) => !blobsBefore.has(b.sha256));
    assert.equal(added.length, 1, "the frozen layer is packed into the bucket");

    await removeTree(join(t.dataDir, "layers", layer));
    await rm(join(t.dataDir, "cache"), { recursive: true, force: true });
    const started = await t.api("POST", `/v1/agents/${id}/runs`, {});
    const run = await waitForRun(t, started.body.id);
    assert.equal(run.status, "succeeded");
    const [out] = (await t.api("GET", `/v1/runs/${run.id}/artifacts`)).body.data;
    assert.equal(out.sha256, createHash("sha256").update("frozen-here\n").digest("hex"));
  });
});
