/**
 * How overlayfs marks a layer's entries (whiteouts, opaque folders), and which extended attributes
 * a content-addressed layer keeps. Freezing an upper, packing a layer and unpacking one all decide
 * with these, so what one writes the others read the same way.
 */
import type { Stats } from "node:fs";
import type { TreeXattr } from "./tree-digest.ts";

/** Marks a directory whose lower namesakes are hidden. */
export const OPAQUE_XATTR = "trusted.overlay.opaque";
const OPAQUE_YES = Buffer.from("y");

/** A whiteout: a character device 0/0 that hides its namesake in the layers below. */
export function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && Number(st.rdev) === 0;
}

/** True when the attributes mark an opaque directory. */
export function isOpaque(xattrs: readonly TreeXattr[] | undefined): boolean {
  if (!xattrs) return false;
  return xattrs.some((x) => x.name.toString() === OPAQUE_XATTR && x.value.equals(OPAQUE_YES));
}

/** True for the value of an opaque mark that lower layers honour ("y"). */
export function isOpaqueValue(value: Buffer): boolean {
  return value.equals(OPAQUE_YES);
}

const REFUSED_XATTRS = new Set(["trusted.overlay.redirect", "trusted.overlay.metacopy"]);
const KEPT_XATTRS = new Set(["security.capability", "system.posix_acl_access", "system.posix_acl_default"]);

/**
 * Whether an extended attribute of an upper is kept in a layer: capabilities, ACLs, user
 * attributes and the opaque mark; overlayfs's own bookkeeping is dropped. Throws for the ones that
 * make an upper impossible to freeze (redirect_dir, metacopy).
 */
export function keepXattr(path: Buffer, name: Buffer, value: Buffer): boolean {
  const text = name.toString("latin1");
  if (REFUSED_XATTRS.has(text)) {
    throw new Error(
      `${JSON.stringify(`/${path.toString()}`)} carries ${text}: the writable layer was mounted with redirect_dir or metacopy on, which freezing does not support`,
    );
  }
  if (text === OPAQUE_XATTR) return isOpaqueValue(value);
  if (KEPT_XATTRS.has(text)) return true;
  return text.startsWith("user.") && !text.startsWith("user.overlay.");
}
