/**
 * A notification endpoint on loopback for tests and benchmarks, playing a tenant's service: it
 * keeps every request it gets and answers each as told (a status, a redirect, or no answer at
 * all), and checks signatures the way a receiver would, with its own HMAC, not the host's code.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import http, { type IncomingHttpHeaders, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { NOTIFICATION_HEADERS, NotificationPayload } from "@paddock/protocol";

export interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  payload: NotificationPayload;
  /** When it arrived (Date.now()). */
  at: number;
}

/** How to answer a request: a status, a status with headers, or "hold" (never answer). */
export type Answer = number | { status: number; headers: Record<string, string> } | "hold";

export interface NotificationReceiver {
  /** http://127.0.0.1:PORT/hook */
  url: string;
  port: number;
  received: Received[];
  /** The answers of the next requests, in order; after them, `otherwise` (default 200). */
  answer(...answers: Answer[]): void;
  otherwise: Answer;
  /** Called with each request as it arrives. */
  onRequest?: (r: Received) => void;
  close(): Promise<void>;
}

export async function startNotificationReceiver(): Promise<NotificationReceiver> {
  const queue: Answer[] = [];
  const received: Received[] = [];
  const held: ServerResponse[] = [];
  const receiver: Partial<NotificationReceiver> = { received, otherwise: 200 };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const r = { headers: req.headers, body, payload: NotificationPayload.parse(JSON.parse(body)), at: Date.now() };
      received.push(r);
      receiver.onRequest?.(r);
      const answer = queue.shift() ?? receiver.otherwise ?? 200;
      if (answer === "hold") {
        held.push(res);
        return;
      }
      const { status, headers } = typeof answer === "number" ? { status: answer, headers: {} } : answer;
      res.writeHead(status, headers).end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(receiver, {
    url: `http://127.0.0.1:${port}/hook`,
    port,
    answer: (...answers: Answer[]) => void queue.push(...answers),
    async close() {
      for (const res of held) res.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  }) as NotificationReceiver;
}

/**
 * The secrets (of those given) whose signature the request carries: a receiver accepts it when
 * one of its secrets is among them.
 */
export function signedWith(r: Received, secrets: string[]): string[] {
  const timestamp = String(r.headers[NOTIFICATION_HEADERS.timestamp] ?? "");
  const delivery = String(r.headers[NOTIFICATION_HEADERS.delivery] ?? "");
  const given = String(r.headers[NOTIFICATION_HEADERS.signature] ?? "")
    .split(",")
    .map((s) => Buffer.from(s.trim()));
  return secrets.filter((secret) => {
    const mac = createHmac("sha256", secret).update(`${timestamp}.${delivery}.${r.body}`).digest("hex");
    const expected = Buffer.from(`sha256=${mac}`);
    return given.some((g) => g.length === expected.length && timingSafeEqual(g, expected));
  });
}
