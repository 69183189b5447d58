import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { AppError, ConnectionPut, PolicyRule, pathPatternProblem } from "@paddock/protocol";
import {
  allowedMethod,
  checkBridgePath,
  compilePolicy,
  MAX_TARGET_BYTES,
  matchRule,
  upstreamAddressRefusal,
} from "./policy.ts";

function rejected(raw: string): string {
  try {
    checkBridgePath(raw);
  } catch (err) {
    assert.ok(err instanceof AppError, `${raw}: ${String(err)}`);
    assert.equal(err.code, "path_rejected", raw);
    return err.message;
  }
  assert.fail(`accepted ${JSON.stringify(raw)}`);
}

describe("checkBridgePath", () => {
  test("splits plain targets into path and query, keeping every byte", () => {
    const cases: [string, string, string][] = [
      ["/", "/", ""],
      ["/repos/acme/app/issues", "/repos/acme/app/issues", ""],
      ["/repos/acme/app/issues?state=open&per_page=100", "/repos/acme/app/issues", "state=open&per_page=100"],
      ["/search?q=a/b?c", "/search", "q=a/b?c"],
      ["/items/", "/items/", ""],
      ["/a?", "/a", ""],
      ["/caf%C3%A9/%20x", "/caf%C3%A9/%20x", ""],
      ["/caf%c3%a9", "/caf%c3%a9", ""],
      ["/v1/files/a.b/..c/c..", "/v1/files/a.b/..c/c..", ""],
      ["/.well-known/openid", "/.well-known/openid", ""],
      ["/x;y=1/z", "/x;y=1/z", ""],
      ["/q?discount=100%25&path=..%2f..", "/q", "discount=100%25&path=..%2f.."],
      ["/a|b/[c]/^d/~e/@f/:g/*", "/a|b/[c]/^d/~e/@f/:g/*", ""],
    ];
    for (const [raw, path, query] of cases) {
      assert.deepEqual(checkBridgePath(raw), { path, query }, raw);
    }
  });

  test("refuses '.' and '..' segments in every spelling", () => {
    const dots = [
      ".",
      "..",
      "%2e",
      "%2E",
      "%2e%2e",
      "%2E%2E",
      ".%2e",
      "%2e.",
      ".%2E",
      "%2E.",
      "...",
      "..;",
      "..;x=1",
      ".;",
      "%2e%2e;jsessionid=1",
      "..%3b",
      "..%20",
      "%2e%2e%20",
      ".%20.",
      "%EF%BC%8E%EF%BC%8E", // full-width '．．'
      "%EF%BC%8E", // full-width '．'
      "%E2%80%A5", // two-dot leader '‥'
      "%e2%80%a4", // one-dot leader '․'
    ];
    for (const seg of dots) {
      for (const raw of [`/${seg}`, `/${seg}/admin`, `/repos/${seg}/${seg}/admin`, `/repos/${seg}?x=1`, `/a/${seg}/`]) {
        assert.match(rejected(raw), /'\.' or '\.\.'/, raw);
      }
    }
  });

  test("refuses overlong and invalid UTF-8 escapes", () => {
    for (const raw of ["/%c0%ae%c0%ae/admin", "/%C0%AE", "/%e0%80%ae", "/%c0%af", "/%ff", "/%80", "/a%c3"]) {
      assert.match(rejected(raw), /not UTF-8/, raw);
    }
  });

  test("refuses encoded slashes and backslashes in any case, and characters that normalize to them", () => {
    for (const raw of ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%5Cb", "/%2f", "/..%2f..%2fadmin", "/%5c..%5cadmin"]) {
      assert.match(rejected(raw), /encoded slash or backslash/, raw);
    }
    for (const raw of ["/a%EF%BC%8Fb", "/a%EF%BC%BCb"]) {
      assert.match(rejected(raw), /normalizes to a slash/, raw);
    }
  });

  test("refuses double encoding in the path", () => {
    for (const raw of ["/%25", "/a%252e%252e/b", "/%252f", "/%25%32%65", "/x%25y"]) {
      assert.match(rejected(raw), /%25/, raw);
    }
  });

  test("refuses raw backslashes, control characters, NUL, spaces, '#' and non-ASCII", () => {
    assert.match(rejected("/a\\b"), /backslash/);
    assert.match(rejected("/..\\admin"), /backslash/);
    assert.match(rejected("/a?b=\\"), /backslash/);
    assert.match(rejected("/a\u0000b"), /NUL/);
    for (const c of ["\r", "\n", "\t", "\u0001", "\u001f", "\u007f"]) {
      assert.match(rejected(`/a${c}b`), /control character/, JSON.stringify(c));
      assert.match(rejected(`/a?q=${c}`), /control character/, JSON.stringify(c));
    }
    assert.match(rejected("/a\r\nHost: evil"), /control character/);
    assert.match(rejected("/a b"), /space/);
    assert.match(rejected("/a#frag"), /'#'/);
    assert.match(rejected("/café"), /non-ASCII/);
    assert.match(rejected("/\u0085"), /non-ASCII/);
  });

  test("refuses encoded control characters in the path", () => {
    for (const raw of ["/a%00b", "/a%0d%0ab", "/a%0A", "/a%1f", "/a%7F"]) {
      assert.match(rejected(raw), /encoded control character/, raw);
    }
  });

  test("refuses invalid percent-escapes in path and query", () => {
    for (const raw of ["/%", "/a%2", "/a%zz", "/a%g0", "/%%30", "/a?b=%", "/a?b=%x1"]) {
      assert.match(rejected(raw), /not a valid percent-escape/, raw);
    }
  });

  test("refuses empty targets, relative targets and empty segments", () => {
    assert.match(rejected(""), /empty/);
    for (const raw of ["a/b", "?x=1", "%2f", "http://evil/", "*"]) assert.match(rejected(raw), /start with '\/'/, raw);
    for (const raw of ["//", "//evil.example/x", "/a//b", "/a/b//", "/a//?x"]) {
      assert.match(rejected(raw), /empty segment/, raw);
    }
  });

  test("refuses targets over the size limit, counting bytes", () => {
    const fits = `/${"a".repeat(MAX_TARGET_BYTES - 1)}`;
    assert.equal(checkBridgePath(fits).path, fits);
    assert.match(rejected(`${fits}a`), /longer than/);
    assert.match(rejected(`/?q=${"x".repeat(MAX_TARGET_BYTES)}`), /longer than/);
  });
});

