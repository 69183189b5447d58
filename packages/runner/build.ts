/** Bundles the runner into one file, dist/runner.mjs, for the runner layer. */
import { build } from "esbuild";

const outfile = new URL("./dist/runner.mjs", import.meta.url).pathname;
await build({
  entryPoints: [new URL("./src/main.ts", import.meta.url).pathname],
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node24",
  minify: true,
  legalComments: "none",
  outfile,
  logLevel: "warning",
});
