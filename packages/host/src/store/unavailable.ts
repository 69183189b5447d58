/**
 * Telling a database out of reach from a statement that failed, and logging an outage once
 * instead of at every retry of the tasks that run on a timer (claims, heartbeats, scheduler ticks).
 */
import { AppError } from "@paddock/protocol";
import pg from "pg";

/**
 * Whether `err` says the database cannot be reached now (no connection could be made, the server
 * is shutting down or starting, the connection broke), rather than that a statement failed.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (err instanceof AppError) return err.code === "database_unavailable";
  // SQLSTATE class 08 (connection exception), 57P01-57P03 (shutting down, crashed, starting up).
  if (err instanceof pg.DatabaseError) return /^(08|57P0[123])/.test(err.code ?? "");
  if (!(err instanceof Error)) return false;
  // The socket itself failing (the server's goodbye can arrive as a reset mid-statement).
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined && SOCKET_ERRORS.has(code)) return true;
  return /^Connection terminated unexpectedly$|connection error and is not queryable$/.test(err.message);
}

const SOCKET_ERRORS = new Set(["ECONNRESET", "EPIPE"]);

/**
 * The failures of a task that retries on a timer, as log lines: the database being out of reach
 * is logged when first seen and when the task gets through again; any other failure every time.
 */
export class StoreFailures {
  readonly #log: (line: string) => void;
  readonly #who: string;
  readonly #meanwhile: string;
  #since: number | null = null;

  /** `who` starts each line; `meanwhile` says what the task does while the database is away. */
  constructor(log: (line: string) => void, who: string, meanwhile = "") {
    this.#log = log;
    this.#who = who;
    this.#meanwhile = meanwhile;
  }

  /** Whether the database was out of reach at the task's last try. */
  get unreachable(): boolean {
    return this.#since !== null;
  }

  failed(what: string, err: unknown): void {
    if (!isDatabaseUnavailable(err)) {
      this.#log(`${this.#who}: ${what} failed: ${String(err)}`);
      return;
    }
    if (this.#since !== null) return;
    this.#since = Date.now();
    const why = err instanceof Error ? err.message : String(err);
    this.#log(`${this.#who}: the database cannot be reached (${what}: ${why})${this.#meanwhile}`);
  }

  /** The task got through; true when that ends an outage. */
  succeeded(): boolean {
    if (this.#since === null) return false;
    this.#log(`${this.#who}: the database is reachable again (after ${Date.now() - this.#since} ms)`);
    this.#since = null;
    return true;
  }
}
