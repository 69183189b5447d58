/**
 * Runs' artifacts: the files an attempt left under /outputs, recorded with the events that announce
 * them, listed per run and opened from the blob store.
 */
import type { Readable } from "node:stream";
import { AppError, type Artifact } from "@paddock/protocol";
import type { Kysely } from "kysely";
import type { BlobCache } from "../blobs/cache.ts";
import type { EventLog, NewEvent } from "../store/event-log.ts";
import type { Fence } from "../store/fence.ts";
import type { ArtifactsTable, Database } from "../store/schema.ts";

/** One collected file, its content already in the blob store. */
export interface ArtifactRow {
  id: string;
  path: string;
  size: number;
  sha256: string;
  content_type: string;
}

export interface ArtifactsDeps {
  db: Kysely<Database>;
  events: EventLog;
  /** Where artifacts' content is read: this node's verified copy of the shared blob store. */
  blobs: BlobCache;
}

function toArtifact(row: ArtifactsTable): Artifact {
  return {
    id: row.id,
    run_id: row.run_id,
    attempt: row.attempt,
    path: row.path,
    size: Number(row.size),
    sha256: row.sha256,
    content_type: row.content_type,
    created_at: new Date(row.created_at).toISOString(),
  };
}

export class Artifacts {
  readonly #deps: ArtifactsDeps;

  constructor(deps: ArtifactsDeps) {
    this.#deps = deps;
  }

  /**
   * Stores an attempt's artifacts and the events describing them in one transaction, then
   * publishes the events; with `fence`, only while that attempt still holds the run.
   */
  async record(
    run: { runId: string; tenantId: string; attempt: number },
    rows: ArtifactRow[],
    events: NewEvent[],
    fence?: Fence,
  ): Promise<void> {
    const { db, events: log } = this.#deps;
    const written = await db.transaction().execute(async (trx) => {
      await log.fence(trx, fence);
      if (rows.length > 0) {
        const created_at = Date.now();
        await trx
          .insertInto("artifacts")
          .values(
            rows.map((r) => ({ ...r, run_id: run.runId, tenant_id: run.tenantId, attempt: run.attempt, created_at })),
          )
          .execute();
      }
      return log.append(trx, run.runId, run.attempt, events);
    });
    log.publish(written);
  }

  /** A run's artifacts, by attempt and path. The caller has checked that the run is the tenant's. */
  async list(runId: string): Promise<Artifact[]> {
    const rows = await this.#deps.db
      .selectFrom("artifacts")
      .selectAll()
      .where("run_id", "=", runId)
      .orderBy("attempt")
      .orderBy("path")
      .execute();
    return rows.map(toArtifact);
  }

  /** One artifact of a run; not_found when the run has none by that id. */
  async get(runId: string, artifactId: string): Promise<Artifact> {
    const row = await this.#deps.db
      .selectFrom("artifacts")
      .selectAll()
      .where("id", "=", artifactId)
      .where("run_id", "=", runId)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No artifact '${artifactId}'.`);
    return toArtifact(row);
  }

  /** The artifact's content, fetched into this node's cache first when it is not there yet. */
  open(artifact: Artifact): Promise<Readable> {
    return this.#deps.blobs.open(artifact.sha256);
  }
}
