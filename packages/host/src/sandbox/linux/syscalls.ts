/**
 * Syscall numbers and audit architecture values for the architectures the sandbox supports.
 *
 * x86_64 numbers come from /usr/include/x86_64-linux-gnu/asm/unistd_64.h; aarch64 numbers come
 * from /usr/include/asm-generic/unistd.h (aarch64 uses the generic table); both from the Linux
 * 6.1 UAPI headers. A name missing from a table does not exist on that architecture.
 */

export type SyscallArch = "x86_64" | "aarch64";

/** AUDIT_ARCH_* from linux/audit.h: the ELF machine, ORed with 64-bit and little-endian bits. */
export const AUDIT_ARCH: Record<SyscallArch, number> = {
  x86_64: 0xc000003e,
  aarch64: 0xc00000b7,
};

/**
 * The highest syscall number in the headers the tables come from. The seccomp filter answers
 * ENOSYS above it, as an older kernel would, so syscalls added later (open_tree_attr, ...) are
 * not reachable until someone reviews them.
 */
export const MAX_KNOWN_SYSCALL: Record<SyscallArch, number> = {
  x86_64: 450,
  aarch64: 450,
};

/** Bit 30 marks the x32 ABI on x86_64 (__X32_SYSCALL_BIT). */
export const X32_SYSCALL_BIT = 0x40000000;

type Table = Readonly<Record<string, number>>;

const X86_64: Table = {
  close: 3,
  ioctl: 16,
  clone: 56,
  syslog: 103,
  uselib: 134,
  personality: 135,
  ustat: 136,
  sysfs: 139,
  vhangup: 153,
  pivot_root: 155,
  _sysctl: 156,
  prctl: 157,
  adjtimex: 159,
  chroot: 161,
  acct: 163,
  settimeofday: 164,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  iopl: 172,
  ioperm: 173,
  create_module: 174,
  init_module: 175,
  delete_module: 176,
  get_kernel_syms: 177,
  query_module: 178,
  quotactl: 179,
  nfsservctl: 180,
  lookup_dcookie: 212,
  clock_settime: 227,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  clock_adjtime: 305,
  setns: 308,
  process_vm_readv: 310,
  process_vm_writev: 311,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  clone3: 435,
  mount_setattr: 442,
  quotactl_fd: 443,
};

const AARCH64: Table = {
  lookup_dcookie: 18,
  ioctl: 29,
  umount2: 39,
  mount: 40,
  pivot_root: 41,
  nfsservctl: 42,
  chroot: 51,
  close: 57,
  vhangup: 58,
  quotactl: 60,
  acct: 89,
  personality: 92,
  unshare: 97,
  kexec_load: 104,
  init_module: 105,
  delete_module: 106,
  clock_settime: 112,
  syslog: 116,
  reboot: 142,
  prctl: 167,
  settimeofday: 170,
  adjtimex: 171,
  add_key: 217,
  request_key: 218,
  keyctl: 219,
  clone: 220,
  swapon: 224,
  swapoff: 225,
  perf_event_open: 241,
  name_to_handle_at: 264,
  open_by_handle_at: 265,
  clock_adjtime: 266,
  setns: 268,
  process_vm_readv: 270,
  process_vm_writev: 271,
  finit_module: 273,
  bpf: 280,
  userfaultfd: 282,
  kexec_file_load: 294,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  clone3: 435,
  mount_setattr: 442,
  quotactl_fd: 443,
};

const TABLES: Record<SyscallArch, Table> = { x86_64: X86_64, aarch64: AARCH64 };

/** The number of a syscall on an architecture, or undefined when the architecture lacks it. */
export function syscallNumber(arch: SyscallArch, name: string): number | undefined {
  return TABLES[arch][name];
}

/** Like syscallNumber, for syscalls every supported architecture has. */
export function requireSyscall(arch: SyscallArch, name: string): number {
  const nr = syscallNumber(arch, name);
  if (nr === undefined) throw new Error(`syscall ${name} is unknown on ${arch}`);
  return nr;
}

/** Maps Node's process.arch to a supported syscall architecture; throws for any other. */
export function syscallArch(nodeArch: string = process.arch): SyscallArch {
  if (nodeArch === "x64") return "x86_64";
  if (nodeArch === "arm64") return "aarch64";
  throw new Error(`the Linux sandbox supports x86_64 and aarch64 only, not ${nodeArch}`);
}
