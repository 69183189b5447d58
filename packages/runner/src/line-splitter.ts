/** Splits a byte stream into UTF-8 lines of at most `max` bytes; longer lines are cut and flagged. */
export class LineSplitter {
  readonly #max: number;
  readonly #emit: (line: string, truncated: boolean) => void;
  #parts: Buffer[] = [];
  #size = 0;
  /** Set after a long line was cut: the rest of it, up to the next newline, is dropped. */
  #skipping = false;

  constructor(max: number, emit: (line: string, truncated: boolean) => void) {
    this.#max = max;
    this.#emit = emit;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(10, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.#skipping) {
        const piece = chunk.subarray(start, end);
        const room = this.#max - this.#size;
        if (piece.length > room) {
          this.#parts.push(piece.subarray(0, room));
          this.#flush(true);
          this.#skipping = true;
        } else {
          this.#parts.push(piece);
          this.#size += piece.length;
        }
      }
      if (nl === -1) break;
      if (this.#skipping) this.#skipping = false;
      else this.#flush(false);
      start = nl + 1;
    }
  }

  end(): void {
    if (this.#size > 0) this.#flush(false);
  }

  #flush(truncated: boolean): void {
    let line = Buffer.concat(this.#parts).toString("utf8");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    this.#parts = [];
    this.#size = 0;
    this.#emit(line, truncated);
  }
}
