/**
 * One scenario suite over both blob stores: a folder, and S3 played by the s3rver stand-in on
 * loopback. Then the URL parser, and the cache in front of a store.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { text } from "node:stream/consumers";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { AppError } from "@paddock/protocol";
import { startS3StandIn } from "../testing/s3-stand-in.ts";
import type { BlobStore } from "./blobs.ts";
import { BlobCache } from "./cache.ts";
import { FileBlobStore } from "./file-store.ts";
import { openBlobStore, parseBlobsUrl } from "./open-store.ts";

const run = promisify(execFile);
const sha = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

function isBlobError(code: string, digest: string) {
  return (err: unknown) =>
    err instanceof AppError && err.code === code && (code !== "blob_unavailable" || err.message.includes(digest));
}

interface Fixture {
  store: BlobStore;
  stop(): Promise<void>;
}

const implementations: Record<string, () => Promise<Fixture>> = {
  filesystem: async () => {
    const dir = await mkdtemp(join(tmpdir(), "paddock-blobs-"));
    return { store: new FileBlobStore(dir), stop: () => rm(dir, { recursive: true, force: true }) };
  },
  s3: async () => {
    const s3 = await startS3StandIn();
    const spool = await mkdtemp(join(tmpdir(), "paddock-spool-"));
    return {
      // Under a key prefix, as a bucket shared with other data would be used.
      store: openBlobStore(s3.url.replace("?", "/paddock/blobs?"), spool),
      stop: async () => {
        await s3.stop();
        await rm(spool, { recursive: true, force: true });
      },
    };
  },
};

for (const [name, make] of Object.entries(implementations)) {
  describe(`${name} blob store`, () => {
    let fixture: Fixture;
    let store: BlobStore;
    before(async () => {
      fixture = await make();
      store = fixture.store;
    });
    after(() => fixture?.stop());

    it("stores content under its sha256 and reads it back, whole or a range", async () => {
      const put = await store.put(Readable.from([Buffer.from("hello "), Buffer.from("world")]));
      assert.deepEqual(put, { sha256: sha("hello world"), size: 11 });
      assert.equal(await text(await store.get(put.sha256)), "hello world");
      assert.equal(await text(await store.get(put.sha256, { range: { start: 2, end: 4 } })), "llo");
      assert.equal(await text(await store.get(put.sha256, { range: { start: 6 } })), "world");
      const head = await store.head(put.sha256);
      assert.equal(head?.size, 11);
      assert.ok(head && Math.abs(head.modifiedMs - Date.now()) < 60_000);
    });

    it("refuses content that is not the digest promised, and stores nothing", async () => {
      const claimed = sha("something else");
      await assert.rejects(
        store.put(Readable.from([Buffer.from("the real content")]), { sha256: claimed }),
        isBlobError("blob_digest_mismatch", claimed),
      );
      assert.equal(await store.head(claimed), null);
      assert.equal(await store.head(sha("the real content")), null);
    });

    it("refuses more than maxBytes", async () => {
      await assert.rejects(store.put(Readable.from([Buffer.alloc(100)]), { maxBytes: 99 }), /larger than 99 bytes/);
      assert.equal(await store.head(sha(Buffer.alloc(100))), null);
    });

    it("stores one copy when several writers put the same content at once", async () => {
      const data = randomBytes(3 * 1024 * 1024);
      const digest = sha(data);
      const puts = await Promise.all(
        Array.from({ length: 6 }, () => store.put(Readable.from([data.subarray(0, 1000), data.subarray(1000)]))),
      );
      for (const p of puts) assert.equal(p.sha256, digest);
      assert.equal(sha(Buffer.from(await (await store.get(digest)).toArray().then((c) => Buffer.concat(c)))), digest);
      assert.deepEqual(
        (await collect(store.list(digest.slice(0, 10)))).map((b) => b.sha256),
        [digest],
      );
    });

    it("stores a file larger than one upload part, given by path", async () => {
      const dir = await mkdtemp(join(tmpdir(), "paddock-big-"));
      try {
        const data = randomBytes(17 * 1024 * 1024 + 3);
        await writeFile(join(dir, "big"), data);
        const put = await store.put({ file: join(dir, "big") }, { sha256: sha(data) });
        assert.equal(put.size, data.length);
        const tail = Buffer.concat(
          await (await store.get(put.sha256, { range: { start: data.length - 5 } })).toArray(),
        );
        assert.deepEqual(tail, data.subarray(data.length - 5));
        assert.equal(sha(Buffer.concat(await (await store.get(put.sha256)).toArray())), put.sha256);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it("lists by prefix and deletes", async () => {
      const a = await store.put(Readable.from([Buffer.from("list a")]));
      const b = await store.put(Readable.from([Buffer.from("list b")]));
      const all = (await collect(store.list())).map((x) => x.sha256);
      assert.ok(all.includes(a.sha256) && all.includes(b.sha256));
      assert.deepEqual(
        (await collect(store.list(a.sha256.slice(0, 12)))).map((x) => [x.sha256, x.size]),
        [[a.sha256, 6]],
      );
      assert.equal(await store.delete(a.sha256), true);
      assert.equal(await store.delete(a.sha256), false);
      assert.equal(await store.head(a.sha256), null);
      await assert.rejects(store.get(a.sha256), isBlobError("blob_unavailable", a.sha256));
      assert.ok(!(await collect(store.list())).some((x) => x.sha256 === a.sha256));
    });

    it("refuses what is not a digest", async () => {
      await assert.rejects(store.get("../../etc/passwd"), isBlobError("validation_failed", ""));
      await assert.rejects(collect(store.list("xyz/")), isBlobError("validation_failed", ""));
    });
  });
}

describe("filesystem blob store shared by several processes", () => {
  it("keeps one whole copy when processes put the same content at once", async () => {
    const dir = await mkdtemp(join(tmpdir(), "paddock-blobs-procs-"));
    try {
      // Each process writes the same 8 MiB, made from a fixed seed, through its own store object.
      const script = [
        `import { FileBlobStore } from ${JSON.stringify(new URL("./file-store.ts", import.meta.url).pathname)};`,
        `import { createHash } from "node:crypto";`,
        `import { Readable } from "node:stream";`,
        `const chunks = Array.from({ length: 256 }, (_, i) => createHash("sha512").update(String(i)).digest());`,
        `const data = Buffer.concat(Array.from({ length: 512 }, () => Buffer.concat(chunks)));`,
        `const put = await new FileBlobStore(process.argv[1]).put(Readable.from([data.subarray(0, 1e6), data.subarray(1e6)]));`,
        `process.stdout.write(put.sha256);`,
      ].join("\n");
      const runs = Array.from({ length: 4 }, () =>
        run(process.execPath, ["--input-type=module", "-e", script, dir]).then((r) => r.stdout),
      );
      const digests = new Set(await Promise.all(runs));
      assert.equal(digests.size, 1);
      const digest = [...digests][0] as string;
      const store = new FileBlobStore(dir);
      assert.equal((await store.head(digest))?.size, 8 * 1024 * 1024);
      assert.equal(sha(Buffer.concat(await (await store.get(digest)).toArray())), digest);
      assert.deepEqual(await readdir(join(dir, "tmp")), [], "no temp file is left behind");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("blobs URLs", () => {
  it("names a folder or a bucket, never credentials", () => {
    assert.deepEqual(parseBlobsUrl("file:///srv/blobs/"), { kind: "file", dir: "/srv/blobs" });
    assert.deepEqual(
      parseBlobsUrl("s3://my-bucket/pre/fix?endpoint=http://10.0.0.1:9000&region=eu&force_path_style=true"),
      {
        kind: "s3",
        bucket: "my-bucket",
        prefix: "pre/fix/",
        endpoint: "http://10.0.0.1:9000",
        region: "eu",
        forcePathStyle: true,
      },
    );
    assert.throws(() => parseBlobsUrl("s3://key:secret@bucket"), /credentials/);
    assert.throws(() => parseBlobsUrl("s3://bucket?secret=x"), /unknown parameter 'secret'/);
    assert.throws(() => parseBlobsUrl("file://relative/dir"), /file:/);
    assert.throws(() => parseBlobsUrl("http://bucket"), /not a blob store/);
  });
});

describe("blob cache", () => {
  let dir: string;
  let store: FileBlobStore;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-cache-"));
    store = new FileBlobStore(join(dir, "shared"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("fetches once, then reads its own verified copy", async () => {
    const cache = new BlobCache({ store, dir: join(dir, "cache-a") });
    const { sha256 } = await store.put(Readable.from([Buffer.from("cached once")]));
    const [first, second] = await Promise.all([cache.file(sha256), cache.file(sha256)]);
    assert.equal(first, second);
    await store.delete(sha256);
    // The shared copy is gone: reads come from the cache.
    assert.equal(await text(await cache.open(sha256)), "cached once");
    assert.equal(await text(await cache.open(sha256, { range: { start: 7 } })), "once");
  });

  it("drops a corrupt copy and fetches it again", async () => {
    const cache = new BlobCache({ store, dir: join(dir, "cache-b") });
    const { sha256 } = await store.put(Readable.from([Buffer.from("good bytes")]));
    const path = await cache.file(sha256);
    await writeFile(path, "bad bytes!");
    await assert.rejects(text(await cache.open(sha256)), isBlobError("blob_unavailable", sha256));
    assert.equal(await text(await cache.open(sha256)), "good bytes");
  });

  it("names the digest of a blob the store lacks or holds corrupt, and keeps nothing", async () => {
    const cacheDir = join(dir, "cache-c");
    const cache = new BlobCache({ store, dir: cacheDir });
    const missing = sha("never stored");
    await assert.rejects(cache.file(missing), isBlobError("blob_unavailable", missing));
    const { sha256 } = await store.put(Readable.from([Buffer.from("original")]));
    await writeFile(store.path(sha256), "tampered");
    await assert.rejects(cache.file(sha256), (err: unknown) => {
      assert.ok(isBlobError("blob_unavailable", sha256)(err));
      assert.match((err as Error).message, /does not match its digest/);
      return true;
    });
    assert.deepEqual(await readdir(join(cacheDir, "tmp")), []);
    // Repaired in the store: the next read fetches it.
    await store.put(Readable.from([Buffer.from("original")]));
    assert.equal(await text(await cache.open(sha256)), "original");
  });

  it("keeps its own copy of what it puts", async () => {
    const cache = new BlobCache({ store, dir: join(dir, "cache-e") });
    const { sha256 } = await cache.put(Readable.from([Buffer.from("written here")]));
    assert.ok(await store.head(sha256));
    await store.delete(sha256);
    assert.equal(await text(await cache.open(sha256)), "written here");
    await assert.rejects(
      cache.put(Readable.from([Buffer.from("x")]), { sha256: sha("y") }),
      isBlobError("blob_digest_mismatch", ""),
    );
    assert.deepEqual(await readdir(join(dir, "cache-e", "tmp")), []);
  });

  it("trims itself to a size, least recently used first", async () => {
    const cache = new BlobCache({ store, dir: join(dir, "cache-d") });
    const digests: string[] = [];
    for (const [i, text] of ["first blob", "second blob", "third blob"].entries()) {
      const { sha256 } = await store.put(Readable.from([Buffer.from(text)]));
      const path = await cache.file(sha256);
      const when = new Date(Date.now() - (10 - i) * 60_000);
      await utimes(path, when, when);
      digests.push(sha256);
    }
    // Reading the first makes it the most recently used.
    await cache.file(digests[0] as string);
    assert.deepEqual(await cache.trim(Buffer.byteLength("first blob") + Buffer.byteLength("third blob")), [digests[1]]);
    assert.deepEqual(await cache.trim(0), [digests[2], digests[0]]);
  });

  it("reads a node's own folder in place", async () => {
    const cache = new BlobCache({ store, inPlace: true });
    const { sha256 } = await store.put(Readable.from([Buffer.from("in place")]));
    assert.equal(await cache.file(sha256), store.path(sha256));
    assert.equal(await text(await cache.open(sha256)), "in place");
  });
});
