/** Answers from upstreams, readable: what the bridge and the gateway redact must not hide in compressed bytes. */
import type { IncomingMessage } from "node:http";
import type { Readable } from "node:stream";
import zlib from "node:zlib";

/**
 * The answer's body decoded (gzip, deflate, br), so a secret cannot hide in compressed bytes;
 * null for an encoding the bridge cannot decode.
 */
export function decode(answer: IncomingMessage): Readable | null {
  const encoding = String(answer.headers["content-encoding"] ?? "identity")
    .trim()
    .toLowerCase();
  if (encoding === "identity" || encoding === "") return answer;
  const decoder =
    encoding === "gzip" || encoding === "x-gzip"
      ? zlib.createGunzip()
      : encoding === "deflate"
        ? zlib.createInflate()
        : encoding === "br"
          ? zlib.createBrotliDecompress()
          : null;
  if (!decoder) return null;
  answer.pipe(decoder);
  answer.on("error", (err) => decoder.destroy(err));
  return decoder;
}
