/**
 * The Linux sandbox driver: bubblewrap in fresh namespaces over an overlay of read-only layers
 * and a tmpfs writable layer, limited by cgroups, filtered by seccomp, as an unprivileged uid.
 *
 * Threat model: everything inside the sandbox is hostile. It must not read or change the host's
 * files, processes, environment or network (namespaces, overlay root, loopback-only network),
 * gain privileges (unprivileged uid, no capabilities, no_new_privs, no nested user namespaces,
 * seccomp), exhaust the host (memory, pids and CPU cgroups, tmpfs quota), or outlive the sandbox
 * (kill by cgroup membership). The host runs as root only to mount and to manage cgroups; its
 * helpers get a minimal environment and never run sandbox-supplied code.
 *
 * Boot, in order: cgroups created and limited (or a warm launcher's slot cgroup renamed and
 * limited); one launcher process mounts the tmpfs, joins the cgroups while the driver writes the
 * writable layer, mounts the overlay, then becomes setpriv and bwrap (see launcher.ts).
 */
import { execFile } from "node:child_process";
import { statSync } from "node:fs";
import { chown, mkdir, readdir, rm, statfs } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { toolEnv } from "../../fs/tool-env.ts";
import type { SandboxDriver, SandboxHandle, SandboxSpec, SessionLayer, SessionLayerUsage } from "../driver.ts";
import { bwrapOptions, checkEnv, launchCommand, nulSeparated, sessionBwrapOptions } from "./bwrap-args.ts";
import {
  type CgroupLayout,
  detectCgroups,
  listInstanceCgroups,
  removeInstanceCgroups,
  SandboxCgroup,
} from "./cgroups.ts";
import { BWRAP_ARGS_FD, findTools, type HelperKind, type Tools, unmountAll } from "./launcher.ts";
import { discard, LauncherPool, type Lease } from "./launcher-pool.ts";
import { mountPointsUnder } from "./mountinfo.ts";
import type { NetworkLease, SandboxNetwork } from "./network.ts";
import { ensureRunDir, NAME_RE, sandboxPaths } from "./paths.ts";
import { LinuxSandboxHandle, removeSandboxDir, teardownSandbox } from "./sandbox-handle.ts";
import { writeSeccompFilter } from "./seccomp.ts";
import { syscallArch } from "./syscalls.ts";
import { checkSandboxFilePath, prepareWritableLayer } from "./writable-layer.ts";

export interface LinuxSandboxDriverConfig {
  /** Where per-sandbox folders live, for example /run/paddock/<instance>. */
  runDir: string;
  /** Names this host's cgroup subtree (paddock/<instance>), so a restarted host finds its leftovers. */
  instance: string;
  /** The host uid and gid sandboxes run as; default 61000. */
  sandboxUid?: number;
  sandboxGid?: number;
  /** The root helper's language; default perl when installed, else bash with util-linux mount. */
  helper?: HelperKind;
  /** Launchers kept started ahead of boots (see launcher-pool.ts); default 2, 0 disables. */
  warmLaunchers?: number;
  /** Per-sandbox networks for specs that ask for one (see network.ts); without it, loopback only. */
  network?: SandboxNetwork;
}

interface Setup {
  tools: Tools;
  cgroups: CgroupLayout;
  pool: LauncherPool;
}

const run = promisify(execFile);
/** Holds exposed runner layers; the leading dot keeps it apart from sandbox ids (NAME_RE). */
const RUNNERS_DIR = ".runners";
/** Holds edit sessions' layers (tmpfs mounts that outlive each of the session's sandboxes). */
const SESSIONS_DIR = ".sessions";
/** Host ids a session's user namespace maps: sandbox ids 0..65535. */
export const SESSION_ID_COUNT = 65536;

/** Characters that would break the overlay option string (",", ":" separate options and layers). */
const BAD_LAYER_CHARS = /[,:\\\s]/;
/** mount(2) options must fit in one page. */
const MAX_MOUNT_OPTIONS = 4000;

function checkSpec(spec: SandboxSpec): void {
  if (!NAME_RE.test(spec.id)) throw new Error(`sandbox id must match ${NAME_RE}: ${JSON.stringify(spec.id)}`);
  if (spec.layers.length === 0) throw new Error("a sandbox needs at least one layer");
  for (const layer of spec.layers) {
    if (!path.isAbsolute(layer) || BAD_LAYER_CHARS.test(layer)) {
      throw new Error(`layer path must be absolute without ',', ':', '\\' or spaces: ${JSON.stringify(layer)}`);
    }
  }
  if (!path.isAbsolute(spec.runnerDir)) throw new Error(`runnerDir must be absolute: ${spec.runnerDir}`);
  for (const dir of [...spec.layers, spec.runnerDir]) {
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`not a directory: ${dir}`);
  }
  if (spec.argv.length === 0) throw new Error("argv is empty");
  if (spec.session) checkSession(spec.session);
  if (!spec.cwd.startsWith("/")) throw new Error(`cwd must be absolute: ${spec.cwd}`);
  checkEnv(spec.env);
  for (const file of spec.files) checkSandboxFilePath(file.path);
}

