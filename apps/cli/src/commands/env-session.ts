/** `paddock env edit|exec|freeze|discard|session`: shaping an agent's environment in a session. */
import { DEFAULT_EGRESS_ALLOW, type EnvSession } from "@paddock/protocol";
import WebSocket from "ws";
import { CliError, CONNECTION_HELP, parseCommand, parseNumber, UsageError } from "../args.ts";
import { ApiError, type Client } from "../client.ts";
import { type Command, connect } from "../context.ts";
import { formatSize, formatTable } from "../format.ts";

const SESSION_OPTIONS = {
  allow: { type: "string", multiple: true },
  "disk-mb": { type: "string" },
  "memory-mb": { type: "string" },
} as const;

const SESSION_HELP = `Session options (used when the command opens the session):
  --allow HOST      a host the session may reach through its egress proxy (repeatable; *.example.org
                    for subdomains); replaces the default list: ${DEFAULT_EGRESS_ALLOW.join(", ")}
  --disk-mb N       size of the session's writable layer (default 2048)
  --memory-mb N     memory of each command in the session (default 2048)`;

type SessionValues = { allow?: string[]; "disk-mb"?: string; "memory-mb"?: string };

/** The agent's open session, or a new one opened with the command's session options. */
async function ensureSession(
  client: Client,
  agentId: string,
  values: SessionValues,
  command: string,
  err: (line: string) => void,
): Promise<EnvSession> {
  try {
    const open = await client.getSession(agentId);
    if (values.allow || values["disk-mb"] || values["memory-mb"]) {
      err(`paddock: using the open session ${open.id}; its options stay as they were (discard it to change them)`);
    }
    return open;
  } catch (error) {
    if (!(error instanceof ApiError && error.code === "no_session")) throw error;
  }
  const disk = parseNumber(values["disk-mb"], "--disk-mb");
  const memory = parseNumber(values["memory-mb"], "--memory-mb");
  if ((disk !== undefined && disk < 1) || (memory !== undefined && memory < 1)) {
    throw new UsageError("--disk-mb and --memory-mb take a positive whole number", command);
  }
  const session = await client.openSession(agentId, {
    ...(values.allow ? { allow: values.allow } : {}),
    ...(disk !== undefined ? { disk_mb: disk } : {}),
    ...(memory !== undefined ? { memory_mb: memory } : {}),
  });
  err(
    `paddock: opened session ${session.id} over version ${session.base_version}; egress allowed to ${session.allow.join(", ")}`,
  );
  return session;
}

const edit: Command = {
  name: "edit",
  summary: "open an interactive shell in the agent's environment session",
  usage: `Usage: paddock env edit AGENT [session options]

Opens a root shell on a terminal in the agent's environment session (opening the session if
there is none). Install packages, download data, write scripts: the changes stay in the session
until 'paddock env freeze AGENT' makes them a new environment version, or 'paddock env discard
AGENT' drops them. The network is reachable only through the session's egress proxy.

${SESSION_HELP}

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env edit",
      options: SESSION_OPTIONS,
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    await ensureSession(client, agent.id, values, "env edit", ctx.err);
    const tty = process.stdin.isTTY === true && process.stdout.isTTY === true;
    const size = tty ? { rows: process.stdout.rows, cols: process.stdout.columns } : { rows: 24, cols: 80 };
    const { url, headers } = client.shellSocket(agent.id, { ...size, term: tty ? "xterm-256color" : "dumb" });
    return new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(url, { headers });
      let code = 0;
      const restore = () => {
        if (tty) process.stdin.setRawMode(false);
        process.stdin.pause();
        process.stdin.off("data", onInput);
        process.stdin.off("end", onEnd);
        process.stdout.off("resize", onResize);
      };
      const onInput = (chunk: Buffer) => ws.send(chunk, { binary: true });
      // Piped input: its end is the terminal's end-of-file (Ctrl-D), which ends the shell.
      const onEnd = () => ws.send(Buffer.from([4]), { binary: true });
      const onResize = () =>
        ws.send(JSON.stringify({ type: "resize", rows: process.stdout.rows, cols: process.stdout.columns }));
      ws.on("unexpected-response", (_req, res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => {
          const parsed = (() => {
            try {
              return JSON.parse(body) as { error?: { code?: string; message?: string } };
            } catch {
              return {};
            }
          })();
          reject(
            new ApiError(
              res.statusCode ?? 0,
              parsed.error?.code ?? "internal",
              parsed.error?.message ?? `the host refused the shell (${res.statusCode})`,
            ),
          );
        });
      });
      ws.on("open", () => {
        if (tty) process.stdin.setRawMode(true);
        process.stdin.on("data", onInput);
        process.stdin.on("end", onEnd);
        process.stdin.resume();
        if (tty) process.stdout.on("resize", onResize);
      });
      ws.on("message", (data, isBinary) => {
        const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
        if (isBinary) {
          process.stdout.write(buf);
          return;
        }
        try {
          const msg = JSON.parse(buf.toString("utf8")) as {
            type?: string;
            code?: number | null;
            signal?: string | null;
          };
          if (msg.type === "exit") code = typeof msg.code === "number" ? msg.code : 129;
        } catch {}
      });
      ws.on("close", () => {
        restore();
        resolve(code);
      });
      ws.on("error", (err) => {
        restore();
        reject(new CliError(`the shell connection failed: ${err.message}`));
      });
    });
  },
};

const exec: Command = {
  name: "exec",
  summary: "run one command in the agent's environment session",
  usage: `Usage: paddock env exec AGENT [options] -- CMD [ARGS...]

Runs CMD as root in the agent's environment session (opening the session if there is none),
prints its output and exits with its status. Changes stay in the session until 'paddock env
freeze AGENT'. For a shell pipeline: paddock env exec AGENT -- sh -c 'apt-get update && ...'

Options:
  --timeout S       kill the command after S seconds (default 600)
  --json            print the whole result as JSON

${SESSION_HELP}

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals, rest } = parseCommand(argv, {
      command: "env exec",
      options: { ...SESSION_OPTIONS, timeout: { type: "string" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
      rest: true,
    });
    if (!rest || rest.length === 0) throw new UsageError("give the command after --", "env exec");
    const timeout = parseNumber(values.timeout, "--timeout");
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    await ensureSession(client, agent.id, values, "env exec", ctx.err);
    const res = await client.execInSession(agent.id, {
      argv: rest,
      ...(timeout !== undefined ? { timeout_s: timeout } : {}),
    });
    if (values.json) ctx.out(JSON.stringify(res, null, 2));
    else {
      process.stdout.write(res.stdout);
      process.stderr.write(res.stderr);
      if (res.stdout_truncated || res.stderr_truncated) ctx.err("paddock: output cut at 1 MiB per stream");
    }
    if (res.disk_full) {
      ctx.err(
        "paddock: the session's writable layer is full, so the command may have failed for want of space; remove files, or discard the session and open it again with a larger --disk-mb",
      );
    }
    if (res.timed_out) {
      ctx.err(`paddock: the command ran out of time and was killed`);
      return 124;
    }
    if (res.oom) ctx.err("paddock: the command ran out of memory (--memory-mb when opening the session)");
    return res.exit_code ?? 128 + 9;
  },
};

