/**
 * What a sandbox cannot reach, on the real kernel: host processes, host files, the host's
 * environment, the runner's files, forbidden syscalls, the host's network.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { e2eSkip } from "../../testing/e2e-skip.ts";
import { RUNNER_MOUNT } from "../driver.ts";
import {
  leftovers,
  makeRunnerDir,
  makeTestDriver,
  runSandbox,
  skipReason,
  type TestDriver,
  testSpec,
} from "./test-support.ts";

const PYTHON = "/usr/bin/python3";

describe("Linux sandbox isolation", { skip: e2eSkip(skipReason()) }, () => {
  let runnerDir: string;
  let t: TestDriver;

  before(async () => {
    runnerDir = await makeRunnerDir();
    t = await makeTestDriver("isolation");
  });

  after(async () => {
    await t.cleanup();
    await rm(runnerDir, { recursive: true, force: true });
    assert.deepEqual(await leftovers(t.runDir, t.instance), []);
  });

  test("host processes are invisible: /proc lists only the sandbox's own", async () => {
    const probe = [
      "import os",
      "for p in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):",
      "    print(p, open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[0].decode())",
    ].join("\n");
    const result = await runSandbox(t.driver, testSpec("proc", runnerDir, [PYTHON, "-c", probe]));
    assert.equal(result.exit.code, 0, result.stderr);
    // bwrap's reaper is pid 1; the probe is pid 2 (its /proc entry is the only other one).
    assert.deepEqual(result.stdout.trim().split("\n"), ["1 /usr/bin/bwrap", `2 ${PYTHON}`]);
  });

  test("a host file outside the image is unreachable by any path", { timeout: 120_000 }, async (ctx) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "paddock-secret-"));
    ctx.after(() => rm(dir, { recursive: true, force: true }));
    await chmod(dir, 0o755);
    const token = `host-secret-${randomBytes(12).toString("hex")}`;
    const file = path.join(dir, "secret.txt");
    // World-readable on the host: only the sandbox's mount namespace keeps it out.
    await writeFile(file, `${token}\n`, { mode: 0o644 });
    const script = [
      `test -e ${file} && echo VISIBLE`,
      `test -e ${dir} && echo DIR-VISIBLE`,
      `grep -rlsF ${token} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev`,
      `grep -lsF ${token} /proc/*/root${file}`,
      "grep -c . /proc/self/mountinfo",
      `grep -F ${dir} /proc/self/mountinfo`,
      "echo done",
    ].join("; ");
    const result = await runSandbox(t.driver, testSpec("hostfile", runnerDir, ["/bin/sh", "-c", script]));
    const lines = result.stdout.trim().split("\n");
    assert.equal(lines.at(-1), "done");
    assert.ok(!result.stdout.includes("VISIBLE"), result.stdout);
    assert.ok(!result.stdout.includes(token), result.stdout);
    assert.ok(!result.stdout.includes(dir), result.stdout);
  });

  test("no host environment variable reaches the sandbox", async () => {
    const name = `PADDOCK_LEAK_${randomBytes(4).toString("hex").toUpperCase()}`;
    const value = `leak-${randomBytes(8).toString("hex")}`;
    process.env[name] = value;
    try {
      const script = "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done; echo; env";
      const result = await runSandbox(t.driver, testSpec("hostenv", runnerDir, ["/bin/sh", "-c", script]));
      assert.equal(result.exit.code, 0);
      assert.ok(result.stdout.includes("PATH=/usr/local/bin:/usr/bin:/bin"), "spec.env is there");
      assert.ok(!result.stdout.includes(name), result.stdout);
      assert.ok(!result.stdout.includes(value), result.stdout);
    } finally {
      delete process.env[name];
    }
  });

  test("the runner mount is read-only even where permissions would allow writing", async (ctx) => {
    // A runner folder the sandbox user could write to, were it not mounted read-only.
    const writable = await makeRunnerDir();
    ctx.after(() => rm(writable, { recursive: true, force: true }));
    await chmod(writable, 0o777);
    await writeFile(path.join(writable, "mine.txt"), "original\n", { mode: 0o666 });
    await chmod(path.join(writable, "mine.txt"), 0o666);
    await chown(path.join(writable, "mine.txt"), 61000, 61000);
    const probe = [
      "import errno, os",
      `d = '${RUNNER_MOUNT}'`,
      "def attempt(name, fn):",
      "    try:",
      "        fn(); print(name, 'OK')",
      "    except OSError as e:",
      "        print(name, errno.errorcode[e.errno])",
      "attempt('write', lambda: open(d + '/mine.txt', 'w').write('x'))",
      "attempt('create', lambda: open(d + '/new.txt', 'w').write('x'))",
      "attempt('unlink', lambda: os.unlink(d + '/mine.txt'))",
      "attempt('rename', lambda: os.rename(d + '/mine.txt', d + '/moved.txt'))",
      "attempt('chmod', lambda: os.chmod(d + '/mine.txt', 0o777))",
      "attempt('mkdir', lambda: os.mkdir(d + '/sub'))",
      "attempt('read', lambda: open(d + '/mine.txt').read())",
    ].join("\n");
    const result = await runSandbox(t.driver, testSpec("runner-ro", writable, [PYTHON, "-c", probe]));
    assert.deepEqual(result.stdout.trim().split("\n"), [
      "write EROFS",
      "create EROFS",
      "unlink EROFS",
      "rename EROFS",
      "chmod EROFS",
      "mkdir EROFS",
      "read OK",
    ]);
  });

  test("seccomp refuses namespace, mount and keyring syscalls", async () => {
    // Each probe gets another answer without the filter (measured in the same bwrap setup
    // without --seccomp); see the comments.
    const probe = [
      "import ctypes, errno, os, threading",
      "libc = ctypes.CDLL(None, use_errno=True)",
      "libc.syscall.restype = ctypes.c_long",
      "def call(name, nr, *args):",
      "    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])",
      "    if r == 0 and name.startswith('clone'): os._exit(0)",
      "    e = ctypes.get_errno()",
      "    print(name, 'OK' if r >= 0 else errno.errorcode.get(e, e))",
      "call('unshare', 272, 0)", // a no-op that succeeds unfiltered
      "call('unshare_user', 272, 0x10000000)",
      "call('mount', 165, 0, 0, 0, 0, 0)", // EFAULT unfiltered (NULL target)
      "call('umount2', 166, 0, 0)", // EFAULT unfiltered
      "call('setns', 308, -1, 0)", // EBADF unfiltered
      "call('keyctl', 250, 0, -3, 0)", // KEYCTL_GET_KEYRING_ID of the session keyring: succeeds unfiltered
      "call('open_tree', 428, -1, 0, 0)", // EFAULT unfiltered
      "call('mount_setattr', 442, -1, 0, 0, 0, 0)", // EINVAL unfiltered
      "call('io_uring_setup', 425, 1, 0)", // EFAULT unfiltered
      "call('bpf', 321, 0, 0, 0)", // EINVAL unfiltered
      "call('perf_event_open', 298, 0, 0, -1, -1, 0)", // EFAULT unfiltered
      "call('process_vm_readv', 310, os.getpid(), 0, 0, 0, 0, 0)", // succeeds unfiltered
      "call('name_to_handle_at', 303, -1, 0, 0, 0, 0)", // EFAULT unfiltered
      "call('personality', 135, 0x0400000)", // READ_IMPLIES_EXEC: succeeds unfiltered
      "call('clone_newuser', 56, 0x10000000 | 17, 0, 0, 0, 0)", // ENOSPC unfiltered (--disable-userns)
      "call('clone3', 435, 0, 0)", // EINVAL unfiltered
      "call('open_tree_attr', 467, -1, 0, 0, 0, 0)", // EFAULT unfiltered: newer than the filter's table
      "call('ioctl_tiocsti', 16, 0, 0x5412, 0)", // ENOTTY unfiltered (stdin is a pipe)
      "pid = os.fork()",
      "if pid == 0: os._exit(3)",
      "print('fork', os.waitpid(pid, 0)[1] >> 8)",
      "t = threading.Thread(target=lambda: print('thread OK')); t.start(); t.join()",
    ].join("\n");
    const result = await runSandbox(t.driver, testSpec("seccomp", runnerDir, [PYTHON, "-c", probe]));
    assert.equal(result.exit.code, 0, result.stderr);
    assert.deepEqual(result.stdout.trim().split("\n"), [
      "unshare EPERM",
      "unshare_user EPERM",
      "mount EPERM",
      "umount2 EPERM",
      "setns EPERM",
      "keyctl EPERM",
      "open_tree EPERM",
      "mount_setattr EPERM",
      "io_uring_setup EPERM",
      "bpf EPERM",
      "perf_event_open EPERM",
      "process_vm_readv EPERM",
      "name_to_handle_at EPERM",
      "personality EPERM",
      "clone_newuser EPERM",
      "clone3 ENOSYS",
      "open_tree_attr ENOSYS",
      "ioctl_tiocsti EPERM",
      "fork 3",
      "thread OK",
    ]);
  });

  test("the network namespace holds only loopback; a listener on the host's 127.0.0.1 is unreachable", async (ctx) => {
    let connections = 0;
    const decoy = net.createServer((socket) => {
      connections++;
      socket.destroy();
    });
    await new Promise<void>((resolve) => decoy.listen(0, "127.0.0.1", resolve));
    ctx.after(() => new Promise<void>((resolve) => decoy.close(() => resolve())));
    const address = decoy.address();
    assert.ok(address && typeof address === "object");
    const probe = [
      "import errno, socket",
      "print(sorted(name for _, name in socket.if_nameindex()))",
      "s = socket.socket()",
      "s.settimeout(3)",
      "try:",
      `    s.connect(('127.0.0.1', ${address.port})); print('CONNECTED')`,
      "except OSError as e:",
      "    print(errno.errorcode.get(e.errno, e.errno))",
      "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
      "try:",
      "    u.connect(('192.0.2.1', 9)); print('ROUTE')",
      "except OSError as e:",
      "    print(errno.errorcode.get(e.errno, e.errno))",
    ].join("\n");
    const result = await runSandbox(t.driver, testSpec("net", runnerDir, [PYTHON, "-c", probe]));
    assert.deepEqual(result.stdout.trim().split("\n"), ["['lo']", "ECONNREFUSED", "ENETUNREACH"]);
    assert.equal(connections, 0);
  });
});
