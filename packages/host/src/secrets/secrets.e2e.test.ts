/**
 * The secrets vault on a real host: set, list, get and delete over HTTP, with the value absent
 * from every API answer, from the database's bytes and from the host's log; tenants that cannot
 * see each other's secrets; secrets a connection uses that cannot be deleted; and master key
 * rotation across restarts, including the refusal to start without the key rows were sealed under.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { after, before, describe, it } from "node:test";
import { e2eSkip } from "../testing/e2e-skip.ts";
import { type ApiResult, hostSkipReason, startTestHost, type TestHost } from "../testing/harness.ts";
import { createMasterKeyFile, MASTER_KEY_ENV, type MasterKey } from "./vault.ts";

const skip = e2eSkip(hostSkipReason());

/** A value distinctive enough that any copy of it, in any spelling, is found. */
const secretValue = (label: string) => `sk-${label}-${randomBytes(18).toString("hex")}`;

/** The spellings of a value that a leak could take. */
const spellings = (value: string) => [
  value,
  Buffer.from(value).toString("base64"),
  Buffer.from(value).toString("base64url"),
  Buffer.from(value).toString("hex"),
];

function assertAbsent(haystack: string | Buffer, values: string[], where: string): void {
  const text = Buffer.isBuffer(haystack) ? haystack.toString("latin1") : haystack;
  for (const value of values) {
    for (const form of spellings(value)) assert.ok(!text.includes(form), `${where} contains a secret value`);
  }
}

async function databaseBytes(dataDir: string): Promise<Buffer> {
  const files = ["paddock.db", "paddock.db-wal", "paddock.db-shm"].map((f) => join(dataDir, f));
  return Buffer.concat(await Promise.all(files.map((f) => readFile(f).catch(() => Buffer.alloc(0)))));
}

function expectError(res: ApiResult, status: number, code: string): { message: string; details?: unknown } {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body?.error?.code, code, JSON.stringify(res.body));
  return res.body.error;
}

async function tenantKey(t: TestHost, name: string): Promise<{ key: string; tenantId: string }> {
  const tenant = await t.api("POST", "/v1/tenants", { name });
  assert.equal(tenant.status, 201, JSON.stringify(tenant.body));
  const key = await t.api("POST", `/v1/tenants/${tenant.body.id}/keys`, {});
  assert.equal(key.status, 201, JSON.stringify(key.body));
  return { key: key.body.key, tenantId: tenant.body.id };
}

