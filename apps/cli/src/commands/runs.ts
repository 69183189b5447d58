/** `paddock run`, `paddock runs list|show`, `paddock logs`, `paddock cancel`: runs and their events. */
import { readFile } from "node:fs/promises";
import { isEvent, QueryTime, type Run, type RunEventRead, RunStatus, RunTrigger } from "@paddock/protocol";
import {
  CliError,
  CONNECTION_HELP,
  parseCommand,
  parseEndUser,
  parseJsonFlag,
  parseNumber,
  UsageError,
} from "../args.ts";
import type { Client } from "../client.ts";
import { type Command, type CommandGroup, type Context, connect } from "../context.ts";
import { compactJson, formatDuration, formatTable, printable, Timeline } from "../format.ts";

/** The final line of a followed run: "run run_x succeeded (completed, exit 0) in 2.345s". */
export function formatOutcome(run: Run): string {
  const details: string[] = [];
  if (run.reason && run.reason !== "completed" && run.reason !== run.status) details.push(run.reason);
  if (run.exit_code !== null) details.push(`exit ${run.exit_code}`);
  const took = formatDuration(run.started_at ?? run.created_at, run.finished_at);
  return `run ${run.id} ${run.status}${details.length ? ` (${details.join(", ")})` : ""}${took ? ` in ${took}` : ""}`;
}

/** Prints a note and exits 130 on Ctrl-C while following: the run itself goes on. */
function onInterrupt(ctx: Context, runId: string): () => void {
  const handler = () => {
    ctx.err(`\nstopped following; run ${runId} goes on (stop it with: paddock cancel ${runId})`);
    process.exit(130);
  };
  process.on("SIGINT", handler);
  return () => process.off("SIGINT", handler);
}

/** Streams a run's events to `render` until the run ends; returns the run's final record. */
async function follow(client: Client, ctx: Context, runId: string, render: (e: RunEventRead) => void): Promise<Run> {
  const stop = onInterrupt(ctx, runId);
  try {
    for await (const event of client.followEvents(runId)) render(event);
    return await client.getRun(runId);
  } finally {
    stop();
  }
}

async function readInput(values: { input?: string | undefined; "input-file"?: string | undefined }, command: string) {
  if (values.input !== undefined && values["input-file"] !== undefined) {
    throw new UsageError("give either --input or --input-file, not both", command);
  }
  if (values.input !== undefined) return parseJsonFlag(values.input, "input");
  const file = values["input-file"];
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = file === "-" ? await readStdin() : await readFile(file, "utf8");
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CliError(`${file} is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** The options of a command that starts a run: its input, and following it. */
const START_OPTIONS = {
  input: { type: "string" },
  "input-file": { type: "string" },
  follow: { type: "boolean", short: "f" },
  absolute: { type: "boolean" },
} as const;

/**
 * Prints a run just started: its id, or with `follow`, `header` and then its timeline until it
 * ends. The exit status: 0, or with `follow` 0 only if the run succeeded.
 */
async function startedRun(
  client: Client,
  ctx: Context,
  runId: string,
  header: string,
  values: { follow?: boolean | undefined; absolute?: boolean | undefined },
): Promise<number> {
  if (!values.follow) {
    ctx.out(runId);
    return 0;
  }
  ctx.out(header);
  const timeline = new Timeline({ absolute: values.absolute ?? false });
  const final = await follow(client, ctx, runId, (e) => ctx.out(timeline.line(e)));
  ctx.out(formatOutcome(final));
  return final.status === "succeeded" ? 0 : 1;
}

export const run: Command = {
  name: "run",
  summary: "start a run of an agent (and follow it)",
  usage: `Usage: paddock run AGENT [--input JSON | --input-file FILE] [--end-user ID] [--follow [--absolute]]

Starts a run of AGENT (its id or name) and prints the run's id. The input is readable inside the
sandbox at /inputs/input.json.

Options:
  --input JSON        the run's input, as JSON
  --input-file FILE   read the input from a JSON file ('-' for stdin)
  --end-user ID       run on behalf of this end user: connections with OAuth auth attach their
                      account (see paddock accounts)
  --follow, -f        stream the run's events as a timeline until it ends; exit 0 only if it
                      succeeded
  --absolute          with --follow: print event times as ISO timestamps

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "run",
      options: { ...START_OPTIONS, "end-user": { type: "string" } },
      positionals: { min: 1, max: 1 },
    });
    const input = await readInput(values, "run");
    const endUser = parseEndUser(values["end-user"], "run");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const created = await client.createRun(agent.id, input, endUser);
    return startedRun(client, ctx, created.id, `run ${created.id} (agent ${agent.name})`, values);
  },
};

