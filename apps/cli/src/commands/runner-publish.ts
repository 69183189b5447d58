/** `paddock runner publish`: makes a new runner version current (admin key). */
import { openAsBlob } from "node:fs";
import { stat } from "node:fs/promises";
import { AppError } from "@paddock/protocol";
import { CONNECTION_HELP, parseCommand } from "../args.ts";
import { type Command, connect } from "../context.ts";

/** A readable regular file, else validation_failed naming the part (as the host would answer). */
async function fileOf(path: string, part: "bundle" | "node"): Promise<Blob> {
  const info = await stat(path).catch(() => null);
  const problem = !info ? `no such file: ${path}` : !info.isFile() ? `not a file: ${path}` : null;
  if (problem)
    throw new AppError("validation_failed", `Invalid runner: ${part}: ${problem}.`, [{ path: part, message: problem }]);
  return openAsBlob(path);
}

export const publish: Command = {
  name: "publish",
  summary: "make a new runner version current",
  usage: `Usage: paddock runner publish BUNDLE [--node FILE] [--json]

Publishes BUNDLE (the runner: one ES module file, such as packages/runner/dist/runner.mjs) as a
runner version and makes it current (admin key required). The host starts it in a sandbox first,
which builds its compile cache and refuses anything that does not work as a runner
(runner_invalid); nothing is stored then. Every agent's next run boots the new runner; a run whose
snapshot names an older one records runner.swapped and, once it succeeds, re-snapshots the agent.

Options:
  --node FILE       the Node binary the runner runs on (default: the host's own Node)
  --json            print the published runner as JSON

${CONNECTION_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseCommand(argv, {
      command: "runner publish",
      options: { node: { type: "string" }, json: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const bundle = await fileOf(positionals[0] ?? "", "bundle");
    const node = values.node === undefined ? undefined : await fileOf(values.node, "node");
    const client = await connect(values, ctx);
    const published = await client.publishRunner(node ? { bundle, node } : { bundle });
    if (values.json) ctx.out(JSON.stringify(published, null, 2));
    else ctx.out(`runner ${published.digest} is current`);
    return 0;
  },
};
