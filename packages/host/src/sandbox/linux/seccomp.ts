/**
 * The seccomp filter every sandbox process runs under (bwrap loads it with --seccomp just before
 * exec'ing argv).
 *
 * Threat model: code inside the sandbox is hostile and runs as an unprivileged uid in its own
 * user, pid, mount, network, ipc, uts and cgroup namespaces, without capabilities. Namespaces
 * and DAC already deny most dangerous operations; this filter removes kernel attack surface the
 * sandbox never needs, so a kernel bug reachable only through those syscalls cannot be used to
 * escape: creating or entering namespaces (unshare, setns, clone with CLONE_NEW*), every mount
 * API, BPF and perf, keyrings, module and kexec loading, io_uring, userfaultfd, cross-process
 * memory access, clock and swap changes, handle-based opens that bypass path checks, TIOCSTI
 * terminal injection, and exotic personalities. Calls made through another ABI (i386 via int
 * 0x80, x32) would bypass the number checks, so they kill the process. Syscalls newer than the
 * table answer ENOSYS, so a syscall added to a future kernel is unreachable until reviewed.
 * Denied calls fail with EPERM rather than killing, so well-behaved programs that probe for
 * features keep working; clone3 answers ENOSYS because its flags live in memory a filter cannot
 * read, and libc then falls back to clone, whose flags the filter checks.
 */
