/**
 * Per-sandbox networks: each sandbox gets a network namespace of its own whose only link is a
 * veth pair to the host, and whose only reachable peer is the host's bridge port.
 *
 * Layout, per host instance: a block of addresses (a /22 of 10.209.0.0/16 by default, claimed so
 * that two hosts on one machine never share one). Its first address is the host's side of every
 * link (on the loopback interface, where the bridge listens); every sandbox gets one /32 of the
 * block on its `eth0`, a route to the host address and a default route through it, and static
 * neighbour entries on both ends (no ARP). Namespaces are made ahead of boots, in batches: a
 * host whose RSS is a few hundred MiB blocks its event loop for 20-40 ms on every process it
 * spawns (fork copies its page tables), so one shell makes a whole batch (its own forks of `ip`
 * cost the host nothing), and one `ip -batch` removes a batch. A batch grows with the boots that
 * asked for namespaces meanwhile, so a burst of 1,000 boots takes a few dozen spawns, not 2,000.
 *
 * Threat model: everything inside the namespace is hostile. The sandbox has no capability over its
 * namespace (the namespace belongs to the host's user namespace, the sandbox runs in a user
 * namespace of its own), so it cannot change addresses, routes or neighbours, open raw sockets or
 * spoof its source address. An nftables table of this instance drops every packet that arrives
 * from a sandbox interface unless it goes to the host address on an allowed (bridge) port, and
 * every packet that would be forwarded from or to one: host services listening on 0.0.0.0, the
 * host's loopback and other addresses, other sandboxes, link-local and metadata addresses, and
 * anything beyond the host. IPv6 is off on both ends and dropped by the same table. No resolver
 * is reachable, so names resolve to nothing.
 */
