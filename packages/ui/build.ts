/**
 * Builds the dashboard: esbuild bundles src/app/main.tsx (Preact, its styles and icon) into files
 * named by their content's hash under dist/assets, and writes dist/index.html naming them, so a
 * host can cache the assets for ever and index.html never. The build is written beside dist and
 * renamed into place, so that hosts starting at once never serve half a build.
 *
 * Run as a script (`node packages/ui/build.ts`), it builds and prints the initial load's size.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

/** Where the built dashboard is: index.html and assets/. */
export const UI_DIST = new URL("./dist", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;
const ENTRY = new URL("./src/app/main.tsx", import.meta.url).pathname;
/** The most the first load of /ui may weigh, gzipped, all files together. */
export const INITIAL_LOAD_BUDGET = 100 * 1024;

/** One file of the initial load, with its size as served gzipped. */
export interface UiFile {
  name: string;
  bytes: number;
  gzip_bytes: number;
}

export interface UiBuild {
  dir: string;
  /** index.html and every asset it names. */
  files: UiFile[];
  /** The initial load of /ui, gzipped. */
  gzip_bytes: number;
  /** Source files bundled, relative to the repository root. */
  inputs: string[];
}

/** Packages that must never reach the browser bundle (the protocol's schemas are imported as types only). */
const FORBIDDEN_INPUTS = [/node_modules\/zod\//, /packages\/host\//, /packages\/runner\//];

/**
 * Bundles the dashboard into `outDir` (default dist), replacing what was there.
 * @example const { gzip_bytes } = await buildUi();
 */
export async function buildUi(outDir = UI_DIST): Promise<UiBuild> {
  const staging = `${outDir}.${process.pid}.${randomBytes(4).toString("hex")}`;
  await mkdir(join(staging, "assets"), { recursive: true });
  try {
    const result = await build({
      entryPoints: [ENTRY],
      bundle: true,
      platform: "browser",
      format: "esm",
      target: ["chrome110", "firefox110", "safari16"],
      jsx: "automatic",
      jsxImportSource: "preact",
      minify: true,
      legalComments: "none",
      outdir: join(staging, "assets"),
      entryNames: "[name]-[hash]",
      assetNames: "[name]-[hash]",
      loader: { ".svg": "file" },
      publicPath: "/ui/assets",
      absWorkingDir: ROOT,
      metafile: true,
      write: true,
      logLevel: "warning",
    });
    const inputs = Object.keys(result.metafile.inputs);
    const forbidden = inputs.filter((i) => FORBIDDEN_INPUTS.some((re) => re.test(i)));
    if (forbidden.length > 0) {
      throw new Error(`the dashboard bundle must not contain ${forbidden.join(", ")} (import protocol types only)`);
    }
    const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
    const script = outputs.find((n) => n.endsWith(".js"));
    const style = outputs.find((n) => n.endsWith(".css"));
    const icon = outputs.find((n) => n.startsWith("icon-") && n.endsWith(".svg"));
    if (!script || !style || !icon) throw new Error(`the dashboard build made ${outputs.join(", ")}`);
    await writeFile(join(staging, "index.html"), indexHtml(script, style, icon));

    const files: UiFile[] = [];
    for (const name of ["index.html", ...[script, style, icon].map((n) => `assets/${n}`)]) {
      const body = await readFile(join(staging, name));
      files.push({ name, bytes: body.length, gzip_bytes: gzipSync(body, { level: 9 }).length });
    }
    // Another build may have finished first: the newest complete build wins, never a half one.
    const old = `${staging}.old`;
    if (existsSync(outDir)) await rename(outDir, old).catch(() => {});
    await rename(staging, outDir);
    await rm(old, { recursive: true, force: true });
    return { dir: outDir, files, gzip_bytes: files.reduce((n, f) => n + f.gzip_bytes, 0), inputs };
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
}

/** The page every /ui path answers: no inline script or style (the CSP allows none). */
function indexHtml(script: string, style: string, icon: string): string {
  return [
    "<!doctype html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    "<title>Paddock</title>",
    `<link rel="icon" href="/ui/assets/${icon}" type="image/svg+xml">`,
    `<link rel="stylesheet" href="/ui/assets/${style}">`,
    `<script type="module" src="/ui/assets/${script}"></script>`,
    "</head>",
    '<body><div id="app"></div></body>',
    "</html>",
    "",
  ].join("\n");
}

/** A build's sizes, one line per file and the total against the budget. */
export function describeBuild(b: UiBuild): string {
  const kb = (n: number) => `${(n / 1024).toFixed(1)} KB`;
  const lines = b.files.map((f) => `  ${f.name}  ${kb(f.bytes)} (${kb(f.gzip_bytes)} gzipped)`);
  return [
    `dashboard: initial load of /ui ${kb(b.gzip_bytes)} gzipped (budget ${kb(INITIAL_LOAD_BUDGET)})`,
    ...lines,
  ].join("\n");
}

if (import.meta.main) {
  const built = await buildUi();
  console.log(describeBuild(built));
  if (built.gzip_bytes > INITIAL_LOAD_BUDGET) {
    console.error("dashboard: the initial load is over its budget");
    process.exit(1);
  }
}
