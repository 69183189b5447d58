/**
 * Snapshot export and import between two real hosts over HTTP: host B has its own image store
 * holding a different base image, so an import there must bring A's base image along; runs on B
 * then see A's environment byte for byte. Damaged, hostile and oversize archives are refused and
 * leave the stores and the agent's history as they were.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { zstdCompressSync } from "node:zlib";
import { packSnapshot } from "../agents/pack-layers.ts";
import { MANIFEST_FORMAT } from "../agents/snapshot-archive.ts";
import { encodeHeader, endOfArchive, type HeaderFields, padding } from "../archive/tar-format.ts";
import { digestTree } from "../fs/tree-digest.ts";
import { ImageStore } from "../images/image-store.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, testImagesDir, waitForRun } from "../testing/harness.ts";

const skip = e2eSkip(hostSkipReason());
const MARKER = "/etc/paddock-host-b";
/** Prints what the environment holds; the same command runs on both hosts. */
const SCRIPT = [
  "cd /",
  "sha256sum usr/local/share/blob.bin app/data.txt 2>&1",
  `for f in /etc/issue ${MARKER}; do if [ -e $f ]; then echo "has $f"; else echo "no $f"; fi; done`,
  "envcheck 2>&1 || echo 'no envcheck'",
].join("; ");
const FAKE_RUNNER = `sha256-${"ab".repeat(32)}`;

// biome-ignore lint/suspicious/noExplicitAny: JSON bodies.
type Json = any;