function checkSession(session: NonNullable<SandboxSpec["session"]>): void {
  const { idBase, terminal, egressSocket, layerDir } = session;
  // Never host root's ids, nor wrapping past the largest id (4294967294; -1 means "unchanged").
  if (!Number.isInteger(idBase) || idBase < 65536 || idBase + SESSION_ID_COUNT > 0xffffffff) {
    throw new Error(`session id base out of range: ${idBase}`);
  }
  if (!path.isAbsolute(layerDir) || BAD_LAYER_CHARS.test(layerDir)) throw new Error(`bad session layer: ${layerDir}`);
  if (egressSocket !== undefined && !path.isAbsolute(egressSocket)) throw new Error("egressSocket must be absolute");
  if (terminal) {
    for (const n of [terminal.rows, terminal.cols]) {
      if (!Number.isInteger(n) || n < 1 || n > 10000)
        throw new Error(`bad terminal size: ${terminal.rows}x${terminal.cols}`);
    }
  }
}

export class LinuxSandboxDriver implements SandboxDriver {
  readonly name = "linux";
  private readonly runDir: string;
  private readonly instance: string;
  private readonly uid: number;
  private readonly gid: number;
  private readonly helper: HelperKind | undefined;
  private readonly warmLaunchers: number;
  private readonly network: SandboxNetwork | undefined;
  private setupPromise: Promise<Setup> | undefined;
  private pool: LauncherPool | undefined;
  /** Runner layers exposed read-only under runDir, by host path. */
  private readonly runners = new Map<string, Promise<string>>();

  constructor(config: LinuxSandboxDriverConfig) {
    if (!path.isAbsolute(config.runDir)) throw new Error(`runDir must be absolute: ${config.runDir}`);
    if (!NAME_RE.test(config.instance)) throw new Error(`instance must match ${NAME_RE}: ${config.instance}`);
    this.runDir = path.resolve(config.runDir);
    this.instance = config.instance;
    this.uid = config.sandboxUid ?? 61000;
    this.gid = config.sandboxGid ?? 61000;
    if (!(this.uid > 0 && this.gid > 0)) throw new Error("the sandbox uid and gid must not be root");
    this.helper = config.helper;
    this.warmLaunchers = config.warmLaunchers ?? 2;
    this.network = config.network;
  }

  /** Checks the host once per driver: platform, root, tools, cgroups; writes the seccomp filter. */
  private setup(): Promise<Setup> {
    this.setupPromise ??= (async () => {
      if (process.platform !== "linux") throw new Error("the Linux sandbox driver runs on Linux only");
      if (process.getuid?.() !== 0) throw new Error("the Linux sandbox driver must run as root");
      const arch = syscallArch();
      const [tools, cgroups] = await Promise.all([findTools(arch, this.helper), detectCgroups()]);
      await ensureRunDir(this.runDir);
      const seccompFile = await writeSeccompFilter(this.runDir, arch);
      this.pool = new LauncherPool(tools, cgroups, this.instance, seccompFile, this.warmLaunchers);
      return { tools, cgroups, pool: this.pool };
    })().catch((err: unknown) => {
      this.setupPromise = undefined;
      throw err;
    });
    return this.setupPromise;
  }

