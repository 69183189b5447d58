/**
 * The command that starts a sandbox: setpriv drops to the sandbox uid, then bwrap builds the
 * namespaces and mounts and execs argv.
 *
 * Threat model: bwrap must not run as root (the sandbox would then be host uid 0), so setpriv
 * switches every uid and gid to the sandbox user, clears supplementary groups, empties the
 * capability bounding and inheritable sets and sets no_new_privs before bwrap starts. bwrap then
 * unshares every namespace but the network one, which is either fresh (loopback only) or the
 * sandbox network's namespace the launcher entered (see network.ts), forbids nested user
 * namespaces, mounts the runner read-only, gives argv a new session (no TIOCSTI into a host
 * terminal), an environment of exactly spec.env, and the seccomp filter; --die-with-parent ends
 * the sandbox if the host process dies. These lists are the only copy: runs and the runner's
 * compile-cache build (images/runner-compile-cache.ts) take them from here. Edit sessions start
 * bwrap already inside a user namespace of their own (no setpriv, no --unshare-user, a hostname, a
 * new session only without a terminal), so sessionBwrapOptions below lists their namespaces
 * itself; it shares entryOptions (environment, folder, seccomp filter).
 */
import { INPUTS_DIR, RUNNER_MOUNT, RUNTIME_DIR } from "../driver.ts";
import { BWRAP_ARGS_FD, SECCOMP_FD, type Tools } from "./launcher.ts";

export interface BwrapOptions {
  /** Host path of the overlay mount that becomes /. */
  root: string;
  runnerDir: string;
  /** Host folder bound read-only at INPUTS_DIR. */
  inputs: string;
  /** Host folder bound read-only at RUNTIME_DIR (the run token). */
  runtime: string;
  /** Keep the network namespace the launcher entered (a sandbox network) instead of a loopback-only one. */
  shareNet: boolean;
  env: Record<string, string>;
  cwd: string;
}

/**
 * setpriv's options, the one list every sandbox start uses: every uid and gid becomes the sandbox
 * user's, no supplementary groups, empty capability bounding and inheritable sets, no new privileges.
 */
export function dropPrivileges(uid: number, gid: number): string[] {
  return [
    `--reuid=${uid}`,
    `--regid=${gid}`,
    "--clear-groups",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--no-new-privs",
  ];
}

/**
 * bwrap's isolation options for a sandbox started as the unprivileged sandbox user: every
 * namespace (the network one too unless `shareNet`), no nested user namespaces, gone with its
 * parent, and a new session.
 */
export function isolationOptions(shareNet = false): string[] {
  return [
    "--unshare-user",
    "--unshare-all",
    ...(shareNet ? ["--share-net"] : []),
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
  ];
}

/**
 * bwrap's last options: an environment of exactly `env`, the working folder, and the seccomp
 * filter read from `seccompFd`.
 */
export function entryOptions(env: Record<string, string>, cwd: string, seccompFd = SECCOMP_FD): string[] {
  const args = ["--clearenv"];
  for (const [key, value] of Object.entries(env)) args.push("--setenv", key, value);
  args.push("--chdir", cwd, "--seccomp", String(seccompFd));
  return args;
}

/**
 * setpriv ... bwrap --args FD -- argv. bwrap takes only options from FD, so argv stays on the
 * command line; the environment, which may carry secrets, travels on FD.
 */
export function launchCommand(tools: Tools, uid: number, gid: number, argv: string[]): string[] {
  return [tools.setpriv, ...dropPrivileges(uid, gid), tools.bwrap, "--args", String(BWRAP_ARGS_FD), "--", ...argv];
}

/** bwrap's options, read from BWRAP_ARGS_FD. */
export function bwrapOptions(options: BwrapOptions): string[] {
  return [
    ...isolationOptions(options.shareNet),
    "--bind",
    options.root,
    "/",
    "--ro-bind",
    options.runnerDir,
    RUNNER_MOUNT,
    "--ro-bind",
    options.inputs,
    INPUTS_DIR,
    "--ro-bind",
    options.runtime,
    RUNTIME_DIR,
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    ...entryOptions(options.env, options.cwd),
  ];
}
/** Where an edit session's egress socket appears inside the sandbox. */
export const EGRESS_SOCKET = "/run/paddock/egress.sock";

/**
 * What an environment edit session's root may do inside its own user namespace: what package
 * managers need (owners, modes, dropping to service users, binding low ports, chroot for
 * maintainer scripts), as a container runtime's default set, without mknod or raw sockets.
 */
const SESSION_CAPS = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FOWNER",
  "CAP_FSETID",
  "CAP_KILL",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETPCAP",
  "CAP_SETFCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_AUDIT_WRITE",
];

export interface SessionBwrapOptions extends Omit<BwrapOptions, "inputs" | "runtime" | "shareNet"> {
  /** Host path of the session's egress proxy socket, bound at EGRESS_SOCKET. */
  egressSocket?: string;
  /** The sandbox has a pseudo-terminal as its controlling terminal: no new session. */
  terminal: boolean;
}

/**
 * bwrap's options for an edit session. The launcher has already entered the session's user
 * namespace as its root (ids mapped to a host range of their own), so bwrap runs unprivileged on
 * the host and makes the other namespaces itself; no nested user namespace. A fresh /run holds
 * the egress socket, the only way out of the loopback-only network.
 */
export function sessionBwrapOptions(options: SessionBwrapOptions): string[] {
  const args = [
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--hostname",
    "paddock-env",
    "--unshare-cgroup-try",
    "--die-with-parent",
    ...(options.terminal ? [] : ["--new-session"]),
    "--bind",
    options.root,
    "/",
    "--ro-bind",
    options.runnerDir,
    RUNNER_MOUNT,
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/run",
  ];
  if (options.egressSocket) args.push("--bind", options.egressSocket, EGRESS_SOCKET);
  args.push("--cap-drop", "ALL");
  for (const cap of SESSION_CAPS) args.push("--cap-add", cap);
  args.push(...entryOptions(options.env, options.cwd));
  return args;
}

/** Encodes arguments for bwrap --args: each one NUL-terminated. */
export function nulSeparated(args: string[]): Buffer {
  for (const arg of args)
    if (arg.includes("\0")) throw new Error("sandbox arguments and environment may not contain NUL");
  return Buffer.from(args.map((arg) => `${arg}\0`).join(""), "utf8");
}

/** Environment names bwrap --setenv accepts and a libc environment can hold. */
export function checkEnv(env: Record<string, string>): void {
  for (const [key, value] of Object.entries(env)) {
    if (key === "" || key.includes("=") || key.includes("\0"))
      throw new Error(`bad environment variable name ${JSON.stringify(key)}`);
    if (typeof value !== "string" || value.includes("\0")) throw new Error(`bad value for environment variable ${key}`);
  }
}
