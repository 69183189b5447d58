/** `paddock notifications create|list|delete|rotate|deliveries|resend`: signed outbound notifications. */
import { NOTIFICATION_HEADERS, type NotificationAttempt, NotificationEventType } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable, printable } from "../format.ts";

const SIGNING_HELP = `Each delivery is a POST of JSON {id, type, time, tenant_id, data} with
${NOTIFICATION_HEADERS.timestamp} (unix seconds), ${NOTIFICATION_HEADERS.delivery} (the delivery id, the same at
every attempt: deduplicate on it), ${NOTIFICATION_HEADERS.event} (the type) and ${NOTIFICATION_HEADERS.signature}:
sha256=HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>") in hex; during a rotation's overlap,
two of them, comma-separated, the new secret's first. Answer 2xx to acknowledge; anything else
(a redirect included: none is followed) is retried with backoff for a day; 410 Gone disables
the subscription.`;

const create: Command = {
  name: "create",
  summary: "subscribe an HTTPS endpoint to event types",
  usage: `Usage: paddock notifications create URL --events TYPE[,TYPE...] [--description TEXT]
                                   [--credits-below N] [--internal] [--tenant T] [--json]

Prints the subscription and its signing secret, shown only this once.

Options:
  --events LIST      ${NotificationEventType.options.join(", ")}
                     (run.finished: every way a run ends; may be given more than once)
  --description TEXT a note for people
  --credits-below N  with credits.low: sent when billing takes the tenant's balance below N credits
  --internal         (admin key) the endpoint may be on a private or loopback address, over http too
  --tenant T         (admin key) subscribe for this tenant (id or name)
  --json             print the subscription as JSON

${SIGNING_HELP}

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "notifications create",
      options: {
        events: { type: "string", multiple: true },
        description: { type: "string" },
        "credits-below": { type: "string" },
        internal: { type: "boolean" },
        tenant: { type: "string" },
        json: { type: "boolean" },
      },
      positionals: { min: 1, max: 1 },
    });
    const events = (values.events ?? []).flatMap((list) => list.split(",").map((e) => e.trim()));
    if (events.length === 0) throw new UsageError("name the event types with --events", "notifications create");
    for (const e of events) {
      if (!NotificationEventType.safeParse(e).success)
        throw new UsageError(`unknown event type '${e}'`, "notifications create");
    }
    const creditsBelow = parseNumber(values["credits-below"], "credits-below", true);
    const client = await connect(values, ctx);
    const sub = await client.createNotification({
      url: positionals[0] ?? "",
      events: [...new Set(events)] as NotificationEventType[],
      ...(values.description !== undefined ? { description: values.description } : {}),
      ...(creditsBelow !== undefined ? { credits_below: creditsBelow } : {}),
      ...(values.internal ? { internal: true } : {}),
      ...(values.tenant !== undefined ? { tenant: values.tenant } : {}),
    });
    if (values.json) ctx.out(JSON.stringify(sub, null, 2));
    else {
      ctx.out(`created subscription ${sub.id} (${sub.events.join(", ")})`);
      ctx.out(`  url:    ${printable(sub.url)}`);
      ctx.out(`  secret: ${sub.secret} (shown only now)`);
    }
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list notification subscriptions",
  usage: `Usage: paddock notifications list [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "notifications list", options: { json: { type: "boolean" } } });
    const subs = await (await connect(values, ctx)).listNotifications();
    if (values.json) ctx.out(JSON.stringify(subs, null, 2));
    else if (subs.length === 0) ctx.err("no notification subscriptions");
    else
      ctx.out(
        formatTable(
          ["ID", "URL", "EVENTS", "STATE", "INTERNAL"],
          subs.map((s) => [
            s.id,
            printable(s.url),
            s.events.join(","),
            s.status === "active" ? "active" : `disabled (${s.disabled_reason ?? ""})`,
            s.internal ? "yes" : "no",
          ]),
        ),
      );
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete a subscription and its deliveries",
  usage: `Usage: paddock notifications delete ID\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "notifications delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const gone = await (await connect(values, ctx)).deleteNotification(positionals[0] ?? "");
    ctx.out(`deleted subscription ${gone.id}`);
    return 0;
  },
};

const rotate: Command = {
  name: "rotate",
  summary: "a new signing secret, the old one signing beside it for a while",
  usage: `Usage: paddock notifications rotate ID [--overlap SECONDS] [--json]

