/**
 * The interactive shell of an environment session: a WebSocket at
 * `/v1/agents/{id}/env/session/shell?rows=R&cols=C&term=T`, authenticated like every route (the
 * API key in the Authorization header of the upgrade request).
 *
 * Messages: binary frames from the client are keystrokes; a text frame
 * `{"type":"resize","rows":R,"cols":C}` resizes the terminal. The server sends the terminal's
 * output as binary frames and, when the shell ends, a text frame `{"type":"exit","code":N,
 * "signal":S}` before closing with 1000. A request that cannot open a shell (no session, busy,
 * bad size, bad key) is answered before the upgrade with the API's usual JSON error. A shell of a
 * session another node holds is that node's: the upgrade is passed there (node-proxy.ts).
 */
import type { IncomingMessage, Server } from "node:http";
import type { Duplex } from "node:stream";
import { AppError } from "@paddock/protocol";
import { type WebSocket, WebSocketServer } from "ws";
import type { EnvSessions } from "../envs/sessions.ts";
import type { Identity } from "../identity/identity.ts";
import { bearerPrincipal } from "./http.ts";
import { nodeUnavailable, PROXIED_HEADER, proxyWebSocket } from "./node-proxy.ts";

const PATH = /^\/v1\/agents\/([a-z]{3}_[0-9a-z]{1,60})\/env\/session\/shell$/;
/** Input larger than this in one message is refused (a paste of 1 MiB is plenty). */
const MAX_MESSAGE = 1024 * 1024;

export interface ShellSocketDeps {
  identity: Identity;
  sessions: EnvSessions;
  /** This node, named on the upgrades it passes to another. */
  nodeId: string;
  log: (msg: string) => void;
}

/** Serves session shells on `server`'s upgrade requests; other upgrades are refused. */
export function attachShellSocket(server: Server, deps: ShellSocketDeps): () => void {
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE });
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => {});
    void upgrade(wss, deps, req, socket, head).catch((err: unknown) => {
      const error = err instanceof AppError ? err : new AppError("internal");
      if (!(err instanceof AppError)) deps.log(`shell socket: ${(err as Error).stack ?? err}`);
      refuse(socket, error);
    });
  };
  server.on("upgrade", onUpgrade);
  return () => {
    server.off("upgrade", onUpgrade);
    for (const client of wss.clients) client.terminate();
    wss.close();
  };
}

async function upgrade(
  wss: WebSocketServer,
  deps: ShellSocketDeps,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<void> {
  const url = new URL(req.url ?? "/", "http://host");
  const match = PATH.exec(url.pathname);
  if (!match?.[1]) throw new AppError("route_not_found");
  const principal = await bearerPrincipal(deps.identity, req.headers.authorization);
  if (!principal) throw new AppError("unauthorized");
  const owner = req.headers[PROXIED_HEADER] ? null : await deps.sessions.owner(principal.tenantId, match[1]);
  if (owner) {
    if (!owner.live) throw nodeUnavailable(owner, "is down");
    return proxyWebSocket(wss, req, socket, head, owner, deps.nodeId);
  }
  const size = (name: string, fallback: number) => {
    const raw = url.searchParams.get(name);
    const n = raw === null ? fallback : Number(raw);
    if (!Number.isInteger(n) || n < 1 || n > 1000) {
      throw new AppError("validation_failed", `Invalid request: ${name} must be a whole number from 1 to 1000.`);
    }
    return n;
  };
  const rows = size("rows", 24);
  const cols = size("cols", 80);
  const shell = await deps.sessions.shell(principal.tenantId, match[1], {
    rows,
    cols,
    term: url.searchParams.get("term") ?? undefined,
  });
  if (socket.destroyed) {
    await shell.close();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
    shell.output.on("data", (chunk: Buffer) => {
      if (ws.readyState === ws.OPEN) ws.send(chunk, { binary: true });
    });
    ws.on("message", (data, isBinary) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      if (isBinary) return shell.write(buf);
      try {
        const msg = JSON.parse(buf.toString("utf8")) as { type?: unknown; rows?: unknown; cols?: unknown };
        if (msg.type === "resize" && typeof msg.rows === "number" && typeof msg.cols === "number") {
          shell.resize(msg.rows, msg.cols);
        }
      } catch {
        // Not JSON: ignored, as any unknown control message is.
      }
    });
    ws.on("close", () => void shell.close());
    ws.on("error", () => void shell.close());
    void shell.exited.then(
      (exit) => {
        if (ws.readyState === ws.OPEN) {
          ws.send(JSON.stringify({ type: "exit", code: exit.code, signal: exit.signal }));
          ws.close(1000, "shell exited");
        }
      },
      () => ws.terminate(),
    );
  });
}

/** Answers an upgrade request with the API's JSON error (its wire shape) and closes the connection. */
function refuse(socket: Duplex, error: AppError): void {
  if (socket.destroyed) return;
  const body = JSON.stringify(error.toBody());
  socket.end(
    `HTTP/1.1 ${error.status} ${error.code}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
