/**
 * Moving an agent's environment between hosts: one snapshot version is exported as a .tar.zst
 * (archive/pack-layers.ts: a manifest, the environment layers and, unless left out, the base
 * image), and imported on another host as a new current version of one of its agents.
 *
 * Threat model: an imported archive comes from anyone holding a tenant key and is hostile. It is
 * received into a temp file under the layer store, with a size cap from the host's limits; then
 * unpackSnapshot refuses unsafe entries (absolute paths, "..", devices other than whiteouts, hard
 * links to anything not extracted before them, writes through symlinks), recomputes every tree's
 * digest, and only then, after the manifest has been parsed here and found to name exactly the
 * trees the archive carries, moves complete trees into the stores (write aside, then rename).
 * Symlinks inside a layer are kept as they are: the sandbox resolves them inside its own root,
 * and the host never follows them. An archive cannot choose the runner: a runner this host does
 * not have is replaced by the current one (runs swap it in at boot anyway).
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { Readable, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream } from "node:stream/web";
import { AppError, bodyTooLarge, type Limits } from "@paddock/protocol";
import type { Kysely } from "kysely";
import { z } from "zod";
import { makeTempDir, removeTree } from "../fs/store-fs.ts";
import type { ImageStore } from "../images/image-store.ts";
import type { LayerStore } from "../images/layer-store.ts";
import type { RunnerRegistry } from "../images/runner-registry.ts";
import type { Database } from "../store/schema.ts";
import type { Agents } from "./agents.ts";
import { packSnapshot, type UnpackedContents, unpackSnapshot } from "./pack-layers.ts";
import { type Snapshot, toSnapshot } from "./snapshots.ts";

/** The value of `format` in every manifest this host writes and the only one it reads. */
export const MANIFEST_FORMAT = "paddock.snapshot.v1";
/** overlayfs stacks at most 500 lower layers. */
const MAX_LAYERS = 500;
/** Unpacked content may be this many times the archive cap (zstd packs a root file system 3–5×). */
const CONTENT_PER_ARCHIVE_BYTE = 8;

const Digest = z.string().regex(/^sha256-[0-9a-f]{64}$/, 'a digest "sha256-<64 hex digits>"');

/**
 * The manifest.json of a snapshot archive. Unknown fields are dropped; the rest is kept in the new
 * version's `changes` and printed by the CLI, so every string is held to a plain shape.
 */
export const SnapshotManifest = z.object({
  format: z.literal(MANIFEST_FORMAT),
  agent: z.object({
    id: z.string().regex(/^[a-z]{3}_[0-9a-z]{1,60}$/, "an agent id"),
    name: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/, "an agent name"),
  }),
  version: z.number().int().min(1),
  reason: z.string().regex(/^[a-z_]{1,32}$/, "a reason such as freeze"),
  created_at: z.iso.datetime(),
  base: Digest,
  layers: z
    .array(Digest)
    .max(MAX_LAYERS)
    .refine((l) => new Set(l).size === l.length, "no layer twice"),
  runner: z.union([Digest, z.literal("")]),
  env_bytes: z.number().int().min(0),
});
export type SnapshotManifest = z.infer<typeof SnapshotManifest>;

export interface ArchiveLimits {
  /** Most bytes of archive accepted. */
  maxArchiveBytes: number;
  /** Most bytes of file content an archive may unpack to. */
  maxContentBytes: number;
}

/**
 * The caps of an import on a host with these limits: an archive may be as large as the host's
 * disk cap (`disk_mb`), and unpack to 8 times that.
 * @example archiveLimits({ ...DEFAULT_LIMITS, disk_mb: 8192 }).maxArchiveBytes // 8 GiB
 */
export function archiveLimits(maxLimits: Limits): ArchiveLimits {
  const maxArchiveBytes = maxLimits.disk_mb * 1024 * 1024;
  return { maxArchiveBytes, maxContentBytes: maxArchiveBytes * CONTENT_PER_ARCHIVE_BYTE };
}

export interface SnapshotArchiveDeps {
  db: Kysely<Database>;
  agents: Agents;
  images: ImageStore;
  layers: LayerStore;
  runners: RunnerRegistry;
}

/** An archive packed completely, ready to be sent. */
export interface ExportedArchive {
  manifest: SnapshotManifest;
  fileName: string;
  size: number;
  /** SHA-256 of the archive's bytes, hex. */
  sha256: string;
  /** The archive's bytes, read from a temp file already unlinked; consume or destroy it. */
  body: Readable;
}

/** One snapshot version ready to be written; nothing is read from the stores before `write`. */
export interface PreparedExport {
  manifest: SnapshotManifest;
  /** `<agent>-v<version>.tar.zst` */
  fileName: string;
  /** Writes the archive to `out` and ends it; destroys `out` if anything fails midway. */
  write(out: Writable): Promise<void>;
}

export class SnapshotArchives {
  readonly #deps: SnapshotArchiveDeps;
  readonly #limits: ArchiveLimits;

