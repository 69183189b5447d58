/**
 * The error catalogue is tested like a contract: every code has a status and a message, every code
 * the source uses (thrown, refused, compared, or carried in event data) is registered, and the
 * README lists each one with its status.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AppError, ERROR_CODES, isErrorCode } from "./errors.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;

/** Every TypeScript file of the packages, the apps and the benchmarks, tests included (not this one). */
function sourceFiles(): string[] {
  const dirs = [
    ...["packages", "apps"].flatMap((top) =>
      readdirSync(join(ROOT, top), { withFileTypes: true })
        .filter((d) => d.isDirectory())
        .map((d) => join(ROOT, top, d.name, "src")),
    ),
    join(ROOT, "bench"),
  ];
  return dirs.flatMap((dir) =>
    (readdirSync(dir, { recursive: true, encoding: "utf8" }) as string[])
      .filter((f) => f.endsWith(".ts") && !f.split("/").includes("node_modules"))
      .map((f) => join(dir, f))
      .filter((f) => f !== new URL(import.meta.url).pathname),
  );
}

const CODE = '"([a-z][a-z0-9_]*)"';
/** Where a code appears in source text. */
const USES = [
  // new AppError("code", …), new Refusal("code", …), and the helpers that answer with a code.
  String.raw`new (?:AppError|Refusal)\(\s*${CODE}`,
  String.raw`\b(?:errorResponse|refuse)\(\s*(?:\w+,\s*)?${CODE}`,
  // Event data and records (code: "x", code = cond ? "x" : "y") and comparisons (code === "x").
  String.raw`(?<!typeof\s+[\w.?]*)\bcode\s*(?::|\?\?=|=|===|!==)\s*(?:[^;,\n?"]*\?\s*)?${CODE}(?:\s*:\s*${CODE})?`,
  // Tests: assert.equal(body.error.code, "x"), expectError(res, 400, "x").
  String.raw`\.code,\s*${CODE}`,
  String.raw`expectError\([^;]*?,\s*\d{3},\s*${CODE}`,
].map((source) => new RegExp(source, "g"));

/** Strings found in a code's place that are not error codes, and why. */
const NOT_CODES: Record<string, string> = {
  custom: "an issue code in validation_failed details (zod's)",
  too_big: "an issue code in validation_failed details (zod's)",
  unrecognized_keys: "a zod issue code, compared when a run token carries a claim it should not",
  invalid_cron: "an issue code in validation_failed details",
  invalid_timezone: "an issue code in validation_failed details",
  invalid_cursor: "an issue code in validation_failed details",
  made_up: "tests show that event data refuses a code not registered",
};

/** Each code the source uses, with where. */
function codesInSource(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const file of sourceFiles()) {
    const text = readFileSync(file, "utf8");
    for (const re of USES) {
      for (const m of text.matchAll(re)) {
        const where = `${file.slice(ROOT.length)}:${text.slice(0, m.index).split("\n").length}`;
        for (const code of m.slice(1)) {
          if (code !== undefined) found.set(code, [...(found.get(code) ?? []), where]);
        }
      }
    }
  }
  return found;
}

describe("error catalogue", () => {
  it("gives every code an HTTP error status and a sentence a person can act on", () => {
    for (const [code, entry] of Object.entries(ERROR_CODES)) {
      assert.match(code, /^[a-z_]+$/, code);
      assert.ok(entry.status >= 400 && entry.status <= 599, `${code} status ${entry.status}`);
      assert.ok(entry.message.length > 10 && entry.message.endsWith("."), `${code} message`);
    }
  });

  it("puts code, message and details on the wire shape", () => {
    const err = new AppError("validation_failed", "bad name", [{ path: "name" }]);
    assert.equal(err.status, 400);
    assert.deepEqual(err.toBody(), {
      error: { code: "validation_failed", message: "bad name", details: [{ path: "name" }] },
    });
    assert.deepEqual(new AppError("not_found").toBody(), {
      error: { code: "not_found", message: ERROR_CODES.not_found.message },
    });
    assert.ok(isErrorCode("conflict"));
    assert.ok(!isErrorCode("toString"));
  });

  it("registers every code the source throws, refuses, compares or puts in an event", () => {
    const found = codesInSource();
    // The scan must see the codes for this test to mean anything: most of the catalogue, from
    // throws and from event data alike (provider_rate_limited is only ever an llm.call's code).
    const registered = [...found.keys()].filter(isErrorCode);
    assert.ok(registered.length >= 40, `the scan found only ${registered.length} registered codes`);
    for (const code of ["not_found", "validation_failed", "policy_denied", "provider_rate_limited", "upstream_error"]) {
      assert.ok(found.has(code), `the scan missed ${code}`);
    }
    const unregistered = [...found].filter(([code]) => !isErrorCode(code) && !Object.hasOwn(NOT_CODES, code));
    assert.deepEqual(
      unregistered.map(([code, where]) => `${code} at ${where.join(", ")}`),
      [],
      "codes used but not in ERROR_CODES (packages/protocol/src/errors.ts)",
    );
    for (const code of Object.keys(NOT_CODES)) {
      assert.ok(
        found.has(code) && !isErrorCode(code),
        `NOT_CODES lists ${code}, which is no longer found or is a code`,
      );
    }
  });

  it("is documented in the README with each code's status", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const start = readme.indexOf("\n### Error codes\n");
    assert.ok(start >= 0, "the README has an 'Error codes' section");
    const end = readme.indexOf("\n#", start + 1);
    const section = readme.slice(start, end < 0 ? undefined : end);
    const rows = [...section.matchAll(/^\| `([a-z_]+)` \| (\d{3}) \| (.*\S.*) \|$/gm)];
    const documented = new Map(rows.map((r) => [r[1] as string, Number(r[2])]));
    assert.equal(documented.size, rows.length, "each code is listed once");
    for (const [code, entry] of Object.entries(ERROR_CODES)) {
      assert.equal(documented.get(code), entry.status, `the README lists ${code} with status ${entry.status}`);
    }
    assert.deepEqual(
      [...documented.keys()].filter((code) => !isErrorCode(code)),
      [],
      "the README lists only registered codes",
    );
  });
});
