/** `paddock schedules create|list|pause|resume|delete` and `paddock webhooks create|list|delete`. */
import { OverlapPolicy } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseEndUser, parseJsonFlag, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";

const create: Command = {
  name: "create",
  summary: "start runs of an agent on a cron schedule",
  usage: `Usage: paddock schedules create AGENT --cron EXPR [--tz ZONE] [--overlap skip|queue_one|allow]
                                [--catch-up SECONDS] [--input JSON] [--end-user ID] [--json]

Options:
  --cron EXPR       five fields (minute hour day month weekday) or six (seconds first),
                    for example '0 9 * * 1-5'
  --tz ZONE         an IANA time zone such as Europe/Paris (default UTC)
  --overlap P       when a slot comes while the previous run is still going: skip it (default),
                    queue_one (one run waits), or allow (runs side by side)
  --catch-up S      after downtime, run the latest missed slot if it is at most S seconds old
  --input JSON      the input of every run
  --end-user ID     every run is on behalf of this end user (their OAuth accounts are attached)
  --json            print the schedule as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "schedules create",
      options: {
        cron: { type: "string" },
        tz: { type: "string" },
        overlap: { type: "string" },
        "catch-up": { type: "string" },
        input: { type: "string" },
        "end-user": { type: "string" },
        json: { type: "boolean" },
      },
      positionals: { min: 1, max: 1 },
    });
    const endUser = parseEndUser(values["end-user"], "schedules create");
    if (!values.cron)
      throw new UsageError("give the schedule with --cron, for example --cron '0 9 * * 1-5'", "schedules create");
    const overlap = values.overlap === undefined ? undefined : OverlapPolicy.safeParse(values.overlap);
    if (overlap && !overlap.success)
      throw new UsageError("--overlap is one of skip, queue_one, allow", "schedules create");
    const catchUp = parseNumber(values["catch-up"], "catch-up");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const schedule = await client.createSchedule({
      agent: agent.id,
      cron: values.cron,
      ...(values.tz ? { timezone: values.tz } : {}),
      ...(overlap?.success ? { overlap: overlap.data } : {}),
      ...(catchUp !== undefined ? { catch_up_s: catchUp } : {}),
      ...(values.input !== undefined ? { input: parseJsonFlag(values.input, "input") } : {}),
      ...(endUser !== undefined ? { end_user: endUser } : {}),
    });
    if (values.json) ctx.out(JSON.stringify(schedule, null, 2));
    else
      ctx.out(`created schedule ${schedule.id} (${schedule.cron} ${schedule.timezone}); next run ${schedule.next_at}`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list schedules",
  usage: `Usage: paddock schedules list [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "schedules list", options: { json: { type: "boolean" } } });
    const schedules = await (await connect(values, ctx)).listSchedules();
    if (values.json) ctx.out(JSON.stringify(schedules, null, 2));
    else if (schedules.length === 0) ctx.err("no schedules");
    else {
      ctx.out(
        formatTable(
          ["ID", "AGENT", "CRON", "ZONE", "OVERLAP", "STATE", "NEXT"],
          schedules.map((s) => [
            s.id,
            s.agent_id,
            s.cron,
            s.timezone,
            s.overlap,
            s.paused ? "paused" : "active",
            s.next_at ?? "-",
          ]),
        ),
      );
    }
    return 0;
  },
};

function byId(name: "pause" | "resume" | "delete", summary: string): Command {
  return {
    name,
    summary,
    usage: `Usage: paddock schedules ${name} ID\n\n${CONNECTION_HELP}`,
    async run(argv, ctx) {
      const { values, positionals } = parseCommand(argv, {
        command: `schedules ${name}`,
        options: {},
        positionals: { min: 1, max: 1 },
      });
      const client = await connect(values, ctx);
      const id = positionals[0] ?? "";
      const s =
        name === "delete" ? await client.deleteSchedule(id) : await client.setSchedulePaused(id, name === "pause");
      ctx.out(`${name === "delete" ? "deleted" : name === "pause" ? "paused" : "resumed"} schedule ${s.id}`);
      return 0;
    },
  };
}

export const schedules: CommandGroup = {
  name: "schedules",
  summary: "cron schedules that start runs",
  commands: [
    create,
    list,
    byId("pause", "pause a schedule"),
    byId("resume", "resume a schedule from its next slot"),
    byId("delete", "delete a schedule"),
  ],
};

const createHook: Command = {
  name: "create",
  summary: "a signed webhook URL that starts runs of an agent",
  usage: `Usage: paddock webhooks create AGENT [--end-user ID] [--json]

Prints the URL path and its signing secret, shown only this once. A delivery is a POST of the
run's input with x-paddock-timestamp (unix seconds), x-paddock-delivery (an id; repeats are
ignored) and x-paddock-signature: sha256=HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>") in hex.

Options:
  --end-user ID     every run is on behalf of this end user (their OAuth accounts are attached)
  --json            print the webhook as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "webhooks create",
      options: { "end-user": { type: "string" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const endUser = parseEndUser(values["end-user"], "webhooks create");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const hook = await client.createWebhook(agent.id, endUser === undefined ? {} : { end_user: endUser });
    if (values.json) ctx.out(JSON.stringify(hook, null, 2));
    else {
      ctx.out(`created webhook ${hook.id}`);
      ctx.out(`  url:    ${client.baseUrl}${hook.path}`);
      ctx.out(`  secret: ${hook.secret} (shown only now)`);
    }
    return 0;
  },
};

const listHooks: Command = {
  name: "list",
  summary: "an agent's webhooks",
  usage: `Usage: paddock webhooks list AGENT [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "webhooks list",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const hooks = await client.listWebhooks(agent.id);
    if (values.json) ctx.out(JSON.stringify(hooks, null, 2));
    else if (hooks.length === 0) ctx.err("no webhooks");
    else
      ctx.out(
        formatTable(
          ["ID", "PATH", "CREATED"],
          hooks.map((h) => [h.id, h.path, h.created_at]),
        ),
      );
    return 0;
  },
};

const deleteHook: Command = {
  name: "delete",
  summary: "delete a webhook",
  usage: `Usage: paddock webhooks delete ID\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "webhooks delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const gone = await (await connect(values, ctx)).deleteWebhook(positionals[0] ?? "");
    ctx.out(`deleted webhook ${gone.id}`);
    return 0;
  },
};

export const webhooks: CommandGroup = {
  name: "webhooks",
  summary: "signed webhook URLs that start runs",
  commands: [createHook, listHooks, deleteHook],
};
