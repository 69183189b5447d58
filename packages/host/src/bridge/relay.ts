/**
 * The upstream relay the bridge and the gateway share: an upstream's answer passed on to the
 * sandbox that asked for it.
 *
 * Threat model: the upstream is trusted to serve the call, not to keep the host's secret. It may
 * echo the credential the host attached (in a header, in the body, compressed), and may answer
 * more than the host means to hold or pass on. So the answer is decoded before anything else (a
 * secret cannot hide in compressed bytes, and an encoding that cannot be decoded is refused),
 * counted against a cap before any byte is passed on, stripped to the headers the caller allows,
 * and every spelling of the secret is replaced in headers and body. What the sandbox got is kept
 * for the journal only when it came whole and is small enough.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { pipeline, type TransformCallback } from "node:stream";
import { type JournalEntry, MAX_JOURNAL_BYTES } from "../store/journal.ts";
import { decode } from "./decode.ts";
import { Redactor, redactText } from "./redact.ts";

export interface RelayOptions {
  /** The spellings of the secret to replace (see redactionNeedles). */
  needles: readonly Buffer[];
  /** Whether an answer header passes back to the sandbox (its value redacted). */
  passes(name: string): boolean;
  /** Most bytes of decoded answer passed on; an answer declaring more is refused, one sending more is cut off. */
  maxBytes: number;
  /** Keep what the sandbox got, for the journal. */
  keep: boolean;
  /** Sees each chunk as the sandbox gets it (redacted). */
  onChunk?: (chunk: Buffer) => void;
}

/** An answer passed on, or refused before any of it was. */
export type Relayed =
  | { refused: "too_large" | "encoding" }
  | {
      status: number;
      /** How it ended: passed whole, cut off at the cap, or broken off by either side. */
      end: "whole" | "too_large" | "broken";
      /** Decoded bytes the upstream sent. */
      bytes: number;
      /** How many times a secret was found and replaced. */
      redacted: number;
      /** What the sandbox got, when asked for, passed whole and no larger than the journal keeps. */
      kept: Omit<JournalEntry, "attempt"> | null;
    };

/** Redacts what it passes on, after counting it against a cap: past the cap it fails instead. */
class CappedRedactor extends Redactor {
  readonly #max: number;
  bytes = 0;
  over = false;

  constructor(needles: readonly Buffer[], max: number) {
    super(needles);
    this.#max = max;
  }

  override _transform(chunk: Buffer, enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#max) {
      this.over = true;
      done(new Error("the answer is larger than allowed"));
      return;
    }
    super._transform(chunk, enc, done);
  }
}

/** Passes `answer` on to `res`; resolves once it ended one way or another, never rejects. */
export function relay(answer: IncomingMessage, res: ServerResponse, opts: RelayOptions): Promise<Relayed> {
  if (Number(answer.headers["content-length"] ?? 0) > opts.maxBytes) {
    answer.resume();
    return Promise.resolve({ refused: "too_large" });
  }
  const decoded = decode(answer);
  if (!decoded) {
    answer.resume();
    return Promise.resolve({ refused: "encoding" });
  }
  const status = answer.statusCode ?? 502;
  // The caller may have gone away while the upstream answered (its run stopped, its sandbox
  // killed): the answer is dropped, never piped into a closed stream (which throws).
  const broken = (): Relayed => {
    answer.destroy();
    return { status, end: "broken", bytes: 0, redacted: 0, kept: null };
  };
  if (res.destroyed || res.writableEnded) return Promise.resolve(broken());
  const kept: Buffer[] = [];
  const headers = passedHeaders(answer, opts);
  res.writeHead(status, headers);
  const redactor = new CappedRedactor(opts.needles, opts.maxBytes);
  let keptBytes = 0;
  const { keep, onChunk } = opts;
  if (keep || onChunk) {
    redactor.on("data", (chunk: Buffer) => {
      if (keep) {
        keptBytes += chunk.length;
        if (keptBytes <= MAX_JOURNAL_BYTES) kept.push(chunk);
      }
      onChunk?.(chunk);
    });
  }
  return new Promise((resolve) => {
    if (res.destroyed) return resolve(broken());
    pipeline(decoded, redactor, res, (err) => {
      // A decoder was fed by the answer, which pipeline does not end: the upstream connection must not be reused.
      if (err) answer.destroy();
      const end = !err ? "whole" : redactor.over ? "too_large" : "broken";
      resolve({
        status,
        end,
        bytes: redactor.bytes,
        redacted: redactor.hits,
        kept:
          end === "whole" && keep && keptBytes <= MAX_JOURNAL_BYTES
            ? { status, headers, body: Buffer.concat(kept) }
            : null,
      });
    });
  });
}

function passedHeaders(answer: IncomingMessage, opts: RelayOptions): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [key, value] of Object.entries(answer.headers)) {
    if (value === undefined || !opts.passes(key)) continue;
    out[key] = Array.isArray(value) ? value.map((v) => redactText(v, opts.needles)) : redactText(value, opts.needles);
  }
  return out;
}
