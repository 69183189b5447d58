/**
 * Keeps a connection's credential out of what goes back into a sandbox: an upstream that echoes
 * requests (a debugging endpoint, an error page quoting headers, a misconfigured proxy) would
 * otherwise hand the sandbox the very secret the bridge exists to keep from it. Every spelling
 * the host itself sent is searched for: the raw value, the attached header value, base64 for
 * basic auth, percent-encoded for query parameters and JSON-escaped.
 */
import { Transform, type TransformCallback } from "node:stream";

export const REDACTED = "[REDACTED]";

/** The byte strings to replace, longest first, without duplicates or empties. */
export function redactionNeedles(forms: readonly string[]): Buffer[] {
  const unique = new Set<string>();
  for (const form of forms) {
    if (form.length === 0) continue;
    unique.add(form);
    unique.add(encodeURIComponent(form));
    unique.add(JSON.stringify(form).slice(1, -1));
  }
  return [...unique]
    .filter((f) => f.length > 0)
    .sort((a, b) => b.length - a.length)
    .map((f) => Buffer.from(f));
}

/** Replaces every needle in `text` (header values). */
export function redactText(text: string, needles: readonly Buffer[]): string {
  let out = text;
  for (const needle of needles) {
    const s = needle.toString();
    if (out.includes(s)) out = out.split(s).join(REDACTED);
  }
  return out;
}

function replaceAll(chunk: Buffer, needles: readonly Buffer[]): { out: Buffer; hits: number } {
  let out = chunk;
  let hits = 0;
  for (const needle of needles) {
    let at = out.indexOf(needle);
    if (at < 0) continue;
    const parts: Buffer[] = [];
    let from = 0;
    while (at >= 0) {
      parts.push(out.subarray(from, at), Buffer.from(REDACTED));
      hits++;
      from = at + needle.length;
      at = out.indexOf(needle, from);
    }
    parts.push(out.subarray(from));
    out = Buffer.concat(parts);
  }
  return { out, hits };
}

/**
 * A stream that replaces needles across chunk boundaries: it holds back the last (longest needle
 * − 1) bytes of what it has seen until the next chunk or the end shows whether they start one.
 */
export class Redactor extends Transform {
  readonly #needles: readonly Buffer[];
  readonly #keep: number;
  #tail = Buffer.alloc(0);
  /** How many times a secret was found and replaced. */
  hits = 0;

  constructor(needles: readonly Buffer[]) {
    super();
    this.#needles = needles;
    this.#keep = Math.max(0, ...needles.map((n) => n.length - 1));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.#needles.length === 0) {
      done(null, chunk);
      return;
    }
    const { out, hits } = replaceAll(this.#tail.length > 0 ? Buffer.concat([this.#tail, chunk]) : chunk, this.#needles);
    this.hits += hits;
    const cut = Math.max(0, out.length - this.#keep);
    this.#tail = Buffer.from(out.subarray(cut));
    done(null, cut > 0 ? out.subarray(0, cut) : undefined);
  }

  override _flush(done: TransformCallback): void {
    const { out, hits } = replaceAll(this.#tail, this.#needles);
    this.hits += hits;
    this.#tail = Buffer.alloc(0);
    done(null, out.length > 0 ? out : undefined);
  }
}
