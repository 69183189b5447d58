/**
 * A host's services over a shared blob folder (`blobs: file://…`), without networks or
 * sandboxes: an agent's layer is published when made and fetched back when this node lacks it
 * (a corrupt blob fails naming its digest and is fetched again once repaired), and the sweep
 * deletes only old blobs nothing references.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { AppError } from "@paddock/protocol";
import { removeTree } from "../fs/store-fs.ts";
import { digestTree } from "../fs/tree-digest.ts";
import { collectBlobGarbage } from "../gc.ts";
import { newId } from "../store/ids.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { type NoRootHost, startNoRootHost } from "../testing/no-root-host.ts";
import { FileBlobStore } from "./file-store.ts";

// Layer files belong to the sandbox user, and unpacking restores their owners: both need root.
const skip = e2eSkip(process.getuid?.() === 0 ? false : "needs root to write layers owned by the sandbox user");

describe("a shared blob folder", { skip }, () => {
  let h: NoRootHost;
  let shared: string;
  let store: FileBlobStore;
  let layer: string;
  let layerBlob: string;
  let image: string;
  let layersDir: string;
  let agentId: string;

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await h.services.app.request(path, {
      method,
      headers: { authorization: `Bearer ${h.adminKey}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, body: (await res.json()) as { id: string } };
  };

  before(async () => {
    shared = await mkdtemp(join(tmpdir(), "paddock-shared-"));
    store = new FileBlobStore(shared);
    h = await startNoRootHost(undefined, { config: { blobs: `file://${shared}` } });
    layersDir = join(h.dataDir, "layers");
    const made = await api("POST", "/v1/agents", {
      name: "shared-layer",
      instructions: "Say hi.",
      model: "m",
      files: { "notes.txt": "a file in the agent's layer\n" },
    });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    agentId = made.body.id;
    const names = (await readdir(layersDir)).filter((n) => n.startsWith("sha256-"));
    assert.equal(names.length, 1);
    layer = names[0] as string;
    const row = await h.db
      .selectFrom("tree_blobs")
      .selectAll()
      .where("kind", "=", "layer")
      .where("digest", "=", layer)
      .executeTakeFirstOrThrow();
    layerBlob = row.sha256;
    image = (await readdir(join(h.dataDir, "images"))).find((n) => n.startsWith("sha256-")) as string;
  });
  after(async () => {
    await h?.close();
    if (shared) await rm(shared, { recursive: true, force: true });
  });

  it("publishes a layer when it is made", async () => {
    assert.ok(await store.head(layerBlob), "the packed layer is in the shared folder");
  });

  it("fetches, checks and unpacks a layer this node lacks", async () => {
    await removeTree(join(layersDir, layer));
    const paths = await h.services.agents.layerPaths({ image, layers: [layer] });
    assert.equal(paths[0], join(layersDir, layer));
    assert.equal(await digestTree(join(layersDir, layer)), layer);
    assert.equal(await readFile(join(layersDir, layer, "app", "notes.txt"), "utf8"), "a file in the agent's layer\n");
  });

  it("publishes the base image an agent is made on, and fetches it back when this node lacks it", async () => {
    const row = await h.db
      .selectFrom("tree_blobs")
      .selectAll()
      .where("kind", "=", "image")
      .where("digest", "=", image)
      .executeTakeFirstOrThrow();
    assert.ok(await store.head(row.sha256));
    await removeTree(join(h.dataDir, "images", image));
    const paths = await h.services.agents.layerPaths({ image, layers: [layer] });
    assert.equal(paths.at(-1), join(h.dataDir, "images", image, "rootfs"));
    assert.equal(await digestTree(join(h.dataDir, "images", image, "rootfs")), image);
  });

  it("fails naming the blob when the shared copy is corrupt, and fetches it again once repaired", async () => {
    const good = await readFile(store.path(layerBlob));
    await removeTree(join(layersDir, layer));
    await rm(join(h.dataDir, "cache"), { recursive: true, force: true });
    await writeFile(store.path(layerBlob), Buffer.concat([good.subarray(0, 100), Buffer.from("tampered")]));
    await assert.rejects(h.services.agents.layerPaths({ image, layers: [layer] }), (err: unknown) => {
      assert.ok(err instanceof AppError && err.code === "blob_unavailable");
      assert.match(err.message, new RegExp(layerBlob));
      return true;
    });
    assert.deepEqual(await readdir(layersDir).then((n) => n.filter((x) => x === layer)), []);
    await writeFile(store.path(layerBlob), good);
    await h.services.agents.layerPaths({ image, layers: [layer] });
    assert.equal(await digestTree(join(layersDir, layer)), layer);
  });

  it("sweeps blobs nothing references once they are older than the grace period", async () => {
    const run = await api("POST", `/v1/agents/${agentId}/runs`, {});
    assert.equal(run.status, 201, JSON.stringify(run.body));
    const { tenant_id } = await h.db
      .selectFrom("runs")
      .select("tenant_id")
      .where("id", "=", run.body.id)
      .executeTakeFirstOrThrow();
    const artifact = await store.put(Readable.from([Buffer.from("an artifact")]));
    await h.services.artifacts.record(
      { runId: run.body.id, tenantId: tenant_id, attempt: 1 },
      [{ id: newId("art"), path: "a.txt", size: 11, sha256: artifact.sha256, content_type: "text/plain" }],
      [],
    );
    const orphan = await store.put(Readable.from([Buffer.from("nobody names me")]));
    const young = await store.put(Readable.from([Buffer.from("nobody names me yet")]));
    const old = new Date(Date.now() - 2 * 3_600_000);
    for (const b of [artifact.sha256, orphan.sha256, layerBlob]) await utimes(store.path(b), old, old);

    const deleted = await collectBlobGarbage({
      db: h.db,
      snapshots: h.services.agents.snapshots,
      blobs: store,
      graceMs: 3_600_000,
    });
    assert.deepEqual(deleted, [orphan.sha256]);
    for (const kept of [artifact.sha256, young.sha256, layerBlob]) assert.ok(await store.head(kept), kept);
  });
});
