/** How `paddock secrets set` turns the bytes on stdin into a value. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_SECRET_BYTES } from "@paddock/protocol";
import { CliError } from "../args.ts";
import { valueFromBytes } from "./secrets.ts";

const value = (text: string | Buffer) => valueFromBytes(Buffer.isBuffer(text) ? text : Buffer.from(text));

test("exactly one final line end is dropped", () => {
  assert.equal(value("token"), "token");
  assert.equal(value("token\n"), "token");
  assert.equal(value("token\r\n"), "token");
  assert.equal(value("token\n\n"), "token\n");
  assert.equal(value("  token \t\n"), "  token \t");
  assert.equal(value("line one\nline two\n"), "line one\nline two");
});

test("bytes are kept as written, a byte order mark included", () => {
  assert.equal(value(Buffer.from([0xef, 0xbb, 0xbf, 0x61])), "\ufeffa");
  assert.equal(value("pässwörd 🔑"), "pässwörd 🔑");
});

test("empty, oversized and non-UTF-8 values are refused without quoting them", () => {
  for (const bad of ["", "\n", "\r\n"]) assert.throws(() => value(bad), /the value is empty; pipe it in/);
  assert.throws(() => value("x".repeat(MAX_SECRET_BYTES + 1)), /over 65536 bytes/);
  assert.equal(value(`${"x".repeat(MAX_SECRET_BYTES)}\n`).length, MAX_SECRET_BYTES);
  assert.throws(
    () => value(Buffer.from([0x73, 0x6b, 0xff])),
    (err: Error) => err instanceof CliError && /not UTF-8 text/.test(err.message) && !err.message.includes("sk"),
  );
});
