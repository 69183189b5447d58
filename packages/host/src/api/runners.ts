/**
 * `POST /v1/runners` (admin key): publishes a runner version, which becomes current at once; the
 * next boot of every agent mounts it (a run whose snapshot names another runner records
 * `runner.swapped`). The body is multipart/form-data with a `bundle` file and an optional `node`
 * file (default: the host's own Node binary), read with a size cap into a folder only the host
 * reads. Whether they make a working runner is checked by building the layer, which starts the
 * runner in a sandbox; a failure answers runner_invalid and stores nothing.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AppError,
  bodyTooLarge,
  ErrorResponse,
  MAX_RUNNER_BUNDLE_BYTES,
  MAX_RUNNER_NODE_BYTES,
  Runner,
  RunnerPublish,
} from "@paddock/protocol";
import type { Context } from "hono";
import type { RunnerRegistry } from "../images/runner-registry.ts";
import { type DefineRoute, json } from "./http.ts";

/**
 * Adds `POST /v1/runners` and its OpenAPI entry to the API.
 * @example registerRunnerRoutes(route, deps.runners);
 */
export function registerRunnerRoutes(route: DefineRoute, runners: RunnerRegistry): void {
  route(
    {
      method: "post",
      path: "/v1/runners",
      summary: "Publish a runner version; it becomes current (admin)",
      description:
        "multipart/form-data: 'bundle' (one ES module file) and optionally 'node' (a Node binary; default the " +
        "host's own). The runner is started in a sandbox before it is stored, which also builds its compile cache.",
      auth: "admin",
      // Read by the handler: the files are streamed to disk with a cap, never held as form fields.
      request: { body: { content: { "multipart/form-data": { schema: RunnerPublish } }, required: true } },
      responses: {
        201: json(Runner, "Published; now the current runner"),
        400: json(ErrorResponse, "A part is missing, empty or unknown"),
        413: json(ErrorResponse, "The files are larger than this host accepts"),
        415: json(ErrorResponse, "The body is not multipart/form-data"),
        422: json(ErrorResponse, "The bundle and Node do not start as a runner (runner_invalid)"),
      },
    },
    async (c) => {
      const dir = await mkdtemp(join(tmpdir(), "paddock-runner-upload-"));
      try {
        const upload = await readRunnerUpload(c, dir);
        const published = await runners.publish({
          bundlePath: upload.bundlePath,
          nodePath: upload.nodePath ?? process.execPath,
        });
        const row = (await runners.list()).find((r) => r.digest === published.digest);
        if (!row) throw new Error(`runner ${published.digest} is missing after it was published`);
        return c.json(row, 201);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
}

interface RunnerUpload {
  bundlePath: string;
  /** The uploaded Node binary, or null to use the host's own. */
  nodePath: string | null;
}

/** Form overhead (boundaries, part headers) allowed beyond the files themselves. */
const FORM_SLACK = 64 * 1024;
const PARTS = new Set(["bundle", "node"]);

/** Reads the request's runner files into `dir` (a folder only the host can read). */
async function readRunnerUpload(c: Context, dir: string): Promise<RunnerUpload> {
  const type = c.req.header("content-type") ?? "";
  if (!/^multipart\/form-data\s*;/i.test(type)) {
    throw new AppError(
      "unsupported_media_type",
      "Send the runner as multipart/form-data: a 'bundle' file and, optionally, a 'node' file.",
    );
  }
  const max = MAX_RUNNER_BUNDLE_BYTES + MAX_RUNNER_NODE_BYTES + FORM_SLACK;
  if (Number(c.req.header("content-length") ?? "0") > max) throw bodyTooLarge(max);
  let size = 0;
  let overflow = false;
  const capped = c.req.raw.body?.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        size += chunk.byteLength;
        if (size > max) {
          overflow = true;
          controller.error(new Error("too large"));
        } else controller.enqueue(chunk);
      },
    }),
  );
  let form: FormData;
  try {
    form = await new Response(capped ?? null, { headers: { "content-type": type } }).formData();
  } catch {
    if (overflow) throw bodyTooLarge(max);
    throw new AppError("validation_failed", "The request body is not a valid multipart form.", [
      { path: "", message: "not a multipart form" },
    ]);
  }

  const problems: { path: string; message: string }[] = [];
  for (const key of new Set(form.keys())) {
    if (!PARTS.has(key)) problems.push({ path: key, message: "unknown part; send 'bundle' and optionally 'node'" });
    else if (form.getAll(key).length > 1) problems.push({ path: key, message: "sent more than once" });
  }
  const bundle = form.get("bundle");
  const node = form.get("node");
  if (!(bundle instanceof File)) problems.push({ path: "bundle", message: "a file is required" });
  else if (bundle.size === 0) problems.push({ path: "bundle", message: "the file is empty" });
  else if (bundle.size > MAX_RUNNER_BUNDLE_BYTES)
    problems.push({ path: "bundle", message: `at most ${MAX_RUNNER_BUNDLE_BYTES} bytes` });
  if (node !== null && !(node instanceof File)) problems.push({ path: "node", message: "must be a file" });
  else if (node instanceof File && node.size === 0) problems.push({ path: "node", message: "the file is empty" });
  else if (node instanceof File && node.size > MAX_RUNNER_NODE_BYTES)
    problems.push({ path: "node", message: `at most ${MAX_RUNNER_NODE_BYTES} bytes` });
  const first = problems[0];
  if (first || !(bundle instanceof File)) {
    throw new AppError("validation_failed", `Invalid runner: ${first?.path}: ${first?.message}.`, problems);
  }

  const bundlePath = join(dir, "runner.mjs");
  await writeFile(bundlePath, Buffer.from(await bundle.arrayBuffer()), { mode: 0o600 });
  let nodePath: string | null = null;
  if (node instanceof File) {
    nodePath = join(dir, "node");
    await writeFile(nodePath, Buffer.from(await node.arrayBuffer()), { mode: 0o700 });
  }
  return { bundlePath, nodePath };
}