  async boot(spec: SandboxSpec): Promise<SandboxHandle> {
    checkSpec(spec);
    const lowerdir = spec.layers.join(":");
    const { tools, cgroups, pool } = await this.setup();
    const paths = sandboxPaths(this.runDir, spec.id);
    const cgroup = new SandboxCgroup(cgroups, this.instance, spec.id);
    const overlayOptions = `lowerdir=${lowerdir},upperdir=${paths.upper},workdir=${paths.work}`;
    if (overlayOptions.length > MAX_MOUNT_OPTIONS) throw new Error(`too many layers: mount options exceed a page`);

    const session = spec.session;
    if (session && tools.helper !== "perl") throw new Error("environment edit sessions need perl on the host");
    await this.makeSandboxDir(paths.dir, spec.id);
    let lease: Lease | undefined;
    let net: NetworkLease | undefined;
    try {
      if (spec.network && this.network && !session) net = await this.network.take();
      // A session's terminal relay must start outside the cgroups: never a warm launcher (in its slot).
      lease = session ? pool.fresh() : pool.take();
      if (lease.slot) {
        try {
          await lease.launcher.idle;
        } catch {
          // The warm launcher died (killed by a reap, for instance): start a fresh one.
          void discard(lease);
          lease = pool.fresh();
        }
      }
      const { launcher, slot } = lease;
      if (slot) {
        // A warm launcher already sits in its slot cgroup: make that the sandbox's cgroup.
        cgroup.adopt(slot, spec.limits);
      } else {
        cgroup.create(spec.limits);
      }
      const runnerDir = await this.exposeRunner(tools, spec.runnerDir);
      const options = session
        ? sessionBwrapOptions({
            root: paths.root,
            runnerDir,
            env: spec.env,
            cwd: spec.cwd,
            egressSocket: session.egressSocket,
            terminal: session.terminal !== undefined,
          })
        : bwrapOptions({
            root: paths.root,
            runnerDir,
            inputs: paths.inputs,
            runtime: paths.runtime,
            shareNet: net !== undefined,
            env: spec.env,
            cwd: spec.cwd,
          });
      const child = await launcher.run({
        dir: paths.dir,
        // 0711: bwrap (the sandbox uid) traverses it to the overlay; host users cannot list it.
        // nr_inodes bounds file count as size bounds bytes (one inode per 4 KiB of quota). A
        // session's writable layer lives in its session layer; this tmpfs holds mount points.
        tmpfsOptions: session
          ? "size=1m,nr_inodes=4096,mode=0711"
          : `size=${spec.limits.disk_mb}m,nr_inodes=${spec.limits.disk_mb * 256},mode=0711`,
        lowerdir,
        cgroupProcs: slot ? [] : cgroup.procsFiles,
        command: session
          ? [tools.bwrap, "--args", String(BWRAP_ARGS_FD), "--", ...spec.argv]
          : launchCommand(tools, this.uid, this.gid, spec.argv),
        bwrapOptions: nulSeparated(options),
        upper: session?.layerDir,
        idmapBase: session?.idBase,
        pty: session?.terminal,
        netns: net?.nsPath,
        prepare: async () => {
          if (!session) return prepareWritableLayer(paths, spec.files, this.uid, this.gid);
          for (const dir of [paths.root, paths.inputs, paths.runtime]) await mkdir(dir, { mode: 0o755 });
        },
      });
      const network = this.network;
      return new LinuxSandboxHandle(
        spec.id,
        paths,
        cgroup,
        tools,
        child,
        net && network ? { lease: net, release: (l) => network.release(l) } : undefined,
      );
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (lease) await discard(lease);
      await teardownSandbox(tools, paths, cgroup).catch(() => {});
      if (net) this.network?.release(net);
      throw new Error(`sandbox ${spec.id}: boot failed: ${message}`, { cause: err });
    } finally {
      pool.refill();
    }
  }

