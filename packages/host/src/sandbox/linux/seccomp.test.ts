/**
 * The generated seccomp program, run through a classic-BPF interpreter for every decision the
 * filter makes, on both architectures. (isolation.test.ts checks the same filter in the kernel.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  buildSeccompFilter,
  DENIED_SYSCALLS,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
} from "./seccomp.ts";
import { AUDIT_ARCH, MAX_KNOWN_SYSCALL, requireSyscall, type SyscallArch, syscallNumber } from "./syscalls.ts";

const EPERM = SECCOMP_RET_ERRNO | 1;
const ENOSYS = SECCOMP_RET_ERRNO | 38;
const CLONE_NEWUSER = 0x10000000;
const CLONE_NEWNET = 0x40000000;
const CLONE_NEWNS = 0x00020000;
/** What glibc passes for fork() and pthread_create(). */
const FORK_FLAGS = 0x01200011;
const THREAD_FLAGS = 0x003d0f00;

/**
 * Syscalls the sandbox must never reach, with their numbers written out here (x86_64 from
 * asm/unistd_64.h, aarch64 from asm-generic/unistd.h, Linux 6.1) rather than taken from the
 * tables the filter is built from, so a name dropped from the filter or a wrong number in its
 * table fails this test. aarch64 has no iopl or ioperm.
 */
const MUST_DENY: Record<string, { x86_64: number; aarch64?: number }> = {
  mount: { x86_64: 165, aarch64: 40 },
  umount2: { x86_64: 166, aarch64: 39 },
  pivot_root: { x86_64: 155, aarch64: 41 },
  chroot: { x86_64: 161, aarch64: 51 },
  unshare: { x86_64: 272, aarch64: 97 },
  setns: { x86_64: 308, aarch64: 268 },
  open_tree: { x86_64: 428, aarch64: 428 },
  move_mount: { x86_64: 429, aarch64: 429 },
  fsopen: { x86_64: 430, aarch64: 430 },
  fsconfig: { x86_64: 431, aarch64: 431 },
  fsmount: { x86_64: 432, aarch64: 432 },
  fspick: { x86_64: 433, aarch64: 433 },
  mount_setattr: { x86_64: 442, aarch64: 442 },
  bpf: { x86_64: 321, aarch64: 280 },
  perf_event_open: { x86_64: 298, aarch64: 241 },
  keyctl: { x86_64: 250, aarch64: 219 },
  add_key: { x86_64: 248, aarch64: 217 },
  request_key: { x86_64: 249, aarch64: 218 },
  kexec_load: { x86_64: 246, aarch64: 104 },
  kexec_file_load: { x86_64: 320, aarch64: 294 },
  init_module: { x86_64: 175, aarch64: 105 },
  finit_module: { x86_64: 313, aarch64: 273 },
  delete_module: { x86_64: 176, aarch64: 106 },
  lookup_dcookie: { x86_64: 212, aarch64: 18 },
  iopl: { x86_64: 172 },
  ioperm: { x86_64: 173 },
  swapon: { x86_64: 167, aarch64: 224 },
  swapoff: { x86_64: 168, aarch64: 225 },
  reboot: { x86_64: 169, aarch64: 142 },
  acct: { x86_64: 163, aarch64: 89 },
  quotactl: { x86_64: 179, aarch64: 60 },
  settimeofday: { x86_64: 164, aarch64: 170 },
  clock_settime: { x86_64: 227, aarch64: 112 },
  clock_adjtime: { x86_64: 305, aarch64: 266 },
  adjtimex: { x86_64: 159, aarch64: 171 },
  name_to_handle_at: { x86_64: 303, aarch64: 264 },
  open_by_handle_at: { x86_64: 304, aarch64: 265 },
  process_vm_readv: { x86_64: 310, aarch64: 270 },
  process_vm_writev: { x86_64: 311, aarch64: 271 },
  userfaultfd: { x86_64: 323, aarch64: 282 },
  io_uring_setup: { x86_64: 425, aarch64: 425 },
  io_uring_enter: { x86_64: 426, aarch64: 426 },
  io_uring_register: { x86_64: 427, aarch64: 427 },
};