import { openSync, writeFileSync } from "node:fs";
import { chmod, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import {
  AUDIT_ARCH,
  MAX_KNOWN_SYSCALL,
  requireSyscall,
  type SyscallArch,
  syscallNumber,
  X32_SYSCALL_BIT,
} from "./syscalls.ts";

/** Classic BPF opcodes (linux/filter.h, linux/bpf_common.h). */
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JEQ_K = 0x15;
const BPF_JMP_JGT_K = 0x25;
const BPF_JMP_JGE_K = 0x35;
const BPF_JMP_JSET_K = 0x45;
const BPF_RET_K = 0x06;

/** Seccomp return actions (linux/seccomp.h). */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

const EPERM = 1;
const ENOSYS = 38;

/** Offsets in struct seccomp_data: nr, arch, instruction pointer, then six 64-bit arguments. */
const OFFSET_NR = 0;
const OFFSET_ARCH = 4;
/** Low 32 bits of argument i (both supported architectures are little-endian). */
const argLow = (i: number): number => 16 + 8 * i;

/** Every CLONE_NEW* bit that clone() interprets (CLONE_NEWTIME overlaps CSIGNAL there). */
const CLONE_NEW_MASK =
  0x00020000 | // CLONE_NEWNS
  0x02000000 | // CLONE_NEWCGROUP
  0x04000000 | // CLONE_NEWUTS
  0x08000000 | // CLONE_NEWIPC
  0x10000000 | // CLONE_NEWUSER
  0x20000000 | // CLONE_NEWPID
  0x40000000; // CLONE_NEWNET

/** personality() values allowed: PER_LINUX, PER_LINUX32, UNAME26 variants, and the query. */
const ALLOWED_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

/** ioctl requests refused: TIOCSTI (push input into a terminal) and TIOCLINUX. */
const DENIED_IOCTLS = [0x5412, 0x541c];

/** Syscalls answering EPERM; names missing on an architecture are skipped there. */
export const DENIED_SYSCALLS = [
  // Mounts and namespaces: the sandbox's mount table and namespaces are fixed at boot.
  "mount",
  "umount2",
  "pivot_root",
  "chroot",
  "unshare",
  "setns",
  "fsopen",
  "fsconfig",
  "fsmount",
  "fspick",
  "move_mount",
  "open_tree",
  "mount_setattr",
  // Kernel extension and introspection surfaces.
  "bpf",
  "perf_event_open",
  "keyctl",
  "add_key",
  "request_key",
  "kexec_load",
  "kexec_file_load",
  "init_module",
  "finit_module",
  "delete_module",
  "create_module",
  "get_kernel_syms",
  "query_module",
  "lookup_dcookie",
  "_sysctl",
  "nfsservctl",
  "sysfs",
  "ustat",
  "uselib",
  "syslog",
  // Hardware, host-wide state and clocks.
  "iopl",
  "ioperm",
  "swapon",
  "swapoff",
  "reboot",
  "acct",
  "quotactl",
  "quotactl_fd",
  "vhangup",
  "settimeofday",
  "clock_settime",
  "clock_adjtime",
  "adjtimex",
  // Bypasses of path-based checks and of address-space boundaries.
  "open_by_handle_at",
  "name_to_handle_at",
  "process_vm_readv",
  "process_vm_writev",
  "userfaultfd",
  "io_uring_setup",
  "io_uring_enter",
  "io_uring_register",
] as const;

interface Insn {
  code: number;
  k: number;
  jt: number | string;
  jf: number | string;
}

/** A tiny assembler: jump targets are labels resolved to forward offsets of at most 255. */
class Program {
  readonly insns: Insn[] = [];
  readonly labels = new Map<string, number>();

  load(offset: number): void {
    this.insns.push({ code: BPF_LD_W_ABS, k: offset, jt: 0, jf: 0 });
  }
  jump(code: number, k: number, jt: number | string, jf: number | string): void {
    this.insns.push({ code, k: k >>> 0, jt, jf });
  }
  ret(action: number): void {
    this.insns.push({ code: BPF_RET_K, k: action >>> 0, jt: 0, jf: 0 });
  }
  label(name: string): void {
    this.labels.set(name, this.insns.length);
  }

  assemble(): Buffer {
    const out = Buffer.alloc(this.insns.length * 8);
    this.insns.forEach((insn, i) => {
      out.writeUInt16LE(insn.code, i * 8);
      out.writeUInt8(this.offset(insn.jt, i), i * 8 + 2);
      out.writeUInt8(this.offset(insn.jf, i), i * 8 + 3);
      out.writeUInt32LE(insn.k, i * 8 + 4);
    });
    return out;
  }

  private offset(target: number | string, from: number): number {
    if (typeof target === "number") return target;
    const at = this.labels.get(target);
    if (at === undefined) throw new Error(`seccomp: unknown label ${target}`);
    const off = at - from - 1;
    if (off < 0 || off > 255) throw new Error(`seccomp: jump to ${target} out of range (${off})`);
    return off;
  }
}

/** Builds the filter for an architecture as raw struct sock_filter[] bytes (what bwrap reads). */
export function buildSeccompFilter(arch: SyscallArch): Buffer {
  const nr = (name: string): number => requireSyscall(arch, name);
  const p = new Program();

  // Wrong architecture (i386 int 0x80 on x86_64, arm32 on aarch64): numbers mean other calls.
  p.load(OFFSET_ARCH);
  p.jump(BPF_JMP_JEQ_K, AUDIT_ARCH[arch], 0, "kill");
  p.load(OFFSET_NR);
  if (arch === "x86_64") p.jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, "kill", 0);
  p.jump(BPF_JMP_JGT_K, MAX_KNOWN_SYSCALL[arch], "enosys", 0);
  p.jump(BPF_JMP_JEQ_K, nr("clone3"), "enosys", 0);
  p.jump(BPF_JMP_JEQ_K, nr("clone"), "clone", 0);
  p.jump(BPF_JMP_JEQ_K, nr("personality"), "personality", 0);
  p.jump(BPF_JMP_JEQ_K, nr("ioctl"), "ioctl", 0);
  for (const name of DENIED_SYSCALLS) {
    const n = syscallNumber(arch, name);
    if (n !== undefined) p.jump(BPF_JMP_JEQ_K, n, "eperm", 0);
  }
  p.ret(SECCOMP_RET_ALLOW);

  // clone(flags, ...): flags is the first argument on both architectures.
  p.label("clone");
  p.load(argLow(0));
  p.jump(BPF_JMP_JSET_K, CLONE_NEW_MASK, "eperm", "allow");

  p.label("personality");
  p.load(argLow(0));
  for (const value of ALLOWED_PERSONALITIES) p.jump(BPF_JMP_JEQ_K, value, "allow", 0);
  p.ret(SECCOMP_RET_ERRNO | EPERM);

  p.label("ioctl");
  p.load(argLow(1));
  for (const request of DENIED_IOCTLS) p.jump(BPF_JMP_JEQ_K, request, "eperm", 0);

  p.label("allow");
  p.ret(SECCOMP_RET_ALLOW);
  p.label("eperm");
  p.ret(SECCOMP_RET_ERRNO | EPERM);
  p.label("enosys");
  p.ret(SECCOMP_RET_ERRNO | ENOSYS);
  p.label("kill");
  p.ret(SECCOMP_RET_KILL_PROCESS);
  return p.assemble();
}

/**
 * Writes the filter for the running architecture into dir (root-only, replaced atomically) and
 * returns its path; each boot opens it and hands the descriptor to bwrap.
 */
export async function writeSeccompFilter(dir: string, arch: SyscallArch): Promise<string> {
  const file = path.join(dir, `.seccomp-${arch}.bpf`);
  const temp = `${file}.${process.pid}.tmp`;
  await writeFile(temp, buildSeccompFilter(arch), { mode: 0o600 });
  await chmod(temp, 0o600);
  await rename(temp, file);
  return file;
}

/**
 * Opens the filter file for one launcher (which hands it to bwrap); the caller closes its own
 * descriptor once the launcher is spawned. Rewrites the file if something removed it.
 */
export function openSeccompFilter(file: string, arch: SyscallArch): number {
  try {
    return openSync(file, "r");
  } catch (err) {
    if (!(err instanceof Error && "code" in err && err.code === "ENOENT")) throw err;
    writeFileSync(file, buildSeccompFilter(arch), { mode: 0o600 });
    return openSync(file, "r");
  }
}
