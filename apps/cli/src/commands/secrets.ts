/**
 * `paddock secrets set|list|delete`: the values connections attach on the host side.
 *
 * Threat model: a value on the command line lands in shell history and in every process listing,
 * so `set` takes it only from stdin (a pipe, a redirected file, or typed at the terminal with echo
 * off). Nothing this command prints contains the value, and the host never sends one back.
 */
import { StringDecoder } from "node:string_decoder";
import { MAX_SECRET_BYTES, SecretName } from "@paddock/protocol";
import { CliError, CONNECTION_HELP, parseCommand, UsageError } from "../args.ts";
import { type Command, type CommandGroup, connect } from "../context.ts";
import { formatTable } from "../format.ts";

const PIPE_HINT = 'pipe it in, such as: printf %s "$TOKEN" | paddock secrets set NAME';

function checkName(name: string, command: string): string {
  if (!SecretName.safeParse(name).success) {
    throw new UsageError(
      `'${name}' is not a secret name (letters, digits, '_', '.' and '-', at most 64, starting with a letter or digit)`,
      command,
    );
  }
  return name;
}

/**
 * The value in bytes read from stdin: UTF-8 text kept byte for byte, except exactly one final line
 * end (`\n` or `\r\n`), which `echo` and editors add. Refuses an empty or oversized value.
 */
export function valueFromBytes(bytes: Buffer): string {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new CliError("the value is not UTF-8 text; encode a binary value first (base64)");
  }
  const value = text.endsWith("\r\n") ? text.slice(0, -2) : text.endsWith("\n") ? text.slice(0, -1) : text;
  if (value === "") throw new CliError(`the value is empty; ${PIPE_HINT}`);
  if (Buffer.byteLength(value) > MAX_SECRET_BYTES) throw new CliError(`the value is over ${MAX_SECRET_BYTES} bytes`);
  return value;
}

async function readPiped(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > MAX_SECRET_BYTES + 2) throw new CliError(`the value is over ${MAX_SECRET_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Reads one line typed at the terminal without echoing it; Ctrl-C cancels. */
async function readHidden(prompt: string): Promise<Buffer> {
  const input = process.stdin;
  const decoder = new StringDecoder("utf8");
  process.stderr.write(prompt);
  input.setRawMode(true);
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      let typed = "";
      const finish = (settle: () => void) => {
        input.off("data", onData);
        settle();
      };
      const onData = (chunk: Buffer) => {
        for (const ch of decoder.write(chunk)) {
          if (ch === "\r" || ch === "\n" || ch === "\u0004") return finish(() => resolve(Buffer.from(typed)));
          if (ch === "\u0003") return finish(() => reject(new CliError("canceled")));
          if (ch === "\u007f" || ch === "\b") typed = [...typed].slice(0, -1).join("");
          else typed += ch;
        }
      };
      input.on("data", onData);
      input.resume();
    });
  } finally {
    input.setRawMode(false);
    input.pause();
    process.stderr.write("\n");
  }
}

async function readValue(name: string): Promise<string> {
  if (!process.stdin.isTTY) return valueFromBytes(await readPiped());
  return valueFromBytes(await readHidden(`value of secret ${name} (input hidden): `));
}

const set: Command = {
  name: "set",
  summary: "set a secret's value, read from stdin",
  usage: `Usage: printf %s "$VALUE" | paddock secrets set NAME [--json]
       paddock secrets set NAME < FILE

Sets the secret NAME to the value read from stdin; if it exists, the value is replaced and its
version goes up. The value is never taken from the command line, where shell history and process
listings would keep it. One final line end is dropped; at a terminal, the value is typed with echo
off. No command or API answer shows the value again.

Options:
  --json            print the secret's metadata as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "secrets set",
      options: { json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "secrets set");
    const client = await connect(values, ctx);
    const { secret, created } = await client.setSecret(name, await readValue(name));
    if (values.json) ctx.out(JSON.stringify(secret, null, 2));
    else ctx.out(`${created ? "created" : "updated"} secret ${secret.name} (version ${secret.version})`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list secrets (names, never values)",
  usage: `Usage: paddock secrets list [--json]

Options:
  --json            print the secrets' metadata as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "secrets list", options: { json: { type: "boolean" } } });
    const secrets = await (await connect(values, ctx)).listSecrets();
    if (values.json) ctx.out(JSON.stringify(secrets, null, 2));
    else if (secrets.length === 0) ctx.err("no secrets");
    else {
      ctx.out(
        formatTable(
          ["NAME", "VERSION", "UPDATED"],
          secrets.map((s) => [s.name, String(s.version), s.updated_at]),
        ),
      );
    }
    return 0;
  },
};

const remove: Command = {
  name: "delete",
  summary: "delete a secret no connection uses",
  usage: `Usage: paddock secrets delete NAME

Deletes the secret. It is refused (secret_in_use) while a connection attaches it.

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "secrets delete",
      options: {},
      positionals: { min: 1, max: 1 },
    });
    const name = checkName(positionals[0] ?? "", "secrets delete");
    await (await connect(values, ctx)).deleteSecret(name);
    ctx.out(`deleted secret ${name}`);
    return 0;
  },
};

export const secrets: CommandGroup = {
  name: "secrets",
  summary: "secrets connections attach (values never shown)",
  commands: [set, list, remove],
};
