import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EnvFreeze, isFreezeExcludePath } from "./sessions.ts";

describe("EnvFreeze", () => {
  it("accepts absolute, normalized excluded paths", () => {
    for (const path of ["/tmp", "/var/cache/apt/archives", "/home/agent/.cache", "/a.b/..c/...", "/ünï code"]) {
      assert.equal(EnvFreeze.safeParse({ exclude: [path] }).success, true, path);
    }
    assert.equal(EnvFreeze.safeParse({ exclude: [] }).success, true);
  });

  it("refuses what the freeze refuses, naming the entry", () => {
    for (const bad of ["/tmp/", "/a/../b", "/", "", "tmp", "./tmp", "/a//b", "/a/./b", "/..", "/a\0b", "//a"]) {
      const parsed = EnvFreeze.safeParse({ exclude: ["/tmp", bad] });
      assert.equal(parsed.success, false, JSON.stringify(bad));
      const issue = parsed.error?.issues[0];
      assert.deepEqual(issue?.path, ["exclude", 1], JSON.stringify(bad));
      assert.ok(issue?.message.includes(JSON.stringify(bad)), `${issue?.message} names ${JSON.stringify(bad)}`);
      assert.equal(isFreezeExcludePath(bad), false, JSON.stringify(bad));
    }
  });

  it("refuses paths longer than PATH_MAX", () => {
    assert.equal(EnvFreeze.safeParse({ exclude: [`/${"a".repeat(4095)}`] }).success, true);
    assert.equal(EnvFreeze.safeParse({ exclude: [`/${"a".repeat(4096)}`] }).success, false);
  });
});