describe("allowedMethod", () => {
  test("refuses TRACE, TRACK and CONNECT in any case, and non-tokens", () => {
    for (const m of [
      "TRACE",
      "TRACK",
      "CONNECT",
      "trace",
      "Connect",
      "tRaCk",
      "",
      "GET /",
      "G\tET",
      "GET\r\n",
      "x".repeat(33),
    ]) {
      assert.equal(allowedMethod(m), false, m);
    }
    for (const m of ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]) {
      assert.equal(allowedMethod(m), true, m);
    }
  });

  test("the schema refuses rules naming them", () => {
    for (const methods of [["TRACE"], ["GET", "CONNECT"], ["TRACK"], ["get"], [], ["GET", "GET"]]) {
      assert.equal(PolicyRule.safeParse({ methods, path: "/**" }).success, false, methods.join(","));
    }
  });
});

describe("path patterns", () => {
  test("accepts literals, '*' segments and a final '**'", () => {
    for (const p of [
      "/",
      "/**",
      "/repos/**",
      "/repos/*/*/issues",
      "/items/",
      "/a/*/",
      "/caf%C3%A9",
      "/v1/a:b@c;d=e",
      "/.well-known/x",
    ]) {
      assert.equal(pathPatternProblem(p), null, p);
    }
  });

  test("refuses traversal, encoded separators, misplaced wildcards and bad characters", () => {
    const bad = [
      "",
      "repos/**",
      "/**/x",
      "/a/**/b",
      "/a*",
      "/*a",
      "/***",
      "/a//b",
      "//",
      "/.",
      "/..",
      "/a/../b",
      "/%2e%2e",
      "/.%2E",
      "/a%2fb",
      "/a%5Cb",
      "/%25",
      "/a%00",
      "/a%zz",
      "/%c0%ae",
      "/a b",
      "/a\\b",
      "/a?b",
      "/a#b",
      "/é",
      `/${"a".repeat(1024)}`,
    ];
    for (const p of bad) assert.notEqual(pathPatternProblem(p), null, p);
  });
});

const policy = compilePolicy({
  allow: [
    { methods: ["GET"], path: "/repos/*/*/issues" },
    { methods: ["POST", "PATCH"], path: "/repos/*/*/issues/*" },
    { methods: ["GET", "HEAD"], path: "/orgs/acme/**" },
    { methods: ["GET"], path: "/" },
    { methods: ["PUT"], path: "/items/" },
    { methods: ["GET"], path: "/caf%C3%A9/*" },
    { methods: ["DELETE"], path: "/**" },
  ],
});

