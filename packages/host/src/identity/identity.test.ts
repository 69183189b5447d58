/**
 * The host's own tenant against real stores (SQLite and PostgreSQL): created once with its admin
 * key and starting credits, also when several hosts start on one store at the same moment.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { Kysely } from "kysely";
import { Ledger } from "../gateway/ledger.ts";
import type { Dialect } from "../store/portable.ts";
import type { Database } from "../store/schema.ts";
import { forEachStore } from "../testing/stores.ts";
import { DEFAULT_TENANT, Identity, STARTING_GRANT_NOTE } from "./identity.ts";

forEachStore((store) =>
  describe(`Identity.bootstrap on ${store.name}`, { skip: store.skip }, () => {
    const opened: { db: Kysely<Database>; dialect: Dialect; url: string | undefined; close(): Promise<void> }[] = [];
    const open = async (url?: string) => {
      const one = await store.open(url === undefined ? {} : { url });
      opened.push(one);
      return one;
    };
    const identityOn = (db: Kysely<Database>, dialect: Dialect, credits: number) =>
      new Identity(db, { ledger: new Ledger(db, { dialect }), credits });
    const grants = (db: Kysely<Database>) =>
      db.selectFrom("credit_ledger").selectAll().where("kind", "=", "grant").execute();
    const adminKeys = (db: Kysely<Database>) =>
      db.selectFrom("api_keys").selectAll().where("role", "=", "admin").execute();

    after(async () => {
      for (const one of opened) await one.close();
    });

    describe("one host", () => {
      let db: Kysely<Database>;
      let identity: Identity;
      let ledger: Ledger;

      before(async () => {
        const one = await open();
        db = one.db;
        ledger = new Ledger(db, { dialect: one.dialect });
        identity = new Identity(db, { ledger, credits: 10 });
      });

      test("a fresh store's first start makes the default tenant, its admin key and its starting credits", async () => {
        const first = await identity.bootstrap();
        assert.match(first.adminKey ?? "", /^pdk\./);
        assert.equal(first.startingCredits, 10);
        const principal = await identity.authenticate(first.adminKey ?? "");
        assert.equal(principal?.role, "admin");
        const tenant = await identity.findTenant(DEFAULT_TENANT);
        assert.equal(principal?.tenantId, tenant.id);
        assert.deepEqual(await ledger.balance(tenant.id), { granted: 10, spent: 0, reserved: 0, available: 10 });
        const [grant, ...more] = await grants(db);
        assert.equal(more.length, 0);
        assert.equal(grant?.tenant_id, tenant.id);
        assert.deepEqual(JSON.parse(grant?.detail ?? "null"), { note: STARTING_GRANT_NOTE });
      });

      test("later starts make nothing; with every admin key revoked, a new key but no second grant", async () => {
        assert.deepEqual(await identity.bootstrap(), { adminKey: null, startingCredits: null });
        await db.updateTable("api_keys").set({ revoked_at: Date.now() }).where("role", "=", "admin").execute();
        const again = await identity.bootstrap();
        assert.match(again.adminKey ?? "", /^pdk\./);
        assert.equal(again.startingCredits, null);
        assert.equal((await grants(db)).length, 1);
        const tenant = await identity.findTenant(DEFAULT_TENANT);
        assert.equal((await ledger.balance(tenant.id)).granted, 10);
      });

      test("a tenant made through the API starts with no credits", async () => {
        const acme = await identity.createTenant("acme");
        assert.equal((await ledger.balance(acme.id)).granted, 0);
      });
    });

    test("no starting grant when the host's setting is 0", async () => {
      const { db, dialect } = await open();
      const started = await identityOn(db, dialect, 0).bootstrap();
      assert.match(started.adminKey ?? "", /^pdk\./);
      assert.equal(started.startingCredits, null);
      assert.equal((await grants(db)).length, 0);
    });

    test("hosts starting at once on one store make one tenant, one admin key and one grant", async () => {
      const first = await open();
      // On PostgreSQL each host has its own connections to the shared database.
      const hosts = [first];
      for (let i = 1; i < 6; i++) hosts.push(first.url === undefined ? first : await open(first.url));
      const results = await Promise.all(hosts.map((h) => identityOn(h.db, h.dialect, 2.5).bootstrap()));
      assert.equal(results.filter((r) => r.adminKey !== null).length, 1, JSON.stringify(results));
      assert.deepEqual(
        results.map((r) => r.startingCredits).filter((c) => c !== null),
        [2.5],
      );
      assert.equal((await adminKeys(first.db)).length, 1);
      assert.equal((await grants(first.db)).length, 1);
      const tenants = await first.db.selectFrom("tenants").selectAll().execute();
      assert.equal(tenants.length, 1);
      const balance = await new Ledger(first.db, { dialect: first.dialect }).balance(tenants[0]?.id ?? "");
      assert.equal(balance.granted, 2.5);
    });
  }),
);