/** Evaluates a classic BPF seccomp program (the subset the generator emits) on seccomp_data. */
function run(program: Buffer, arch: number, nr: number, args: number[] = []): number {
  const data = Buffer.alloc(64);
  data.writeInt32LE(nr, 0);
  data.writeUInt32LE(arch, 4);
  args.forEach((arg, i) => {
    data.writeUInt32LE(arg >>> 0, 16 + 8 * i);
  });
  let acc = 0;
  for (let pc = 0; pc < program.length / 8; ) {
    const code = program.readUInt16LE(pc * 8);
    const jt = program.readUInt8(pc * 8 + 2);
    const jf = program.readUInt8(pc * 8 + 3);
    const k = program.readUInt32LE(pc * 8 + 4);
    switch (code) {
      case 0x20: // ld [k]
        acc = data.readUInt32LE(k);
        pc += 1;
        break;
      case 0x15: // jeq
        pc += 1 + (acc === k ? jt : jf);
        break;
      case 0x25: // jgt
        pc += 1 + (acc > k ? jt : jf);
        break;
      case 0x35: // jge
        pc += 1 + (acc >= k ? jt : jf);
        break;
      case 0x45: // jset
        pc += 1 + ((acc & k) !== 0 ? jt : jf);
        break;
      case 0x06: // ret
        return k;
      default:
        throw new Error(`unexpected opcode ${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error("program fell off its end");
}

for (const arch of ["x86_64", "aarch64"] as const satisfies SyscallArch[]) {
  describe(`seccomp filter (${arch})`, () => {
    const program = buildSeccompFilter(arch);
    const audit = AUDIT_ARCH[arch];
    const nr = (name: string): number => requireSyscall(arch, name);

    test("is a whole number of instructions, within the kernel's 4096 limit", () => {
      assert.equal(program.length % 8, 0);
      assert.ok(program.length / 8 < 4096);
    });

    test("kills a process calling through another architecture's ABI", () => {
      assert.equal(run(program, 0x40000003 /* AUDIT_ARCH_I386 */, 1), SECCOMP_RET_KILL_PROCESS);
      assert.equal(run(program, 0x40000028 /* AUDIT_ARCH_ARM */, 1), SECCOMP_RET_KILL_PROCESS);
    });

    test("allows everyday syscalls", () => {
      // read, write, close, mmap, openat, exit, exit_group, from the same headers as the tables.
      const everyday = arch === "x86_64" ? [0, 1, 3, 9, 257, 60, 231] : [63, 64, 57, 222, 56, 93, 94];
      for (const n of everyday) assert.equal(run(program, audit, n), SECCOMP_RET_ALLOW, `nr ${n}`);
    });

    test("answers EPERM for every denied syscall the architecture has", () => {
      let checked = 0;
      for (const name of DENIED_SYSCALLS) {
        const n = syscallNumber(arch, name);
        if (n === undefined) continue;
        assert.equal(run(program, audit, n), EPERM, name);
        checked++;
      }
      assert.ok(checked >= 40, `only ${checked} denied syscalls exist on ${arch}`);
    });

    test("answers EPERM for every syscall of the hand-written must-deny list", () => {
      const through: string[] = [];
      for (const [name, numbers] of Object.entries(MUST_DENY)) {
        const n = numbers[arch];
        if (n !== undefined && run(program, audit, n) !== EPERM) through.push(`${name} (${n})`);
      }
      assert.deepEqual(through, [], "syscalls the filter lets through");
    });

    test("answers ENOSYS for clone3 and for syscalls newer than the table", () => {
      assert.equal(run(program, audit, nr("clone3")), ENOSYS);
      assert.equal(run(program, audit, MAX_KNOWN_SYSCALL[arch] + 1), ENOSYS);
      assert.equal(run(program, audit, 467 /* open_tree_attr, Linux 6.15 */), ENOSYS);
    });

    test("allows clone for fork and threads, refuses it with any CLONE_NEW* flag", () => {
      assert.equal(run(program, audit, nr("clone"), [FORK_FLAGS]), SECCOMP_RET_ALLOW);
      assert.equal(run(program, audit, nr("clone"), [THREAD_FLAGS]), SECCOMP_RET_ALLOW);
      for (const flag of [CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS]) {
        assert.equal(run(program, audit, nr("clone"), [FORK_FLAGS | flag]), EPERM, flag.toString(16));
      }
    });

    test("allows only the usual personalities", () => {
      for (const p of [0, 8, 0x20000, 0x20008, 0xffffffff]) {
        assert.equal(run(program, audit, nr("personality"), [p]), SECCOMP_RET_ALLOW, p.toString(16));
      }
      assert.equal(run(program, audit, nr("personality"), [0x0400000 /* READ_IMPLIES_EXEC */]), EPERM);
      assert.equal(run(program, audit, nr("personality"), [0x0040000 /* ADDR_NO_RANDOMIZE */]), EPERM);
    });

    test("refuses terminal injection ioctls only", () => {
      assert.equal(run(program, audit, nr("ioctl"), [0, 0x5412 /* TIOCSTI */]), EPERM);
      assert.equal(run(program, audit, nr("ioctl"), [0, 0x541c /* TIOCLINUX */]), EPERM);
      assert.equal(run(program, audit, nr("ioctl"), [0, 0x5401 /* TCGETS */]), SECCOMP_RET_ALLOW);
    });
  });
}

describe("seccomp filter (x86_64 only)", () => {
  test("kills x32 ABI calls", () => {
    const program = buildSeccompFilter("x86_64");
    assert.equal(run(program, AUDIT_ARCH.x86_64, 0x40000000 + 1), SECCOMP_RET_KILL_PROCESS);
  });
});
