import { randomBytes } from "node:crypto";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const TIME_CHARS = 10;
const RANDOM_CHARS = 16;

/** Milliseconds since the epoch as the 10 base32 characters that start an id's body. */
function encodeTime(ms: number): string {
  let time = "";
  let t = Math.max(0, Math.floor(ms));
  for (let i = 0; i < TIME_CHARS; i++) {
    time = ALPHABET[t % 32] + time;
    t = Math.floor(t / 32);
  }
  return time;
}

/** Time-ordered, unguessable ids: prefix_ + 10 chars of milliseconds + 16 random chars (base32). */
export function newId(prefix: string, now = Date.now()): string {
  const bytes = randomBytes(RANDOM_CHARS);
  let rand = "";
  for (const b of bytes) rand += ALPHABET[b % 32];
  return `${prefix}_${encodeTime(now)}${rand}`;
}

/**
 * The least id newId makes at `ms`: every id made at `ms` or later sorts at or above it, every id
 * made before sorts below it. A time range over ids is thus an id range (an index's range).
 */
export function idAt(prefix: string, ms: number): string {
  return `${prefix}_${encodeTime(ms)}${"0".repeat(RANDOM_CHARS)}`;
}

/**
 * The least and the greatest id that start with `start` (a prefix and part of an id's body):
 * the ids starting with it are exactly those between the two.
 */
export function idRange(start: string): { min: string; max: string } {
  const length = start.indexOf("_") + 1 + TIME_CHARS + RANDOM_CHARS;
  return { min: start.padEnd(length, ALPHABET[0]), max: start.padEnd(length, ALPHABET[31]) };
}
