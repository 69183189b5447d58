/** `paddock bench SCENARIO --json`: measured figures beside their floors, as one JSON object. */
import { join } from "node:path";
import { parseLocalCommand, parseNumber, UsageError } from "../args.ts";
import { type Command, dataDirOf } from "../context.ts";

const SCENARIOS = ["boot"] as const;

export const bench: Command = {
  name: "bench",
  summary: "run a benchmark scenario and print its figures",
  usage: `Usage: paddock bench SCENARIO [--json] [--runs N] [--data-dir DIR]

Scenarios:
  boot    trigger-to-first-event and trigger-to-finish of a trivial agent over HTTP (N sequential
          runs, then 20 at once), beside floors measured in the same run: bwrap running true, and
          node -e 0 through the full sandbox recipe

Starts its own host on a temporary data folder; uses the base image in DIR/images.

Options:
  --runs N          sequential runs to measure (default 30)
  --json            print one JSON object (the default output is the same JSON, indented)
  --data-dir DIR    where the base image lives (env PADDOCK_DATA_DIR; default ./.paddock)`,
  async run(argv, ctx) {
    const { values, positionals } = parseLocalCommand(argv, {
      command: "bench",
      options: { json: { type: "boolean" }, runs: { type: "string" }, "data-dir": { type: "string" } },
      positionals: { min: 1, max: 1 },
    });
    const scenario = positionals[0];
    if (scenario !== "boot")
      throw new UsageError(`unknown scenario '${scenario}' (one of: ${SCENARIOS.join(", ")})`, "bench");
    const runs = parseNumber(values.runs, "runs") ?? 30;
    const { bootBench } = await import("../../../../bench/boot.ts");
    const result = await bootBench({ imagesDir: join(dataDirOf(values, ctx), "images"), runs, concurrent: 20 });
    ctx.out(values.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
    return 0;
  },
};
