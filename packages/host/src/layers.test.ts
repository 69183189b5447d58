/**
 * The host's folders form layers: no folder imports one that imports it back, and no file imports
 * one that imports it back, type-only imports included. Cycles hide which piece owns what and make
 * parts impossible to move (to another node, another process, a test without root) on their own.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";

const ROOT = new URL(".", import.meta.url).pathname.replace(/\/$/, "");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith(".ts") ? [path] : [];
  });
}

/** Relative imports and re-exports of a file (static, dynamic, type-only alike), as absolute paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const found = text.matchAll(
    /(?:\b(?:import|export)\b[^'";]*?\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}\/[^"']+)["']/g,
  );
  return [...found].map((m) => resolve(dirname(file), m[1] as string));
}

/** The strongly connected components of more than one node (Tarjan). */
function cycles(graph: Map<string, Set<string>>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, counter);
    low.set(v, counter);
    counter++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop() as string;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

const files = sources(ROOT);
const fileGraph = new Map(files.map((f) => [f, new Set(importsOf(f).filter((t) => t.startsWith(`${ROOT}/`)))]));
/** A file's folder: the first path part below src, or "." for the composition root's files. */
const folderOf = (file: string) => {
  const parts = relative(ROOT, file).split("/");
  return parts.length > 1 ? (parts[0] as string) : ".";
};

test("the import scan sees the host's imports", () => {
  // Guards the scan itself: a regex that matched nothing would make both checks below pass.
  assert.ok(files.length > 50, `only ${files.length} files found under ${ROOT}`);
  const host = fileGraph.get(join(ROOT, "host.ts"));
  assert.ok(host?.has(join(ROOT, "engine/engine.ts")), "host.ts imports engine/engine.ts");
  const edges = [...fileGraph.values()].reduce((n, s) => n + s.size, 0);
  assert.ok(edges > files.length, `only ${edges} import edges among ${files.length} files`);
});

test("no file imports one that imports it back", () => {
  const found = cycles(fileGraph).map((c) => c.map((f) => relative(ROOT, f)));
  assert.deepEqual(found, [], `import cycles between files: ${JSON.stringify(found)}`);
});

test("no folder imports one that imports it back", () => {
  const graph = new Map<string, Set<string>>();
  const why = new Map<string, string>();
  for (const [from, targets] of fileGraph) {
    if (from.endsWith(".test.ts")) continue; // tests sit beside their code and may reach across
    for (const to of targets) {
      const a = folderOf(from);
      const b = folderOf(to);
      if (a === b) continue;
      graph.set(a, (graph.get(a) ?? new Set()).add(b));
      if (!why.has(`${a}>${b}`)) why.set(`${a}>${b}`, `${relative(ROOT, from)} -> ${relative(ROOT, to)}`);
    }
  }
  const found = cycles(graph).map((c) => {
    const edges = [...why].filter(
      ([k]) => c.includes(k.split(">")[0] as string) && c.includes(k.split(">")[1] as string),
    );
    return { folders: c, imports: edges.map(([, v]) => v) };
  });
  assert.deepEqual(found, [], `folders importing each other: ${JSON.stringify(found, null, 1)}`);
});