  constructor(deps: SnapshotArchiveDeps, limits: ArchiveLimits) {
    this.#deps = deps;
    this.#limits = limits;
  }

  get limits(): ArchiveLimits {
    return this.#limits;
  }

  /**
   * Checks that the agent (of this tenant) has `version` and that every tree it names is on this
   * host, and returns its manifest and a writer for its archive.
   * @example const p = await archives.prepareExport(tenant, agentId, 3, { includeBase: true }); await p.write(out);
   */
  async prepareExport(
    tenantId: string,
    agentId: string,
    version: number,
    options: { includeBase: boolean },
  ): Promise<PreparedExport> {
    const { agents, db, layers } = this.#deps;
    const { row } = await agents.get(tenantId, agentId);
    const snapshot = await agents.snapshots.get(db, row.id, version);
    if (!snapshot) {
      throw new AppError(
        "not_found",
        `The agent has no snapshot version ${version}; 'paddock env history' lists its versions.`,
      );
    }
    const digests = JSON.parse(snapshot.layers) as string[];
    // Another node may have made this version: what this one lacks comes from the shared blob store.
    const paths = await agents.layerPaths({ image: snapshot.base, layers: digests });
    for (const digest of digests) {
      if (!(await layers.has(digest))) throw new Error(`layer ${digest} of ${row.id} v${version} is missing`);
    }
    const base = options.includeBase ? { digest: snapshot.base, dir: paths.at(-1) as string } : null;
    const manifest: SnapshotManifest = {
      format: MANIFEST_FORMAT,
      agent: { id: row.id, name: row.name },
      version: snapshot.version,
      reason: snapshot.reason,
      created_at: new Date(snapshot.created_at).toISOString(),
      base: snapshot.base,
      layers: digests,
      runner: snapshot.runner,
      env_bytes: Number(snapshot.env_bytes),
    };
    const trees = digests.map((digest) => ({ digest, dir: layers.path(digest) }));
    return {
      manifest,
      fileName: `${row.name}-v${snapshot.version}.tar.zst`,
      write: async (out) => {
        await packSnapshot(manifest, trees, base, out);
      },
    };
  }

