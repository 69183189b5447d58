/**
 * Cron schedules through a real host whose scheduler the test ticks with its own clock: slots at
 * the right instants across daylight-saving changes, catch-up after downtime, overlap policies,
 * pause and resume, and the refusals of bad expressions and time zones. The runs are real.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { hostSkipReason, startTestHost, type TestHost, uniqueName, waitForRun } from "../testing/harness.ts";
import { forEachStore } from "../testing/stores.ts";
import { waitFor } from "../testing/wait.ts";

const MIN = 60_000;
const HOUR = 60 * MIN;

forEachStore((store) =>
  describe(`schedules on ${store.name}`, { skip: e2eSkip(hostSkipReason()) || store.skip }, () => {
    let t: TestHost;
    let quick: string;
    let slow: string;
    before(async () => {
      t = await startTestHost({ schedulerTickMs: 0, ...(await store.hostConfig()) });
      quick = (await t.api("POST", "/v1/agents", { name: uniqueName("tick"), command: ["true"] })).body.id;
      slow = (await t.api("POST", "/v1/agents", { name: uniqueName("slow"), command: ["sleep", "30"] })).body.id;
    });
    after(async () => {
      await t?.close();
    });

    const schedule = async (body: Record<string, unknown>) => {
      const res = await t.api("POST", "/v1/schedules", body);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      return res.body as { id: string; next_at: string };
    };
    /** Ticks from `from` to `to` every `step`; the slots of the runs it started, in order. */
    const drive = async (from: number, to: number, step: number) => {
      const runs: string[] = [];
      for (let now = from; now <= to; now += step) runs.push(...(await t.host.scheduler.tick(now)));
      const slots: string[] = [];
      for (const id of runs) {
        const events = (await t.api("GET", `/v1/runs/${id}/events`)).body.data as {
          type: string;
          data: { slot: string };
        }[];
        slots.push(events.find((e) => e.type === "schedule.fired")?.data.slot ?? "?");
      }
      return { runs, slots };
    };

    it("fires at the right instants across the spring-forward and fall-back changes", async () => {
      // 02:30 New York does not exist on 14 March 2027: that day's run is at the change, 03:00 EDT.
      const spring = await schedule({
        agent: quick,
        cron: "30 2 * * *",
        timezone: "America/New_York",
        catch_up_s: 900,
        overlap: "allow",
      });
      const start = Date.parse("2027-03-12T12:00:00Z");
      assert.deepEqual((await drive(start, start, 1)).runs, [], "a slot hours old is missed, not run");
      const { slots, runs } = await drive(start, Date.parse("2027-03-16T00:00:00Z"), 10 * MIN);
      assert.deepEqual(slots, ["2027-03-13T07:30:00.000Z", "2027-03-14T07:00:00.000Z", "2027-03-15T06:30:00.000Z"]);
      for (const id of runs) assert.equal((await waitForRun(t, id)).status, "succeeded");
      await t.api("DELETE", `/v1/schedules/${spring.id}`);
      // 01:30 happens twice on 7 November 2027: it runs once.
      const fall = await schedule({
        agent: quick,
        cron: "30 1 * * *",
        timezone: "America/New_York",
        catch_up_s: 900,
        overlap: "allow",
      });
      const autumn = await drive(Date.parse("2027-11-05T12:00:00Z"), Date.parse("2027-11-09T00:00:00Z"), 10 * MIN);
      assert.deepEqual(autumn.slots, [
        "2027-11-06T05:30:00.000Z",
        "2027-11-07T05:30:00.000Z",
        "2027-11-08T06:30:00.000Z",
      ]);
      await t.api("DELETE", `/v1/schedules/${fall.id}`);
    });

    it("after downtime runs only the latest missed slot, and only within the catch-up window", async () => {
      const base = Date.parse("2027-06-01T10:00:30Z");
      const within = await schedule({ agent: quick, cron: "0 * * * *", catch_up_s: 7200, overlap: "allow" });
      const without = await schedule({ agent: quick, cron: "0 * * * *", overlap: "allow" });
      await drive(base, base, 1);
      // Down for five and a half hours: slots 11:00 … 15:00 were missed.
      const back = await drive(base + 5 * HOUR + 30 * MIN, base + 5 * HOUR + 30 * MIN, 1);
      assert.deepEqual(back.slots, ["2027-06-01T15:00:00.000Z"], "one catch-up run, for the latest slot");
      const stale = (await t.api("GET", `/v1/schedules/${without.id}`)).body;
      assert.equal(stale.next_at, "2027-06-01T16:00:00.000Z", "the schedule without a window moved on");
      for (const s of [within, without]) await t.api("DELETE", `/v1/schedules/${s.id}`);
    });

    it("skip, queue_one and allow when the previous run is still going", async () => {
      const base = Date.parse("2027-07-01T08:00:10Z");
      const counts: Record<string, number> = {};
      for (const overlap of ["skip", "queue_one", "allow"]) {
        const s = await schedule({ agent: slow, cron: "* * * * *", overlap });
        const runs = await t.host.scheduler.tick(base);
        assert.equal(runs.length, 1);
        // The first slot's run is going before the next slots come.
        const status = async (id: string | undefined) => (await t.api("GET", `/v1/runs/${id}`)).body;
        await waitFor(async () => (await status(runs[0])).status === "running", { what: "the first slot's run" });
        for (let i = 1; i < 3; i++) runs.push(...(await t.host.scheduler.tick(base + i * MIN)));
        counts[overlap] = runs.length;
        if (overlap === "queue_one") {
          // The waiting run starts only once the running one has ended, not beside it.
          assert.equal((await status(runs[1])).status, "queued");
          await t.api("POST", `/v1/runs/${runs[0]}/cancel`);
          const first = await waitForRun(t, runs[0] as string);
          const next = await waitFor(
            async () => {
              const run = await status(runs[1]);
              return run.started_at ? run : undefined;
            },
            { what: "the waiting run to start" },
          );
          assert.ok(
            Date.parse(next.started_at) >= Date.parse(first.finished_at),
            `${next.started_at} ${first.finished_at}`,
          );
        }
        await t.api("POST", `/v1/schedules/${s.id}/pause`);
        for (const id of runs) await t.api("POST", `/v1/runs/${id}/cancel`);
        for (const id of runs) await waitForRun(t, id);
      }
      // skip: one run, later slots skipped; queue_one: one running and one waiting; allow: every slot.
      assert.deepEqual(counts, { skip: 1, queue_one: 2, allow: 3 });
    });

    it("pauses and resumes from the next slot after now", async () => {
      const s = await schedule({ agent: quick, cron: "0 9 * * *", timezone: "Europe/Paris" });
      const paused = await t.api("POST", `/v1/schedules/${s.id}/pause`);
      assert.equal(paused.body.paused, true);
      assert.deepEqual(
        await t.host.scheduler.tick(Date.parse(s.next_at) + 1000),
        [],
        "a paused schedule starts nothing",
      );
      const resumed = await t.api("POST", `/v1/schedules/${s.id}/resume`);
      assert.equal(resumed.body.paused, false);
      assert.ok(Date.parse(resumed.body.next_at) > Date.now());
      const list = await t.api("GET", "/v1/schedules");
      assert.ok(list.body.data.some((x: { id: string }) => x.id === s.id));
      assert.equal((await t.api("DELETE", `/v1/schedules/${s.id}`)).status, 200);
      assert.equal((await t.api("GET", `/v1/schedules/${s.id}`)).body.error.code, "not_found");
    });

    it("refuses bad expressions, time zones and agents with clear errors", async () => {
      const bad = [
        [{ agent: quick, cron: "61 * * * *" }, 400, "invalid_cron"],
        [{ agent: quick, cron: "not cron" }, 400, "invalid_cron"],
        [{ agent: quick, cron: "0 * * * *", timezone: "Mars/Olympus_Mons" }, 400, "invalid_timezone"],
        [{ agent: quick, cron: "0 * * * *", overlap: "sometimes" }, 400, ""],
        [{ agent: "no-such-agent", cron: "0 * * * *" }, 404, ""],
      ] as const;
      for (const [body, status, detail] of bad) {
        const res = await t.api("POST", "/v1/schedules", body);
        assert.equal(res.status, status, JSON.stringify(res.body));
        if (detail) assert.equal(res.body.error.details?.[0]?.code, detail, JSON.stringify(res.body));
      }
    });
  }),
);