describe("matchRule", () => {
  const cases: [string, string, string | null][] = [
    ["GET", "/repos/a/b/issues", "/repos/*/*/issues"],
    ["GET", "/repos/a%20b/b/issues", "/repos/*/*/issues"],
    ["GET", "/repos/a/issues", null],
    ["GET", "/repos/a/b/c/issues", null],
    ["GET", "/repos/a/b/issues/", null],
    ["GET", "/repos/a/b/issues/1", null],
    ["HEAD", "/repos/a/b/issues", null],
    ["get", "/repos/a/b/issues", null],
    ["POST", "/repos/a/b/issues", null],
    ["POST", "/repos/a/b/issues/1", "/repos/*/*/issues/*"],
    ["PATCH", "/repos/a/b/issues/1", "/repos/*/*/issues/*"],
    ["POST", "/repos//b/issues/1", null],
    ["GET", "/Repos/a/b/issues", null],
    ["GET", "/rep%6Fs/a/b/issues", null],
    ["GET", "/orgs/acme", "/orgs/acme/**"],
    ["GET", "/orgs/acme/", "/orgs/acme/**"],
    ["HEAD", "/orgs/acme/members/x/y", "/orgs/acme/**"],
    ["GET", "/orgs/acmeX", null],
    ["GET", "/orgs", null],
    ["GET", "/", "/"],
    ["PUT", "/items/", "/items/"],
    ["PUT", "/items", null],
    ["PUT", "/items/x", null],
    ["GET", "/caf%c3%a9/x", "/caf%C3%A9/*"],
    ["GET", "/caf%C3%A9/x", "/caf%C3%A9/*"],
    ["GET", "/caf%C3%A9/", null],
    ["DELETE", "/anything/at/all", "/**"],
    ["DELETE", "/", "/**"],
    ["TRACE", "/repos/a/b/issues", null],
    ["CONNECT", "/", null],
    ["GET", "repos/a/b/issues", null],
  ];
  for (const [method, path, expected] of cases) {
    test(`${method} ${path} → ${expected ?? "denied"}`, () => {
      assert.equal(matchRule(policy, method, path)?.path ?? null, expected);
    });
  }

  test("takes the first matching rule", () => {
    const p = compilePolicy({
      allow: [
        { methods: ["GET"], path: "/a/*" },
        { methods: ["GET"], path: "/a/**" },
      ],
    });
    assert.equal(matchRule(p, "GET", "/a/b")?.path, "/a/*");
    assert.equal(matchRule(p, "GET", "/a/b/c")?.path, "/a/**");
  });

  test("a TRACE rule cannot be compiled into a policy that matches", () => {
    const p = compilePolicy({ allow: [{ methods: ["TRACE"], path: "/**" }] });
    assert.equal(matchRule(p, "TRACE", "/x"), null);
  });

  test("compiling refuses invalid patterns", () => {
    assert.throws(() => compilePolicy({ allow: [{ methods: ["GET"], path: "/a/../b" }] }), TypeError);
  });

  test("checked paths and patterns agree: a traversal never reaches a '*' rule", () => {
    const p = compilePolicy({ allow: [{ methods: ["GET"], path: "/public/*/file" }] });
    for (const raw of ["/public/../file", "/public/%2e%2e/file", "/public/..;/file", "/public/a%2f..%2fsecret/file"]) {
      assert.throws(() => matchRule(p, "GET", checkBridgePath(raw).path), AppError, raw);
    }
  });
});

