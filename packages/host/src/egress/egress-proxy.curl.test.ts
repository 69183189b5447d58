import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer as createHttpServer, type IncomingHttpHeaders } from "node:http";
import { createServer as createHttpsServer } from "node:https";
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
import { promisify } from "node:util";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { waitFor } from "../testing/wait.ts";
import { EgressProxy, type EgressRecord } from "./egress-proxy.ts";

const run = promisify(execFile);

function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

const curl = which("curl");
const openssl = which("openssl");
const skip = e2eSkip(!curl ? "curl is not installed" : !openssl && "openssl is not installed");

async function listenLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

function tracked(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return sockets;
}

function shut(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

describe("EgressProxy with curl through a TCP forwarder", { skip, timeout: 60_000 }, () => {
  let work: string;
  let proxy: EgressProxy;
  const records: EgressRecord[] = [];
  const seen: IncomingHttpHeaders[] = [];
  const servers: [Server, Set<Socket>][] = [];
  let httpsPort = 0;
  let httpPort = 0;
  let forwarderPort = 0;
  let caPath = "";

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "paddock-egress-curl-"));
    caPath = join(work, "cert.pem");
    const keyPath = join(work, "key.pem");
    execFileSync(
      openssl ?? "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=registry.npm.test",
        "-addext",
        "subjectAltName=DNS:registry.npm.test",
        "-keyout",
        keyPath,
        "-out",
        caPath,
      ],
      { stdio: "ignore" },
    );

    const https = createHttpsServer({ key: await readFile(keyPath), cert: await readFile(caPath) }, (req, res) => {
      seen.push(req.headers);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ name: "left-pad", url: req.url }));
    });
    servers.push([https, tracked(https)]);
    httpsPort = await listenLoopback(https);

    const http = createHttpServer((req, res) => {
      seen.push(req.headers);
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`Release file for ${req.url}\n`);
    });
    servers.push([http, tracked(http)]);
    httpPort = await listenLoopback(http);

    const socketPath = join(work, "egress.sock");
    proxy = new EgressProxy(
      {
        socketPath,
        allow: ["deb.debian.test", "registry.npm.test"],
        onRecord: (record) => records.push(record),
        resolve: async (host) => {
          if (host === "deb.debian.test" || host === "registry.npm.test") return ["127.0.0.1"];
          throw Object.assign(new Error("not found"), { code: "ENOTFOUND" });
        },
        allowedPorts: [httpsPort, httpPort],
      },
      { allowPrivateAddresses: true },
    );
    await proxy.start();

    // Stands in for the in-sandbox forwarder: 127.0.0.1:PORT piped to the proxy's Unix socket.
    const forwarder = createNetServer((client) => {
      const upstream = netConnect(socketPath);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
    });
    servers.push([forwarder, tracked(forwarder)]);
    forwarderPort = await listenLoopback(forwarder);
  });

  after(async () => {
    for (const [server, sockets] of servers) await shut(server, sockets);
    await proxy?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  function curlArgs(...args: string[]): string[] {
    return ["-q", "-sS", "--max-time", "20", "--proxy", `http://127.0.0.1:${forwarderPort}`, ...args];
  }

  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin" };

  test("HTTPS through CONNECT with certificate verification", async () => {
    const { stdout } = await run(
      curl ?? "curl",
      curlArgs("--cacert", caPath, `https://registry.npm.test:${httpsPort}/left-pad`),
      { env },
    );
    assert.deepEqual(JSON.parse(stdout), { name: "left-pad", url: "/left-pad" });
    const record = await waitFor(() => records.find((r) => r.method === "CONNECT" && r.host === "registry.npm.test"), {
      what: "the tunnel's record",
    });
    assert.equal(record.decision, "allowed");
    assert.equal(record.status, 200);
    assert.ok((record.bytesIn ?? 0) > 0 && (record.bytesOut ?? 0) > 0);
  });

  test("plain HTTP in absolute form, with the proxy credential stripped", async () => {
    const before = seen.length;
    const { stdout } = await run(
      curl ?? "curl",
      curlArgs("--proxy-user", "sandbox:secret", `http://deb.debian.test:${httpPort}/debian/dists/bookworm/Release`),
      { env },
    );
    assert.equal(stdout, "Release file for /debian/dists/bookworm/Release\n");
    const headers = seen[before];
    assert.ok(headers);
    assert.equal(headers["proxy-authorization"], undefined);
    assert.equal(headers["proxy-connection"], undefined);
    assert.equal(headers.host, `deb.debian.test:${httpPort}`);
  });

  test("refused hosts: 403 for plain HTTP and for CONNECT", async () => {
    const { stdout } = await run(
      curl ?? "curl",
      curlArgs("-o", "/dev/null", "-w", "%{http_code}", `http://evil.test:${httpPort}/`),
      { env },
    );
    assert.equal(stdout, "403");
    await assert.rejects(
      run(curl ?? "curl", curlArgs("-o", "/dev/null", `https://evil.test:${httpsPort}/`), { env }),
      (err: Error & { stderr?: string }) => /403/.test(err.stderr ?? ""),
    );
    assert.equal(records.filter((r) => r.host === "evil.test" && r.decision === "refused").length, 2);
  });
});
