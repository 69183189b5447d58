import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { classifyAddress, compileAllowlist, isIpLiteralHost, normalizeHostName } from "./address-policy.ts";

describe("isIpLiteralHost", () => {
  test("every IPv4 and IPv6 spelling is a literal", () => {
    for (const host of [
      "127.0.0.1",
      "127.0.0.1.",
      "2130706433",
      "0x7f.1",
      "0X7F.1",
      "0x7f000001",
      "0177.0.0.1",
      "0177.1",
      "127.1",
      "10.1",
      "169.254.169.254",
      "0",
      "0x",
      "foo.123",
      "[::1]",
      "[::ffff:127.0.0.1]",
      "[fe80::1%25eth0]",
      "::1",
      "fe80::1",
      "::ffff:169.254.169.254",
    ]) {
      assert.equal(isIpLiteralHost(host), true, host);
    }
  });

  test("domain names are not literals", () => {
    for (const host of ["deb.debian.org", "registry.npmjs.org.", "1.2.3.4.nip.io", "0x7f.example", "123abc", "a1"]) {
      assert.equal(isIpLiteralHost(host), false, host);
    }
  });
});

describe("normalizeHostName", () => {
  test("lower-cases and strips one trailing dot", () => {
    assert.equal(normalizeHostName("Deb.Debian.ORG."), "deb.debian.org");
    assert.equal(normalizeHostName("_acme.example.org"), "_acme.example.org");
  });

  test("rejects what is not a DNS name", () => {
    const longLabel = "a".repeat(64);
    const longName = `${"a".repeat(63)}.`.repeat(4).concat("org");
    for (const host of [
      "",
      ".",
      "deb.debian.org..",
      ".deb.debian.org",
      "deb..org",
      "-deb.org",
      "deb-.org",
      "deb debian.org",
      "deb.debian.org/x",
      "user@deb.debian.org",
      "deb.debian.org:80",
      "*.debian.org",
      `${longLabel}.org`,
      longName,
      "deb.debian.tes\u212a",
      "deb.debıan.org",
      "deb.debian.org\u0000",
    ]) {
      assert.equal(normalizeHostName(host), null, JSON.stringify(host));
    }
  });
});

describe("compileAllowlist", () => {
  test("exact names match case-insensitively, with or without a trailing dot", () => {
    const list = compileAllowlist(["deb.debian.org", "Registry.NPMjs.org."]);
    assert.equal(list.matches("deb.debian.org"), true);
    assert.equal(list.matches("DEB.DEBIAN.ORG."), true);
    assert.equal(list.matches("registry.npmjs.org"), true);
    assert.equal(list.matches("security.debian.org"), false);
    assert.equal(list.matches("deb.debian.org.evil.test"), false);
    assert.equal(list.matches("xdeb.debian.org"), false);
    assert.equal(list.matches("deb.debian.org.."), false);
  });

  test("*.domain matches subdomains only, never the apex or look-alikes", () => {
    const list = compileAllowlist(["*.x.test"]);
    assert.equal(list.matches("a.x.test"), true);
    assert.equal(list.matches("b.a.x.test"), true);
    assert.equal(list.matches("A.X.TEST."), true);
    assert.equal(list.matches("x.test"), false);
    assert.equal(list.matches("ax.test"), false);
    assert.equal(list.matches(".x.test"), false);
    assert.equal(list.matches("x.test.evil"), false);
  });

  test("rejects invalid patterns and IP literals", () => {
    for (const pattern of ["*", "*.", "", "**.x.test", "a.*.test", "127.0.0.1", "*.10.0.0.1", "[::1]", "x.test:443"]) {
      assert.throws(() => compileAllowlist([pattern]), TypeError, pattern);
    }
  });
});

describe("classifyAddress", () => {
  test("public unicast addresses pass", () => {
    for (const ip of [
      "93.184.216.34",
      "151.101.2.132",
      "8.8.8.8",
      "100.128.0.1",
      "172.32.0.1",
      "2606:4700::1111",
      "2a04:4e42::644",
      "::ffff:93.184.216.34",
      "64:ff9b::5db8:d822",
      "2002:5db8:d822::1",
    ]) {
      assert.equal(classifyAddress(ip), null, ip);
    }
  });

  test("special-purpose addresses are classified", () => {
    const cases: [string, string][] = [
      ["0.0.0.0", "unspecified"],
      ["0.1.2.3", "unspecified"],
      ["127.0.0.1", "loopback"],
      ["127.255.255.254", "loopback"],
      ["10.0.0.1", "private"],
      ["172.16.0.1", "private"],
      ["172.31.255.255", "private"],
      ["192.168.1.1", "private"],
      ["100.64.0.1", "cgnat"],
      ["100.127.255.255", "cgnat"],
      ["169.254.169.254", "link-local"],
      ["192.0.0.170", "reserved"],
      ["192.0.2.1", "reserved"],
      ["198.18.0.1", "reserved"],
      ["198.51.100.7", "reserved"],
      ["203.0.113.9", "reserved"],
      ["224.0.0.1", "multicast"],
      ["239.255.255.250", "multicast"],
      ["240.0.0.1", "reserved"],
      ["255.255.255.255", "reserved"],
      ["::", "unspecified"],
      ["::1", "loopback"],
      ["0:0:0:0:0:0:0:1", "loopback"],
      ["::ffff:127.0.0.1", "loopback"],
      ["::ffff:7f00:1", "loopback"],
      ["::ffff:169.254.169.254", "link-local"],
      ["::ffff:10.0.0.1", "private"],
      ["64:ff9b::a9fe:a9fe", "link-local"],
      ["64:ff9b::127.0.0.1", "loopback"],
      ["2002:7f00:1::1", "loopback"],
      ["2002:a00:1::", "private"],
      ["fc00::1", "private"],
      ["fd00:ec2::254", "private"],
      ["fe80::1", "link-local"],
      ["fe80::1%eth0", "link-local"],
      ["febf::1", "link-local"],
      ["fec0::1", "private"],
      ["ff02::1", "multicast"],
      ["2001:db8::1", "reserved"],
      ["2001::1", "reserved"],
      ["3fff::1", "reserved"],
      ["::127.0.0.1", "reserved"],
      ["100::1", "reserved"],
      ["64:ff9b:1::1", "reserved"],
      ["not-an-ip", "reserved"],
    ];
    for (const [ip, kind] of cases) {
      assert.equal(classifyAddress(ip), kind, ip);
    }
  });
});
