/**
 * An S3 stand-in for tests: the npm `s3rver` server in this process on 127.0.0.1 (a free port), its
 * objects in a temp folder, with one bucket made. The AWS SDK's credential chain is given the
 * stand-in's fixed keys through the environment, as a real deployment's would be.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";

interface S3rverServer {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
type S3rverClass = new (options: { address: string; port: number; silent: boolean; directory: string }) => S3rverServer;

export interface S3StandIn {
  /** The endpoint, http://127.0.0.1:PORT. */
  endpoint: string;
  bucket: string;
  /** A `--blobs` URL for the bucket. */
  url: string;
  stop(): Promise<void>;
}

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/** s3rver's fixed credentials, which it checks signatures against. */
const KEY = "S3RVER";

/**
 * Starts the stand-in with `bucket` made; `stop` closes it and removes its folder.
 * @example const s3 = await startS3StandIn(); try { ... } finally { await s3.stop(); }
 */
export async function startS3StandIn(bucket = "paddock-test"): Promise<S3StandIn> {
  const S3rver = createRequire(import.meta.url)("s3rver") as S3rverClass;
  const directory = await mkdtemp(join(tmpdir(), "paddock-s3-"));
  const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory });
  let running = false;
  const previous = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  const stop = async () => {
    if (running) await server.close();
    running = false;
    restore("AWS_ACCESS_KEY_ID", previous.id);
    restore("AWS_SECRET_ACCESS_KEY", previous.secret);
    await rm(directory, { recursive: true, force: true });
  };
  try {
    const { port } = await server.run();
    running = true;
    process.env.AWS_ACCESS_KEY_ID = KEY;
    process.env.AWS_SECRET_ACCESS_KEY = KEY;
    const endpoint = `http://127.0.0.1:${port}`;
    const client = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true });
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    client.destroy();
    const url = `s3://${bucket}?endpoint=${encodeURIComponent(endpoint)}&region=us-east-1&force_path_style=true`;
    return { endpoint, bucket, url, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
