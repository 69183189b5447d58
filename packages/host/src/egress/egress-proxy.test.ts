import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { Agent, createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import {
  type AddressInfo,
  createServer as createNetServer,
  connect as netConnect,
  type Server,
  type Socket,
} from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { waitFor } from "../testing/wait.ts";
import { EgressProxy, type EgressProxyOptions, type EgressRecord, MAX_HEADER_BYTES } from "./egress-proxy.ts";

let work: string;
let counter = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "paddock-egress-"));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A listening server that counts the connections it accepted. */
interface Origin {
  port: number;
  connections: () => number;
  close: () => Promise<void>;
}

async function listenLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

function counted(server: Server): { sockets: Set<Socket>; count: () => number } {
  const sockets = new Set<Socket>();
  let count = 0;
  server.on("connection", (socket: Socket) => {
    count++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return { sockets, count: () => count };
}

/** A TCP server that echoes every byte back. */
async function echoOrigin(): Promise<Origin & { serverSockets: Set<Socket> }> {
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => socket.destroy());
    socket.pipe(socket);
  });
  const { sockets, count } = counted(server);
  const port = await listenLoopback(server);
  return { port, connections: count, serverSockets: sockets, close: () => closeServer(server, sockets) };
}

interface SeenRequest {
  method: string;
  url: string;
  rawHeaders: string[];
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP origin; `handler` answers, every request it got is in `seen`. */
async function httpOrigin(
  handler: (req: SeenRequest, res: import("node:http").ServerResponse) => void,
): Promise<Origin & { seen: SeenRequest[] }> {
  const seen: SeenRequest[] = [];
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const entry = {
        method: req.method ?? "",
        url: req.url ?? "",
        rawHeaders: req.rawHeaders,
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      };
      seen.push(entry);
      handler(entry, res);
    });
  });
  const { sockets, count } = counted(server);
  const port = await listenLoopback(server);
  return { port, seen, connections: count, close: () => closeServer(server, sockets) };
}

interface Harness {
  proxy: EgressProxy;
  socketPath: string;
  records: EgressRecord[];
  lookups: string[];
}

const LOCAL_NAMES: Record<string, string[]> = {
  "deb.debian.test": ["127.0.0.1"],
  "registry.npm.test": ["127.0.0.1"],
  "a.x.test": ["127.0.0.1"],
  "x.test": ["127.0.0.1"],
  "evil.test": ["127.0.0.1"],
};

async function startProxy(
  options: Partial<EgressProxyOptions> & { ports: number[] },
  allowPrivate = true,
): Promise<Harness> {
  const socketPath = join(work, `proxy-${counter++}.sock`);
  const records: EgressRecord[] = [];
  const lookups: string[] = [];
  const proxy = new EgressProxy(
    {
      socketPath,
      allow: ["deb.debian.test", "registry.npm.test", "*.x.test"],
      onRecord: (record) => records.push(record),
      resolve: async (host) => {
        lookups.push(host);
        const addresses = LOCAL_NAMES[host];
        if (!addresses) throw Object.assign(new Error(`ENOTFOUND ${host}`), { code: "ENOTFOUND" });
        return addresses;
      },
      allowedPorts: options.ports,
      ...options,
    },
    allowPrivate ? { allowPrivateAddresses: true } : undefined,
  );
  await proxy.start();
  return { proxy, socketPath, records, lookups };
}

function recordsFor(h: Harness, count: number): Promise<EgressRecord[]> {
  return waitFor(() => h.records.length >= count && h.records, { what: `${count} record(s)` });
}