describe("snapshot export and import", { skip }, () => {
  let work: string;
  let a: TestHost;
  let b: TestHost;
  let bImages: string;
  const blob = randomBytes(3 * 1024 * 1024);
  const data = "data placed on host A\n";
  let src: Json;
  let dst: Json;
  let toolsDigest: string;
  let exported: Buffer;
  let linesOnA: string[];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "paddock-archive-e2e-"));
    a = await startTestHost();
    // Host B's own image store holds another base image: the shared one plus a marker file.
    const shared = readFileSync(join(testImagesDir(), "default"), "utf8").trim();
    const copy = join(work, "b-rootfs");
    execFileSync("cp", ["-a", "--", join(testImagesDir(), shared, "rootfs"), copy]);
    await writeFile(join(copy, MARKER), "only on host B\n");
    bImages = join(work, "b-images");
    await new ImageStore({ imagesDir: bImages }).importRootfs({ from: copy, setDefault: true });
    await rm(copy, { recursive: true, force: true });
    b = await startTestHost({ imagesDir: bImages });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const expectError = (res: { status: number; body: Json }, status: number, code: string, message?: RegExp) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error.code, code, JSON.stringify(res.body));
    if (message) assert.match(res.body.error.message, message);
  };

  /** Sends a binary body to the import route. */
  const upload = async (t: TestHost, agentId: string, body: Buffer, type = "application/zstd", key?: string | null) => {
    const headers: Record<string, string> = { "content-type": type };
    const bearer = key === undefined ? t.adminKey : key;
    if (bearer !== null) headers.authorization = `Bearer ${bearer}`;
    const url = `${t.host.url}/v1/agents/${agentId}/snapshots/import`;
    const res = await fetch(url, { method: "POST", headers, body });
    const text = await res.text();
    let parsed: Json = text;
    try {
      parsed = JSON.parse(text);
    } catch {}
    return { status: res.status, body: parsed };
  };

  const download = async (t: TestHost, path: string) => {
    const res = await fetch(`${t.host.url}${path}`, { headers: { authorization: `Bearer ${t.adminKey}` } });
    return { res, bytes: Buffer.from(await res.arrayBuffer()) };
  };

  /** Runs an agent once and returns its log lines. */
  const runLines = async (t: TestHost, agentId: string): Promise<string[]> => {
    const started = await t.api("POST", `/v1/agents/${agentId}/runs`, {});
    assert.equal(started.status, 201, JSON.stringify(started.body));
    const run = await waitForRun(t, started.body.id);
    const events = (await t.api("GET", `/v1/runs/${run.id}/events?limit=1000`)).body.data;
    assert.equal(run.status, "succeeded", JSON.stringify(events));
    return events.filter((e: Json) => e.type === "log").map((e: Json) => e.data.line);
  };

  /** Everything in B's stores (hidden work folders included) and the agent's versions. */
  const stateOfB = async () => ({
    images: (await readdir(bImages)).sort(),
    layers: (await readdir(join(b.dataDir, "layers")).catch(() => [] as string[])).sort(),
    versions: (await b.api("GET", `/v1/agents/${dst.id}/snapshots`)).body.data.map((s: Json) => s.version),
  });

  it("moves an agent's environment to another host, byte for byte", async () => {
    const created = await a.api("POST", "/v1/agents", {
      name: "src",
      command: ["sh", "-c", SCRIPT],
      files: { "data.txt": data },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    src = created.body;
    const [filesDigest] = src.snapshot.layers;

    // A frozen-like layer: a tool, a binary file and a whiteout hiding the base image's /etc/issue.
    const tools = join(work, "tools");
    await mkdir(join(tools, "usr/local/bin"), { recursive: true });
    await mkdir(join(tools, "usr/local/share"), { recursive: true });
    await mkdir(join(tools, "etc"));
    await writeFile(join(tools, "usr/local/share/blob.bin"), blob);
    const envcheck = "#!/bin/sh\necho envcheck from the tools layer\n";
    await writeFile(join(tools, "usr/local/bin/envcheck"), envcheck);
    await chmod(join(tools, "usr/local/bin/envcheck"), 0o755);
    execFileSync("mknod", ["-m", "000", join(tools, "etc/issue"), "c", "0", "0"]);
    toolsDigest = await digestTree(tools);

    // Host A gets that layer by importing an archive that leaves out the base image (A has it)
    // and names a runner A has never seen.
    const seed = join(work, "seed.tar.zst");
    const manifest = {
      format: MANIFEST_FORMAT,
      agent: { id: "agt_elsewhere", name: "elsewhere" },
      version: 7,
      reason: "freeze",
      created_at: new Date().toISOString(),
      base: src.snapshot.base,
      layers: [toolsDigest, filesDigest],
      runner: FAKE_RUNNER,
      env_bytes: 0,
    };
    await packSnapshot(
      manifest,
      [
        { digest: toolsDigest, dir: tools },
        { digest: filesDigest, dir: join(a.dataDir, "layers", filesDigest) },
      ],
      null,
      createWriteStream(seed),
    );
    const seeded = await upload(a, src.id, await readFile(seed));
    assert.equal(seeded.status, 201, JSON.stringify(seeded.body));
    assert.equal(seeded.body.version, 2);
    assert.equal(seeded.body.reason, "import");
    assert.deepEqual(seeded.body.layers, [toolsDigest, filesDigest]);
    assert.equal(seeded.body.runner, src.snapshot.runner, "an unknown runner is replaced by the current one");
    assert.equal(seeded.body.changes.runner_replaced, FAKE_RUNNER);
    assert.equal(seeded.body.env_bytes, blob.length + Buffer.byteLength(data) + envcheck.length);

    linesOnA = await runLines(a, src.id);
    const sha = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");
    assert.deepEqual(linesOnA, [
      `${sha(blob)}  usr/local/share/blob.bin`,
      `${sha(data)}  app/data.txt`,
      "no /etc/issue",
      `no ${MARKER}`,
      "envcheck from the tools layer",
    ]);

    const { res, bytes } = await download(a, `/v1/agents/${src.id}/snapshots/2/export`);
    assert.equal(res.status, 200, bytes.toString());
    assert.equal(res.headers.get("content-type"), "application/zstd");
    assert.equal(res.headers.get("content-disposition"), 'attachment; filename="src-v2.tar.zst"');
    assert.equal(res.headers.get("x-paddock-snapshot-version"), "2");
    assert.equal(res.headers.get("content-length"), String(bytes.length));
    const digest = createHash("sha256").update(bytes).digest("base64");
    assert.equal(res.headers.get("content-digest"), `sha-256=:${digest}:`);
    exported = bytes;
    const small = await download(a, `/v1/agents/${src.id}/snapshots/2/export?include_base=false`);
    assert.ok(small.bytes.length < exported.length / 4, `${small.bytes.length} vs ${exported.length}`);
    const again = await download(a, `/v1/agents/${src.id}/snapshots/2/export?include_base=false`);
    assert.ok(again.bytes.equals(small.bytes), "an export is deterministic");

    // Host B: the same command sees B's own base image before the import...
    const made = await b.api("POST", "/v1/agents", { name: "dst", command: ["sh", "-c", SCRIPT] });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    dst = made.body;
    assert.notEqual(dst.snapshot.base, src.snapshot.base);
    const before = await runLines(b, dst.id);
    assert.ok(before.includes(`has ${MARKER}`), before.join("\n"));
    assert.ok(before.includes("has /etc/issue"), before.join("\n"));

    // ...and exactly A's environment after it.
    const imported = await upload(b, dst.id, exported);
    assert.equal(imported.status, 201, JSON.stringify(imported.body));
    assert.equal(imported.body.version, 2);
    assert.equal(imported.body.reason, "import");
    assert.equal(imported.body.current, true);
    assert.equal(imported.body.base, src.snapshot.base);
    assert.deepEqual(imported.body.layers, [toolsDigest, filesDigest]);
    // The runner A named is kept if B has it, else B's current one stands in.
    assert.equal(imported.body.runner, dst.snapshot.runner);
    const replaced = src.snapshot.runner === dst.snapshot.runner ? undefined : src.snapshot.runner;
    assert.equal(imported.body.changes.runner_replaced, replaced);
    assert.deepEqual(imported.body.changes.imported.agent, { id: src.id, name: "src" });
    assert.equal(imported.body.changes.imported.version, 2);
    assert.ok(existsSync(join(bImages, src.snapshot.base, "meta.json")), "A's base image is stored on B");
    assert.deepEqual(await runLines(b, dst.id), linesOnA);

    const history = (await b.api("GET", `/v1/agents/${dst.id}/snapshots`)).body.data;
    assert.deepEqual(
      history.map((s: Json) => [s.version, s.reason, s.current]),
      [
        [2, "import", true],
        [1, "create", false],
      ],
    );
    assert.equal((await b.api("GET", `/v1/agents/${dst.id}`)).body.snapshot.version, 2);

    // Importing it again (now without the base image, which B has) adds a version and reuses what is stored.
    const stores = await stateOfB();
    const twice = await upload(b, dst.id, small.bytes);
    assert.equal(twice.status, 201, JSON.stringify(twice.body));
    assert.equal(twice.body.version, 3);
    assert.deepEqual((await stateOfB()).images, stores.images);
    assert.deepEqual((await stateOfB()).layers, stores.layers);
  });

  it("refuses damaged and hostile archives with invalid_archive, changing nothing", async () => {
    assert.ok(dst, "needs the first test's agent");
    const small = (await download(a, `/v1/agents/${src.id}/snapshots/2/export?include_base=false`)).bytes;
    const before = await stateOfB();
    const d = (c: string) => `sha256-${c.repeat(64)}`;
    const manifest = JSON.stringify({
      format: MANIFEST_FORMAT,
      agent: { id: "agt_x", name: "x" },
      version: 1,
      reason: "create",
      created_at: new Date().toISOString(),
      base: src.snapshot.base,
      layers: [d("a")],
      runner: "",
      env_bytes: 0,
    });
    const file = (path: string, body = "x"): HeaderFields & { body: string } => ({
      type: "file",
      path,
      mode: 0o644,
      uid: 0,
      gid: 0,
      body,
    });
    const entry = (f: HeaderFields): HeaderFields & { body: string } => ({ ...f, body: "" });
    const dir = (path: string) => entry({ type: "dir", path, mode: 0o755, uid: 0, gid: 0 });
    const layer = `layers/${d("a")}`;
    const head = [file("manifest.json", manifest), dir("layers"), dir(layer)];

    const flipped = Buffer.from(small);
    flipped[flipped.length >> 1] = (flipped[flipped.length >> 1] ?? 0) ^ 0xff;
    const cases: [string, Buffer, RegExp][] = [
      ["a flipped byte", flipped, /truncated or corrupt.*nothing was imported/],
      ["a truncated archive", small.subarray(0, small.length >> 1), /truncated or corrupt/],
      ["not an archive", Buffer.from("hello, this is not a tarball"), /truncated or corrupt/],
      [
        "an absolute path",
        tarZst([...head, file("/etc/paddock-pwned")]),
        /"\/etc\/paddock-pwned" has an absolute path/,
      ],
      ["a '..' path", tarZst([...head, file(`${layer}/../../../../tmp/paddock-pwned`)]), /".." component/],
      [
        "a device node",
        tarZst([
          ...head,
          entry({ type: "char", path: `${layer}/mem`, mode: 0o600, uid: 0, gid: 0, devmajor: 1, devminor: 1 }),
        ]),
        /character device \(1:1\); devices are not allowed/,
      ],
      [
        "a block device",
        tarZst([
          ...head,
          entry({ type: "block", path: `${layer}/sda`, mode: 0o600, uid: 0, gid: 0, devmajor: 8, devminor: 0 }),
        ]),
        /block device/,
      ],
      [
        "a symlink pointing outside, written through",
        tarZst([
          ...head,
          entry({ type: "symlink", path: `${layer}/escape`, linkpath: "/etc", mode: 0o777, uid: 0, gid: 0 }),
          file(`${layer}/escape/paddock-pwned`),
        ]),
        /written through the symlink/,
      ],
      [
        "a layer that is a symlink outside",
        tarZst([
          file("manifest.json", manifest),
          dir("layers"),
          entry({ type: "symlink", path: layer, linkpath: "/etc", mode: 0o777, uid: 0, gid: 0 }),
        ]),
        /is not a folder/,
      ],
      [
        "a hard link to an absolute path",
        tarZst([
          ...head,
          entry({ type: "link", path: `${layer}/passwd`, linkpath: "/etc/passwd", mode: 0o644, uid: 0, gid: 0 }),
        ]),
        /hard link to "\/etc\/passwd"\) has an absolute path/,
      ],
      [
        "a hard link out of the archive",
        tarZst([
          ...head,
          entry({
            type: "link",
            path: `${layer}/shadow`,
            linkpath: "../../../etc/shadow",
            mode: 0o644,
            uid: 0,
            gid: 0,
          }),
        ]),
        /".." component/,
      ],
      ["a layer whose content is not its digest", tarZst([...head, file(`${layer}/x`)]), /holds content with digest/],
      [
        "a manifest naming a layer the archive lacks",
        tarZst([file("manifest.json", manifest.replace(d("a"), d("b")))]),
        /layers do not match its manifest \(missing sha256-b+\)/,
      ],
      [
        "a manifest with a terminal escape in a name",
        tarZst([file("manifest.json", manifest.replace('"name":"x"', '"name":"\\u001b[31mx"'))]),
        /not a Paddock snapshot manifest \(agent\.name: an agent name\)/,
      ],
      [
        "a manifest of another format",
        tarZst([file("manifest.json", '{"base": 1}')]),
        /not a Paddock snapshot manifest/,
      ],
    ];
    for (const [what, body, message] of cases) {
      const res = await upload(b, dst.id, body);
      expectError(res, 422, "invalid_archive", message);
      assert.ok(!res.body.error.message.includes(b.dataDir), `${what}: the message names no host path`);
      assert.deepEqual(await stateOfB(), before, `${what}: B's stores and history are unchanged`);
    }
    assert.ok(!existsSync("/etc/paddock-pwned") && !existsSync("/tmp/paddock-pwned"));

    // A well-formed archive whose base image is neither in it nor on this host.
    const orphan = join(work, "orphan.tar.zst");
    const tools = { digest: toolsDigest, dir: join(b.dataDir, "layers", toolsDigest) };
    await packSnapshot(
      { ...JSON.parse(manifest), base: d("c"), layers: [toolsDigest] },
      [tools],
      null,
      createWriteStream(orphan),
    );
    expectError(await upload(b, dst.id, await readFile(orphan)), 503, "image_not_ready", /leaves out its base image/);
    expectError(await upload(b, dst.id, small, "application/json"), 415, "unsupported_media_type", /application\/zstd/);
    expectError(await upload(b, dst.id, Buffer.alloc(0)), 422, "invalid_archive", /no body/);
    assert.deepEqual(await stateOfB(), before);
  });

  it("answers not_found for unknown versions and for other tenants' agents", async () => {
    assert.ok(src, "needs the first test's agent");
    expectError(
      await a.api("GET", `/v1/agents/${src.id}/snapshots/99/export`),
      404,
      "not_found",
      /no snapshot version 99/,
    );
    expectError(await a.api("GET", `/v1/agents/${src.id}/snapshots/abc/export`), 404, "not_found");
    expectError(await a.api("GET", `/v1/agents/${src.id}/snapshots/0/export`), 404, "not_found");
    expectError(
      await a.api("GET", `/v1/agents/${src.id}/snapshots/1/export?include_base=maybe`),
      400,
      "validation_failed",
    );

    const tenant = await a.api("POST", "/v1/tenants", { name: "other" });
    const key = (await a.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {})).body.key as string;
    const unknown = "agt_00000000000000000000000000";
    const asOther = await a.api("GET", `/v1/agents/${src.id}/snapshots/1/export`, undefined, key);
    const asUnknown = await a.api("GET", `/v1/agents/${unknown}/snapshots/1/export`, undefined, key);
    expectError(asOther, 404, "not_found");
    assert.equal(asOther.body.error.message.replace(src.id, unknown), asUnknown.body.error.message);

    const versions = (await a.api("GET", `/v1/agents/${src.id}/snapshots`)).body.data.length;
    const importOther = await upload(a, src.id, exported, "application/zstd", key);
    const importUnknown = await upload(a, unknown, exported, "application/zstd", key);
    expectError(importOther, 404, "not_found");
    assert.equal(importOther.body.error.message.replace(src.id, unknown), importUnknown.body.error.message);
    assert.equal((await a.api("GET", `/v1/agents/${src.id}/snapshots`)).body.data.length, versions);
    expectError(await upload(a, src.id, exported, "application/zstd", null), 401, "unauthorized");

    const doc = (await a.api("GET", "/v1/openapi.json", undefined, null)).body;
    const exportDoc = doc.paths["/v1/agents/{id}/snapshots/{version}/export"].get;
    assert.ok(exportDoc.responses["200"].content["application/zstd"]);
    assert.ok(doc.paths["/v1/agents/{id}/snapshots/import"].post.requestBody.content["application/zstd"]);
  });

  it("refuses bodies over the host's cap (limits.disk_mb)", async () => {
    assert.ok(dst, "needs the first test's agent");
    await b.restart({ maxLimits: { disk_mb: 8 } });
    const before = await stateOfB();
    const cap = 8 * 1024 * 1024;
    // Declared too large: refused before any of it is read.
    const declared = await rawPost(b, `/v1/agents/${dst.id}/snapshots/import`, { "content-length": String(cap + 1) });
    assert.equal(declared.status, 413, declared.text);
    assert.equal(JSON.parse(declared.text).error.code, "body_too_large");
    // Sent without a length: refused once it passes the cap.
    const streamed = await rawPost(b, `/v1/agents/${dst.id}/snapshots/import`, {}, randomBytes(cap + 1024 * 1024));
    assert.equal(streamed.status, 413, streamed.text);
    assert.match(JSON.parse(streamed.text).error.message, /larger than this host accepts \(8388608 bytes/);
    assert.deepEqual(await stateOfB(), before, "nothing was kept of the upload");
  });

  /** A POST with exactly these headers; `body`, if given, is sent chunked. Resolves on the response. */
  function rawPost(t: TestHost, path: string, headers: Record<string, string>, body?: Buffer) {
    return new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(`${t.host.url}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${t.adminKey}`, "content-type": "application/zstd", ...headers },
      });
      let answered = false;
      req.on("response", (res) => {
        answered = true;
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => {
          resolve({ status: res.statusCode ?? 0, text });
          req.destroy();
        });
      });
      // The server may answer and close the connection while the body is still being sent.
      req.on("error", (err) => {
        if (!answered) reject(err);
      });
      if (body === undefined) {
        req.flushHeaders();
        return;
      }
      for (let at = 0; at < body.length; at += 64 * 1024) req.write(body.subarray(at, at + 64 * 1024));
      req.end();
    });
  }
});

function tarZst(entries: (HeaderFields & { body: string })[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body);
    parts.push(encodeHeader({ ...e, size: e.type === "file" ? body.length : 0 }), body, padding(body.length));
  }
  parts.push(endOfArchive());
  return zstdCompressSync(Buffer.concat(parts));
}
