/**
 * Collects the files a sandbox left under /outputs. Threat model: everything there was written by
 * agent code, so the walk never follows a symbolic link (a link to /etc/shadow must not become an
 * artifact), opens each file with O_NOFOLLOW and checks it is a regular file on the open
 * descriptor, and stops at caps on files, bytes, entries walked and entries reported skipped. It runs after every sandbox process is dead, so
 * nothing can swap a file between check and read.
 */
import { constants, createReadStream } from "node:fs";
import { open, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { BlobStore } from "../blobs/blobs.ts";

export interface CollectedFile {
  path: string;
  size: number;
  sha256: string;
  contentType: string;
}

export interface CollectResult {
  files: CollectedFile[];
  /** The first MAX_SKIPPED entries left out, with why (caps reached, not a regular file). */
  skipped: { path: string; why: string }[];
  /** How many entries were left out in all. */
  skippedCount: number;
}

export const MAX_ARTIFACT_FILES = 1000;
export const MAX_SKIPPED = 100;
/** Entries looked at in all: a tree of millions of empty files must not stall the host. */
export const MAX_ENTRIES_WALKED = 20_000;

const TYPES: Record<string, string> = {
  txt: "text/plain; charset=utf-8",
  md: "text/markdown; charset=utf-8",
  csv: "text/csv; charset=utf-8",
  json: "application/json",
  html: "text/html; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  pdf: "application/pdf",
  log: "text/plain; charset=utf-8",
  zip: "application/zip",
};

export function contentTypeOf(path: string): string {
  const ext = path.slice(path.lastIndexOf(".") + 1).toLowerCase();
  return TYPES[ext] ?? "application/octet-stream";
}

export async function collectOutputs(
  root: string,
  blobs: Pick<BlobStore, "put">,
  maxBytes: number,
): Promise<CollectResult> {
  const result: CollectResult = { files: [], skipped: [], skippedCount: 0 };
  let total = 0;
  let walked = 0;
  const skip = (entry: { path: string; why: string }) => {
    result.skippedCount++;
    if (result.skipped.length < MAX_SKIPPED) result.skipped.push(entry);
  };

  const walk = async (rel: string, depth: number): Promise<void> => {
    if (depth > 32) {
      skip({ path: rel, why: "nested too deep" });
      return;
    }
    let entries: import("node:fs").Dirent[];
    try {
      entries = await readdir(join(root, rel), { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (++walked > MAX_ENTRIES_WALKED) {
        skip({ path, why: `more than ${MAX_ENTRIES_WALKED} entries under /outputs` });
        continue;
      }
      if (entry.isDirectory()) {
        await walk(path, depth + 1);
        continue;
      }
      if (!entry.isFile()) {
        skip({ path, why: entry.isSymbolicLink() ? "symbolic link" : "not a regular file" });
        continue;
      }
      if (result.files.length >= MAX_ARTIFACT_FILES) {
        skip({ path, why: `more than ${MAX_ARTIFACT_FILES} files` });
        continue;
      }
      const fh = await open(join(root, path), constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => null);
      if (!fh) {
        skip({ path, why: "could not be opened" });
        continue;
      }
      try {
        const st = await fh.stat();
        if (!st.isFile()) {
          skip({ path, why: "not a regular file" });
          continue;
        }
        if (total + st.size > maxBytes) {
          skip({ path, why: `artifacts over ${maxBytes} bytes in all` });
          continue;
        }
        const stream = createReadStream("", { fd: fh.fd, autoClose: false });
        const { sha256, size } = await blobs.put(stream, { maxBytes: maxBytes - total });
        total += size;
        result.files.push({ path, size, sha256, contentType: contentTypeOf(path) });
      } finally {
        await fh.close();
      }
    }
  };

  await walk("", 0);
  return result;
}
