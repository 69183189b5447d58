/**
 * The dashboard as a host serves it: built by the real build into a temporary folder, then asked
 * for over the API's app; builds made at once each stay whole. Its first load fits its budget and holds no server code; every answer
 * carries the CSP; hashed assets are cached for ever, index.html never; unknown /ui paths get the
 * app, unknown assets a 404.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { OpenAPIHono } from "@hono/zod-openapi";
import { buildUi, currentUiBuild, INITIAL_LOAD_BUDGET, type UiBuild } from "../../../ui/build.ts";
import type { ApiEnv } from "./http.ts";
import { registerUi, UI_CSP } from "./ui.ts";

describe("the dashboard's static files", () => {
  let dir: string;
  let built: UiBuild;
  const app = new OpenAPIHono<ApiEnv>();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-ui-"));
    built = await buildUi(join(dir, "dist"));
    registerUi(app, built.dir);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("fits the first load in its budget, with protocol types only and no server code", () => {
    assert.ok(built.gzip_bytes <= INITIAL_LOAD_BUDGET, `${built.gzip_bytes} bytes gzipped`);
    assert.ok(built.inputs.some((i) => i.includes("node_modules/preact/")));
    assert.deepEqual(
      built.inputs.filter((i) => /zod|packages\/(host|runner)\//.test(i)),
      [],
    );
  });

  it("makes whole builds when several build at once, the newest current and two before it kept", async () => {
    const out = join(dir, "many");
    const builds = await Promise.all([buildUi(out), buildUi(out), buildUi(out)]);
    const current = currentUiBuild(out);
    assert.ok(current && builds.some((b) => b.dir === current), String(current));
    const fourth = await buildUi(out);
    assert.equal(currentUiBuild(out), fourth.dir);
    assert.equal((await readdir(join(out, "builds"))).length, 3);
    assert.equal(currentUiBuild(join(dir, "nothing-here")), null);
  });

  it("answers every /ui path with the app, uncached, under the CSP", async () => {
    for (const path of ["/ui", "/ui/", "/ui/runs", "/ui/runs/run_abc?status=failed", "/ui/a/b/c"]) {
      const res = await app.request(path);
      assert.equal(res.status, 200, path);
      assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
      assert.equal(res.headers.get("cache-control"), "no-cache");
      assert.equal(res.headers.get("content-security-policy"), UI_CSP);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff");
      const html = await res.text();
      assert.match(html, /<script type="module" src="\/ui\/assets\/main-\w+\.js"><\/script>/);
      // No inline script or style: the CSP would refuse them.
      assert.doesNotMatch(html, /<script>|<style|\sstyle=|\son\w+=/);
    }
    assert.match(UI_CSP, /default-src 'self'/);
    assert.match(UI_CSP, /frame-ancestors 'none'/);
  });

  it("caches hashed assets for ever, gzipped when asked, and answers an unknown asset 404", async () => {
    const html = await (await app.request("/ui")).text();
    const names = [...html.matchAll(/\/ui\/assets\/([\w.-]+)/g)].map((m) => m[1]);
    assert.equal(names.length, 3, html);
    for (const name of names) {
      const plain = await app.request(`/ui/assets/${name}`);
      assert.equal(plain.status, 200, name);
      assert.equal(plain.headers.get("cache-control"), "public, max-age=31536000, immutable");
      assert.equal(plain.headers.get("content-security-policy"), UI_CSP);
      const body = Buffer.from(await plain.arrayBuffer());
      const zipped = await app.request(`/ui/assets/${name}`, { headers: { "accept-encoding": "gzip, br" } });
      assert.equal(zipped.headers.get("content-encoding"), "gzip");
      assert.deepEqual(gunzipSync(Buffer.from(await zipped.arrayBuffer())), body);
    }
    for (const name of ["nope.js", "..%2Findex.html", "main.js"]) {
      const res = await app.request(`/ui/assets/${name}`);
      assert.equal(res.status, 404, name);
      assert.equal(res.headers.get("content-security-policy"), UI_CSP);
    }
  });
});
