/** The hard-coded syscall tables agree with the UAPI headers installed on this machine. */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { DENIED_SYSCALLS } from "./seccomp.ts";
import { MAX_KNOWN_SYSCALL, type SyscallArch, syscallNumber } from "./syscalls.ts";

const HEADERS: Record<SyscallArch, string> = {
  x86_64: "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
  aarch64: "/usr/include/asm-generic/unistd.h",
};

/** Every name the driver uses, besides the deny list. */
const USED = ["clone", "clone3", "personality", "ioctl", "close", "mount", "umount2", "prctl"];

function parse(file: string): Map<string, number> {
  const numbers = new Map<string, number>();
  for (const match of readFileSync(file, "utf8").matchAll(/^#define __NR(?:3264)?_(\w+)\s+(\d+)\s*$/gm)) {
    const [, name, value] = match;
    if (name !== undefined && value !== undefined && name !== "syscalls") numbers.set(name, Number(value));
  }
  return numbers;
}

for (const arch of ["x86_64", "aarch64"] as const) {
  const header = HEADERS[arch];
  test(`${arch} syscall numbers match ${header}`, {
    skip: e2eSkip(!existsSync(header) && `${header} is not installed`),
  }, () => {
    const fromHeader = parse(header);
    for (const name of [...DENIED_SYSCALLS, ...USED]) {
      assert.equal(syscallNumber(arch, name), fromHeader.get(name), name);
    }
    assert.equal(Math.max(...fromHeader.values()), MAX_KNOWN_SYSCALL[arch]);
  });
}