/** Sends raw bytes on a fresh proxy connection and returns everything it answers until it closes. */
function rawExchange(socketPath: string, bytes: string | Buffer, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString())}`));
    }, timeoutMs);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString("latin1"));
    });
    socket.write(bytes);
  });
}

function statusOf(response: string): number {
  const match = /^HTTP\/1\.1 (\d{3}) /.exec(response);
  return match ? Number(match[1]) : 0;
}

/** Opens a CONNECT tunnel; resolves with the proxy's status line code and the socket. */
function openTunnel(socketPath: string, target: string): Promise<{ status: number; head: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      const head = buffered.subarray(0, end).toString("latin1");
      const rest = buffered.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      resolve({ status: statusOf(head), head, socket });
    };
    socket.on("data", onData);
    socket.on("error", reject);
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  });
}

function readExactly(socket: Socket, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= length) {
        socket.off("data", onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on("data", onData);
    socket.once("close", () => reject(new Error(`closed after ${got} of ${length} bytes`)));
  });
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once("close", () => resolve());
  });
}

/** A request through the proxy with Node's own client, straight on the Unix socket. */
function proxyRequest(
  socketPath: string,
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string[]; agent?: Agent } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      socketPath,
      path: url,
      method: init.method ?? "GET",
      headers: init.headers,
      agent: init.agent,
    });
    req.on("error", reject);
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          reused: req.reusedSocket,
        }),
      );
      res.on("error", reject);
    });
    for (const chunk of init.body ?? []) req.write(chunk);
    req.end();
  });
}

describe("EgressProxy", { timeout: 30_000 }, () => {
  test("listens on a Unix socket anyone can connect to, and removes it on close", async () => {
    const h = await startProxy({ ports: [443] });
    assert.equal((await stat(h.socketPath)).mode & 0o777, 0o666);
    await h.proxy.close();
    assert.equal(existsSync(h.socketPath), false);
  });

  test("a second proxy on a live socket path fails instead of stealing it", async () => {
    const h = await startProxy({ ports: [443] });
    const second = new EgressProxy({ socketPath: h.socketPath, allow: [], onRecord: () => {} });
    await assert.rejects(second.start(), /EADDRINUSE/);
    await h.proxy.close();
  });

  test("a stale socket file left by a killed process is replaced", async () => {
    const socketPath = join(work, `stale-${counter++}.sock`);
    const child = spawn(process.execPath, [
      "-e",
      `require("node:net").createServer().listen(${JSON.stringify(socketPath)}, () => console.log("up"))`,
    ]);
    await new Promise((resolve) => child.stdout.once("data", resolve));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    await exited;
    assert.equal(existsSync(socketPath), true);
    const proxy = new EgressProxy({ socketPath, allow: [], onRecord: () => {} });
    await proxy.start();
    await proxy.close();
  });

  test("an allowed CONNECT tunnels bytes both ways and is recorded", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port] });
    try {
      const { status, head, socket } = await openTunnel(h.socketPath, `deb.debian.test:${echo.port}`);
      assert.equal(status, 200, head);
      const payload = Buffer.alloc(200_000, "abcdefgh");
      socket.write(payload);
      const back = await readExactly(socket, payload.length);
      assert.equal(back.equals(payload), true);
      socket.end();
      await closed(socket);
      const [record] = await recordsFor(h, 1);
      assert.deepEqual(
        { ...record, time: undefined, ms: undefined },
        {
          time: undefined,
          ms: undefined,
          method: "CONNECT",
          host: "deb.debian.test",
          port: echo.port,
          decision: "allowed",
          status: 200,
          bytesIn: payload.length,
          bytesOut: payload.length,
        },
      );
      assert.match(record?.time ?? "", /^\d{4}-\d\d-\d\dT/);
      assert.equal(typeof record?.ms, "number");
      assert.deepEqual(h.lookups, ["deb.debian.test"]);
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("bytes sent right after the CONNECT head reach the origin", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port] });
    try {
      const socket = netConnect(h.socketPath);
      const target = `registry.npm.test:${echo.port}`;
      socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\nearly-bytes`);
      const expected = "HTTP/1.1 200 Connection Established\r\n\r\nearly-bytes";
      const got = await readExactly(socket, expected.length);
      assert.equal(got.toString(), expected);
      socket.destroy();
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("an allowed absolute-form GET is forwarded, streamed back, and stripped of hop-by-hop headers", async () => {
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const origin = await httpOrigin((_req, res) => {
      res.writeHead(200, [
        "Content-Type",
        "text/plain",
        "Keep-Alive",
        "timeout=5",
        "Connection",
        "close, X-Origin-Hop",
        "X-Origin-Hop",
        "1",
        "Proxy-Authenticate",
        "Basic",
        "X-Origin-End",
        "kept",
      ]);
      res.write("first-part;");
      void released.then(() => res.end("second-part"));
    });
    const h = await startProxy({ ports: [origin.port] });
    try {
      const url = `http://deb.debian.test:${origin.port}/debian/dists/bookworm/InRelease?x=1`;
      const socket = netConnect(h.socketPath);
      socket.write(
        `GET ${url} HTTP/1.1\r\n` +
          "Host: somewhere-else.test\r\n" +
          "Connection: close, X-Secret-Hop\r\n" +
          "X-Secret-Hop: 1\r\n" +
          "Keep-Alive: 300\r\n" +
          "Proxy-Connection: keep-alive\r\n" +
          "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n" +
          "TE: trailers\r\n" +
          "Upgrade: websocket\r\n" +
          "User-Agent: Debian APT-HTTP/1.3\r\n" +
          "X-End: kept\r\n\r\n",
      );
      let response = "";
      socket.on("data", (chunk: Buffer) => {
        response += chunk.toString("latin1");
        if (response.includes("first-part;")) release();
      });
      await closed(socket);

      const [seen] = origin.seen;
      assert.ok(seen);
      assert.equal(seen.method, "GET");
      assert.equal(seen.url, "/debian/dists/bookworm/InRelease?x=1");
      assert.equal(seen.headers.host, `deb.debian.test:${origin.port}`);
      assert.equal(seen.headers["user-agent"], "Debian APT-HTTP/1.3");
      assert.equal(seen.headers["x-end"], "kept");
      for (const name of ["proxy-authorization", "proxy-connection", "x-secret-hop", "keep-alive", "te", "upgrade"]) {
        assert.equal(seen.headers[name], undefined, name);
      }
      assert.equal(seen.headers.connection, "close");

      const [head = "", body] = response.split("\r\n\r\n");
      assert.equal(statusOf(head), 200);
      const lowerHead = head.toLowerCase();
      assert.match(lowerHead, /\r\nx-origin-end: kept/);
      assert.doesNotMatch(lowerHead, /x-origin-hop|keep-alive|proxy-authenticate/);
      assert.ok(body?.includes("first-part;"));
      assert.ok(response.includes("second-part"));

      const [record] = await recordsFor(h, 1);
      assert.equal(record?.method, "GET");
      assert.equal(record?.host, "deb.debian.test");
      assert.equal(record?.port, origin.port);
      assert.equal(record?.decision, "allowed");
      assert.equal(record?.status, 200);
      assert.equal(record?.bytesIn, "first-part;second-part".length);
      assert.equal(record?.bytesOut, 0);
      assert.deepEqual(Object.keys(record ?? {}).sort(), [
        "bytesIn",
        "bytesOut",
        "decision",
        "host",
        "method",
        "ms",
        "port",
        "status",
        "time",
      ]);
    } finally {
      await h.proxy.close();
      await origin.close();
    }
  });

  test("request bodies are forwarded and keep-alive client connections carry several requests", async () => {
    const origin = await httpOrigin((req, res) => {
      res.writeHead(201, { "content-type": "text/plain" });
      res.end(`${req.method} ${req.url} ${req.body}`);
    });
    const h = await startProxy({ ports: [origin.port] });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const base = `http://registry.npm.test:${origin.port}`;
      const first = await proxyRequest(h.socketPath, `${base}/left-pad`, {
        method: "PUT",
        body: ["hello ", "world"],
        agent,
      });
      assert.equal(first.status, 201);
      assert.equal(first.body, "PUT /left-pad hello world");
      const second = await proxyRequest(h.socketPath, `${base}/-/left-pad-1.3.0.tgz`, {
        method: "POST",
        headers: { "content-type": "text/plain", "content-length": "4" },
        body: ["data"],
        agent,
      });
      assert.equal(second.body, "POST /-/left-pad-1.3.0.tgz data");
      assert.equal(second.reused, true);
      const records = await recordsFor(h, 2);
      assert.deepEqual(
        records.map((r) => [r.method, r.status, r.bytesOut]),
        [
          ["PUT", 201, 11],
          ["POST", 201, 4],
        ],
      );
    } finally {
      agent.destroy();
      await h.proxy.close();
      await origin.close();
    }
  });

  test("large, chunked and bodiless responses arrive intact", async () => {
    const large = Buffer.alloc(4 * 1024 * 1024 + 17, "0123456789abcdef");
    const origin = await httpOrigin((req, res) => {
      if (req.url === "/large") {
        res.writeHead(200, { "content-length": large.length });
        res.end(large);
      } else if (req.url === "/chunked") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.write("a");
        res.write("b");
        res.end("c");
      } else if (req.url === "/not-modified") {
        res.writeHead(304, { etag: '"x"' });
        res.end();
      } else {
        res.writeHead(200, { "content-length": 1234 });
        res.end();
      }
    });
    const h = await startProxy({ ports: [origin.port] });
    try {
      const base = `http://deb.debian.test:${origin.port}`;
      const got = await proxyRequest(h.socketPath, `${base}/large`);
      assert.equal(got.status, 200);
      assert.equal(got.headers["content-length"], String(large.length));
      assert.equal(got.body.length, large.length);
      assert.equal(got.body, large.toString());
      const chunked = await proxyRequest(h.socketPath, `${base}/chunked`);
      assert.equal(chunked.body, "abc");
      const head = await proxyRequest(h.socketPath, `${base}/head`, { method: "HEAD" });
      assert.equal(head.status, 200);
      assert.equal(head.headers["content-length"], "1234");
      assert.equal(head.body, "");
      const notModified = await proxyRequest(h.socketPath, `${base}/not-modified`);
      assert.equal(notModified.status, 304);
      assert.equal(notModified.headers.etag, '"x"');
      const records = await recordsFor(h, 4);
      assert.deepEqual(
        records.map((r) => [r.status, r.bytesIn]),
        [
          [200, large.length],
          [200, 3],
          [200, 0],
          [304, 0],
        ],
      );
    } finally {
      await h.proxy.close();
      await origin.close();
    }
  });

  test("a host outside the allowlist gets 403, a refused record, and no lookup or connection", async () => {
    const origin = await httpOrigin((_req, res) => res.end("should not happen"));
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [origin.port, echo.port] });
    try {
      const get = await proxyRequest(h.socketPath, `http://evil.test:${origin.port}/`);
      assert.equal(get.status, 403);
      assert.match(get.body, /evil\.test/);
      assert.match(get.body, /allowlist/);
      const tunnel = await openTunnel(h.socketPath, `evil.test:${echo.port}`);
      assert.equal(tunnel.status, 403);
      tunnel.socket.destroy();
      const records = await recordsFor(h, 2);
      for (const record of records) {
        assert.equal(record.decision, "refused");
        assert.equal(record.status, 403);
        assert.equal(record.host, "evil.test");
        assert.match(record.reason ?? "", /allowlist/);
      }
      assert.deepEqual(h.lookups, []);
      assert.equal(origin.connections(), 0);
      assert.equal(echo.connections(), 0);
    } finally {
      await h.proxy.close();
      await origin.close();
      await echo.close();
    }
  });

  test("*.x.test allows a.x.test but not x.test; names match case-insensitively with a trailing dot", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port] });
    try {
      const sub = await openTunnel(h.socketPath, `a.x.test:${echo.port}`);
      assert.equal(sub.status, 200);
      sub.socket.destroy();
      const upper = await openTunnel(h.socketPath, `A.X.TEST.:${echo.port}`);
      assert.equal(upper.status, 200);
      upper.socket.destroy();
      assert.equal(echo.connections(), 2);
      const apex = await openTunnel(h.socketPath, `x.test:${echo.port}`);
      assert.equal(apex.status, 403);
      apex.socket.destroy();
      assert.equal(echo.connections(), 2);
      const records = await recordsFor(h, 3);
      assert.deepEqual(records.map((r) => [r.host, r.decision]).sort(), [
        ["a.x.test", "allowed"],
        ["a.x.test", "allowed"],
        ["x.test", "refused"],
      ]);
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("IP-literal targets in every spelling are refused, even with private addresses allowed", async () => {
    const origin = await httpOrigin((_req, res) => res.end("should not happen"));
    const h = await startProxy({ ports: [80, 443, origin.port] });
    const spellings = [
      `127.0.0.1:${origin.port}`,
      "127.0.0.1",
      "2130706433",
      "0x7f.1",
      "0x7f000001",
      "0177.0.0.1",
      "127.1",
      "169.254.169.254",
      "[::1]",
      "[::ffff:127.0.0.1]",
      "[0:0:0:0:0:0:0:1]:443",
      "[fe80::1%25lo]",
    ];
    try {
      for (const spelling of spellings) {
        const get = await proxyRequest(h.socketPath, `http://${spelling}/`);
        assert.equal(get.status, 403, spelling);
        assert.match(get.body, /IP-literal/, spelling);
        const authority = /:\d+$/.test(spelling) && !spelling.endsWith("]") ? spelling : `${spelling}:443`;
        const tunnel = await openTunnel(h.socketPath, authority);
        assert.equal(tunnel.status, 403, authority);
        tunnel.socket.destroy();
      }
      const bare = await openTunnel(h.socketPath, "::1:443");
      assert.equal(bare.status, 403);
      bare.socket.destroy();
      const records = await recordsFor(h, spellings.length * 2 + 1);
      for (const record of records) {
        assert.equal(record.decision, "refused");
        assert.match(record.reason ?? "", /IP-literal/);
      }
      assert.deepEqual(h.lookups, []);
      assert.equal(origin.connections(), 0);
    } finally {
      await h.proxy.close();
      await origin.close();
    }
  });

  test("with private addresses not allowed, listed names resolving to internal addresses are refused", async () => {
    const origin = await httpOrigin((_req, res) => res.end("should not happen"));
    const cases: [string[], RegExp][] = [
      [["127.0.0.1"], /loopback address 127\.0\.0\.1/],
      [["10.0.0.1"], /private address 10\.0\.0\.1/],
      [["169.254.169.254"], /link-local address 169\.254\.169\.254/],
      [["::1"], /loopback address ::1/],
      [["::ffff:127.0.0.1"], /loopback/],
      [["100.64.0.1"], /cgnat/],
      [["fd00::1"], /private/],
      [["fe80::1"], /link-local/],
      [["0.0.0.0"], /unspecified/],
      [["224.0.0.1"], /multicast/],
      [["93.184.216.34", "127.0.0.1"], /loopback address 127\.0\.0\.1/],
    ];
    try {
      for (const [addresses, reason] of cases) {
        const socketPath = join(work, `proxy-${counter++}.sock`);
        const records: EgressRecord[] = [];
        const proxy = new EgressProxy({
          socketPath,
          allow: ["deb.debian.test"],
          onRecord: (record) => records.push(record),
          resolve: async () => addresses,
          allowedPorts: [origin.port],
        });
        await proxy.start();
        try {
          const get = await proxyRequest(socketPath, `http://deb.debian.test:${origin.port}/`);
          assert.equal(get.status, 403, addresses.join());
          assert.match(get.body, reason);
          const tunnel = await openTunnel(socketPath, `deb.debian.test:${origin.port}`);
          assert.equal(tunnel.status, 403, addresses.join());
          tunnel.socket.destroy();
          await waitFor(() => records.length === 2, { what: "records" });
          for (const record of records) {
            assert.equal(record.decision, "refused");
            assert.match(record.reason ?? "", reason);
          }
        } finally {
          await proxy.close();
        }
      }
      assert.equal(origin.connections(), 0);
    } finally {
      await origin.close();
    }
  });

  test("ports outside the allowed list are refused before any lookup", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [443] });
    try {
      const tunnel = await openTunnel(h.socketPath, `deb.debian.test:${echo.port}`);
      assert.equal(tunnel.status, 403);
      assert.match(tunnel.head, /403 Forbidden/);
      tunnel.socket.destroy();
      const ssh = await openTunnel(h.socketPath, "deb.debian.test:22");
      assert.equal(ssh.status, 403);
      ssh.socket.destroy();
      const get = await proxyRequest(h.socketPath, `http://deb.debian.test:${echo.port}/`);
      assert.equal(get.status, 403);
      assert.match(get.body, new RegExp(`port ${echo.port} is not allowed`));
      assert.deepEqual(h.lookups, []);
      assert.equal(echo.connections(), 0);
      const records = await recordsFor(h, 3);
      assert.ok(records.every((r) => r.decision === "refused" && /port \d+ is not allowed/.test(r.reason ?? "")));
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("the default ports are 80 and 443", async () => {
    const h = await startProxy({
      ports: [],
      allowedPorts: undefined,
      connectTimeoutMs: 100,
      resolve: () => new Promise(() => {}),
    });
    try {
      assert.equal(statusOf(await rawExchange(h.socketPath, "CONNECT deb.debian.test:8443 HTTP/1.1\r\n\r\n")), 403);
      assert.equal(statusOf(await rawExchange(h.socketPath, "CONNECT deb.debian.test:443 HTTP/1.1\r\n\r\n")), 504);
      const get = await proxyRequest(h.socketPath, "http://deb.debian.test/");
      assert.equal(get.status, 504);
    } finally {
      await h.proxy.close();
    }
  });

  test("malformed requests get 400 and oversized heads 431, with refused records", async () => {
    const origin = await httpOrigin((_req, res) => res.end("should not happen"));
    const h = await startProxy({ ports: [origin.port] });
    try {
      const big = "a".repeat(MAX_HEADER_BYTES + 1024);
      const oversized = await rawExchange(
        h.socketPath,
        `GET http://deb.debian.test:${origin.port}/ HTTP/1.1\r\nHost: deb.debian.test\r\nX-Big: ${big}\r\n\r\n`,
      );
      assert.equal(statusOf(oversized), 431);
      const manyHeaders = Array.from({ length: 2000 }, (_, i) => `X-H${i}: ${"v".repeat(20)}\r\n`).join("");
      assert.equal(
        statusOf(
          await rawExchange(h.socketPath, `GET http://deb.debian.test:${origin.port}/ HTTP/1.1\r\n${manyHeaders}\r\n`),
        ),
        431,
      );
      const malformed = [
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        "HELLO\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: deb.debian.test\r\n\r\n",
        `GET https://deb.debian.test:${origin.port}/ HTTP/1.1\r\n\r\n`,
        `GET ftp://deb.debian.test:${origin.port}/ HTTP/1.1\r\n\r\n`,
        `GET http://user@deb.debian.test:${origin.port}/ HTTP/1.1\r\n\r\n`,
        `GET http://evil.test@deb.debian.test:${origin.port}/ HTTP/1.1\r\n\r\n`,
        "GET http://deb.debian.test:99999/ HTTP/1.1\r\n\r\n",
        "GET http://deb..debian.test/ HTTP/1.1\r\n\r\n",
        "CONNECT deb.debian.test HTTP/1.1\r\n\r\n",
        "CONNECT deb.debian.test:0 HTTP/1.1\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
        "CONNECT deb.debian.test:443x HTTP/1.1\r\n\r\n",
        "GET http://deb.debian.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      ];
      for (const request of malformed) {
        const response = await rawExchange(h.socketPath, request);
        assert.equal(statusOf(response), 400, JSON.stringify(request));
      }
      const kelvin = await rawExchange(
        h.socketPath,
        Buffer.from(`GET http://deb.debian.tes\u212a:${origin.port}/ HTTP/1.1\r\n\r\n`),
      );
      assert.ok([400, 403].includes(statusOf(kelvin)), kelvin);
      const records = await recordsFor(h, malformed.length + 3);
      assert.ok(records.every((r) => r.decision === "refused"));
      assert.deepEqual(
        records.slice(0, 2).map((r) => r.status),
        [431, 431],
      );
      assert.deepEqual(h.lookups, []);
      assert.equal(origin.connections(), 0);
    } finally {
      await h.proxy.close();
      await origin.close();
    }
  });

  test("origin failures answer 502 and timeouts 504", async () => {
    const closedPort = await (async () => {
      const server = createNetServer();
      const port = await listenLoopback(server);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      return port;
    })();
    const silent = await echoOrigin();
    const silentHttp = createNetServer(() => {});
    const silentCount = counted(silentHttp);
    const silentPort = await listenLoopback(silentHttp);
    const h = await startProxy({ ports: [closedPort, silent.port, silentPort], idleTimeoutMs: 300 });
    try {
      const refused = await proxyRequest(h.socketPath, `http://deb.debian.test:${closedPort}/`);
      assert.equal(refused.status, 502);
      assert.match(refused.body, /ECONNREFUSED/);
      assert.equal(
        statusOf(await rawExchange(h.socketPath, `CONNECT deb.debian.test:${closedPort} HTTP/1.1\r\n\r\n`)),
        502,
      );
      const unknown = await proxyRequest(h.socketPath, "http://unknown.x.test:80/");
      assert.equal(unknown.status, 403);
      const h2 = await startProxy({ ports: [80] });
      try {
        const notFound = await proxyRequest(h2.socketPath, "http://b.x.test/");
        assert.equal(notFound.status, 502);
        assert.match(notFound.body, /DNS lookup failed/);
      } finally {
        await h2.proxy.close();
      }
      const started = Date.now();
      const stalled = await proxyRequest(h.socketPath, `http://deb.debian.test:${silentPort}/`);
      assert.equal(stalled.status, 504);
      assert.ok(Date.now() - started >= 250);
      assert.equal(silentCount.count(), 1);
      const records = await recordsFor(h, 4);
      assert.deepEqual(
        records.map((r) => [r.decision, r.status]),
        [
          ["allowed", 502],
          ["allowed", 502],
          ["refused", 403],
          ["allowed", 504],
        ],
      );
    } finally {
      await h.proxy.close();
      await silent.close();
      await closeServer(silentHttp, silentCount.sockets);
    }
  });

  test("a lookup that never answers ends in 504 after connectTimeoutMs", async () => {
    const h = await startProxy({ ports: [443], connectTimeoutMs: 150, resolve: () => new Promise(() => {}) });
    try {
      const started = Date.now();
      const response = await rawExchange(h.socketPath, "CONNECT deb.debian.test:443 HTTP/1.1\r\n\r\n");
      assert.equal(statusOf(response), 504);
      assert.ok(Date.now() - started >= 140);
      const [record] = await recordsFor(h, 1);
      assert.match(record?.reason ?? "", /timed out/);
    } finally {
      await h.proxy.close();
    }
  });

  test("close() ends open tunnels and idle connections", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port] });
    try {
      const tunnel = await openTunnel(h.socketPath, `deb.debian.test:${echo.port}`);
      assert.equal(tunnel.status, 200);
      tunnel.socket.write("ping");
      await readExactly(tunnel.socket, 4);
      const idle = netConnect(h.socketPath);
      await new Promise((resolve) => idle.once("connect", resolve));
      assert.equal(echo.serverSockets.size, 1);
      await h.proxy.close();
      await closed(tunnel.socket);
      await closed(idle);
      await waitFor(() => echo.serverSockets.size === 0, { what: "origin side closed" });
      const [record] = await recordsFor(h, 1);
      assert.equal(record?.bytesOut, 4);
      assert.equal(record?.bytesIn, 4);
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("silent clients and idle tunnels are dropped after idleTimeoutMs", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port], idleTimeoutMs: 250 });
    try {
      const started = Date.now();
      const silent = netConnect(h.socketPath);
      silent.on("error", () => {});
      await closed(silent);
      const silentMs = Date.now() - started;
      assert.ok(silentMs >= 200, `dropped after ${silentMs} ms`);

      const tunnel = await openTunnel(h.socketPath, `deb.debian.test:${echo.port}`);
      assert.equal(tunnel.status, 200);
      const opened = Date.now();
      for (let i = 0; i < 4; i++) {
        await sleep(100);
        tunnel.socket.write("x");
      }
      await closed(tunnel.socket);
      const tunnelMs = Date.now() - opened;
      assert.ok(tunnelMs >= 600, `an active tunnel was dropped after ${tunnelMs} ms`);
      const [record] = await recordsFor(h, 1);
      assert.equal(record?.reason, "idle timeout");
      assert.equal(record?.bytesOut, 4);
    } finally {
      await h.proxy.close();
      await echo.close();
    }
  });

  test("a client trickling its request head is cut off by headersTimeoutMs", async () => {
    const h = await startProxy({ ports: [80], idleTimeoutMs: 5000, headersTimeoutMs: 300 });
    try {
      const socket = netConnect(h.socketPath);
      socket.on("error", () => {});
      let response = "";
      socket.on("data", (chunk: Buffer) => {
        response += chunk.toString();
      });
      socket.write("GET http://deb.debian.test/ HTTP/1.1\r\n");
      // Trickles a header line now and then until the proxy cuts the connection; the 408 says why.
      const started = Date.now();
      while (!socket.destroyed && Date.now() - started < 30_000) {
        socket.write("X-A: b\r\n");
        await sleep(50);
      }
      await closed(socket);
      assert.equal(statusOf(response), 408);
    } finally {
      await h.proxy.close();
    }
  });

  test("connections beyond maxConnections are dropped and recorded", async () => {
    const echo = await echoOrigin();
    const h = await startProxy({ ports: [echo.port], maxConnections: 2 });
    const sockets: Socket[] = [];
    try {
      // Two open tunnels: their answers show the proxy has taken both connections.
      for (let i = 0; i < 2; i++) {
        const tunnel = await openTunnel(h.socketPath, `deb.debian.test:${echo.port}`);
        assert.equal(tunnel.status, 200);
        tunnel.socket.on("error", () => {});
        sockets.push(tunnel.socket);
      }
      const response = await rawExchange(h.socketPath, "CONNECT deb.debian.test:80 HTTP/1.1\r\n\r\n");
      assert.equal(response, "");
      const [record] = await recordsFor(h, 1);
      assert.equal(record?.decision, "refused");
      assert.match(record?.reason ?? "", /too many/);
      assert.equal(sockets.filter((s) => !s.destroyed).length, 2);
    } finally {
      for (const socket of sockets) socket.destroy();
      await h.proxy.close();
      await echo.close();
    }
  });

  test("a throwing or rejecting onRecord does not break the proxy", async () => {
    const socketPath = join(work, `proxy-${counter++}.sock`);
    let calls = 0;
    const proxy = new EgressProxy({
      socketPath,
      allow: ["deb.debian.test"],
      onRecord: (() => {
        calls++;
        if (calls === 1) throw new Error("audit sink down");
        return Promise.reject(new Error("audit sink still down"));
      }) as (record: EgressRecord) => void,
    });
    await proxy.start();
    try {
      assert.equal(statusOf(await rawExchange(socketPath, "CONNECT evil.test:443 HTTP/1.1\r\n\r\n")), 403);
      assert.equal(statusOf(await rawExchange(socketPath, "CONNECT evil.test:443 HTTP/1.1\r\n\r\n")), 403);
      await waitFor(() => calls === 2, { what: "both records" });
    } finally {
      await proxy.close();
    }
  });

  test("invalid options are rejected", () => {
    const base = { socketPath: join(work, "never.sock"), allow: ["deb.debian.test"], onRecord: () => {} };
    assert.throws(() => new EgressProxy({ ...base, allow: ["10.0.0.1"] }), TypeError);
    assert.throws(() => new EgressProxy({ ...base, allow: ["*"] }), TypeError);
    assert.throws(() => new EgressProxy({ ...base, allowedPorts: [0] }), RangeError);
    assert.throws(() => new EgressProxy({ ...base, idleTimeoutMs: -1 }), RangeError);
  });
});