const list: Command = {
  name: "list",
  summary: "list runs",
  usage: `Usage: paddock runs list [--agent AGENT] [--status STATUS] [--trigger TRIGGER] [--parent RUN]
                        [--root RUN] [--after TIME] [--before TIME] [--id PREFIX] [--limit N] [--json]

Lists runs, newest first; every filter given applies.

Options:
  --agent AGENT     only runs of this agent (id or name)
  --status STATUS   only runs in this state (${RunStatus.options.join(", ")})
  --trigger TRIGGER only runs started this way (${RunTrigger.options.join(", ")})
  --parent RUN      only the runs RUN started
  --root RUN        only the runs of RUN's tree (not RUN itself)
  --after TIME      only runs created at or after TIME (ISO 8601 with a zone, e.g. 2026-03-01T09:00:00Z)
  --before TIME     only runs created before TIME
  --id PREFIX       only runs whose id starts with PREFIX (the run_ may be left out)
  --limit N         at most N runs (default 50)
  --json            print the runs as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "runs list",
      options: {
        agent: { type: "string" },
        status: { type: "string" },
        trigger: { type: "string" },
        parent: { type: "string" },
        root: { type: "string" },
        after: { type: "string" },
        before: { type: "string" },
        id: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
      },
    });
    if (values.status !== undefined && !RunStatus.safeParse(values.status).success) {
      throw new UsageError(`--status must be one of ${RunStatus.options.join(", ")}`, "runs list");
    }
    if (values.trigger !== undefined && !RunTrigger.safeParse(values.trigger).success) {
      throw new UsageError(`--trigger must be one of ${RunTrigger.options.join(", ")}`, "runs list");
    }
    for (const flag of ["after", "before"] as const) {
      if (values[flag] !== undefined && !QueryTime.safeParse(values[flag]).success) {
        throw new UsageError(`--${flag} must be an ISO 8601 time with a zone, e.g. 2026-03-01T09:00:00Z`, "runs list");
      }
    }
    const limit = parseNumber(values.limit, "limit") ?? 50;
    const client = await connect(values, ctx);
    const agent = values.agent ? await client.resolveAgent(values.agent) : null;
    const runs = await client.listRuns(
      {
        agent_id: agent?.id,
        status: values.status,
        trigger: values.trigger,
        parent_run_id: values.parent,
        root_run_id: values.root,
        created_after: values.after,
        created_before: values.before,
        id_prefix: values.id,
      },
      limit,
    );
    if (values.json) {
      ctx.out(JSON.stringify(runs, null, 2));
      return 0;
    }
    if (runs.length === 0) {
      ctx.err("no runs");
      return 0;
    }
    const names = new Map((agent ? [agent] : await client.listAgents().catch(() => [])).map((a) => [a.id, a.name]));
    ctx.out(
      formatTable(
        ["ID", "AGENT", "STATUS", "EXIT", "TRIGGER", "CREATED", "DURATION"],
        runs.map((r) => [
          r.id,
          names.get(r.agent_id) ?? r.agent_id,
          r.status,
          r.exit_code === null ? "" : String(r.exit_code),
          r.trigger,
          r.created_at,
          formatDuration(r.started_at, r.finished_at),
        ]),
      ),
    );
    return 0;
  },
};

const replay: Command = {
  name: "replay",
  summary: "run a run again: same agent version, same or edited input",
  usage: `Usage: paddock runs replay RUN [--input JSON | --input-file FILE] [--follow [--absolute]]

Starts a new run of the agent version and environment RUN ran with, with RUN's input, or with the
input given instead, and prints the new run's id. The new run records that it replays RUN.

Options:
  --input JSON        the new run's input, as JSON, instead of RUN's
  --input-file FILE   read that input from a JSON file ('-' for stdin)
  --follow, -f        stream the new run's events as a timeline until it ends; exit 0 only if it
                      succeeded
  --absolute          with --follow: print event times as ISO timestamps

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "runs replay",
      options: START_OPTIONS,
      positionals: { min: 1, max: 1 },
    });
    const edited = values.input !== undefined || values["input-file"] !== undefined;
    const input = await readInput(values, "runs replay");
    const client = await connect(values, ctx);
    const original = positionals[0] ?? "";
    const created = await client.replayRun(original, edited ? { input } : {});
    return startedRun(client, ctx, created.id, `run ${created.id} (replays ${original})`, values);
  },
};