describe("secrets API", { skip }, () => {
  let t: TestHost;
  let a: { key: string; tenantId: string };
  let b: { key: string; tenantId: string };
  const values: string[] = [];
  const answers: ApiResult[] = [];

  /** Calls the API and keeps the answer, so the whole conversation can be searched for values. */
  const api = async (method: string, path: string, body?: unknown, key?: string | null, headers = {}) => {
    const res = await t.api(method, path, body, key, headers);
    answers.push(res);
    return res;
  };

  before(async () => {
    t = await startTestHost();
    a = await tenantKey(t, "secrets-a");
    b = await tenantKey(t, "secrets-b");
  });
  after(async () => {
    await t?.close();
  });

  it("makes DATA_DIR/master.key (0600) on the first start", async () => {
    const info = await stat(join(t.dataDir, "master.key"));
    assert.equal(info.mode & 0o777, 0o600);
    assert.ok(
      t.logs.some((line) => /^master key mk-[0-9a-f]{16} from .*master\.key$/.test(line)),
      t.logs.join("\n"),
    );
  });

  it("sets, replaces, lists and shows a secret without ever answering its value", async () => {
    const first = secretValue("first");
    const second = secretValue("second");
    values.push(first, second);

    const created = await api("PUT", "/v1/secrets/GITHUB_TOKEN", { value: first }, a.key);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.deepEqual(Object.keys(created.body).sort(), ["created_at", "name", "updated_at", "version"]);
    assert.equal(created.body.name, "GITHUB_TOKEN");
    assert.equal(created.body.version, 1);

    const replaced = await api("PUT", "/v1/secrets/GITHUB_TOKEN", { value: second }, a.key);
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal(replaced.body.version, 2);
    assert.equal(replaced.body.created_at, created.body.created_at);
    assert.equal(await t.host.secrets.reveal(a.tenantId, "GITHUB_TOKEN"), second);

    const other = secretValue("other");
    values.push(other);
    assert.equal((await api("PUT", "/v1/secrets/aws.key-1", { value: other }, a.key)).status, 201);

    const list = await api("GET", "/v1/secrets", undefined, a.key);
    assert.equal(list.status, 200);
    assert.equal(list.body.next_cursor, null);
    assert.deepEqual(
      list.body.data.map((s: { name: string; version: number }) => [s.name, s.version]),
      [
        ["GITHUB_TOKEN", 2],
        ["aws.key-1", 1],
      ],
    );
    const one = await api("GET", "/v1/secrets/GITHUB_TOKEN", undefined, a.key);
    assert.deepEqual(one.body, replaced.body);
    assert.equal(await t.host.secrets.reveal(a.tenantId, "aws.key-1"), other);
  });

  it("refuses bad bodies without quoting the value", async () => {
    const value = secretValue("refused");
    values.push(value);
    const path = "/v1/secrets/refused";
    const strict = expectError(await api("PUT", path, { value, extra: value }, a.key), 400, "validation_failed");
    assert.match(JSON.stringify(strict.details), /extra/);
    expectError(await api("PUT", path, { value: "" }, a.key), 400, "validation_failed");
    expectError(await api("PUT", path, { value: [value] }, a.key), 400, "validation_failed");
    expectError(await api("PUT", path, { value: value.repeat(2000) }, a.key), 400, "validation_failed");
    expectError(await api("PUT", path, `{"value": ${value}}`, a.key), 400, "invalid_json");
    expectError(await api("PUT", path, `{"value": "${value}`, a.key), 400, "invalid_json");
    const plain = { "content-type": "text/plain" };
    expectError(await api("PUT", path, JSON.stringify({ value }), a.key, plain), 415, "unsupported_media_type");
    expectError(await api("PUT", "/v1/secrets/has%20space", { value }, a.key), 404, "not_found");
    expectError(await api("PUT", path, { value }, null), 401, "unauthorized");
    expectError(await api("GET", path, undefined, a.key), 404, "not_found");
    assert.equal(await t.host.secrets.reveal(a.tenantId, "refused"), null);
  });

  it("keeps tenants apart: another tenant's secret answers like an unknown one", async () => {
    expectError(await api("GET", "/v1/secrets/GITHUB_TOKEN", undefined, b.key), 404, "not_found");
    expectError(await api("DELETE", "/v1/secrets/GITHUB_TOKEN", undefined, b.key), 404, "not_found");
    assert.deepEqual((await api("GET", "/v1/secrets", undefined, b.key)).body.data, []);

    const theirs = secretValue("tenant-b");
    values.push(theirs);
    const set = await api("PUT", "/v1/secrets/GITHUB_TOKEN", { value: theirs }, b.key);
    assert.equal(set.status, 201, "the same name in another tenant is another secret");
    assert.equal(await t.host.secrets.reveal(b.tenantId, "GITHUB_TOKEN"), theirs);
    assert.equal(await t.host.secrets.reveal(a.tenantId, "GITHUB_TOKEN"), values[1]);
    assert.equal((await api("GET", "/v1/secrets/GITHUB_TOKEN", undefined, a.key)).body.version, 2);
  });

  it("refuses to delete a secret a connection uses, naming the connection", async () => {
    const connection = {
      base_url: "https://api.github.com",
      secret: "GITHUB_TOKEN",
      auth: { type: "bearer" },
      policy: { allow: [{ methods: ["GET"], path: "/repos/**" }] },
    };
    const made = await api("PUT", "/v1/connections/github", connection, a.key);
    assert.equal(made.status, 201, JSON.stringify(made.body));

    const refused = expectError(
      await api("DELETE", "/v1/secrets/GITHUB_TOKEN", undefined, a.key),
      409,
      "secret_in_use",
    );
    assert.deepEqual(refused.details, { connections: ["github"] });
    assert.match(refused.message, /'github'/);
    assert.equal(await t.host.secrets.reveal(a.tenantId, "GITHUB_TOKEN"), values[1]);

    assert.equal((await api("DELETE", "/v1/secrets/GITHUB_TOKEN", undefined, b.key)).status, 204);
    assert.equal((await api("DELETE", "/v1/connections/github", undefined, a.key)).status, 200);
    assert.equal((await api("DELETE", "/v1/secrets/GITHUB_TOKEN", undefined, a.key)).status, 204);
    expectError(await api("GET", "/v1/secrets/GITHUB_TOKEN", undefined, a.key), 404, "not_found");
    expectError(await api("DELETE", "/v1/secrets/GITHUB_TOKEN", undefined, a.key), 404, "not_found");
    assert.equal(await t.host.secrets.reveal(a.tenantId, "GITHUB_TOKEN"), null);
  });

  it("never lets a value reach an answer, the database file or the log", async () => {
    assert.ok(values.length >= 5 && answers.length > 20);
    for (const res of answers) assertAbsent(JSON.stringify(res.body), values, "an API answer");
    assertAbsent(JSON.stringify((await api("GET", "/v1/openapi.json", undefined, null)).body), values, "openapi");
    assertAbsent(await databaseBytes(t.dataDir), values, "the database");
    const masterKey = (await readFile(join(t.dataDir, "master.key"), "utf8")).trim();
    assert.ok(!(await databaseBytes(t.dataDir)).toString("latin1").includes(masterKey), "the database holds the key");
    assertAbsent(t.logs.join("\n"), values, "the host's log");
  });
});

