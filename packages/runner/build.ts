/**
 * Bundles the runner into one file, dist/runner.mjs, for the runner layer. Importing this module
 * builds it; `built` is esbuild's metafile of that build (which source files went in), for the
 * test that checks the bundle holds no host code.
 */
import { build, type Metafile } from "esbuild";

/** The repository root: the metafile's paths are relative to it. */
const root = new URL("../../", import.meta.url).pathname;
const outfile = new URL("./dist/runner.mjs", import.meta.url).pathname;

const result = await build({
  entryPoints: [new URL("./src/main.ts", import.meta.url).pathname],
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node24",
  minify: true,
  legalComments: "none",
  outfile,
  absWorkingDir: root,
  metafile: true,
  logLevel: "warning",
});

export const built: Metafile = result.metafile;
