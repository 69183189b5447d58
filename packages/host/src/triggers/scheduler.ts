/**
 * Cron schedules: each due slot of a schedule starts one run of its agent, exactly once, in the
 * schedule's IANA time zone (croner computes the instants, daylight-saving changes included: a
 * slot that falls in a skipped hour runs at the change, one in a repeated hour runs once).
 *
 * A slot is claimed by inserting its (schedule, slot) row in the same transaction as its run, so
 * two ticks, or two hosts, never start it twice. After downtime only the latest missed slot runs,
 * and only when it is at most `catch_up_s` old (a tick that is merely late, by up to a minute, is
 * never a miss). Overlap: `skip` records the slot as skipped while a run of the schedule is queued
 * or running; `queue_one` keeps at most one run waiting, which the engine starts once the running
 * one finished (its serial key); `allow` always starts one.
 */
import {
  type AgentSpec,
  AppError,
  GOING_STATUSES,
  type OverlapPolicy,
  type Schedule,
  ScheduleCreate,
  type ScheduleCreateInput,
} from "@paddock/protocol";
import { Cron } from "croner";
import type { Kysely } from "kysely";
import type { RunRepository } from "../engine/runs.ts";
import type { Metrics } from "../metrics/metrics.ts";
import type { Leader } from "../nodes/leader.ts";
import { newId } from "../store/ids.ts";
import type { Database, SchedulesTable } from "../store/schema.ts";
import { isoTime } from "../store/stored.ts";
import { StoreFailures } from "../store/unavailable.ts";

/** How late a tick may be and still run a slot whose schedule has no catch-up window. */
const ON_TIME_GRACE_MS = 60_000;
/** Slots looked at per schedule per tick (a long downtime of a per-second schedule stays bounded). */
const MAX_SLOTS_PER_TICK = 100_000;
const ACTIVE = GOING_STATUSES;

export interface SchedulerDeps {
  db: Kysely<Database>;
  runs: RunRepository;
  /** The spec a run of the agent freezes now, or null when the agent is gone; agent_archived when it is archived. */
  specOf(tenantId: string, agentId: string): Promise<AgentSpec | null>;
  /** Tells the engine there is work. */
  notify(): void;
  log(line: string): void;
  /** Only the leader's timer ticks (default: this node always leads). */
  leader?: Leader;
  /** Where each slot's outcome is reported. */
  metrics?: Pick<Metrics, "scheduleFired">;
}

export function toSchedule(row: SchedulesTable, now = Date.now()): Schedule {
  return {
    id: row.id,
    agent_id: row.agent_id,
    cron: row.cron,
    timezone: row.timezone,
    overlap: row.overlap as OverlapPolicy,
    catch_up_s: row.catch_up_s,
    paused: row.paused === 1,
    next_at: isoTime(row.next_at),
    next_fire_at: isoTime(nextFireAt(row, now)),
    last_slot_at: isoTime(row.last_slot_at),
    end_user: row.end_user,
    created_at: new Date(Number(row.created_at)).toISOString(),
  };
}

/** The expression's job, or a validation error naming what is wrong with it. */
function cronOf(expression: string, timezone: string): Cron {
  try {
    new Intl.DateTimeFormat("en", { timeZone: timezone });
  } catch {
    throw new AppError(
      "validation_failed",
      `Unknown time zone '${timezone.slice(0, 64)}': use an IANA name such as Europe/Paris.`,
      [{ path: "timezone", code: "invalid_timezone", message: "not an IANA time zone" }],
    );
  }
  try {
    return new Cron(expression, { timezone, paused: true });
  } catch (err) {
    const message = err instanceof Error ? err.message.replace(/^CronPattern: /, "") : "invalid";
    throw new AppError("validation_failed", `Invalid cron expression '${expression.slice(0, 128)}': ${message}.`, [
      { path: "cron", code: "invalid_cron", message },
    ]);
  }
}

const nextAfter = (cron: Cron, after: number): number | null => cron.nextRun(new Date(after))?.getTime() ?? null;

/** How late a slot may be run: the catch-up window, at least the on-time grace. */
const windowOf = (row: Pick<SchedulesTable, "catch_up_s">) => Math.max(ON_TIME_GRACE_MS, row.catch_up_s * 1000);

/**
 * When the schedule starts its next run, as a tick at `now` would see it: null while paused or
 * with no slot left; its next slot when that is ahead; when it is overdue (the tick is late or
 * the hosts were down), now if a slot inside the window is due (the tick runs it), else the
 * first slot after now (the missed ones are recorded and passed over).
 */
export function nextFireAt(row: SchedulesTable, now: number): number | null {
  if (row.paused === 1 || row.next_at === null) return null;
  const next = Number(row.next_at);
  if (next > now) return next;
  const cron = cronOf(row.cron, row.timezone);
  const due = next >= now - windowOf(row) ? next : nextAfter(cron, now - windowOf(row) - 1);
  return due !== null && due <= now ? now : nextAfter(cron, now);
}

