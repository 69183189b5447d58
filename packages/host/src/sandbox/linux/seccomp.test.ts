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