  /** Creates the sandbox's folder; recreates runDir first if something removed it. */
  private async makeSandboxDir(dir: string, id: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await mkdir(dir, { mode: 0o711 });
        return;
      } catch (err) {
        const code = err instanceof Error && "code" in err ? err.code : undefined;
        if (code === "EEXIST") throw new Error(`sandbox ${id} already exists in ${this.runDir}`);
        if (code !== "ENOENT" || attempt > 0) throw err;
        await ensureRunDir(this.runDir);
      }
    }
  }

  /**
   * bwrap binds the runner as the sandbox uid, which cannot traverse a private (0700) data
   * directory. Each runner layer is therefore bind-mounted read-only once per host under runDir
   * (0711), at a name no sandbox id can take; reapOrphans and close() unmount it.
   */
  private exposeRunner(tools: Tools, runnerDir: string): Promise<string> {
    let exposed = this.runners.get(runnerDir);
    if (!exposed) {
      exposed = (async () => {
        const target = path.join(this.runDir, RUNNERS_DIR, path.basename(runnerDir));
        await mkdir(path.dirname(target), { recursive: true, mode: 0o711 });
        await mkdir(target, { recursive: true, mode: 0o755 });
        const mount = tools.mount ?? "mount";
        await run(mount, ["--bind", runnerDir, target], { env: toolEnv() });
        await run(mount, ["-o", "remount,bind,ro,nosuid,nodev", target], { env: toolEnv() });
        return target;
      })();
      exposed.catch(() => this.runners.delete(runnerDir));
      this.runners.set(runnerDir, exposed);
    }
    return exposed;
  }

  /**
   * Mounts a tmpfs of diskMb megabytes (and one inode per 4 KiB) as a session layer, with upper/
   * owned by the session's root (host id idBase) so the sandbox can write to its /.
   */
  async createSessionLayer(id: string, diskMb: number, idBase: number): Promise<SessionLayer> {
    if (!NAME_RE.test(id)) throw new Error(`session id must match ${NAME_RE}: ${JSON.stringify(id)}`);
    if (!Number.isInteger(diskMb) || diskMb < 1) throw new Error(`bad session disk size: ${diskMb}`);
    const { tools } = await this.setup();
    const dir = this.sessionLayerDir(id);
    await mkdir(path.dirname(dir), { recursive: true, mode: 0o711 });
    await mkdir(dir, { mode: 0o711 });
    try {
      const options = `nosuid,nodev,size=${diskMb}m,nr_inodes=${diskMb * 256},mode=0711`;
      await run(tools.mount ?? "mount", ["-n", "-t", "tmpfs", "-o", options, "tmpfs", dir], { env: toolEnv() });
      const layer = { dir, upper: path.join(dir, "upper"), egressDir: path.join(dir, "egress") };
      await mkdir(layer.upper, { mode: 0o755 });
      await chown(layer.upper, idBase, idBase);
      await mkdir(path.join(dir, "work"), { mode: 0o700 });
      await mkdir(layer.egressDir, { mode: 0o711 });
      return layer;
    } catch (err) {
      await this.removeSessionLayer(id).catch(() => {});
      throw err;
    }
  }

  async sessionLayerUsage(id: string): Promise<SessionLayerUsage> {
    const s = await statfs(path.join(this.sessionLayerDir(id), "upper"));
    return {
      usedBytes: (s.blocks - s.bfree) * s.bsize,
      sizeBytes: s.blocks * s.bsize,
      usedInodes: s.files - s.ffree,
      inodes: s.files,
    };
  }

  async removeSessionLayer(id: string): Promise<void> {
    const { tools } = await this.setup();
    const dir = this.sessionLayerDir(id);
    await unmountAll(tools, dir);
    await rm(dir, { recursive: true, force: true });
  }

  private sessionLayerDir(id: string): string {
    if (!NAME_RE.test(id)) throw new Error(`session id must match ${NAME_RE}: ${JSON.stringify(id)}`);
    return path.join(this.runDir, SESSIONS_DIR, id);
  }

  /**
   * Stops the warm launchers, unmounts exposed runner layers and, when no sandbox is left,
   * removes runDir and this instance's cgroups (not part of SandboxDriver).
   */
  async close(): Promise<void> {
    await this.pool?.close();
    if (!this.setupPromise) return;
    const { tools, cgroups } = await this.setupPromise;
    this.runners.clear();
    await unmountAll(tools, path.join(this.runDir, RUNNERS_DIR), false);
    // Session layers live in memory: a host that stops ends its sessions.
    await unmountAll(tools, path.join(this.runDir, SESSIONS_DIR), false);
    const left = (await readdir(this.runDir).catch(() => [] as string[])).filter((n) => NAME_RE.test(n));
    // Never recurse into a mount: only an unmounted, sandbox-free runDir is removed.
    if (left.length > 0 || (await mountPointsUnder(this.runDir)).length > 0) return;
    await rm(this.runDir, { recursive: true, force: true });
    // Used again, the driver sets up afresh (runDir, seccomp filter, launchers).
    this.setupPromise = undefined;
    this.pool = undefined;
    removeInstanceCgroups(cgroups, this.instance);
  }

  async reapOrphans(): Promise<number> {
    const { tools, cgroups, pool } = await this.setup();
    await pool.close();
    const ids = new Set(listInstanceCgroups(cgroups, this.instance));
    const prefix = `${this.runDir}/`;
    for (const point of await mountPointsUnder(this.runDir, false)) {
      const id = point.slice(prefix.length).split("/")[0];
      if (id) ids.add(id);
    }
    // A driver that was closed may have removed an empty runDir: nothing to reap there.
    for (const entry of await readdir(this.runDir, { withFileTypes: true }).catch(() => [])) {
      if (entry.isDirectory() && NAME_RE.test(entry.name)) ids.add(entry.name);
    }
    const reaped = [...ids];
    // Kill first: live processes could keep mounts busy.
    await Promise.all(reaped.map((id) => new SandboxCgroup(cgroups, this.instance, id).killAll()));
    this.runners.clear();
    await unmountAll(tools, this.runDir, false);
    for (const id of reaped) {
      await removeSandboxDir(sandboxPaths(this.runDir, id).dir);
      await new SandboxCgroup(cgroups, this.instance, id).remove();
    }
    removeInstanceCgroups(cgroups, this.instance);
    // Warm launchers' slots are cleaned like sandboxes but are not sandboxes.
    return reaped.filter((id) => NAME_RE.test(id)).length;
  }
}
