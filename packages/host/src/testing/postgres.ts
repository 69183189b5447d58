/**
 * A private PostgreSQL server for tests, from Debian's postgresql-15 binaries: `initdb` into a new
 * temp folder (as the `postgres` system user: initdb refuses root), listening only on a unix
 * socket in that folder, fsync off. `pause()` and `resume()` stop the server and start it again
 * on the same folder (a database outage); `stop()` stops it and removes the folder; so does the
 * process exiting or being signalled, so a failing test leaves no server behind.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";

const BIN = "/usr/lib/postgresql/15/bin";

export interface TestPostgres {
  /** A URL of the database `name` (default `postgres`) over the server's socket. */
  url(name?: string): string;
  /** Creates an empty database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Stops the server (fast shutdown: its sessions are ended); the folder and the data stay. */
  pause(): void;
  /** Starts the paused server again on the same folder and socket. */
  resume(): void;
  stop(): void;
}

/** The postgres system user's uid and gid, or null without one. */
function postgresUser(): { uid: number; gid: number } | null {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  const [, , uid, gid] = line?.split(":") ?? [];
  return uid && gid ? { uid: Number(uid), gid: Number(gid) } : null;
}

/** Why PostgreSQL tests cannot run here, or false when they can. */
export function postgresSkipReason(): string | false {
  if (process.getuid?.() !== 0) return "PostgreSQL tests need root (the server runs as the postgres user)";
  if (!existsSync(join(BIN, "initdb")) || !existsSync(join(BIN, "pg_ctl"))) {
    return `PostgreSQL 15 is not installed (no ${BIN}/initdb; apt-get install postgresql-15)`;
  }
  if (!postgresUser()) return "there is no postgres system user (apt-get install postgresql-15)";
  return false;
}

/** Runs a PostgreSQL binary as the postgres user. */
function asPostgres(tool: string, args: string[]): void {
  execFileSync("runuser", ["-u", "postgres", "--", join(BIN, tool), ...args], { stdio: "pipe" });
}

/**
 * Starts a fresh server; call postgresSkipReason() first.
 * @example const pg = startPostgres(); const url = await pg.createDatabase("t1"); ...; pg.stop();
 */
export function startPostgres(): TestPostgres {
  const user = postgresUser();
  if (!user) throw new Error("no postgres system user");
  const dir = mkdtempSync(join(tmpdir(), "paddock-pg-"));
  chownSync(dir, user.uid, user.gid);
  const data = join(dir, "data");
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    process.off("exit", stop);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    try {
      if (existsSync(join(data, "postmaster.pid"))) asPostgres("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
    } catch {
      // Already gone: the folder goes anyway.
    }
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    stop();
    process.kill(process.pid, signal);
  };
  process.on("exit", stop);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const options = [
    "-c listen_addresses=''",
    `-c unix_socket_directories='${dir}'`,
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=300",
  ].join(" ");
  const start = () => asPostgres("pg_ctl", ["-D", data, "-l", join(dir, "server.log"), "-o", options, "-w", "start"]);
  try {
    asPostgres("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
    start();
  } catch (err) {
    const log = existsSync(join(dir, "server.log")) ? readFileSync(join(dir, "server.log"), "utf8") : "";
    stop();
    throw new Error(`PostgreSQL did not start: ${String(err)}\n${log}`);
  }
  const url = (name = "postgres") => `postgres://postgres@/${name}?host=${encodeURIComponent(dir)}`;
  return {
    url,
    async createDatabase(name) {
      const client = new pg.Client({ connectionString: url() });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE "${name}"`);
      } finally {
        await client.end();
      }
      return url(name);
    },
    pause: () => asPostgres("pg_ctl", ["-D", data, "-m", "fast", "-w", "stop"]),
    resume: start,
    stop,
  };
}
