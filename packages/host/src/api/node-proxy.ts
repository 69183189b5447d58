/**
 * Requests for something that lives on another node (an environment session) are passed to that
 * node's API, as they came: the method, path, query and body, and the caller's Authorization
 * header, both ways streamed; a WebSocket is passed on as a WebSocket. The owner authenticates the
 * caller again against the same store. A passed request carries PROXIED_HEADER, and a request that
 * carries it is answered where it arrives, never passed on again: two nodes that disagree about an
 * owner cannot bounce a request between them.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { AppError } from "@paddock/protocol";
import { type RawData, WebSocket, type WebSocketServer } from "ws";

/** Marks a request one node passed to another (its value: the node that passed it). */
export const PROXIED_HEADER = "paddock-proxied-by";

/** The node a request is passed to. */
export interface ProxyTarget {
  nodeId: string;
  /** Its API, as other nodes reach it. */
  url: string;
}

/** The caller's headers that travel with a passed request; nothing else of theirs does. */
const FORWARDED = ["authorization", "content-type", "accept"];
/** The owner's headers that describe the connection to it rather than the answer. */
const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"];

/** The error for a node that is down or does not answer. */
export function nodeUnavailable(target: ProxyTarget, why: string): AppError {
  return new AppError(
    "node_unavailable",
    `The session lives on node '${target.nodeId}', which ${why}; discard the session (DELETE …/env/session) and open a new one.`,
  );
}

/** Passes an HTTP request to `target` and answers with its answer, streamed. */
export async function proxyRequest(request: Request, target: ProxyTarget, fromNode: string): Promise<Response> {
  const url = new URL(request.url);
  const headers = new Headers({ [PROXIED_HEADER]: fromNode });
  for (const name of FORWARDED) {
    const value = request.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  const hasBody = request.method !== "GET" && request.method !== "HEAD" && request.body !== null;
  let answer: Response;
  try {
    answer = await fetch(new URL(url.pathname + url.search, target.url), {
      method: request.method,
      headers,
      ...(hasBody ? { body: request.body, duplex: "half" } : {}),
      redirect: "manual",
      signal: request.signal,
    } as RequestInit);
  } catch {
    // Where nodes reach each other is the operator's business, not the caller's: no address given.
    throw nodeUnavailable(target, "cannot be reached");
  }
  const out = new Headers(answer.headers);
  for (const name of HOP_BY_HOP) out.delete(name);
  return new Response(answer.body, { status: answer.status, statusText: answer.statusText, headers: out });
}

/**
 * Passes a WebSocket upgrade to `target`: once the owner accepts it, the caller's socket is
 * upgraded here and frames go both ways unchanged (binary stays binary, text stays text). An owner
 * that refuses the upgrade has its HTTP answer passed on; one that cannot be reached rejects with
 * node_unavailable (the caller's socket is left for the caller to answer).
 */
export function proxyWebSocket(
  wss: WebSocketServer,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  target: ProxyTarget,
  fromNode: string,
): Promise<void> {
  const url = new URL(req.url ?? "/", target.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const upstream = new WebSocket(url, {
    headers: { authorization: req.headers.authorization ?? "", [PROXIED_HEADER]: fromNode },
    maxPayload: wss.options.maxPayload,
  });
  // The caller went away before the owner answered.
  const gone = () => upstream.terminate();
  socket.once("close", gone);
  return new Promise<void>((resolve, reject) => {
    upstream.on("error", () => {
      socket.off("close", gone);
      reject(nodeUnavailable(target, "cannot be reached"));
    });
    upstream.once("unexpected-response", (request, res) => {
      socket.off("close", gone);
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("error", () => socket.destroy());
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        const type = res.headers["content-type"] ?? "application/json";
        const status = `HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ""}`;
        const fields = `Content-Type: ${type}\r\nContent-Length: ${body.length}\r\nConnection: close`;
        socket.end(Buffer.concat([Buffer.from(`${status}\r\n${fields}\r\n\r\n`), body]));
        request.destroy();
        resolve();
      });
    });
    upstream.once("open", () => {
      socket.off("close", gone);
      if (socket.destroyed) {
        upstream.terminate();
        return resolve();
      }
      wss.handleUpgrade(req, socket, head, (client) => {
        relay(client, upstream);
        relay(upstream, client);
        resolve();
      });
    });
  });
}

/** Frames from `from` go to `to`; when `from` closes or breaks, so does `to`. */
function relay(from: WebSocket, to: WebSocket): void {
  from.on("message", (data: RawData, isBinary: boolean) => {
    if (to.readyState === WebSocket.OPEN) to.send(data, { binary: isBinary });
  });
  from.on("close", (code: number, reason: Buffer) => {
    // Codes such as 1005 (none given) and 1006 (dropped) say what happened; they cannot be sent.
    const sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || code >= 3000;
    if (sendable) to.close(code, reason);
    else to.close(1000);
  });
  from.on("error", () => to.terminate());
}
