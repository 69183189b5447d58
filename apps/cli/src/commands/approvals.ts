/** `paddock approvals list|show|approve|deny`: calls waiting for a person's decision. */
import { type Approval, ApprovalStatus, MAX_APPROVAL_NOTE } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatRows, formatTable, printable } from "../format.ts";

/** The held request in one line: what it calls and how. */
function called(a: Approval): string {
  const r = a.request;
  const where = r.url ?? `${r.path}${r.query ? `?${r.query}` : ""}`;
  return printable(`${r.kind} ${r.target}: ${r.method} ${where}`);
}

const list: Command = {
  name: "list",
  summary: "approvals waiting for a decision (or, with --status, decided ones)",
  usage: `Usage: paddock approvals list [--status S] [--run RUN_ID] [--limit N] [--json]

Newest first. --status: ${ApprovalStatus.options.join(", ")} (default pending).

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, {
      command: "approvals list",
      options: {
        status: { type: "string" },
        run: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
      },
    });
    const status = values.status ?? "pending";
    if (!ApprovalStatus.safeParse(status).success) throw new UsageError(`unknown status '${status}'`, "approvals list");
    const limit = parseNumber(values.limit, "limit") ?? 50;
    const found = await (await connect(values, ctx)).listApprovals({ status, run_id: values.run }, limit);
    if (values.json) ctx.out(JSON.stringify(found, null, 2));
    else if (found.length === 0) ctx.err(`no ${status} approvals`);
    else
      ctx.out(
        formatTable(
          ["ID", "RUN", "CALL", "BODY", "STATUS", "EXPIRES"],
          found.map((a) => [a.id, a.run_id, called(a), `${a.request.body.size} B`, a.status, a.expires_at]),
        ),
      );
    return 0;
  },
};

const show: Command = {
  name: "show",
  summary: "one approval: the request held, exactly as the host would send it",
  usage: `Usage: paddock approvals show ID [--json]\n\n${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "approvals show",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const a = await (await connect(values, ctx)).getApproval(positionals[0] ?? "");
    if (values.json) {
      ctx.out(JSON.stringify(a, null, 2));
      return 0;
    }
    const r = a.request;
    const rows: string[][] = [
      ["approval", a.id],
      ["status", a.status],
      ["run", `${a.run_id} (agent ${a.agent_id}, attempt ${a.attempt})`],
      ["call", called(a)],
      ["approvers", a.rule.approvers.join(", ")],
      ["expires", a.expires_at],
    ];
    if (r.credits) {
      rows.push([
        "cost",
        `up to ${r.credits.reserve} credits (run spent ${r.credits.run_spent}, approve above ${r.credits.approve_above})`,
      ]);
    }
    if (a.decided_by) {
      const who = a.decided_by.key_name ?? a.decided_by.key_id ?? a.decided_by.via;
      rows.push(["decided", `${a.decided_at} by ${printable(who)} (${a.decided_by.via})`]);
    }
    if (a.note) rows.push(["note", printable(a.note)]);
    if (a.forwarded_at) rows.push(["sent", a.forwarded_at]);
    ctx.out(formatRows(rows));
    ctx.out("");
    for (const [name, value] of Object.entries(r.headers)) ctx.out(`${printable(name)}: ${printable(value)}`);
    const b = r.body;
    ctx.out("");
    ctx.out(
      `body: ${b.size} bytes, sha256 ${b.sha256}${b.binary ? " (binary, base64)" : ""}${b.truncated ? " (its start)" : ""}`,
    );
    if (b.preview) ctx.out(printable(b.preview));
    return 0;
  },
};

function decision(name: "approve" | "deny"): Command {
  return {
    name,
    summary:
      name === "approve"
        ? "approve: the held call is sent, once"
        : "deny: nothing is sent; the agent is shown the note",
    usage: `Usage: paddock approvals ${name} ID [--note TEXT] [--json]

--note: ${name === "deny" ? "why (the agent is shown it, so it can adapt)" : "recorded with the decision"}; at most ${MAX_APPROVAL_NOTE} characters.

${CONNECTION_HELP}`,
    async run(argv, ctx) {
      const { values, positionals } = parseCommand(argv, {
        command: `approvals ${name}`,
        options: { note: { type: "string" }, json: { type: "boolean" } },
        positionals: { min: 1, max: 1 },
      });
      const a = await (await connect(values, ctx)).decideApproval(positionals[0] ?? "", {
        decision: name,
        ...(values.note !== undefined ? { note: values.note } : {}),
      });
      if (values.json) ctx.out(JSON.stringify(a, null, 2));
      else ctx.out(`${a.id} ${a.status}: ${called(a)}`);
      return 0;
    },
  };
}

export const approvals: CommandGroup = {
  name: "approvals",
  summary: "calls waiting for a person's approval: list, show, approve, deny",
  commands: [list, show, decision("approve"), decision("deny")],
};
