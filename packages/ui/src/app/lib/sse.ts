/**
 * Reading a text/event-stream as it arrives (the run's live events): messages are split on blank
 * lines, and a chunk's whole messages are handed over together, so that a burst of thousands of
 * events costs one redraw, not thousands.
 */

export interface SseMessage {
  id: string | null;
  event: string;
  data: string;
}

export class SseParser {
  #buffer = "";
  #data: string[] = [];
  #event = "";
  #id: string | null = null;

  /** Takes a chunk of text; returns the messages it completed. */
  push(chunk: string): SseMessage[] {
    this.#buffer += chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (;;) {
      const nl = this.#buffer.indexOf("\n", start);
      if (nl < 0) break;
      let line = this.#buffer.slice(start, nl);
      start = nl + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (this.#data.length > 0) {
          out.push({ id: this.#id, event: this.#event || "message", data: this.#data.join("\n") });
        }
        this.#data = [];
        this.#event = "";
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.#data.push(value);
      else if (field === "event") this.#event = value;
      else if (field === "id") this.#id = value;
    }
    this.#buffer = this.#buffer.slice(start);
    return out;
  }
}
