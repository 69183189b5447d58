/**
 * Blobs in an S3 bucket (AWS S3, MinIO, Ceph, R2), as <prefix>sha256/<hex>. A put first spools a
 * stream to a local temp file while hashing it, so the key is known and checked before anything
 * reaches the bucket; the upload is multipart past one part's size. Credentials come from the AWS
 * SDK's own chain (environment, shared files, instance roles), never from the URL.
 */
import { createReadStream } from "node:fs";
import { mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { newId } from "../store/ids.ts";
import {
  type BlobInfo,
  type BlobSource,
  type BlobStore,
  type ByteRange,
  blobUnavailable,
  checkDigestPrefix,
  checkSha256,
  digestMismatch,
  type PutOptions,
  sha256OfFile,
  writeVerified,
} from "./blobs.ts";

export interface S3Location {
  bucket: string;
  /** Key prefix inside the bucket, empty or ending in "/". */
  prefix: string;
  endpoint?: string;
  region?: string;
  forcePathStyle: boolean;
}

const PART_BYTES = 16 * 1024 * 1024;

export class S3BlobStore implements BlobStore {
  readonly location: string;
  readonly #where: S3Location;
  readonly #client: S3Client;
  readonly #tmpDir: string;

  /** `tmpDir` holds streams spooled before their upload. */
  constructor(where: S3Location, tmpDir: string, clientConfig: S3ClientConfig = {}) {
    this.#where = where;
    this.#tmpDir = tmpDir;
    this.location = `s3://${where.bucket}/${where.prefix}${where.endpoint ? ` at ${where.endpoint}` : ""}`;
    this.#client = new S3Client({
      ...(where.endpoint ? { endpoint: where.endpoint } : {}),
      ...(where.region ? { region: where.region } : {}),
      forcePathStyle: where.forcePathStyle,
      // Digests are checked end to end by us; stores that predate S3's newer checksums still work.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      ...clientConfig,
    });
  }

  #key(sha256: string): string {
    return `${this.#where.prefix}sha256/${checkSha256(sha256)}`;
  }

  async head(sha256: string): Promise<BlobInfo | null> {
    try {
      const out = await this.#client.send(
        new HeadObjectCommand({ Bucket: this.#where.bucket, Key: this.#key(sha256) }),
      );
      return { sha256, size: out.ContentLength ?? 0, modifiedMs: out.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async put(source: BlobSource, options: PutOptions = {}): Promise<{ sha256: string; size: number }> {
    let file: string;
    let spooled: string | null = null;
    let written: { sha256: string; size: number };
    if ("file" in source) {
      // The caller's file is hashed in place; it must not change until the put returns.
      file = source.file;
      const size = (await stat(file)).size;
      if (options.maxBytes !== undefined && size > options.maxBytes) {
        throw new Error(`blob larger than ${options.maxBytes} bytes`);
      }
      written = { sha256: await sha256OfFile(file), size };
      if (options.sha256 !== undefined && written.sha256 !== checkSha256(options.sha256)) {
        throw digestMismatch(options.sha256, written.sha256);
      }
    } else {
      await mkdir(this.#tmpDir, { recursive: true });
      spooled = join(this.#tmpDir, newId("put"));
      written = await writeVerified(source, spooled, options);
      file = spooled;
    }
    try {
      // Stored again even when present: the new write time keeps it from a sweep under way.
      const upload = new Upload({
        client: this.#client,
        params: {
          Bucket: this.#where.bucket,
          Key: this.#key(written.sha256),
          Body: createReadStream(file),
          ContentLength: written.size,
          ContentType: "application/octet-stream",
        },
        partSize: PART_BYTES,
        queueSize: 2,
      });
      await upload.done();
      return written;
    } finally {
      if (spooled) await rm(spooled, { force: true });
    }
  }

  async get(sha256: string, options: { range?: ByteRange } = {}): Promise<Readable> {
    const { range } = options;
    try {
      const out = await this.#client.send(
        new GetObjectCommand({
          Bucket: this.#where.bucket,
          Key: this.#key(sha256),
          ...(range ? { Range: `bytes=${range.start}-${range.end ?? ""}` } : {}),
        }),
      );
      return out.Body as Readable;
    } catch (err) {
      if (isNotFound(err)) throw blobUnavailable(sha256, `is not in ${this.location}`);
      throw err;
    }
  }

  async delete(sha256: string): Promise<boolean> {
    if (!(await this.head(sha256))) return false;
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#where.bucket, Key: this.#key(sha256) }));
    return true;
  }

  async *list(prefix = ""): AsyncIterable<BlobInfo> {
    const keyPrefix = `${this.#where.prefix}sha256/`;
    let token: string | undefined;
    do {
      const page = await this.#client.send(
        new ListObjectsV2Command({
          Bucket: this.#where.bucket,
          Prefix: keyPrefix + checkDigestPrefix(prefix),
          ...(token ? { ContinuationToken: token } : {}),
        }),
      );
      for (const o of page.Contents ?? []) {
        const sha256 = o.Key?.slice(keyPrefix.length) ?? "";
        if (!/^[0-9a-f]{64}$/.test(sha256)) continue;
        yield { sha256, size: o.Size ?? 0, modifiedMs: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  close(): void {
    this.#client.destroy();
  }
}

function isNotFound(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  return err.name === "NotFound" || err.name === "NoSuchKey" || status === 404;
}