const freeze: Command = {
  name: "freeze",
  summary: "make the session's changes a new environment version",
  usage: `Usage: paddock env freeze AGENT [--exclude PATH]... [--json]

Turns the changes made in the agent's environment session into an immutable layer and a new
environment version, which the agent's runs boot from then on. The session ends.

Options:
  --exclude PATH    leave this path out of the layer (repeatable); replaces the default list
                    (/tmp, /var/tmp, /run, /var/cache/apt/archives and the platform's folders)
  --json            print the result as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env freeze",
      options: { exclude: { type: "string", multiple: true }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const res = await client.freeze(agent.id, values.exclude ? { exclude: values.exclude } : {});
    if (values.json) {
      ctx.out(JSON.stringify(res, null, 2));
      return 0;
    }
    const c = res.snapshot.changes as { added?: number; modified?: number; removed?: number } | null;
    ctx.out(
      `${agent.name}: version ${res.snapshot.version} is current (layer ${res.layer.replace(/^sha256-/, "").slice(0, 12)}, ${formatSize(res.bytes)}; ${c?.added ?? 0} added, ${c?.modified ?? 0} modified, ${c?.removed ?? 0} removed)`,
    );
    return 0;
  },
};

const discard: Command = {
  name: "discard",
  summary: "end the session and drop its changes",
  usage: `Usage: paddock env discard AGENT

Ends the agent's environment session; nothing it changed is kept.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env discard",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const s = await client.discardSession(agent.id);
    ctx.out(`${agent.name}: session ${s.id} discarded`);
    return 0;
  },
};

const session: Command = {
  name: "session",
  summary: "show the agent's open session and its egress log",
  usage: `Usage: paddock env session AGENT [--json]

Shows the agent's open environment session (disk use, commands run, egress allowed and refused)
and every request its egress proxy saw.

Options:
  --json            print the session and its egress log as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "env session",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const client = await connect(values, ctx);
    const agent = await client.resolveAgent(positionals[0] ?? "");
    const s = await client.getSession(agent.id);
    const egress = await client.sessionEgress(agent.id);
    if (values.json) {
      ctx.out(JSON.stringify({ session: s, egress }, null, 2));
      return 0;
    }
    const disk = s.disk
      ? `${formatSize(s.disk.used_bytes)} of ${formatSize(s.disk.size_bytes)}${s.disk.full ? " (full)" : ""}`
      : "-";
    ctx.out(`session ${s.id} over version ${s.base_version}, ${s.commands} command(s), disk ${disk}`);
    ctx.out(`egress allowed to: ${s.allow.join(", ")}; ${s.egress.allowed} allowed, ${s.egress.refused} refused`);
    if (egress.length > 0) {
      ctx.out(
        formatTable(
          ["TIME", "DECISION", "METHOD", "HOST", "PORT", "STATUS", "REASON"],
          egress.map((e) => [
            e.time,
            e.decision,
            e.method || "-",
            e.host || "-",
            String(e.port),
            e.status === null ? "-" : String(e.status),
            e.reason ?? "",
          ]),
        ),
      );
    }
    return 0;
  },
};

export const sessionCommands: Command[] = [edit, exec, freeze, discard, session];
