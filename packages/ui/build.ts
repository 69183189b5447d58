/**
 * Builds the dashboard: esbuild bundles src/app/main.tsx (Preact, its styles and icon) into files
 * named by their content's hash, with an index.html naming them, so a host can cache the assets
 * for ever and index.html never. Each build goes to a folder of its own under dist/builds, and
 * dist/current (replaced in one rename) names the newest: hosts starting while another builds
 * read one whole build or the other, never half of one.
 *
 * Run as a script (`node packages/ui/build.ts`), it builds and prints the initial load's size.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { gzipSync } from "node:zlib";

/** Where the dashboard's builds are (dist/builds/ID) and the name of the current one (dist/current). */
export const UI_DIST = new URL("./dist", import.meta.url).pathname;
/** Builds kept besides the current one, for hosts that read the one before as it was replaced. */
const KEPT_BUILDS = 2;
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

/** The folder of the current build under `outDir` (index.html and assets/), or null when there is none. */
export function currentUiBuild(outDir = UI_DIST): string | null {
  const pointer = join(outDir, "current");
  if (!existsSync(pointer)) return null;
  const dir = join(outDir, "builds", readFileSync(pointer, "utf8").trim());
  return existsSync(join(dir, "index.html")) ? dir : null;
}

/**
 * Bundles the dashboard into a new build under `outDir` (default dist) and makes it current.
 * @example const { gzip_bytes } = await buildUi();
 */
export async function buildUi(outDir = UI_DIST): Promise<UiBuild> {
  const id = `${Date.now().toString(36)}-${process.pid}-${randomBytes(4).toString("hex")}`;
  const dir = join(outDir, "builds", id);
  await mkdir(join(dir, "assets"), { recursive: true });
  try {
    // esbuild is loaded only to build: a host that finds a build serves it without it.
    const { build } = await import("esbuild");
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
      outdir: join(dir, "assets"),
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
    await writeFile(join(dir, "index.html"), indexHtml(script, style, icon));

    const files: UiFile[] = [];
    for (const name of ["index.html", ...[script, style, icon].map((n) => `assets/${n}`)]) {
      const body = await readFile(join(dir, name));
      files.push({ name, bytes: body.length, gzip_bytes: gzipSync(body, { level: 9 }).length });
    }
    // The pointer is replaced in one rename: readers see the old build or the new one.
    const pointer = join(outDir, "current");
    await writeFile(`${pointer}.${id}`, `${id}\n`);
    await rename(`${pointer}.${id}`, pointer);
    await pruneBuilds(outDir, id);
    return { dir, files, gzip_bytes: files.reduce((n, f) => n + f.gzip_bytes, 0), inputs };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Removes all but the newest builds (by time made), never the one just made. */
async function pruneBuilds(outDir: string, keep: string): Promise<void> {
  const root = join(outDir, "builds");
  const builds = await Promise.all(
    (await readdir(root)).map(async (name) => ({ name, at: (await stat(join(root, name))).mtimeMs })),
  );
  const old = builds
    .filter((b) => b.name !== keep)
    .sort((a, b) => b.at - a.at)
    .slice(KEPT_BUILDS);
  for (const b of old) await rm(join(root, b.name), { recursive: true, force: true });
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
