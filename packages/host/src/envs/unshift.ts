/**
 * Id shifting: an edit session's sandbox runs in a user namespace that maps its ids 0..65535 to
 * a host range BASE..BASE+65535 of the session's own, so the files it writes carry host ids in
 * that range. A frozen layer must carry the ids the sandbox saw (root is 0, the agent 61000), as
 * the base image does. This moves a copied tree's owners back by BASE, together with the two
 * kinds of extended attribute that hold ids: file capabilities written by a namespaced root
 * (version 3, with the namespace root's host id) and POSIX ACL entries naming users or groups.
 *
 * chown clears setuid and setgid bits and file capabilities, so modes are set again after it and
 * the attributes are written back by the caller (freeze writes kept attributes after this step).
 * Ids outside the range (files the host itself made) are left as they are.
 */
import type { Dirent } from "node:fs";
import { chmod, lchown, lstat, readdir } from "node:fs/promises";
import type { TreeXattr } from "../fs/tree-digest.ts";
import type { XattrMap } from "../fs/xattrs.ts";
import { at } from "./copy-plan.ts";

/** How many ids a session's range holds. */
export const SHIFT_COUNT = 65536;

const CAPABILITY = "security.capability";
const ACLS = new Set(["system.posix_acl_access", "system.posix_acl_default"]);
/** linux/capability.h: revision in the top byte of magic_etc, and the v3 layout's size. */
const VFS_CAP_REVISION_2 = 0x02000000;
const VFS_CAP_REVISION_3 = 0x03000000;
const VFS_CAP_REVISION_MASK = 0xff000000;
const XATTR_CAPS_SZ_2 = 20;
const XATTR_CAPS_SZ_3 = 24;
/** linux/posix_acl_xattr.h: a 4-byte version header, then 8-byte entries {tag u16, perm u16, id u32}. */
const ACL_USER = 0x02;
const ACL_GROUP = 0x08;

function back(id: number, base: number): number {
  return id >= base && id < base + SHIFT_COUNT ? id - base : id;
}

/** Sets every owner in the tree at `root` that lies in [base, base+65536) back by base. */
export async function unshiftTree(root: string, base: number): Promise<void> {
  const pending: Buffer[] = [Buffer.alloc(0)];
  for (let rel = pending.pop(); rel !== undefined; rel = pending.pop()) {
    const path = at(root, rel);
    const st = await lstat(path);
    const uid = back(st.uid, base);
    const gid = back(st.gid, base);
    if (uid !== st.uid || gid !== st.gid) {
      await lchown(path, uid, gid);
      if (!st.isSymbolicLink() && (st.mode & 0o6000) !== 0) await chmod(path, st.mode & 0o7777);
    }
    if (!st.isDirectory()) continue;
    const entries = (await readdir(path, { withFileTypes: true, encoding: "buffer" })) as Dirent<Buffer>[];
    for (const entry of entries) {
      const name = entry.name;
      pending.push(rel.length === 0 ? name : Buffer.concat([rel, Buffer.from("/"), name]));
    }
  }
}

/** Rewrites, in place, the id-bearing attributes of a tree's attribute map (see the module comment). */
export function unshiftXattrs(xattrs: XattrMap, base: number): void {
  for (const list of xattrs.values()) {
    for (let i = 0; i < list.length; i++) {
      const x = list[i] as TreeXattr;
      const name = typeof x.name === "string" ? x.name : x.name.toString("latin1");
      if (name === CAPABILITY) list[i] = { name: x.name, value: unshiftCapability(x.value, base) };
      else if (ACLS.has(name)) list[i] = { name: x.name, value: unshiftAcl(x.value, base) };
    }
  }
}

/** A v3 capability whose root id is the range's root becomes the plain (v2) form; others move back. */
export function unshiftCapability(value: Buffer, base: number): Buffer {
  if (value.length !== XATTR_CAPS_SZ_3) return value;
  const magic = value.readUInt32LE(0);
  if ((magic & VFS_CAP_REVISION_MASK) >>> 0 !== VFS_CAP_REVISION_3) return value;
  const rootid = back(value.readUInt32LE(XATTR_CAPS_SZ_2), base);
  if (rootid !== 0) {
    const out = Buffer.from(value);
    out.writeUInt32LE(rootid, XATTR_CAPS_SZ_2);
    return out;
  }
  const out = Buffer.from(value.subarray(0, XATTR_CAPS_SZ_2));
  out.writeUInt32LE(((magic & ~VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_2) >>> 0, 0);
  return out;
}

export function unshiftAcl(value: Buffer, base: number): Buffer {
  if (value.length < 4 || (value.length - 4) % 8 !== 0) return value;
  const out = Buffer.from(value);
  for (let off = 4; off < out.length; off += 8) {
    const tag = out.readUInt16LE(off);
    if (tag === ACL_USER || tag === ACL_GROUP) out.writeUInt32LE(back(out.readUInt32LE(off + 4), base), off + 4);
  }
  return out;
}
