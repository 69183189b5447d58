/** A Server-Sent Events parser (the WHATWG event-stream format), fed text as it arrives. */

export interface SseMessage {
  /** The `event:` field; "message" when absent. */
  event: string;
  data: string;
  /** The last `id:` seen so far on this stream, or null. */
  id: string | null;
}

export class SseParser {
  #buffer = "";
  #event = "";
  #data: string[] = [];
  #lastId: string | null = null;
  #sawCr = false;

  /** Feeds a chunk; returns the messages it completes. */
  push(chunk: string): SseMessage[] {
    let text = chunk;
    // A "\r\n" split across chunks: the "\r" already ended its line.
    if (this.#sawCr && text.startsWith("\n")) text = text.slice(1);
    this.#sawCr = false;
    this.#buffer += text;
    const out: SseMessage[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.#buffer);
      if (!match) break;
      if (match[0] === "\r" && match.index === this.#buffer.length - 1) {
        this.#sawCr = true;
      }
      const line = this.#buffer.slice(0, match.index);
      this.#buffer = this.#buffer.slice(match.index + match[0].length);
      const message = this.#line(line);
      if (message) out.push(message);
    }
    return out;
  }

  #line(line: string): SseMessage | null {
    if (line === "") {
      if (this.#data.length === 0) {
        this.#event = "";
        return null;
      }
      const message = { event: this.#event || "message", data: this.#data.join("\n"), id: this.#lastId };
      this.#event = "";
      this.#data = [];
      return message;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
    else if (field === "id" && !value.includes("\0")) this.#lastId = value;
    return null;
  }
}

/** Yields the messages of an event-stream response body until it ends. */
export async function* readSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  const parser = new SseParser();
  for await (const chunk of body) {
    yield* parser.push(decoder.decode(chunk, { stream: true }));
  }
  yield* parser.push(decoder.decode());
}
