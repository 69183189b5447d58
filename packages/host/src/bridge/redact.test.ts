/** The redactor finds every spelling of a secret, also when a chunk boundary splits it. */
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { text } from "node:stream/consumers";
import { test } from "node:test";
import { REDACTED, Redactor, redactionNeedles, redactText } from "./redact.ts";

const SECRET = "ghp_S3cr3t/Value+with=chars";

async function through(chunks: string[], needles: Buffer[]): Promise<{ out: string; hits: number }> {
  const redactor = new Redactor(needles);
  const out = await text(Readable.from(chunks.map((c) => Buffer.from(c))).pipe(redactor));
  return { out, hits: redactor.hits };
}

test("every split of an echoed secret is replaced", async () => {
  const needles = redactionNeedles([SECRET]);
  const body = `{"headers":{"authorization":"Bearer ${SECRET}"},"again":"${SECRET}"}`;
  for (let cut = 1; cut < body.length; cut++) {
    const { out, hits } = await through([body.slice(0, cut), body.slice(cut)], needles);
    assert.ok(!out.includes(SECRET), `split at ${cut} leaked`);
    assert.equal(hits, 2);
    assert.equal(out, body.split(SECRET).join(REDACTED));
  }
});

test("byte-by-byte chunks, and the encoded spellings", async () => {
  const encoded = encodeURIComponent(SECRET);
  const escaped = JSON.stringify(SECRET).slice(1, -1);
  const basic = Buffer.from(`user:${SECRET}`).toString("base64");
  const needles = redactionNeedles([SECRET, basic]);
  const body = `a=${encoded}&b=${basic}&c=${escaped}`;
  const { out } = await through([...body], needles);
  for (const form of [SECRET, encoded, basic]) assert.ok(!out.includes(form), `${form} leaked: ${out}`);
  assert.equal(out, `a=${REDACTED}&b=${REDACTED}&c=${REDACTED}`);
});

test("bodies without the secret pass unchanged, whatever their size", async () => {
  const needles = redactionNeedles([SECRET]);
  const body = "x".repeat(100_000);
  const { out, hits } = await through([body.slice(0, 4097), body.slice(4097)], needles);
  assert.equal(out, body);
  assert.equal(hits, 0);
});

test("header values", () => {
  const needles = redactionNeedles([SECRET]);
  assert.equal(redactText(`token ${SECRET}; ${encodeURIComponent(SECRET)}`, needles), `token ${REDACTED}; ${REDACTED}`);
  assert.equal(redactText("nothing here", needles), "nothing here");
});