export class Scheduler {
  readonly #deps: SchedulerDeps;
  #timer: NodeJS.Timeout | null = null;
  #ticking: Promise<void> | null = null;
  #everyMs = 0;
  #stopped = false;
  readonly #store: StoreFailures;

  constructor(deps: SchedulerDeps) {
    this.#deps = deps;
    this.#store = new StoreFailures(deps.log, "scheduler");
  }

  /**
   * Ticks on the host's clock: at the earliest next slot of any schedule, and at least every
   * `everyMs` (0: never; tests then call tick themselves), so a slot starts its run within
   * milliseconds rather than at the next poll.
   */
  start(everyMs: number): void {
    if (everyMs <= 0) return;
    this.#everyMs = everyMs;
    this.#arm(0);
  }

  /** Runs a tick after `delayMs`, then arms the next one for the earliest slot. */
  #arm(delayMs: number): void {
    if (this.#stopped) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#ticking ??= (this.#deps.leader?.isLeader() ?? Promise.resolve(true))
        .then((leads) => (leads ? this.tick(Date.now()) : undefined))
        .then(() => this.#earliest())
        .then((next) => {
          this.#ticking = null;
          this.#store.succeeded();
          this.#arm(next === null ? this.#everyMs : Math.min(this.#everyMs, Math.max(0, next - Date.now())));
        })
        .catch((err: unknown) => {
          this.#ticking = null;
          this.#store.failed("ticking", err);
          this.#arm(this.#everyMs);
        });
    }, delayMs);
    this.#timer.unref();
  }

  /** A schedule was created or resumed: look again for the earliest slot. */
  #changed(): void {
    if (this.#everyMs > 0 && !this.#ticking) this.#arm(0);
  }

  async #earliest(): Promise<number | null> {
    const row = await this.#deps.db
      .selectFrom("schedules")
      .select((eb) => eb.fn.min("next_at").as("next"))
      .where("paused", "=", 0)
      .executeTakeFirst();
    return row?.next === null || row?.next === undefined ? null : Number(row.next);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#ticking;
  }

  async create(tenantId: string, agentId: string, input: ScheduleCreateInput, now = Date.now()): Promise<Schedule> {
    const body = ScheduleCreate.parse(input);
    const cron = cronOf(body.cron, body.timezone);
    const next = nextAfter(cron, now);
    if (next === null) throw new AppError("validation_failed", "The cron expression has no future slot.");
    const row: SchedulesTable = {
      id: newId("sch", now),
      tenant_id: tenantId,
      agent_id: agentId,
      cron: body.cron,
      timezone: body.timezone,
      overlap: body.overlap,
      catch_up_s: body.catch_up_s,
      input: body.input === undefined ? null : JSON.stringify(body.input),
      paused: 0,
      next_at: next,
      last_slot_at: null,
      end_user: body.end_user ?? null,
      created_at: now,
    };
    await this.#deps.db.insertInto("schedules").values(row).execute();
    this.#changed();
    return toSchedule(row, now);
  }

  async list(tenantId: string): Promise<Schedule[]> {
    const rows = await this.#deps.db
      .selectFrom("schedules")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .orderBy("id")
      .execute();
    return rows.map((row) => toSchedule(row));
  }

  async get(tenantId: string, id: string): Promise<Schedule> {
    return toSchedule(await this.#row(tenantId, id));
  }

  /** Pauses or resumes; a resumed schedule's next slot is the first after now (none missed while paused). */
  async setPaused(tenantId: string, id: string, paused: boolean, now = Date.now()): Promise<Schedule> {
    const row = await this.#row(tenantId, id);
    // An archived agent's schedule stays paused (agent_archived).
    if (!paused) await this.#deps.specOf(row.tenant_id, row.agent_id);
    const next = paused ? row.next_at : nextAfter(cronOf(row.cron, row.timezone), now);
    await this.#deps.db
      .updateTable("schedules")
      .set({ paused: paused ? 1 : 0, next_at: next })
      .where("id", "=", id)
      .execute();
    if (!paused) this.#changed();
    return toSchedule({ ...row, paused: paused ? 1 : 0, next_at: next }, now);
  }

  async delete(tenantId: string, id: string): Promise<Schedule> {
    const row = await this.#row(tenantId, id);
    await this.#deps.db.deleteFrom("schedules").where("id", "=", id).execute();
    return toSchedule(row);
  }

  async #row(tenantId: string, id: string): Promise<SchedulesTable> {
    const row = await this.#deps.db
      .selectFrom("schedules")
      .selectAll()
      .where("id", "=", id)
      .where("tenant_id", "=", tenantId)
      .executeTakeFirst();
    if (!row) throw new AppError("not_found", `No schedule '${id.slice(0, 64)}'.`);
    return row;
  }

  /** Starts the runs of every slot due at `now`; returns the runs it started. */
  async tick(now: number): Promise<string[]> {
    const due = await this.#deps.db
      .selectFrom("schedules")
      .selectAll()
      .where("paused", "=", 0)
      .where("next_at", "<=", now)
      .orderBy("next_at")
      .execute();
    const started: string[] = [];
    for (const schedule of due) {
      try {
        const run = await this.#fire(schedule, now);
        if (run) started.push(run);
      } catch (err) {
        this.#deps.log(`schedule ${schedule.id}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (started.length > 0) this.#deps.notify();
    return started;
  }

  async #fire(schedule: SchedulesTable, now: number): Promise<string | null> {
    const cron = cronOf(schedule.cron, schedule.timezone);
    const window = windowOf(schedule);
    const next = nextAfter(cron, now);
    // The latest slot at or before now, looked for only inside the window: older ones are missed anyway.
    const waited = Number(schedule.next_at);
    let slot = waited >= now - window ? waited : (nextAfter(cron, now - window - 1) ?? now + 1);
    // No slot inside the window: everything due was missed; no walk through the old ones.
    const none = slot > now;
    if (none) slot = waited;
    for (let i = 0; i < (none ? 0 : MAX_SLOTS_PER_TICK); i++) {
      const after = nextAfter(cron, slot);
      if (after === null || after > now) break;
      slot = after;
    }
    // A slot that starts no run is recorded and the schedule moved on, together.
    const settle = async (outcome: "missed" | "skipped") => {
      await this.#deps.db.transaction().execute(async (trx) => {
        await trx
          .insertInto("schedule_slots")
          .values({ schedule_id: schedule.id, slot_at: slot, run_id: null, outcome })
          .onConflict((oc) => oc.doNothing())
          .execute();
        await trx
          .updateTable("schedules")
          .set({ next_at: next, last_slot_at: slot })
          .where("id", "=", schedule.id)
          .where("next_at", "=", schedule.next_at)
          .execute();
      });
      this.#deps.metrics?.scheduleFired(outcome);
    };
    if (slot !== waited)
      this.#deps.log(`schedule ${schedule.id}: slots from ${new Date(waited).toISOString()} were missed`);
    if (now - slot > window) {
      await settle("missed");
      return null;
    }
    const spec = await this.#deps.specOf(schedule.tenant_id, schedule.agent_id).catch((err: unknown) => {
      if (err instanceof AppError && err.code === "agent_archived") return "archived" as const;
      throw err;
    });
    if (spec === null || spec === "archived") {
      await this.#deps.db.updateTable("schedules").set({ paused: 1 }).where("id", "=", schedule.id).execute();
      this.#deps.log(`schedule ${schedule.id}: its agent is ${spec === null ? "gone" : "archived"}; paused`);
      return null;
    }
    const active = await this.#deps.db
      .selectFrom("schedule_slots as s")
      .innerJoin("runs as r", "r.id", "s.run_id")
      .select(["r.status"])
      .where("s.schedule_id", "=", schedule.id)
      .where("r.status", "in", ACTIVE)
      .execute();
    const overlap = schedule.overlap as OverlapPolicy;
    if (
      (overlap === "skip" && active.length > 0) ||
      (overlap === "queue_one" && active.some((r) => r.status === "queued"))
    ) {
      await settle("skipped");
      return null;
    }
    const { run, created } = await this.#deps.runs.create(
      schedule.tenant_id,
      schedule.agent_id,
      spec,
      schedule.input === null ? undefined : JSON.parse(schedule.input),
      {
        trigger: "schedule",
        endUser: schedule.end_user,
        ...(overlap === "allow" ? {} : { serialKey: `schedule:${schedule.id}` }),
        events: [
          {
            type: "schedule.fired",
            data: { schedule_id: schedule.id, slot: new Date(slot).toISOString(), late_ms: Math.max(0, now - slot) },
          },
        ],
        dedupe: async (trx, runId) => {
          // Exactly one of several hosts firing the slot at once inserts it; the others wait for
          // that one's commit and then read its run.
          const inserted = await trx
            .insertInto("schedule_slots")
            .values({ schedule_id: schedule.id, slot_at: slot, run_id: runId, outcome: "run" })
            .onConflict((oc) => oc.columns(["schedule_id", "slot_at"]).doNothing())
            .returning("run_id")
            .executeTakeFirst();
          if (!inserted) {
            const taken = await trx
              .selectFrom("schedule_slots")
              .select("run_id")
              .where("schedule_id", "=", schedule.id)
              .where("slot_at", "=", slot)
              .executeTakeFirstOrThrow();
            if (taken.run_id) return taken.run_id;
            // Settled without a run, with the schedule moved on in the same transaction: a stale read.
            throw new Error(`slot ${new Date(slot).toISOString()} was already settled`);
          }
          await trx
            .updateTable("schedules")
            .set({ next_at: next, last_slot_at: slot })
            .where("id", "=", schedule.id)
            .execute();
          return null;
        },
      },
    );
    if (created) this.#deps.metrics?.scheduleFired("started");
    return created ? run.id : null;
  }
}