import { execFile } from "node:child_process";
import { mkdir, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { toolEnv } from "../../fs/tool-env.ts";
import { ensureRunDir } from "./paths.ts";

const run = promisify(execFile);
/** Where `ip netns` keeps its namespace files. */
const NETNS_DIR = "/run/netns";
/** The namespace's side of every link, as the agent sees it. */
export const SANDBOX_IF = "eth0";
export const DEFAULT_RANGE = "10.209.0.0/16";
/** A /21 per host: 2045 sandboxes, room for 1,000 live ones beside the pool and warm spares. */
const DEFAULT_BLOCK_BITS = 21;
/** The most namespaces one batch makes. */
const MAX_BATCH = 64;

export interface SandboxNetworkConfig {
  /** The host instance (see LinuxSandboxDriverConfig.instance); names namespaces, links and the table. */
  instance: string;
  /** IPv4 range the address block is claimed from; default 10.209.0.0/16. */
  range?: string;
  /** Prefix length of this host's block; default 21 (2045 sandboxes at once). */
  blockBits?: number;
  /** Namespaces kept made ahead of boots; default 4. */
  spare?: number;
  /** Where block claims are recorded; default /run/paddock/netblocks. */
  claimsDir?: string;
}

/** A sandbox's network: a namespace to enter and the address it has there. */
export interface NetworkLease {
  /** Namespace file to setns(2) into. */
  nsPath: string;
  /** The sandbox's address (its eth0). */
  address: string;
  /** The host's side of the link, where the bridge listens. */
  hostAddress: string;
  /** The host-side interface name. */
  ifname: string;
}

interface Lease extends NetworkLease {
  ns: string;
  index: number;
}

function ipToInt(ip: string): number {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${ip}`);
  }
  return (
    (((parts[0] as number) << 24) |
      ((parts[1] as number) << 16) |
      ((parts[2] as number) << 8) |
      (parts[3] as number)) >>>
    0
  );
}

function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export function parseCidr(cidr: string): { base: number; bits: number } {
  const [ip, bitsText] = cidr.split("/");
  const bits = Number(bitsText);
  if (!ip || !Number.isInteger(bits) || bits < 8 || bits > 30) throw new Error(`bad IPv4 range: ${cidr}`);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return { base: (ipToInt(ip) & mask) >>> 0, bits };
}

function macFor(kind: 1 | 2, address: number): string {
  const bytes = [2, kind, address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

async function ip(args: string[], batch?: string): Promise<void> {
  const child = execFile("ip", batch === undefined ? args : [...args, "-batch", "-"], { env: toolEnv() });
  const done = new Promise<void>((resolve, reject) => {
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`ip ${args.join(" ")}: ${stderr.trim() || `exit ${code}`}`)),
    );
  });
  child.stdin?.on("error", () => {});
  child.stdin?.end(batch ?? "");
  return done;
}

async function nft(script: string): Promise<void> {
  const child = execFile("nft", ["-f", "-"], { env: toolEnv() });
  const done = new Promise<void>((resolve, reject) => {
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.once("error", (err) => reject(new Error(`nft: ${err.message} (install the nftables package)`)));
    child.once("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`nft: ${stderr.trim() || `exit ${code}`}`)),
    );
  });
  child.stdin?.on("error", () => {});
  child.stdin?.end(script);
  return done;
}

/** Runs a shell script (the host's tools, none of its environment). */
async function sh(script: string): Promise<void> {
  await run("sh", ["-c", script], { env: toolEnv() }).catch((err: Error & { stderr?: string }) => {
    throw new Error(err.stderr?.trim() || err.message);
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class SandboxNetwork {
  readonly #instance: string;
  readonly #range: { base: number; bits: number };
  readonly #blockBits: number;
  readonly #spare: number;
  readonly #claimsDir: string;
  /** Namespace names: paddock-<instance>-<n>; interface names: pd<tag>-<n> (at most 15 bytes). */
  readonly #nsPrefix: string;
  readonly #ifPrefix: string;
  readonly #table: string;
  #block: { base: number; size: number } | undefined;
  #claimFile: string | undefined;
  #next = 0;
  #nextAddress = 2;
  readonly #used = new Set<number>();
  readonly #ready: Promise<Lease>[] = [];
  readonly #ports = new Set<number>();
  #starting: Promise<void> | undefined;
  #closed = false;
  readonly #removals = new Set<Promise<void>>();
  /** Namespaces asked for since the last batch started: the next batch makes twice as many. */
  #demand = 0;
  /** Leases waiting to be removed by the next removal batch, and that batch. */
  #doomed: { lease: Lease; done: () => void }[] = [];
  #removing: Promise<void> | undefined;

  constructor(config: SandboxNetworkConfig) {
    if (!/^[a-z0-9]{6,}$/.test(config.instance)) {
      throw new Error(`network instance names need 6+ lower-case letters or digits: ${config.instance}`);
    }
    this.#instance = config.instance;
    this.#range = parseCidr(config.range ?? DEFAULT_RANGE);
    this.#blockBits = config.blockBits ?? DEFAULT_BLOCK_BITS;
    if (this.#blockBits < this.#range.bits || this.#blockBits > 29) {
      throw new Error(`a /${this.#blockBits} block does not fit in /${this.#range.bits}`);
    }
    this.#spare = config.spare ?? 4;
    this.#claimsDir = config.claimsDir ?? "/run/paddock/netblocks";
    this.#nsPrefix = `paddock-${config.instance}-`;
    this.#ifPrefix = `pd${config.instance.slice(0, 6)}-`;
    this.#table = `paddock_${config.instance}`;
  }

  /** The host's side of every sandbox link; valid after start(). */
  get hostAddress(): string {
    if (!this.#block) throw new Error("the sandbox network is not started");
    return intToIp(this.#block.base + 1);
  }

  /** This host's block of sandbox addresses, as CIDR; valid after start(). */
  get block(): string {
    if (!this.#block) throw new Error("the sandbox network is not started");
    return `${intToIp(this.#block.base)}/${this.#blockBits}`;
  }

  /**
   * Removes what an earlier host of this instance left, claims an address block, puts the host
   * address on the loopback interface and installs the filter. Idempotent.
   */
  start(): Promise<void> {
    this.#starting ??= (async () => {
      await this.#removeLeftovers();
      await this.#claimBlock();
      try {
        await ip(["addr", "replace", `${this.hostAddress}/32`, "dev", "lo"]);
        await this.#installFilter();
      } catch (err) {
        await this.close().catch(() => {});
        throw err;
      }
      this.#refill();
    })().catch((err: unknown) => {
      this.#starting = undefined;
      throw err;
    });
    return this.#starting;
  }

  /** Lets sandboxes reach the host address on this TCP port (the bridge's). */
  async allowPort(port: number): Promise<void> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad port ${port}`);
    await this.start();
    if (this.#ports.has(port)) return;
    await nft(`add element inet ${this.#table} bridge_ports { ${port} }\n`);
    this.#ports.add(port);
  }

  /** A namespace for one sandbox; give it back with release() once the sandbox is gone. */
  async take(): Promise<NetworkLease> {
    await this.start();
    if (this.#closed) throw new Error("the sandbox network is closed");
    for (;;) {
      this.#demand++;
      if (this.#ready.length === 0) this.#refill();
      const next = this.#ready.shift() as Promise<Lease>;
      // Refilled only when low: released namespaces come back to the pool and keep it full.
      if (this.#ready.length < Math.ceil(this.#spare / 2)) this.#refill();
      try {
        return await next;
      } catch (err) {
        // A spare that failed is dropped; a namespace made on demand that fails is the caller's error.
        if (this.#ready.length === 0) throw err;
      }
    }
  }

  /**
   * Takes back a sandbox's namespace once no process of the sandbox is left (the driver calls it
   * after the sandbox's cgroup is empty and removed). The namespace then holds nothing of the
   * sandbox's: its sockets died with its processes, and the sandbox never had a capability over
   * the namespace (it could not change addresses, routes, filters or sysctls), so it goes back to
   * the pool as it was made, with its address; a token of the old sandbox names the old sandbox
   * and run, so it fails at the bridge from the same address. Beyond the pool's room it is
   * removed, in the background.
   */
  release(lease: NetworkLease): void {
    const own = lease as Lease;
    if (!own.ns?.startsWith(this.#nsPrefix)) return;
    if (!this.#closed && this.#ready.length < Math.max(this.#spare * 2, MAX_BATCH)) {
      this.#ready.push(Promise.resolve(own));
      return;
    }
    this.#track(this.#remove(own));
  }

  /** Removes the spares, waits for removals, drops the filter, the host address and the claim. */
  async close(): Promise<void> {
    this.#closed = true;
    const spares = this.#ready.splice(0);
    for (const spare of spares) this.#track(spare.then((l) => this.#remove(l)).catch(() => {}));
    while (this.#removals.size > 0) await Promise.all([...this.#removals]);
    if (this.#block) {
      await ip(["addr", "del", `${this.hostAddress}/32`, "dev", "lo"]).catch(() => {});
      await nft(`delete table inet ${this.#table}\n`).catch(() => {});
    }
    if (this.#claimFile) await rm(this.#claimFile, { force: true });
    this.#block = undefined;
    this.#claimFile = undefined;
    this.#starting = undefined;
    this.#closed = false;
    this.#ports.clear();
  }

  /** What of this instance exists on the machine: namespaces, links, the filter table, the host address. */
  async leftovers(): Promise<string[]> {
    const found = (await readdir(NETNS_DIR).catch(() => [] as string[]))
      .filter((n) => n.startsWith(this.#nsPrefix))
      .map((n) => `netns ${n}`);
    for (const link of await listLinks(this.#ifPrefix)) found.push(`link ${link}`);
    const tables = await run("nft", ["list", "tables"], { env: toolEnv() }).catch(() => ({ stdout: "" }));
    if (tables.stdout.split("\n").some((l) => l.trim() === `table inet ${this.#table}`))
      found.push(`nft table ${this.#table}`);
    for (const name of await readdir(this.#claimsDir).catch(() => [] as string[])) {
      const text = await readFile(path.join(this.#claimsDir, name), "utf8").catch(() => "");
      if (parseClaim(text)?.instance === this.#instance) found.push(`claim ${name}`);
    }
    return found;
  }

  #track(removal: Promise<void>): void {
    const p = removal.catch(() => {}).finally(() => this.#removals.delete(p));
    this.#removals.add(p);
  }

  /** Makes one batch: enough for the pool, or twice the boots that asked since the last one. */
  #refill(): void {
    if (this.#closed) return;
    const want = Math.min(MAX_BATCH, Math.max(this.#spare, this.#demand * 2, 1));
    this.#demand = 0;
    const count = want - this.#ready.length;
    if (count <= 0) return;
    const batch = this.#makeBatch(count);
    for (let i = 0; i < count; i++) {
      const lease = batch.then((leases) => leases[i] as Lease);
      lease.catch(() => {});
      this.#ready.push(lease);
    }
  }

  #allocate(): number {
    const block = this.#block;
    if (!block) throw new Error("the sandbox network is not started");
    const first = 2;
    const last = block.size - 2;
    for (let i = 0; i <= last - first; i++) {
      const offset = first + ((this.#nextAddress - first + i) % (last - first + 1));
      if (!this.#used.has(offset)) {
        this.#used.add(offset);
        this.#nextAddress = offset + 1;
        return offset;
      }
    }
    throw new Error(`all ${last - first + 1} sandbox addresses of ${this.block} are in use`);
  }

  #lease(): Lease {
    const block = this.#block;
    if (!block) throw new Error("the sandbox network is not started");
    const offset = this.#allocate();
    const index = this.#next;
    this.#next = (this.#next + 1) % 100_000;
    return {
      ns: `${this.#nsPrefix}${index}`,
      nsPath: path.join(NETNS_DIR, `${this.#nsPrefix}${index}`),
      index,
      ifname: `${this.#ifPrefix}${index}`,
      address: intToIp(block.base + offset),
      hostAddress: this.hostAddress,
    };
  }

  /** Makes `count` namespaces with one spawned shell; on failure removes what it made of them. */
  async #makeBatch(count: number): Promise<Lease[]> {
    const leases: Lease[] = [];
    try {
      for (let i = 0; i < count; i++) leases.push(this.#lease());
    } catch (err) {
      for (const lease of leases) this.#free(lease);
      throw err;
    }
    const host = leases[0]?.hostAddress as string;
    // Every name and address here is the network's own (instance, index, block): nothing to quote.
    const hostSide = leases.flatMap((lease) => {
      const mac = ipToInt(lease.address);
      return [
        `netns add ${lease.ns}`,
        `link add ${lease.ifname} address ${macFor(1, mac)} type veth peer name ${SANDBOX_IF} address ${macFor(2, mac)} netns ${lease.ns}`,
        `link set ${lease.ifname} addrgenmode none`,
        `link set ${lease.ifname} up`,
        `route replace ${lease.address}/32 dev ${lease.ifname} src ${host}`,
        `neigh replace ${lease.address} lladdr ${macFor(2, mac)} dev ${lease.ifname} nud permanent`,
      ];
    });
    const script = [
      "set -e",
      `ip -batch - <<'EOF'\n${hostSide.join("\n")}\nEOF`,
      ...leases.map((lease) => {
        const mac = ipToInt(lease.address);
        const nsSide = [
          "link set lo up",
          `link set ${SANDBOX_IF} addrgenmode none`,
          `addr add ${lease.address}/32 dev ${SANDBOX_IF}`,
          `link set ${SANDBOX_IF} up`,
          `route add ${host} dev ${SANDBOX_IF} scope link`,
          `route add default via ${host} dev ${SANDBOX_IF}`,
          `neigh replace ${host} lladdr ${macFor(1, mac)} dev ${SANDBOX_IF} nud permanent`,
        ];
        return [
          `echo 1 > /proc/sys/net/ipv4/conf/${lease.ifname}/rp_filter`,
          `ip -n ${lease.ns} -batch - <<'EOF'\n${nsSide.join("\n")}\nEOF`,
        ].join("\n");
      }),
      "",
    ].join("\n");
    try {
      await sh(script);
      return leases;
    } catch (err) {
      await Promise.all(leases.map((lease) => this.#remove(lease)));
      throw new Error(`making sandbox network namespaces: ${(err as Error).message}`);
    }
  }

  #free(lease: Lease): void {
    const block = this.#block;
    if (block) this.#used.delete(ipToInt(lease.address) - block.base);
  }

  /** Removes a namespace and its link with the next removal batch; settles once it is gone. */
  #remove(lease: Lease): Promise<void> {
    return new Promise<void>((done) => {
      this.#doomed.push({ lease, done });
      this.#removing ??= this.#removeBatches();
    });
  }

  async #removeBatches(): Promise<void> {
    while (this.#doomed.length > 0) {
      const batch = this.#doomed.splice(0);
      // Deleting the link first removes both ends and their routes at once; the namespace's
      // own teardown in the kernel may lag behind its unmount. -force: one missing link or
      // namespace (a half-made batch) does not stop the others' removal.
      const lines = batch.flatMap(({ lease }) => [`link del ${lease.ifname}`, `netns del ${lease.ns}`]);
      await ip(["-force"], `${lines.join("\n")}\n`).catch(() => {});
      for (const { lease, done } of batch) {
        // A namespace still there is left to the next start's cleanup; its address is not reused.
        if (!(await exists(lease.nsPath))) this.#free(lease);
        done();
      }
    }
    this.#removing = undefined;
  }

  /**
   * Removes what an earlier host of this instance left, and what hosts that died without cleaning
   * up left (their block claims name a process that is gone): namespaces, links, filter tables
   * and host addresses.
   */
  async #removeLeftovers(): Promise<void> {
    for (const name of await readdir(this.#claimsDir).catch(() => [] as string[])) {
      const file = path.join(this.#claimsDir, name);
      const claim = parseClaim(await readFile(file, "utf8").catch(() => ""));
      if (!claim || (claim.instance !== this.#instance && pidAlive(claim.pid))) continue;
      await removeInstanceNetwork(claim.instance, ipToInt(name.split("_")[0] ?? "") + 1);
      if (claim.instance !== this.#instance) await rm(file, { force: true });
    }
    await removeInstanceNetwork(this.#instance);
  }

  async #claimBlock(): Promise<void> {
    // The parent is the hosts' shared run folder, which sandboxes traverse: made as the driver makes it.
    await ensureRunDir(path.dirname(this.#claimsDir));
    await mkdir(this.#claimsDir, { recursive: true, mode: 0o700 });
    const size = 2 ** (32 - this.#blockBits);
    const count = 2 ** (this.#blockBits - this.#range.bits);
    const taken = await routedRanges();
    // Start where this instance's name points, so hosts rarely try the same block first.
    const start = Number.parseInt(this.#instance.slice(0, 6), 36) % count;
    for (let i = 0; i < count; i++) {
      const base = (this.#range.base + ((start + i) % count) * size) >>> 0;
      const file = path.join(this.#claimsDir, `${intToIp(base)}_${this.#blockBits}`);
      if (!(await this.#claim(file))) continue;
      if (taken.some((r) => r.base < base + size && base < r.base + r.size)) {
        await rm(file, { force: true });
        continue;
      }
      this.#block = { base, size };
      this.#claimFile = file;
      return;
    }
    throw new Error(
      `no free /${this.#blockBits} for sandbox networks in ${intToIp(this.#range.base)}/${this.#range.bits}`,
    );
  }

  /** Claims a block file: new, or ours, or left by a process that is gone. */
  async #claim(file: string): Promise<boolean> {
    const mine = `${JSON.stringify({ instance: this.#instance, pid: process.pid })}\n`;
    try {
      const handle = await open(file, "wx", 0o600);
      await handle.writeFile(mine);
      await handle.close();
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const owner = parseClaim(await readFile(file, "utf8").catch(() => ""));
    if (owner && owner.instance !== this.#instance && pidAlive(owner.pid)) return false;
    await writeFile(file, mine, { mode: 0o600 });
    return true;
  }

  async #installFilter(): Promise<void> {
    const links = `${this.#ifPrefix}*`;
    const host = this.hostAddress;
    await nft(`table inet ${this.#table} {
  set bridge_ports { type inet_service; }
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname "${links}" ip saddr ${this.block} ip daddr ${host} tcp dport @bridge_ports accept
    iifname "${links}" counter drop
    ip daddr ${host} iifname != { "lo", "${links}" } counter drop
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname "${links}" counter drop
    oifname "${links}" counter drop
  }
}
`);
  }
}

/** Deletes an instance's namespaces, links and filter table, and its host address when known. */
async function removeInstanceNetwork(instance: string, hostAddress?: number): Promise<void> {
  const nsPrefix = `paddock-${instance}-`;
  const names = (await readdir(NETNS_DIR).catch(() => [] as string[])).filter((n) => n.startsWith(nsPrefix));
  const links = await listLinks(`pd${instance.slice(0, 6)}-`);
  // One spawn for all of them: a host that died with 1,000 sandboxes left 1,000 namespaces.
  const lines = [...links.map((l) => `link del ${l}`), ...names.map((n) => `netns del ${n}`)];
  if (lines.length > 0) await ip(["-force"], `${lines.join("\n")}\n`).catch(() => {});
  await nft(`delete table inet paddock_${instance}\n`).catch(() => {});
  if (hostAddress !== undefined) await ip(["addr", "del", `${intToIp(hostAddress)}/32`, "dev", "lo"]).catch(() => {});
}

function parseClaim(text: string): { instance: string; pid: number } | undefined {
  try {
    const value = JSON.parse(text) as { instance?: unknown; pid?: unknown };
    if (
      typeof value.instance === "string" &&
      /^[a-z0-9]{6,64}$/.test(value.instance) &&
      typeof value.pid === "number"
    ) {
      return { instance: value.instance, pid: value.pid };
    }
  } catch {}
  return undefined;
}

async function exists(file: string): Promise<boolean> {
  try {
    await (await open(file, "r")).close();
    return true;
  } catch {
    return false;
  }
}

async function listLinks(prefix: string): Promise<string[]> {
  const { stdout } = await run("ip", ["-j", "link", "show"], { env: toolEnv() });
  const links = JSON.parse(stdout || "[]") as { ifname?: string }[];
  return links.map((l) => l.ifname ?? "").filter((n) => n.startsWith(prefix));
}

/** IPv4 ranges this machine already routes (any table), as [base, size). */
async function routedRanges(): Promise<{ base: number; size: number }[]> {
  const { stdout } = await run("ip", ["-j", "-4", "route", "show", "table", "all"], { env: toolEnv() });
  const routes = JSON.parse(stdout || "[]") as { dst?: string }[];
  const ranges: { base: number; size: number }[] = [];
  for (const { dst } of routes) {
    if (!dst || dst === "default") continue;
    const [addr, bits] = dst.split("/");
    const prefix = bits === undefined ? 32 : Number(bits);
    if (!addr || !/^\d+\.\d+\.\d+\.\d+$/.test(addr) || prefix < 8) continue;
    const base = (ipToInt(addr) & ((0xffffffff << (32 - prefix)) >>> 0 || 0)) >>> 0;
    ranges.push({ base, size: 2 ** (32 - prefix) });
  }
  return ranges;
}