describe("master key rotation", { skip }, () => {
  let t: TestHost;
  let tenant: { key: string; tenantId: string };
  let keyDir: string;
  let oldKey: MasterKey;
  let newKey: MasterKey;
  const value = secretValue("rotated");

  /** One column of a query on the host's database, read beside the running host. */
  function column(sql: string): string[] {
    const db = new DatabaseSync(join(t.dataDir, "paddock.db"), { readOnly: true });
    try {
      return db
        .prepare(sql)
        .all()
        .map((row) => String(Object.values(row)[0]));
    } finally {
      db.close();
    }
  }

  /** master_key_id of every sealed row, by table. */
  const sealedUnder = () => ({
    secrets: column("SELECT master_key_id FROM secrets"),
    signingKeys: column("SELECT master_key_id FROM signing_keys"),
    notifications: column("SELECT master_key_id FROM notification_subscriptions"),
  });
  let subscription = "";

  before(async () => {
    keyDir = await mkdtemp(join(tmpdir(), "paddock-keys-"));
    oldKey = await createMasterKeyFile(join(keyDir, "old.key"));
    newKey = await createMasterKeyFile(join(keyDir, "new.key"));
    t = await startTestHost({ masterKeyFile: join(keyDir, "old.key") });
    tenant = await tenantKey(t, "rotation");
    for (const name of ["one", "two", "three"]) {
      const res = await t.api("PUT", `/v1/secrets/${name}`, { value: `${value}-${name}` }, tenant.key);
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    const sub = { url: "https://hooks.example.com/paddock", events: ["run.finished"] };
    subscription = (await t.api("POST", "/v1/notifications", sub, tenant.key)).body.id;
  });
  after(async () => {
    await t?.close();
    if (keyDir) await rm(keyDir, { recursive: true, force: true });
  });

  const revealAll = async () =>
    Promise.all(["one", "two", "three"].map((name) => t.host.secrets.reveal(tenant.tenantId, name)));

  it("seals everything under the configured key, not in DATA_DIR", async () => {
    const under = sealedUnder();
    assert.equal(under.secrets.length, 3);
    assert.ok(under.signingKeys.length >= 1, "the run token signer has a key");
    assert.equal(under.notifications.length, 1);
    for (const id of [...under.secrets, ...under.signingKeys, ...under.notifications]) assert.equal(id, oldKey.id);
    await assert.rejects(stat(join(t.dataDir, "master.key")), /ENOENT/);
  });

  it("re-seals every secret and signing key under a new key given the old one", async () => {
    const before = sealedUnder();
    const boxes = () => column("SELECT sealed FROM secrets ORDER BY name");
    const sealedBefore = boxes();
    await t.restart({ masterKeyFile: join(keyDir, "new.key"), oldMasterKeyFiles: [join(keyDir, "old.key")] });
    const after = sealedUnder();
    for (const id of [...after.secrets, ...after.signingKeys, ...after.notifications]) assert.equal(id, newKey.id);
    const count = before.secrets.length + before.signingKeys.length + before.notifications.length;
    assert.ok(
      t.logs.some((line) =>
        line.includes(`re-sealed ${count} secret(s) and signing key(s) under master key ${newKey.id}`),
      ),
      t.logs.join("\n"),
    );
    const sealedAfter = boxes();
    for (const [i, box] of sealedAfter.entries()) {
      assert.notEqual(box, sealedBefore[i]);
      assert.equal(JSON.parse(box).ct, JSON.parse(sealedBefore[i] ?? "{}").ct, "only the data key is re-sealed");
    }
    assert.deepEqual(
      await revealAll(),
      ["one", "two", "three"].map((n) => `${value}-${n}`),
    );
  });

  it("then starts with the new key alone, re-sealing nothing", async () => {
    const lines = t.logs.length;
    await t.restart({ masterKeyFile: join(keyDir, "new.key"), oldMasterKeyFiles: [] });
    assert.ok(!t.logs.slice(lines).some((line) => line.includes("re-sealed")));
    assert.deepEqual(
      await revealAll(),
      ["one", "two", "three"].map((n) => `${value}-${n}`),
    );
    const res = await t.api("GET", "/v1/secrets", undefined, tenant.key);
    assert.equal(res.body.data.length, 3);
    // The notification secrets open under the new key: a rotation reads the current one.
    const rotated = await t.api("POST", `/v1/notifications/${subscription}/rotate`, {}, tenant.key);
    assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
  });

  it("refuses to start without the key the rows are sealed under", async () => {
    const wrong = join(keyDir, "wrong.key");
    await createMasterKeyFile(wrong);
    await assert.rejects(
      t.restart({ masterKeyFile: wrong, oldMasterKeyFiles: [] }),
      new RegExp(`cannot re-seal .*: sealed under master key ${newKey.id}, which this host was not given`),
    );
    await assert.rejects(
      t.restart({ masterKeyFile: join(keyDir, "old.key"), oldMasterKeyFiles: [] }),
      new RegExp(`sealed under master key ${newKey.id}, which this host was not given`),
    );
    const loose = join(keyDir, "loose.key");
    await writeFile(loose, await readFile(join(keyDir, "new.key")), { mode: 0o644 });
    await assert.rejects(t.restart({ masterKeyFile: loose }), /readable by others \(mode 644\); chmod 600 it/);
    const under = sealedUnder();
    for (const id of [...under.secrets, ...under.signingKeys])
      assert.equal(id, newKey.id, "a refused start changes nothing");
  });

  it("takes the key from PADDOCK_MASTER_KEY and removes it from the environment", async () => {
    process.env[MASTER_KEY_ENV] = (await readFile(join(keyDir, "new.key"), "utf8")).trim();
    try {
      await t.restart({ masterKeyFile: undefined, oldMasterKeyFiles: [] });
      assert.equal(process.env[MASTER_KEY_ENV], undefined);
      assert.ok(t.logs.some((line) => line.endsWith(`master key ${newKey.id} from $${MASTER_KEY_ENV}`)));
      assert.deepEqual(
        await revealAll(),
        ["one", "two", "three"].map((n) => `${value}-${n}`),
      );
    } finally {
      delete process.env[MASTER_KEY_ENV];
    }
  });

  it("leaves no value in the database or the log", async () => {
    const values = ["one", "two", "three"].map((n) => `${value}-${n}`);
    assertAbsent(await databaseBytes(t.dataDir), values, "the database");
    assertAbsent(t.logs.join("\n"), values, "the host's log");
  });
});
