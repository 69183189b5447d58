/**
 * The command that starts a sandbox: setpriv drops to the sandbox uid, then bwrap builds the
 * namespaces and mounts and execs argv.
 *
 * Threat model: bwrap must not run as root (the sandbox would then be host uid 0), so setpriv
 * switches every uid and gid to the sandbox user, clears supplementary groups, empties the
 * capability bounding and inheritable sets and sets no_new_privs before bwrap starts. bwrap then
 * unshares every namespace (the network namespace holds only loopback), forbids nested user
 * namespaces, mounts the runner read-only, gives argv a new session (no TIOCSTI into a host
 * terminal), an environment of exactly spec.env, and the seccomp filter; --die-with-parent ends
 * the sandbox if the host process dies.
 */
import { INPUTS_DIR, RUNNER_MOUNT } from "../driver.ts";
import { BWRAP_ARGS_FD, SECCOMP_FD, type Tools } from "./launcher.ts";

export interface BwrapOptions {
  /** Host path of the overlay mount that becomes /. */
  root: string;
  runnerDir: string;
  /** Host folder bound read-only at INPUTS_DIR. */
  inputs: string;
  env: Record<string, string>;
  cwd: string;
}

/**
 * setpriv ... bwrap --args FD -- argv. bwrap takes only options from FD, so argv stays on the
 * command line; the environment, which may carry secrets, travels on FD.
 */
export function launchCommand(tools: Tools, uid: number, gid: number, argv: string[]): string[] {
  return [
    tools.setpriv,
    `--reuid=${uid}`,
    `--regid=${gid}`,
    "--clear-groups",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--no-new-privs",
    tools.bwrap,
    "--args",
    String(BWRAP_ARGS_FD),
    "--",
    ...argv,
  ];
}

/** bwrap's options, read from BWRAP_ARGS_FD. */
export function bwrapOptions(options: BwrapOptions): string[] {
  const args = [
    "--unshare-user",
    "--unshare-all",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--bind",
    options.root,
    "/",
    "--ro-bind",
    options.runnerDir,
    RUNNER_MOUNT,
    "--ro-bind",
    options.inputs,
    INPUTS_DIR,
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--clearenv",
  ];
  for (const [key, value] of Object.entries(options.env)) args.push("--setenv", key, value);
  args.push("--chdir", options.cwd, "--seccomp", String(SECCOMP_FD));
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