describe("ConnectionPut", () => {
  const base = {
    base_url: "https://api.example.com",
    secret: "gh-token",
    auth: { type: "bearer" },
    policy: { allow: [{ methods: ["GET"], path: "/**" }] },
  };
  const ok = (body: unknown) => {
    const r = ConnectionPut.safeParse(body);
    assert.ok(r.success, JSON.stringify(r.error?.issues));
    return r.data;
  };
  const bad = (body: unknown, where: string) => {
    const r = ConnectionPut.safeParse(body);
    assert.equal(r.success, false, JSON.stringify(body));
    assert.ok(
      r.error?.issues.some((i) => i.path.join(".") === where),
      `${where}: ${JSON.stringify(r.error?.issues)}`,
    );
  };

  test("fills the defaults", () => {
    const c = ok(base);
    assert.equal(c.internal, false);
    assert.equal(c.timeout_ms, 30_000);
    assert.equal(c.max_response_bytes, 32 * 1024 * 1024);
    assert.equal(c.max_request_bytes, 10 * 1024 * 1024);
  });

  test("accepts every auth type", () => {
    ok({ ...base, auth: { type: "header", name: "X-Api-Key" } });
    ok({ ...base, auth: { type: "header", name: "Authorization", prefix: "token " } });
    ok({ ...base, auth: { type: "basic", username: "bot" } });
    ok({ ...base, auth: { type: "query", param: "api_key" } });
    ok({ ...base, secret: undefined, auth: { type: "none" } });
  });

  test("refuses bad base URLs", () => {
    for (const url of [
      "ftp://example.com",
      "file:///etc/passwd",
      "example.com",
      "http:example.com",
      "https://user:pw@example.com",
      "https://user@example.com",
      "https://@example.com",
      "https://example.com/?a=1",
      "https://example.com/?",
      "https://example.com/#x",
      "https://example.com/a b",
      " https://example.com",
      "https://exa\\mple.com",
      "javascript:alert(1)",
    ]) {
      bad({ ...base, base_url: url }, "base_url");
    }
  });

  test("ties auth and secret together", () => {
    bad({ ...base, secret: undefined }, "secret");
    bad({ ...base, auth: { type: "none" } }, "auth");
    bad({ ...base, secret: "../x" }, "secret");
    bad({ ...base, secret: "a".repeat(65) }, "secret");
  });

  test("refuses header names the bridge manages and malformed auth", () => {
    for (const name of [
      "Host",
      "cookie",
      "Content-Length",
      "Transfer-Encoding",
      "Connection",
      "TE",
      "Upgrade",
      "Proxy-Authorization",
      "Bad Header",
      "X:Y",
      "",
    ]) {
      bad({ ...base, auth: { type: "header", name } }, "auth.name");
    }
    bad({ ...base, auth: { type: "header", name: "X-Key", prefix: "a\r\nb" } }, "auth.prefix");
    bad({ ...base, auth: { type: "basic", username: "a:b" } }, "auth.username");
    bad({ ...base, auth: { type: "query", param: "a&b" } }, "auth.param");
    bad({ ...base, auth: { type: "bearer", prefix: "x" } }, "auth");
    bad({ ...base, auth: { type: "magic" } }, "auth.type");
  });

  test("takes OAuth auth as an object or as oauth:APP, without a secret", () => {
    const { secret: _secret, ...secretless } = base;
    assert.deepEqual(ok({ ...secretless, auth: "oauth:gmail" }).auth, { type: "oauth", app: "gmail" });
    assert.deepEqual(ok({ ...secretless, auth: { type: "oauth", app: "gmail" } }).auth, {
      type: "oauth",
      app: "gmail",
    });
    bad({ ...secretless, auth: { type: "oauth" } }, "auth.app");
    bad({ ...secretless, auth: "oauth:Not An App" }, "auth.app");
    bad({ ...secretless, auth: "bearer" }, "auth");
    bad({ ...base, auth: "oauth:gmail" }, "auth");
  });

  test("bounds rules, rate limits and sizes", () => {
    bad({ ...base, policy: { allow: [] } }, "policy.allow");
    const many = Array.from({ length: 101 }, () => ({ methods: ["GET"], path: "/**" }));
    bad({ ...base, policy: { allow: many } }, "policy.allow");
    bad({ ...base, policy: { allow: [{ methods: ["GET"], path: "/a/../b" }] } }, "policy.allow.0.path");
    bad({ ...base, policy: { ...base.policy, rate_limit: { requests: 0, per_s: 1 } } }, "policy.rate_limit.requests");
    bad({ ...base, policy: { ...base.policy, rate_limit: { requests: 1, per_s: 0.5 } } }, "policy.rate_limit.per_s");
    bad({ ...base, timeout_ms: 300_001 }, "timeout_ms");
    bad({ ...base, max_response_bytes: 256 * 1024 * 1024 + 1 }, "max_response_bytes");
    bad({ ...base, extra: 1 }, "");
  });
});

describe("upstreamAddressRefusal", () => {
  test("public addresses pass; private and loopback only for internal connections; link-local never", () => {
    assert.equal(upstreamAddressRefusal("93.184.216.34", false), null);
    assert.equal(upstreamAddressRefusal("2606:2800:220:1:248:1893:25c8:1946", false), null);
    for (const a of ["10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fd00::1", "100.64.0.1"]) {
      assert.notEqual(upstreamAddressRefusal(a, false), null, a);
      assert.equal(upstreamAddressRefusal(a, true), null, a);
    }
    for (const a of [
      "169.254.169.254",
      "fe80::1",
      "::ffff:169.254.169.254",
      "0.0.0.0",
      "224.0.0.1",
      "fd00:ec2::254",
      "fd00:ec2:0::254",
      "100.100.100.200",
      "::ffff:100.100.100.200",
      "not-an-ip",
    ]) {
      assert.notEqual(upstreamAddressRefusal(a, true), null, a);
    }
  });
});
