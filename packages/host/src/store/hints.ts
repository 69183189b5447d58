/**
 * Wake-up hints between the processes that share a store: "run X has new events up to seq N",
 * "a run was queued", "cancel of run X requested". A hint carries no data the store does not hold;
 * whoever gets one re-reads the store, and anyone who must not miss something also polls, so a
 * lost hint only delays. Within one process (SQLite) hints are plain synchronous calls; on
 * PostgreSQL they also travel as NOTIFY to every other process LISTENing on the same database.
 */
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import pg from "pg";

/** The channels hints travel on (PostgreSQL identifiers). */
export const HINT = {
  /** Payload `RUN_ID:SEQ`: the run's events up to SEQ are committed. */
  events: "paddock_events",
  /** Payload: the queued run's id. */
  runQueued: "paddock_run_queued",
  /** Payload: the id of the run whose cancellation was requested. */
  cancel: "paddock_cancel",
  /** Payload empty: notification deliveries were written and are due. */
  notifications: "paddock_notifications",
} as const;
export type HintChannel = (typeof HINT)[keyof typeof HINT];

export interface Hints {
  /** True when other processes write the same store: their changes arrive only as hints or by polling. */
  readonly shared: boolean;
  /** Sends a hint to every listener, in this process at once and in others as soon as they hear it. */
  notify(channel: HintChannel, payload: string): void;
  /** Calls `fn` with each hint's payload on `channel`; returns the function that stops it. */
  listen(channel: HintChannel, fn: (payload: string) => void): () => void;
  /** Resolves once hints from other processes are heard on every channel listened to. */
  ready(): Promise<void>;
  close(): Promise<void>;
}

/** Hints within one process. */
export class LocalHints implements Hints {
  readonly shared: boolean = false;
  protected readonly bus = new EventEmitter({ captureRejections: false });

  constructor() {
    this.bus.setMaxListeners(0);
  }

  notify(channel: HintChannel, payload: string): void {
    this.bus.emit(channel, payload);
  }

  listen(channel: HintChannel, fn: (payload: string) => void): () => void {
    this.bus.on(channel, fn);
    return () => this.bus.off(channel, fn);
  }

  async ready(): Promise<void> {}

  async close(): Promise<void> {
    this.bus.removeAllListeners();
  }
}

const RECONNECT_MS = 1000;

/**
 * Hints over PostgreSQL NOTIFY. Sending uses the pool (fire and forget, after the caller's
 * commit; the hints of one turn of the event loop in one statement); hearing uses one dedicated
 * connection that LISTENs on every channel someone listens to and reconnects after losing the
 * server. Each process tags its hints so it does not hear its own twice.
 */
export class PostgresHints extends LocalHints {
  override readonly shared = true;
  readonly #origin = randomBytes(6).toString("hex");
  readonly #pool: pg.Pool;
  readonly #connectionString: string;
  readonly #channels = new Set<HintChannel>();
  #client: pg.Client | null = null;
  #connecting: Promise<void> | null = null;
  #retry: NodeJS.Timeout | null = null;
  #closed = false;
  /** Hints to send, as [channel, tagged payload]. */
  readonly #unsent: [HintChannel, string][] = [];

  constructor(options: { connectionString: string; pool: pg.Pool }) {
    super();
    this.#pool = options.pool;
    this.#connectionString = options.connectionString;
  }

  override notify(channel: HintChannel, payload: string): void {
    super.notify(channel, payload);
    if (this.#closed) return;
    // Hints sent in one turn of the event loop travel together, in one statement.
    if (this.#unsent.length === 0) setImmediate(() => this.#send());
    this.#unsent.push([channel, `${this.#origin}|${payload}`]);
  }

  #send(): void {
    const hints = this.#unsent.splice(0);
    if (this.#closed || hints.length === 0) return;
    this.#pool
      .query({
        // Prepared once per connection: sent after nearly every write.
        name: "paddock_hints",
        text: "select pg_notify(h.channel, h.payload) from unnest($1::text[], $2::text[]) as h(channel, payload)",
        values: [hints.map(([channel]) => channel), hints.map(([, payload]) => payload)],
      })
      .catch(() => {});
  }

  override listen(channel: HintChannel, fn: (payload: string) => void): () => void {
    const stop = super.listen(channel, fn);
    if (!this.#channels.has(channel)) {
      this.#channels.add(channel);
      if (this.#client) this.#client.query(`LISTEN "${channel}"`).catch(() => this.#reconnect());
      else this.#connect();
    }
    return stop;
  }

  override async ready(): Promise<void> {
    await this.#connecting;
  }

  #connect(): void {
    if (this.#closed || this.#connecting || this.#client) return;
    const client = new pg.Client({ connectionString: this.#connectionString });
    client.on("notification", (msg) => {
      const text = msg.payload ?? "";
      const bar = text.indexOf("|");
      if (bar < 0 || text.slice(0, bar) === this.#origin) return;
      this.bus.emit(msg.channel, text.slice(bar + 1));
    });
    client.on("error", () => this.#reconnect());
    client.on("end", () => this.#reconnect());
    this.#connecting = (async () => {
      try {
        await client.connect();
        for (const channel of this.#channels) await client.query(`LISTEN "${channel}"`);
        if (this.#closed) await client.end();
        else this.#client = client;
      } catch {
        client.removeAllListeners("end");
        await client.end().catch(() => {});
        this.#schedule();
      } finally {
        this.#connecting = null;
      }
    })();
  }

  #reconnect(): void {
    const client = this.#client;
    this.#client = null;
    if (client) {
      client.removeAllListeners("end");
      client.end().catch(() => {});
    }
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed || this.#retry) return;
    this.#retry = setTimeout(() => {
      this.#retry = null;
      this.#connect();
    }, RECONNECT_MS);
    this.#retry.unref();
  }

  override async close(): Promise<void> {
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
    await this.#connecting;
    const client = this.#client;
    this.#client = null;
    if (client) {
      client.removeAllListeners("end");
      client.removeAllListeners("error");
      client.on("error", () => {});
      await client.end().catch(() => {});
    }
    await super.close();
  }
}
