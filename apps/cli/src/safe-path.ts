/**
 * Where a downloaded artifact may be written. Artifact paths come from files an agent wrote, so
 * they are untrusted: a path that is absolute, has '.', '..' or empty parts, backslashes or NUL
 * is refused, and so is a destination whose folder resolves (through symlinks already in the
 * download folder) outside it.
 */
import { mkdir, realpath } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, sep } from "node:path";
import { CliError } from "./args.ts";

/** The path of artifact `artifactPath` below `root`; throws CliError if it would leave `root`. */
export function artifactDestination(root: string, artifactPath: string): string {
  const parts = artifactPath.split("/");
  const bad =
    artifactPath === "" ||
    artifactPath.startsWith("/") ||
    /[\\\0]/.test(artifactPath) ||
    parts.some((part) => part === "" || part === "." || part === "..");
  if (bad) throw new CliError(`refusing artifact path '${artifactPath}': it would leave the download folder`);
  return join(root, ...parts);
}

/**
 * Creates the parent folders of `dest` and checks, after symlinks, that they are still inside
 * `root`. Returns the destination path to write to.
 */
export async function prepareDestination(root: string, artifactPath: string): Promise<string> {
  const dest = artifactDestination(root, artifactPath);
  await mkdir(dirname(dest), { recursive: true });
  const realRoot = await realpath(root);
  const realParent = await realpath(dirname(dest));
  const rel = relative(realRoot, realParent);
  if (rel.startsWith(`..${sep}`) || rel === ".." || isAbsolute(rel)) {
    throw new CliError(`refusing artifact path '${artifactPath}': its folder resolves outside ${root}`);
  }
  return join(realParent, basename(dest));
}
