/** Owners and id-bearing attributes moved back from a session's host id range. */
import assert from "node:assert/strict";
import { chmod, chown, lchown, lstat, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { trustedList } from "../egress/egress-proxy.ts";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { unshiftAcl, unshiftCapability, unshiftTree } from "./unshift.ts";

const BASE = 1_000_000_000;
const root = process.getuid?.() === 0;

describe("unshift", () => {
  it("moves owners in the range back, keeps setuid bits and ids outside the range", {
    skip: e2eSkip(!root && "chown needs root"),
  }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "paddock-unshift-"));
    try {
      await mkdir(join(dir, "srv"));
      await writeFile(join(dir, "srv/tool"), "x");
      await writeFile(join(dir, "host-owned"), "y");
      await symlink("tool", join(dir, "srv/link"));
      await chown(dir, BASE, BASE);
      await chown(join(dir, "srv"), BASE + 4321, BASE + 4321);
      await chown(join(dir, "srv/tool"), BASE, BASE + 50);
      await chmod(join(dir, "srv/tool"), 0o6755);
      await lchown(join(dir, "srv/link"), BASE + 42, BASE + 42);
      await chown(join(dir, "host-owned"), 123, BASE + 65536);
      await unshiftTree(dir, BASE);
      const own = async (p: string) => {
        const st = await lstat(join(dir, p));
        return [st.uid, st.gid, st.mode & 0o7777];
      };
      assert.deepEqual((await own("")).slice(0, 2), [0, 0]);
      assert.deepEqual((await own("srv")).slice(0, 2), [4321, 4321]);
      assert.deepEqual(await own("srv/tool"), [0, 50, 0o6755]);
      assert.deepEqual((await own("srv/link")).slice(0, 2), [42, 42]);
      assert.deepEqual((await own("host-owned")).slice(0, 2), [123, BASE + 65536]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("turns a namespaced root's file capability into the plain form", () => {
    const v3 = Buffer.alloc(24);
    v3.writeUInt32LE(0x03000001, 0); // revision 3, effective bit
    v3.writeUInt32LE(1 << 13, 4); // cap_net_raw permitted
    v3.writeUInt32LE(BASE, 20);
    const v2 = unshiftCapability(v3, BASE);
    assert.equal(v2.length, 20);
    assert.equal(v2.readUInt32LE(0), 0x02000001);
    assert.equal(v2.readUInt32LE(4), 1 << 13);
    const other = Buffer.from(v3);
    other.writeUInt32LE(BASE + 7, 20);
    assert.equal(unshiftCapability(other, BASE).readUInt32LE(20), 7);
    const foreign = Buffer.from(v3);
    foreign.writeUInt32LE(5, 20);
    assert.equal(unshiftCapability(foreign, BASE).readUInt32LE(20), 5);
  });

  it("moves ACL user and group entries, not the owner entries", () => {
    const acl = Buffer.alloc(4 + 3 * 8);
    acl.writeUInt32LE(2, 0);
    const entries: [number, number][] = [
      [0x01, 0xffffffff],
      [0x02, BASE + 1000],
      [0x08, BASE + 33],
    ];
    entries.forEach(([tag, id], i) => {
      acl.writeUInt16LE(tag, 4 + i * 8);
      acl.writeUInt16LE(7, 6 + i * 8);
      acl.writeUInt32LE(id, 8 + i * 8);
    });
    const out = unshiftAcl(acl, BASE);
    assert.equal(out.readUInt32LE(8), 0xffffffff);
    assert.equal(out.readUInt32LE(16), 1000);
    assert.equal(out.readUInt32LE(24), 33);
  });

  it("parses the operator's trusted egress ranges and refuses anything else", () => {
    const list = trustedList(["203.0.113.0/24", "10.1.2.3", "fd00::/8"]);
    assert.equal(list.check("203.0.113.80", "ipv4"), true);
    assert.equal(list.check("203.0.114.1", "ipv4"), false);
    assert.equal(list.check("10.1.2.3", "ipv4"), true);
    assert.equal(list.check("10.1.2.4", "ipv4"), false);
    assert.equal(list.check("fd12::1", "ipv6"), true);
    for (const bad of ["10.0.0.0/33", "example.org", "10.0.0.0/8/1", ""])
      assert.throws(() => trustedList([bad]), RangeError);
  });
});