  /**
   * Packs the archive of `version` completely into a temp file beside the layer store, so that a
   * failure is reported before anything is sent, and returns it with its size and SHA-256. The
   * file is unlinked at once; its space is freed when `body` ends or is destroyed.
   * @example const a = await archives.exportArchive(tenant, agentId, 3, { includeBase: true }); a.body.pipe(res);
   */
  async exportArchive(
    tenantId: string,
    agentId: string,
    version: number,
    options: { includeBase: boolean },
  ): Promise<ExportedArchive> {
    const prepared = await this.prepareExport(tenantId, agentId, version, options);
    const work = await makeTempDir(this.#deps.layers.layersDir);
    try {
      const file = join(work, prepared.fileName);
      try {
        await prepared.write(createWriteStream(file, { flags: "wx", mode: 0o600 }));
      } catch (err) {
        // The stores hold what a snapshot names, so a tree that fails its check is the host's fault.
        if (err instanceof AppError && err.code === "validation_failed") {
          throw new Error(`exporting ${agentId} version ${version}: ${err.message}`);
        }
        throw err;
      }
      const hash = createHash("sha256");
      for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
      const handle = await open(file, "r");
      const { size } = await handle.stat();
      return {
        manifest: prepared.manifest,
        fileName: prepared.fileName,
        size,
        sha256: hash.digest("hex"),
        body: handle.createReadStream(),
      };
    } finally {
      await removeTree(work);
    }
  }

  /**
   * Receives an archive (at most `limits.maxArchiveBytes`) into a temp file beside the layer store
   * and imports it as the agent's new current version; the temp file is removed either way.
   */
  async importStream(tenantId: string, agentId: string, body: ReadableStream<Uint8Array>): Promise<Snapshot> {
    await this.#deps.agents.getLive(tenantId, agentId);
    const work = await makeTempDir(this.#deps.layers.layersDir);
    try {
      const file = join(work, `upload-${randomBytes(6).toString("hex")}.tar.zst`);
      await receive(body, file, this.#limits.maxArchiveBytes);
      return await this.importFile(tenantId, agentId, file);
    } finally {
      await removeTree(work);
    }
  }

  /**
   * Imports the archive `file` as the agent's new current version (reason "import"): every
   * digest is checked, missing layers and the base image are stored, and the new version names
   * the archive's base and layers, and its runner if this host has it (else the current one).
   * Throws invalid_archive, installing nothing, when the archive is damaged or unsafe.
   */
  async importFile(tenantId: string, agentId: string, file: string): Promise<Snapshot> {
    const { agents, db, images, layers, runners } = this.#deps;
    const { row } = await agents.getLive(tenantId, agentId);
    const seen: { manifest: SnapshotManifest | null; envBytes: number } = { manifest: null, envBytes: 0 };
    try {
      await unpackSnapshot(
        file,
        { layersDir: layers.layersDir, imagesDir: images.imagesDir },
        {
          maxBytes: this.#limits.maxContentBytes,
          check: async (raw, contents) => {
            seen.manifest = await this.#checkContents(raw, contents);
            seen.envBytes = contents.layers.reduce((n, l) => n + l.bytes, 0);
          },
        },
      );
    } catch (err) {
      throw archiveError(err, file, layers.layersDir);
    }
    const imported = seen.manifest;
    if (imported === null) throw new Error("unpackSnapshot returned without checking the manifest");

    await agents.publishEnvironment({ image: imported.base, layers: imported.layers });
    const known = (await runners.list()).some((r) => r.digest === imported.runner);
    const runner = known ? imported.runner : (await runners.current()).digest;
    const { format: _, ...named } = imported;
    const changes = { imported: named, ...(known ? {} : { runner_replaced: imported.runner }) };
    const current = (await agents.get(tenantId, row.id)).row.current_version;
    const created = await db.transaction().execute(async (trx) => {
      const made = await agents.snapshots.append(trx, {
        tenantId,
        agentId: row.id,
        base: imported.base,
        layers: imported.layers,
        runner,
        reason: "import",
        parentVersion: current,
        changes,
        envBytes: seen.envBytes,
      });
      if (!(await agents.snapshots.moveCurrent(trx, row.id, current, made.version))) {
        throw new AppError("conflict", "The agent's environment changed meanwhile; look at its history and retry.");
      }
      return made;
    });
    return toSnapshot(created, created.version);
  }

  /** The manifest, if it names exactly the trees the archive carries (the base may be on this host already). */
  async #checkContents(raw: Record<string, unknown>, contents: UnpackedContents): Promise<SnapshotManifest> {
    const parsed = SnapshotManifest.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
      throw new AppError(
        "invalid_archive",
        `The archive's manifest.json is not a Paddock snapshot manifest (${where}${issue?.message ?? "invalid"}); ` +
          "export the snapshot with 'paddock env export'.",
      );
    }
    const manifest = parsed.data;
    const carried = new Set(contents.layers.map((l) => l.digest));
    const missing = manifest.layers.filter((d) => !carried.has(d));
    const extra = [...carried].filter((d) => !manifest.layers.includes(d));
    if (missing.length > 0 || extra.length > 0) {
      throw new AppError(
        "invalid_archive",
        `The archive's layers do not match its manifest (${[
          ...missing.map((d) => `missing ${d}`),
          ...extra.map((d) => `unnamed ${d}`),
        ].join(", ")}); nothing was imported.`,
      );
    }
    if (contents.base !== null && contents.base.digest !== manifest.base) {
      throw new AppError(
        "invalid_archive",
        `The archive carries base image ${contents.base.digest} but its manifest names ${manifest.base}; nothing was imported.`,
      );
    }
    if (contents.base === null) {
      try {
        await this.#deps.images.resolve(manifest.base);
      } catch (err) {
        if (!(err instanceof AppError) || err.code !== "image_not_ready") throw err;
        throw new AppError(
          "image_not_ready",
          `The archive leaves out its base image ${manifest.base}, and this host does not have it; ` +
            "export the snapshot again with its base image (without --no-base).",
        );
      }
    }
    return manifest;
  }
}

/** Writes `body` to the new file `file`; body_too_large once it passes `max` bytes. */
async function receive(body: ReadableStream<Uint8Array>, file: string, max: number): Promise<void> {
  let size = 0;
  let source: unknown = null;
  async function* capped(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of chunks) {
        size += chunk.byteLength;
        if (size > max) throw tooLarge(max);
        yield chunk;
      }
    } catch (err) {
      source = err;
      throw err;
    }
  }
  try {
    await pipeline(Readable.fromWeb(body), capped, createWriteStream(file, { flags: "wx", mode: 0o600 }));
  } catch (err) {
    if (err instanceof AppError || source === null) throw err;
    throw new AppError(
      "invalid_archive",
      "The upload ended before the whole archive arrived; nothing was imported. Send the file again.",
    );
  }
}

/** body_too_large for an archive over this host's cap. */
export function tooLarge(max: number): AppError {
  return bodyTooLarge(
    max,
    `The snapshot archive is larger than this host accepts (${max} bytes, its disk cap limits.disk_mb).`,
  );
}

/** The archive errors of unpackSnapshot as invalid_archive, without this host's paths. */
function archiveError(err: unknown, file: string, layersDir: string): unknown {
  if (!(err instanceof AppError) || err.code !== "validation_failed") return err;
  const message = err.message
    .replaceAll(`The archive ${file} `, "The archive ")
    .replaceAll(file, "the archive")
    .replaceAll(layersDir, "the layer store");
  const damaged = /truncated\/corrupt/.test(message);
  return new AppError(
    "invalid_archive",
    damaged
      ? `${message.replace("is truncated/corrupt", "is truncated or corrupt")}; nothing was imported. Check that the whole file was sent, or export it again.`
      : `${message} Nothing was imported.`,
  );
}
