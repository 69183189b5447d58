/**
 * The blob store a `--blobs` URL names: `file:///a/shared/folder` or
 * `s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME&force_path_style=true`.
 */
import type { BlobStore } from "./blobs.ts";
import { FileBlobStore } from "./file-store.ts";
import { S3BlobStore, type S3Location } from "./s3-store.ts";

export type BlobsLocation = { kind: "file"; dir: string } | ({ kind: "s3" } & S3Location);

const S3_PARAMS = new Set(["endpoint", "region", "force_path_style"]);

/**
 * What a blobs URL names; an Error saying what is wrong otherwise. A URL never carries
 * credentials: S3 ones come from the AWS credential chain.
 * @example parseBlobsUrl("s3://paddock?region=eu-west-1") // { kind: "s3", bucket: "paddock", prefix: "", region: "eu-west-1", forcePathStyle: false }
 */
export function parseBlobsUrl(text: string): BlobsLocation {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error("must be a URL: file:///FOLDER or s3://BUCKET?endpoint=…&region=…");
  }
  if (url.username || url.password) {
    throw new Error("must not carry credentials; S3 ones come from the AWS environment or credential files");
  }
  if (url.protocol === "file:") {
    if (url.host || url.search || url.hash)
      throw new Error("file: URLs are file:///ABSOLUTE/FOLDER with nothing after");
    const dir = decodeURIComponent(url.pathname).replace(/\/+$/, "");
    if (!dir.startsWith("/") || dir.split("/").includes("..")) throw new Error("file: URLs need an absolute folder");
    return { kind: "file", dir };
  }
  if (url.protocol === "s3:") {
    const bucket = url.hostname;
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new Error(`'${bucket}' is not an S3 bucket name`);
    for (const key of url.searchParams.keys()) {
      if (!S3_PARAMS.has(key)) throw new Error(`unknown parameter '${key}' (known: ${[...S3_PARAMS].join(", ")})`);
    }
    const endpoint = url.searchParams.get("endpoint") ?? undefined;
    if (endpoint !== undefined && !/^https?:\/\/[^/@]+\/?$/.test(endpoint)) {
      throw new Error("endpoint must be http(s)://HOST[:PORT] with no path or credentials");
    }
    const region = url.searchParams.get("region") ?? undefined;
    const style = url.searchParams.get("force_path_style") ?? "false";
    if (style !== "true" && style !== "false") throw new Error("force_path_style must be true or false");
    const path = decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, "");
    return {
      kind: "s3",
      bucket,
      prefix: path ? `${path}/` : "",
      ...(endpoint ? { endpoint } : {}),
      ...(region ? { region } : {}),
      forcePathStyle: style === "true",
    };
  }
  throw new Error(`'${url.protocol}' is not a blob store: use file:///FOLDER or s3://BUCKET`);
}

/** Opens the store `url` names; `tmpDir` is a local folder for S3 uploads being spooled. */
export function openBlobStore(url: string, tmpDir: string): BlobStore {
  const where = parseBlobsUrl(url);
  return where.kind === "file" ? new FileBlobStore(where.dir) : new S3BlobStore(where, tmpDir);
}
