/**
 * Content-addressed blobs shared by every node: artifacts and packed layers, each stored under the
 * sha256 of its bytes. Two implementations: a folder (local or NFS) and S3.
 *
 * Threat model: a blob store is shared and may be written by other nodes or damaged in transit, so
 * what is read back is never trusted by name alone. A put computes the digest of what it actually
 * stored and refuses content that does not match the digest it was promised; readers that need the
 * whole blob (the node cache) hash it again before use. Credentials for S3 come from the AWS
 * credential chain, never from the store's URL, so they never reach argv or logs.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { rm } from "node:fs/promises";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { AppError } from "@paddock/protocol";

/** What a store knows about one blob. */
export interface BlobInfo {
  sha256: string;
  size: number;
  /** When it was last written, in ms since the epoch (what GC's grace period is measured on). */
  modifiedMs: number;
}

/** Bytes `start` to `end` inclusive (as in an HTTP Range header); no `end` reads to the end. */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface PutOptions {
  /** The digest the content must have; a put of anything else is refused and stores nothing. */
  sha256?: string;
  /** At most this many bytes are accepted. */
  maxBytes?: number;
}

/** What a put reads: a stream, or a file by path. */
export type BlobSource = Readable | { file: string };

export interface BlobStore {
  /** Where the blobs are, for logs (no credentials). */
  readonly location: string;
  /** The blob's size and age, or null when the store has no such blob. */
  head(sha256: string): Promise<BlobInfo | null>;
  /** Stores the content under its own sha256 and returns it; storing a blob again is harmless. */
  put(source: BlobSource, options?: PutOptions): Promise<{ sha256: string; size: number }>;
  /** The blob's content, or the range of it; blob_unavailable naming the digest when it is missing. */
  get(sha256: string, options?: { range?: ByteRange }): Promise<Readable>;
  /** Removes the blob; false when there was none. */
  delete(sha256: string): Promise<boolean>;
  /** Every blob whose digest starts with `prefix` (hex), in no particular order. */
  list(prefix?: string): AsyncIterable<BlobInfo>;
  /** Lets go of connections to the store. */
  close(): void;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** The digest itself when it is a lower-case sha256 in hex; validation_failed otherwise. */
export function checkSha256(sha256: string): string {
  if (!SHA256_HEX.test(sha256))
    throw new AppError("validation_failed", `not a sha256 digest: ${JSON.stringify(sha256)}`);
  return sha256;
}

/** A prefix of a digest for list(): lower-case hex, at most 64 characters. */
export function checkDigestPrefix(prefix: string): string {
  if (!/^[0-9a-f]{0,64}$/.test(prefix)) throw new AppError("validation_failed", `not a digest prefix: ${prefix}`);
  return prefix;
}

/** The error for a blob that is not in the store or not what its digest says. */
export function blobUnavailable(sha256: string, why: string): AppError {
  return new AppError("blob_unavailable", `blob sha256:${sha256} ${why}`, { sha256 });
}

/** The error for content that is not the digest it was to be stored under. */
export function digestMismatch(expected: string, actual: string): AppError {
  return new AppError("blob_digest_mismatch", `content has sha256:${actual}, not sha256:${expected}`, {
    expected,
    actual,
  });
}

export function sourceStream(source: BlobSource): Readable {
  return "file" in source ? createReadStream(source.file) : source;
}

/**
 * Writes `source` to the new file `path` (mode 0600, flushed to disk), hashing it as it streams;
 * refuses more than `maxBytes` and, when `sha256` is given, content of another digest. The file is
 * removed on any failure.
 */
export async function writeVerified(
  source: BlobSource,
  path: string,
  options: PutOptions = {},
): Promise<{ sha256: string; size: number }> {
  const { maxBytes = Number.POSITIVE_INFINITY } = options;
  const expected = options.sha256 === undefined ? undefined : checkSha256(options.sha256);
  const digest = createHash("sha256");
  let size = 0;
  try {
    const out = createWriteStream(path, { flags: "wx", mode: 0o600, flush: true });
    await pipeline(
      sourceStream(source),
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          size += chunk.length;
          if (size > maxBytes) throw new Error(`blob larger than ${maxBytes} bytes`);
          digest.update(chunk);
          yield chunk;
        }
      },
      out,
    );
    const sha256 = digest.digest("hex");
    if (expected !== undefined && sha256 !== expected) throw digestMismatch(expected, sha256);
    return { sha256, size };
  } catch (err) {
    await rm(path, { force: true });
    throw err;
  }
}

/** The sha256 of a file's content. */
export async function sha256OfFile(path: string): Promise<string> {
  const digest = createHash("sha256");
  for await (const chunk of createReadStream(path)) digest.update(chunk as Buffer);
  return digest.digest("hex");
}
