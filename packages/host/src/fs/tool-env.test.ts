import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { proxySettings, TOOL_PATH, toolEnv } from "./tool-env.ts";

describe("toolEnv", () => {
  it("holds PATH and the C locale only, whatever the host's environment holds", () => {
    process.env.PADDOCK_MASTER_KEY = "a".repeat(64);
    try {
      assert.deepEqual(toolEnv(), { PATH: TOOL_PATH, LC_ALL: "C" });
      assert.deepEqual(toolEnv({ DEBIAN_FRONTEND: "noninteractive" }), {
        PATH: TOOL_PATH,
        LC_ALL: "C",
        DEBIAN_FRONTEND: "noninteractive",
      });
      assert.deepEqual(toolEnv({ PATH: "/usr/bin:/bin" }), { PATH: "/usr/bin:/bin", LC_ALL: "C" });
    } finally {
      delete process.env.PADDOCK_MASTER_KEY;
    }
  });

  it("searches system folders only", () => {
    for (const dir of TOOL_PATH.split(":")) assert.match(dir, /^\/(usr\/(local\/)?)?s?bin$/, dir);
  });

  it("gives a new object each call, so no caller changes another's", () => {
    const env = toolEnv();
    env.EXTRA = "x";
    assert.equal(toolEnv().EXTRA, undefined);
  });
});

describe("proxySettings", () => {
  it("keeps the proxy variables and drops everything else", () => {
    const env = {
      http_proxy: "http://proxy:3128",
      HTTPS_PROXY: "http://proxy:3129",
      no_proxy: "localhost",
      PADDOCK_MASTER_KEY: "secret",
      OPENAI_API_KEY: "sk-x",
      HOME: "/root",
      UNSET: undefined,
    };
    assert.deepEqual(proxySettings(env), {
      http_proxy: "http://proxy:3128",
      HTTPS_PROXY: "http://proxy:3129",
      no_proxy: "localhost",
    });
  });
});
