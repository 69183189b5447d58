/**
 * The dashboard never inserts text as markup: no source of the app may use an API that parses
 * HTML or runs a string as code. Agent output reaches the page only as text nodes and attributes,
 * which Preact sets without parsing.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

const APP = new URL("./app/", import.meta.url).pathname;
const FORBIDDEN = [
  /dangerouslySetInnerHTML/,
  /\.innerHTML\b/,
  /\.outerHTML\b/,
  /insertAdjacentHTML/,
  /document\.write/,
  /\beval\s*\(/,
  /new Function\b/,
  /createContextualFragment/,
  /DOMParser/,
];

it("uses no API that parses text as markup or code", () => {
  const files = (readdirSync(APP, { recursive: true, encoding: "utf8" }) as string[]).filter(
    (f) => /\.tsx?$/.test(f) && !f.endsWith(".test.ts"),
  );
  assert.ok(files.length > 20, `${files.length} files`);
  const found = files.flatMap((f) => {
    const text = readFileSync(join(APP, f), "utf8");
    return FORBIDDEN.filter((re) => re.test(text)).map((re) => `${f}: ${re.source}`);
  });
  assert.deepEqual(found, []);
});