Prints the new secret, shown only this once. For --overlap seconds (default 86400, at most a
week; 0 for none) deliveries carry the old secret's signature too, so the endpoint can switch.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "notifications rotate",
      options: { overlap: { type: "string" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const overlap = parseNumber(values.overlap, "overlap");
    const sub = await (await connect(values, ctx)).rotateNotification(positionals[0] ?? "", overlap);
    if (values.json) ctx.out(JSON.stringify(sub, null, 2));
    else {
      ctx.out(`rotated the secret of ${sub.id}`);
      ctx.out(`  secret: ${sub.secret} (shown only now)`);
      if (sub.previous_secret_until) ctx.out(`  the old secret also signs until ${sub.previous_secret_until}`);
    }
    return 0;
  },
};

/** An attempt in a few words: its status or why it failed, and how long it took. */
function attemptSummary(a: NotificationAttempt): string {
  const took = a.latency_ms === null ? "" : ` in ${a.latency_ms} ms`;
  return a.error === null ? `${a.status}${took}` : `${a.error}${took}`;
}

const deliveries: Command = {
  name: "deliveries",
  summary: "a subscription's deliveries and every attempt",
  usage: `Usage: paddock notifications deliveries ID [--limit N] [--attempts] [--json]

Newest first (default 50). --attempts lists each attempt: when, the endpoint's status or why
it failed, how long it took and which node sent it.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "notifications deliveries",
      options: { limit: { type: "string" }, attempts: { type: "boolean" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const limit = parseNumber(values.limit, "limit") ?? 50;
    const list = await (await connect(values, ctx)).listNotificationDeliveries(positionals[0] ?? "", limit);
    if (values.json) ctx.out(JSON.stringify(list, null, 2));
    else if (list.length === 0) ctx.err("no deliveries");
    else if (values.attempts)
      ctx.out(
        formatTable(
          ["DELIVERY", "N", "AT", "STATUS", "MS", "NODE", "ERROR"],
          list.flatMap((d) =>
            d.attempts.map((a) => [
              d.id,
              String(a.n),
              a.at,
              a.status === null ? "-" : String(a.status),
              a.latency_ms === null ? "-" : String(a.latency_ms),
              a.node,
              printable(a.error ?? ""),
            ]),
          ),
        ),
      );
    else
      ctx.out(
        formatTable(
          ["ID", "TYPE", "STATUS", "TRIES", "LAST", "CREATED"],
          list.map((d) => {
            const last = d.attempts[d.attempts.length - 1];
            const state = d.status === "pending" && d.next_at ? `pending (next ${d.next_at})` : d.status;
            return [
              d.id,
              d.type,
              state,
              String(d.attempts.length),
              last ? printable(attemptSummary(last)) : "-",
              d.created_at,
            ];
          }),
        ),
      );
    return 0;
  },
};

const resend: Command = {
  name: "resend",
  summary: "send a delivery again now (same id and payload)",
  usage: `Usage: paddock notifications resend ID DELIVERY\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "notifications resend",
      options: {},
      positionals: { min: 2, max: 2 },
    });
    const d = await (await connect(values, ctx)).resendNotificationDelivery(positionals[0] ?? "", positionals[1] ?? "");
    ctx.out(`delivery ${d.id} is due now (${d.attempts.length} attempt(s) so far)`);
    return 0;
  },
};

export const notifications: CommandGroup = {
  name: "notifications",
  summary: "signed notifications of run events to your endpoints",
  commands: [create, list, remove, rotate, deliveries, resend],
};
