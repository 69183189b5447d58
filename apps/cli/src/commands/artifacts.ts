/** `paddock artifacts RUN [--download DIR]`: the files a run left in /outputs. */
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Artifact } from "@paddock/protocol";
import { CliError, CONNECTION_HELP, parseCommand } from "../args.ts";
import type { Client } from "../client.ts";
import { type Command, connect } from "../context.ts";
import { formatSize, formatTable } from "../format.ts";
import { prepareDestination } from "../safe-path.ts";

/** The hex digest of an artifact's sha256 field, which may carry a "sha256:" or "sha256-" prefix. */
function hexDigest(sha256: string): string {
  return sha256.replace(/^sha256[:-]/, "").toLowerCase();
}

/**
 * Downloads one artifact below `dir`. The content is written to a temporary file beside the
 * destination, checked against the recorded size and digest, then renamed into place (a symlink
 * already at the destination is replaced, never followed).
 */
export async function downloadArtifact(client: Client, dir: string, artifact: Artifact): Promise<string> {
  const dest = await prepareDestination(dir, artifact.path);
  const res = await client.downloadArtifact(artifact.run_id, artifact.id);
  if (!res.body) throw new CliError(`${artifact.path}: the host sent no content`);
  const tmp = `${dest}.${randomBytes(6).toString("hex")}.part`;
  const hash = createHash("sha256");
  let size = 0;
  const measure = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(res.body), measure, createWriteStream(tmp, { flags: "wx", mode: 0o644 }));
    const digest = hash.digest("hex");
    if (size !== artifact.size || digest !== hexDigest(artifact.sha256)) {
      throw new CliError(
        `${artifact.path}: downloaded ${size} bytes with sha256 ${digest}, ` +
          `but the host recorded ${artifact.size} bytes with ${artifact.sha256}`,
      );
    }
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return dest;
}

export const artifacts: Command = {
  name: "artifacts",
  summary: "list (and download) a run's artifacts",
  usage: `Usage: paddock artifacts RUN [--download DIR] [--json]

Lists the files the run wrote to /outputs. With --download, saves each one to DIR/<path>
(checking its size and sha256).

Options:
  --download DIR    download every artifact into DIR (created if missing)
  --json            print the artifact list as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "artifacts",
      options: { download: { type: "string" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const list = await client.listArtifacts(positionals[0] ?? "");
    if (values.json) ctx.out(JSON.stringify(list, null, 2));
    else if (list.length === 0) ctx.err("no artifacts");
    else if (!values.download) {
      ctx.out(
        formatTable(
          ["PATH", "SIZE", "TYPE", "SHA256"],
          list.map((a) => [a.path, formatSize(a.size), a.content_type, hexDigest(a.sha256).slice(0, 16)]),
        ),
      );
    }
    if (values.download) {
      await mkdir(values.download, { recursive: true });
      let failed = 0;
      for (const artifact of list) {
        try {
          const dest = await downloadArtifact(client, values.download, artifact);
          if (!values.json) ctx.out(`${dest}  ${formatSize(artifact.size)}`);
        } catch (err) {
          if (!(err instanceof CliError)) throw err;
          ctx.err(`error: ${err.message}`);
          failed++;
        }
      }
      if (failed > 0) return 1;
    }
    return 0;
  },
};
