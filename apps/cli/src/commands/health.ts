/** `paddock health`: is the host up? (GET /v1/health, no API key needed) */
import { CONNECTION_HELP, parseCommand, parseNumber } from "../args.ts";
import { ConnectionError } from "../client.ts";
import { type Command, connect } from "../context.ts";

export const health: Command = {
  name: "health",
  summary: "check that the host answers",
  usage: `Usage: paddock health [--wait SECONDS]

Asks the host whether it is up and prints its answer; exits 1 if it cannot be reached.

Options:
  --wait SECONDS    keep trying for up to SECONDS while the host is unreachable

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values } = parseCommand(argv, { command: "health", options: { wait: { type: "string" } } });
    const wait = parseNumber(values.wait, "wait", true) ?? 0;
    const client = await connect(values, ctx, false);
    const deadline = Date.now() + wait * 1000;
    for (;;) {
      try {
        const answer = await client.health();
        ctx.out(`${client.baseUrl}: ${JSON.stringify(answer)}`);
        return 0;
      } catch (err) {
        if (!(err instanceof ConnectionError) || Date.now() >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  },
};