const show: Command = {
  name: "show",
  summary: "show one run",
  usage: `Usage: paddock runs show RUN [--json]

Options:
  --json            print the run as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "runs show",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const r = await client.getRun(positionals[0] ?? "");
    if (values.json) {
      ctx.out(JSON.stringify(r, null, 2));
      return 0;
    }
    const agent = await client.getAgent(r.agent_id).catch(() => null);
    ctx.out(`run       ${r.id}`);
    ctx.out(`agent     ${agent ? `${agent.name} (${r.agent_id})` : r.agent_id}, version ${r.agent_version}`);
    ctx.out(`status    ${r.status}${r.reason ? ` (${r.reason})` : ""}`);
    ctx.out(`exit      ${r.exit_code ?? ""}`);
    ctx.out(`attempt   ${r.attempt}`);
    ctx.out(`created   ${r.created_at}`);
    ctx.out(`started   ${r.started_at ?? ""}`);
    ctx.out(`finished  ${r.finished_at ?? ""}`);
    ctx.out(`duration  ${formatDuration(r.started_at, r.finished_at)}`);
    ctx.out(`input     ${r.input === null ? "" : compactJson(r.input)}`);
    return 0;
  },
};

export const runs: CommandGroup = {
  name: "runs",
  summary: "list, show and replay runs",
  commands: [list, show, replay],
};

export const logs: Command = {
  name: "logs",
  summary: "print a run's logs and events",
  usage: `Usage: paddock logs RUN [--follow] [--absolute] [--json]

Prints a run's events: the lines its command wrote as they were, every other event as a
timeline line.

Options:
  --follow, -f      keep streaming until the run ends
  --absolute        print event times as ISO timestamps
  --json            print each event as one line of JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "logs",
      options: { follow: { type: "boolean", short: "f" }, absolute: { type: "boolean" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const runId = positionals[0] ?? "";
    const client = await connect(values, ctx);
    const timeline = new Timeline({ absolute: values.absolute ?? false });
    const render = (event: RunEventRead) => {
      if (values.json) {
        ctx.out(JSON.stringify(event));
        return;
      }
      if (isEvent("log")(event)) {
        timeline.line(event);
        ctx.out(printable(event.data.line));
      } else {
        ctx.out(timeline.line(event));
      }
    };
    if (values.follow) {
      await follow(client, ctx, runId, render);
    } else {
      for (const event of await client.listEvents(runId)) render(event);
    }
    return 0;
  },
};

export const cancel: Command = {
  name: "cancel",
  summary: "cancel a run",
  usage: `Usage: paddock cancel RUN [--wait]

Cancels a queued or running run: a queued run ends at once; a running one has its sandbox killed
and then ends as canceled.

Options:
  --wait            wait until the run has ended and print how it ended

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "cancel",
      options: { wait: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const r = await client.cancelRun(positionals[0] ?? "");
    if (r.status === "canceled") {
      ctx.out(`run ${r.id} canceled`);
      return 0;
    }
    if (!values.wait) {
      ctx.out(`run ${r.id} cancel requested (the run is ${r.status})`);
      return 0;
    }
    for await (const _ of client.followEvents(r.id)) {
      // Only the end matters here.
    }
    ctx.out(formatOutcome(await client.getRun(r.id)));
    return 0;
  },
};
