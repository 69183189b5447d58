import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { ConnectionPut } from "@paddock/protocol";
import { CliError, UsageError } from "../args.ts";
import { connectionBody, describeAuth, parseAllow, parseAuth, parseRate } from "./connections.ts";

describe("connections set arguments", () => {
  test("--auth spellings", () => {
    assert.deepEqual(parseAuth("bearer"), { type: "bearer" });
    assert.deepEqual(parseAuth("none"), { type: "none" });
    assert.deepEqual(parseAuth("header:X-Api-Key"), { type: "header", name: "X-Api-Key" });
    assert.deepEqual(parseAuth("header:Authorization:token "), {
      type: "header",
      name: "Authorization",
      prefix: "token ",
    });
    assert.deepEqual(parseAuth("header:X-K:a:b"), { type: "header", name: "X-K", prefix: "a:b" });
    assert.deepEqual(parseAuth("basic:bot"), { type: "basic", username: "bot" });
    assert.deepEqual(parseAuth("query:api_key"), { type: "query", param: "api_key" });
    for (const bad of ["", "oauth", "header", "header:", "basic:", "query:", "bearer:x", "none:"]) {
      assert.throws(() => parseAuth(bad), UsageError, bad);
    }
  });

  test("--allow rules", () => {
    assert.deepEqual(parseAllow("GET,post /repos/**"), { methods: ["GET", "POST"], path: "/repos/**" });
    assert.deepEqual(parseAllow("  GET   /  "), { methods: ["GET"], path: "/" });
    assert.deepEqual(parseAllow("GET,GET /x"), { methods: ["GET"], path: "/x" });
    for (const bad of ["", "GET", "/repos", "GET /a /b", "GET,,POST /a"]) {
      assert.throws(() => parseAllow(bad), UsageError, bad);
    }
  });

  test("--rate", () => {
    assert.deepEqual(parseRate("100/60"), { requests: 100, per_s: 60 });
    for (const bad of ["100", "100/", "/60", "1.5/2", "a/b", "100/60s"])
      assert.throws(() => parseRate(bad), UsageError);
  });

  test("flags build a valid body; auth defaults follow the secret", async () => {
    const withSecret = await connectionBody({
      upstream: "https://api.github.com",
      secret: "gh",
      allow: ["GET /repos/**"],
      rate: "10/1",
    });
    assert.deepEqual(withSecret.auth, { type: "bearer" });
    assert.ok(ConnectionPut.safeParse(withSecret).success);
    const without = await connectionBody({ upstream: "https://example.com", allow: ["GET /**"], internal: true });
    assert.deepEqual(without.auth, { type: "none" });
    assert.equal(without.internal, true);
    assert.ok(ConnectionPut.safeParse(without).success);
    await assert.rejects(connectionBody({ allow: ["GET /**"] }), UsageError);
    await assert.rejects(connectionBody({ upstream: "https://example.com" }), UsageError);
  });

  test("--file is the base the flags override", async () => {
    const dir = await mkdtemp(join(tmpdir(), "paddock-conn-"));
    try {
      const file = join(dir, "spec.json");
      await writeFile(
        file,
        JSON.stringify({
          base_url: "https://old.example.com",
          secret: "k",
          auth: { type: "query", param: "key" },
          policy: { allow: [{ methods: ["GET"], path: "/a" }], rate_limit: { requests: 1, per_s: 1 } },
          timeout_ms: 1000,
        }),
      );
      const body = await connectionBody({ file, upstream: "https://new.example.com", allow: ["POST /b"] });
      assert.equal(body.base_url, "https://new.example.com");
      assert.deepEqual(body.auth, { type: "query", param: "key" });
      assert.deepEqual(body.policy, {
        allow: [{ methods: ["POST"], path: "/b" }],
        rate_limit: { requests: 1, per_s: 1 },
      });
      assert.equal(body.timeout_ms, 1000);
      await writeFile(file, "[1]");
      await assert.rejects(connectionBody({ file }), CliError);
      await writeFile(file, "{");
      await assert.rejects(connectionBody({ file }), CliError);
      await assert.rejects(connectionBody({ file: join(dir, "missing.json") }), CliError);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("describes auth without any secret value", () => {
    assert.equal(describeAuth({ type: "bearer" }), "bearer");
    assert.equal(describeAuth({ type: "header", name: "X-K", prefix: "k " }), "header X-K (prefix 'k ')");
    assert.equal(describeAuth({ type: "basic", username: "bot" }), "basic (user bot)");
    assert.equal(describeAuth({ type: "query", param: "key" }), "query ?key=");
  });
});
