/**
 * `paddock secrets` (the real bin/paddock) against a real host: values go in on stdin only and
 * never come out; `paddock serve --master-key-file/--old-master-key-file` rotates the master key
 * and refuses to start without the key the secrets were sealed under.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost, unsealRunners } from "@paddock/host";
import { e2eSkip } from "@paddock/host/e2e-skip";
import { cleanEnv, hostSkipReason, IMAGES, PADDOCK } from "./e2e-support.ts";

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

const show = (r: Result) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Runs bin/paddock with `stdin` piped in (closed at once when null). */
function paddock(args: string[], env: Record<string, string>, stdin: string | Buffer | null = null): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(PADDOCK, args, { env: cleanEnv(env), stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(stdin ?? "");
  });
}

const secretValue = (label: string) => `sk-${label}-${randomBytes(16).toString("hex")}`;

describe("paddock secrets", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dataDir: string;
  let host: RunningHost;
  let env: Record<string, string>;
  let tenantId: string;
  const values: string[] = [];
  const outputs: Result[] = [];

  const cli = async (args: string[], stdin: string | Buffer | null = null) => {
    const result = await paddock(args, env, stdin);
    outputs.push(result);
    return result;
  };

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "paddock-cli-secrets-"));
    host = await startHost({ dataDir, port: 0, imagesDir: IMAGES, log: () => {} });
    const admin = { authorization: `Bearer ${host.adminKey}`, "content-type": "application/json" };
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${host.url}${path}`, { method: "POST", headers: admin, body: JSON.stringify(body) });
      assert.equal(res.status, 201);
      return (await res.json()) as { id: string; key: string };
    };
    tenantId = (await post("/v1/tenants", { name: "cli-secrets" })).id;
    const key = (await post(`/v1/tenants/${tenantId}/keys`, {})).key;
    env = { PADDOCK_URL: host.url, PADDOCK_API_KEY: key };
  });
  after(async () => {
    await host?.close();
    if (dataDir) {
      await unsealRunners(dataDir);
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("sets a secret from stdin, dropping exactly one final line end", async () => {
    const value = secretValue("piped");
    values.push(value);
    const created = await cli(["secrets", "set", "GITHUB_TOKEN"], `${value}\n`);
    assert.equal(created.code, 0, show(created));
    assert.equal(created.stdout, "created secret GITHUB_TOKEN (version 1)\n");
    assert.equal(await host.secrets.reveal(tenantId, "GITHUB_TOKEN"), value);

    const updated = await cli(["secrets", "set", "GITHUB_TOKEN"], `${value}\n\n`);
    assert.equal(updated.code, 0, show(updated));
    assert.equal(updated.stdout, "updated secret GITHUB_TOKEN (version 2)\n");
    assert.equal(await host.secrets.reveal(tenantId, "GITHUB_TOKEN"), `${value}\n`);

    const crlf = await cli(["secrets", "set", "GITHUB_TOKEN", "--json"], `${value}\r\n`);
    assert.equal(crlf.code, 0, show(crlf));
    assert.deepEqual(Object.keys(JSON.parse(crlf.stdout)).sort(), ["created_at", "name", "updated_at", "version"]);
    assert.equal(await host.secrets.reveal(tenantId, "GITHUB_TOKEN"), value);

    const multiline = `-----BEGIN KEY-----\n${secretValue("pem")}\n-----END KEY-----`;
    values.push(multiline);
    const pem = await cli(["secrets", "set", "deploy.pem"], `${multiline}\n`);
    assert.equal(pem.code, 0, show(pem));
    assert.equal(await host.secrets.reveal(tenantId, "deploy.pem"), multiline);
  });

  it("never takes a value from the command line, and refuses an empty one", async () => {
    const value = secretValue("argv");
    const inArgv = await cli(["secrets", "set", "FROM_ARGV", value]);
    assert.equal(inArgv.code, 2, show(inArgv));
    const empty = await cli(["secrets", "set", "EMPTY"], "");
    assert.equal(empty.code, 1, show(empty));
    assert.match(empty.stderr, /the value is empty; pipe it in/);
    const newline = await cli(["secrets", "set", "EMPTY"], "\n");
    assert.equal(newline.code, 1, show(newline));
    const badName = await cli(["secrets", "set", "bad name"], "x");
    assert.equal(badName.code, 2, show(badName));
    const binary = await cli(["secrets", "set", "BINARY"], Buffer.from([0x73, 0x6b, 0xff, 0xfe]));
    assert.equal(binary.code, 1, show(binary));
    assert.match(binary.stderr, /not UTF-8 text/);
    assert.equal(await host.secrets.reveal(tenantId, "BINARY"), null);
    assert.equal(await host.secrets.reveal(tenantId, "FROM_ARGV"), null);
    assert.equal(await host.secrets.reveal(tenantId, "EMPTY"), null);
  });

  it("lists names and versions only", async () => {
    const list = await cli(["secrets", "list"]);
    assert.equal(list.code, 0, show(list));
    assert.match(list.stdout, /^NAME\s+VERSION\s+UPDATED$/m);
    assert.match(list.stdout, /^GITHUB_TOKEN\s+3\s+\d{4}-\d\d-\d\dT\S+Z$/m);
    assert.match(list.stdout, /^deploy\.pem\s+1\s+/m);
    const json = await cli(["secrets", "list", "--json"]);
    assert.equal(json.code, 0, show(json));
    const names = (JSON.parse(json.stdout) as { name: string }[]).map((s) => s.name);
    assert.deepEqual(names, ["GITHUB_TOKEN", "deploy.pem"]);
  });

  it("refuses to delete a secret a connection attaches, then deletes it", async () => {
    const conn = await cli([
      "connections",
      "set",
      "github",
      "--upstream",
      "https://api.github.com",
      "--secret",
      "GITHUB_TOKEN",
      "--allow",
      "GET /repos/**",
    ]);
    assert.equal(conn.code, 0, show(conn));
    const refused = await cli(["secrets", "delete", "GITHUB_TOKEN"]);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /^error secret_in_use: .*'github'/m);
    assert.equal((await cli(["connections", "delete", "github"])).code, 0);
    const deleted = await cli(["secrets", "delete", "GITHUB_TOKEN"]);
    assert.equal(deleted.code, 0, show(deleted));
    assert.equal(deleted.stdout, "deleted secret GITHUB_TOKEN\n");
    const again = await cli(["secrets", "delete", "GITHUB_TOKEN"]);
    assert.equal(again.code, 1, show(again));
    assert.match(again.stderr, /^error not_found: /m);
  });

  it("printed no value anywhere", () => {
    for (const result of outputs) {
      for (const value of values) {
        assert.ok(!result.stdout.includes(value) && !result.stderr.includes(value), show(result));
      }
    }
  });
});

interface Served {
  code: Promise<number | null>;
  output(): string;
  stop(): Promise<number | null>;
}

/** Starts `bin/paddock serve`; resolves once it serves, or once it exits (a refused start). */
async function serve(dataDir: string, args: string[], env: Record<string, string> = {}): Promise<Served> {
  const child = spawn(PADDOCK, ["serve", "--data-dir", dataDir, "--port", "0", "--images-dir", IMAGES, ...args], {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const code = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start:\n${output}`)), 60_000);
    const take = (chunk: Buffer) => {
      output += chunk.toString();
      if (/serving http:\/\/\S+ \(data: /.test(output)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", take);
    child.stderr.on("data", take);
    void code.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
  return {
    code,
    output: () => output,
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      return code;
    },
  };
}

describe("paddock serve --master-key-file", { skip: e2eSkip(hostSkipReason()) }, () => {
  let dir: string;
  let dataDir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "paddock-cli-mk-"));
    dataDir = join(dir, "data");
  });
  after(async () => {
    if (dir) {
      if (existsSync(dataDir)) await unsealRunners(dataDir);
      await rm(dir, { recursive: true, force: true });
    }
  });

  /** A key file as an operator makes one: openssl rand -base64 32 > FILE; chmod 600 FILE. */
  const makeKey = async (name: string): Promise<string> => {
    const file = join(dir, name);
    await writeFile(file, `${randomBytes(32).toString("base64")}\n`, { mode: 0o600 });
    return file;
  };

  it("rotates to a new key given the old one, and refuses to start without it", async () => {
    const oldKey = await makeKey("old.key");
    const newKey = await makeKey("new.key");
    const value = secretValue("served");

    const first = await serve(dataDir, ["--master-key-file", oldKey]);
    const url = /serving (http:\/\/\S+)/.exec(first.output())?.[1];
    assert.ok(url, first.output());
    const set = await paddock(["--data-dir", dataDir, "secrets", "set", "TOKEN"], { PADDOCK_URL: url }, value);
    assert.equal(set.code, 0, show(set));
    assert.equal(await first.stop(), 0, first.output());
    assert.ok(!existsSync(join(dataDir, "master.key")), "the named key file is used, not DATA_DIR/master.key");
    assert.match(first.output(), new RegExp(`master key mk-[0-9a-f]{16} from ${oldKey}`));

    const rotated = await serve(dataDir, ["--master-key-file", newKey, "--old-master-key-file", oldKey]);
    assert.match(rotated.output(), /re-sealed \d+ secret\(s\) and signing key\(s\) under master key mk-/);
    assert.equal(await rotated.stop(), 0, rotated.output());

    const refused = await serve(dataDir, ["--master-key-file", oldKey]);
    assert.equal(await refused.code, 1, refused.output());
    assert.match(refused.output(), /which this host was not given \(see --old-master-key-file\)/);

    const again = await serve(dataDir, ["--master-key-file", newKey]);
    assert.doesNotMatch(again.output(), /re-sealed/);
    const list = await paddock(["--data-dir", dataDir, "secrets", "list", "--json"], {
      PADDOCK_URL: /serving (http:\/\/\S+)/.exec(again.output())?.[1] ?? "",
    });
    assert.equal(list.code, 0, show(list));
    assert.deepEqual(
      (JSON.parse(list.stdout) as { name: string }[]).map((s) => s.name),
      ["TOKEN"],
    );
    assert.equal(await again.stop(), 0, again.output());
    for (const out of [first.output(), rotated.output(), refused.output(), again.output()]) {
      assert.ok(!out.includes(value));
    }
  });
});
