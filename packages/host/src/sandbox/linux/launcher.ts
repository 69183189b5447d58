/**
 * The root helper that turns a prepared folder into a running sandbox, in a single process that
 * becomes bwrap. Started ahead of time (see launcher-pool.ts), it waits for a request; then it
 * mounts the tmpfs (the disk quota), joins the sandbox's cgroups while the driver fills the
 * writable layer, mounts the overlay, and execs setpriv, which drops to the sandbox uid and execs
 * bwrap. A warm launcher on cgroup v1 has already joined a slot cgroup, which the driver renames
 * to the sandbox's; joining is the slow step (a cgroup migration can wait for an RCU grace
 * period, milliseconds on a busy host). Also the helper that unmounts.
 *
 * Threat model: the helper runs as root with an explicitly minimal environment (PATH and locale), so
 * nothing of the host's environment reaches the helper or, through it, the sandbox. It is in the
 * cgroups before it execs, so the first sandbox process is born limited and no fork can happen
 * outside them. bwrap's options, which carry the sandbox's environment, arrive on a pipe
 * (bwrap --args) rather than on the command line, which any host user can read in /proc. Before
 * exec it closes every descriptor but stdio and bwrap's two (seccomp filter, options), which
 * bwrap consumes: the host may hold descriptors without close-on-exec, and none may leak in.
 *
 * The helper is a short Perl program calling mount(2) directly (perl-base is part of every
 * Debian system); without Perl, a bash script running util-linux mount does the same, slower.
 *
 * Protocol on the control socket (descriptor 4): the helper says "idle" once it is ready for a
 * request; the request is a line with a field count, then that many NUL-terminated fields:
 * sandbox folder, tmpfs options, lowerdir, upper folder, idmap base, pty size, network namespace
 * file (each possibly empty), count of cgroup.procs files to join, those files, the command to
 * exec. The helper answers "mounted" (tmpfs is up), the driver "go" (writable layer filled), the
 * helper "ready" just before exec; "error: ..." lines explain a failure. With a network namespace,
 * the helper enters it right before exec, so the sandbox's only network is that namespace's link.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { access, constants } from "node:fs/promises";
import type { Socket } from "node:net";
import { toolEnv } from "../../fs/tool-env.ts";
import { mountPointsUnder } from "./mountinfo.ts";
import { requireSyscall, type SyscallArch } from "./syscalls.ts";

/** The folders a helper searches: those bwrap and setpriv come from. */
export const HELPER_PATH = "/usr/bin:/bin";
/** The only environment any helper gets: a host tool's, with HELPER_PATH. */
export const HELPER_ENV: Readonly<Record<string, string>> = Object.freeze(toolEnv({ PATH: HELPER_PATH }));

/** The descriptors the launched process sees besides stdio. */
export const SECCOMP_FD = 3;
const CONTROL_FD = 4;
export const BWRAP_ARGS_FD = 5;

export type HelperKind = "perl" | "bash";

export interface Tools {
  bwrap: string;
  setpriv: string;
  helper: HelperKind;
  perl?: string;
  bash?: string;
  mount?: string;
  umount?: string;
  arch: SyscallArch;
}

const SEARCH_PATH = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

async function findExecutable(name: string): Promise<string | undefined> {
  for (const dir of SEARCH_PATH) {
    const candidate = `${dir}/${name}`;
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {}
  }
  return undefined;
}

/** Locates bwrap, setpriv and the helper's interpreter; throws naming whatever is missing. */
export async function findTools(arch: SyscallArch, prefer?: HelperKind): Promise<Tools> {
  const [bwrap, setpriv, perl, bash, mount, umount] = await Promise.all(
    ["bwrap", "setpriv", "perl", "bash", "mount", "umount"].map(findExecutable),
  );
  const missing: string[] = [];
  if (!bwrap) missing.push("bwrap (package bubblewrap)");
  if (!setpriv) missing.push("setpriv (package util-linux)");
  const helper: HelperKind = prefer ?? (perl ? "perl" : "bash");
  if (helper === "perl" && !perl) missing.push("perl");
  if (helper === "bash" && (!bash || !mount || !umount)) missing.push("bash, mount and umount");
  if (missing.length > 0 || !bwrap || !setpriv) throw new Error(`the Linux sandbox needs: ${missing.join(", ")}`);
  return { bwrap, setpriv, helper, perl, bash, mount, umount, arch };
}

/**
 * Perl launcher. Arguments: the numbers of mount, close, unshare, setns, open_tree,
 * mount_setattr and move_mount, then cgroup.procs files to join at once (a slot).
 * MS_NOSUID|MS_NODEV = 6. End of file on the control socket means the driver is gone: an idle
 * launcher then moves up to the instance's cgroup, removes its slot and exits.
 *
 * Two request fields serve environment edit sessions (see session.ts for the why):
 * - idmap BASE: a user namespace mapping ids 0..65535 to BASE..BASE+65535 is made (a child
 *   unshares it, this root process writes its maps), every lower layer is mounted through that
 *   mapping (open_tree, mount_setattr MOUNT_ATTR_IDMAP, move_mount), and after the overlay is up
 *   the launcher enters the namespace as its root and execs bwrap directly (no setpriv).
 * - pty ROWS COLS: before joining the cgroups (so that it outlives the sandbox long enough to
 *   drain the terminal), the launcher opens a host pseudo-terminal and forks a relay that owns
 *   its master side; the launcher makes the slave its controlling terminal and stdio. The relay
 *   copies the master's output to its stdout unframed, and reads frames from its stdin: a type
 *   byte (0 data, 1 "ROWS COLS" window size), a 32-bit big-endian length, the payload.
 */
const PERL_LAUNCH = String.raw`
my ($nr, $nr_close, $nr_unshare, $nr_setns, $nr_open_tree, $nr_setattr, $nr_move, @slot) = @ARGV;
my $ctl;
open($ctl, "+<&=", ${CONTROL_FD}) or exit 111;
sub fail { syswrite($ctl, "error: $_[0]\n"); exit 1 }
sub line { my ($l, $c) = ("", ""); while (sysread($ctl, $c, 1)) { return $l if $c eq "\n"; $l .= $c } return undef }
sub leave { for my $p (@slot) { (my $d = $p) =~ s{/cgroup\.procs$}{}; (my $up = $d) =~ s{/[^/]+$}{}; if (open(my $f, ">", "$up/cgroup.procs")) { syswrite($f, "$$\n"); close($f) } rmdir($d) } exit 0 }
sub enter { for my $p (@_) { open(my $f, ">", $p) or fail("open $p: $!"); syswrite($f, "$$\n") or fail("join cgroup $p: $!"); close($f) } }
sub mnt { my ($src, $dst, $type, $data) = @_; syscall($nr, $src, $dst, $type, 6, $data) == 0 or fail("mount $type on $dst: $!") }
enter(@slot);
syswrite($ctl, "idle\n");
my $count = line();
leave() unless defined $count;
my $buf = "";
while (($buf =~ tr/\0//) < $count) { sysread($ctl, $buf, 65536, length($buf)) or leave() }
my @f = split(/\0/, $buf, -1);
my ($dir, $tmpfs, $lower, $upper, $idmap, $pty, $netns, $n) = splice(@f, 0, 8);
my @procs = splice(@f, 0, $n);
my @cmd = @f[0 .. $count - 9 - $n];
$upper = $dir if $upper eq "";
open_pty(split(/ /, $pty)) if $pty ne "";
mnt("tmpfs", $dir, "tmpfs", $tmpfs);
syswrite($ctl, "mounted\n");
enter(@procs);
my $go = line();
exit 1 unless defined $go && $go eq "go";
my ($ns, $holder, $release);
if ($idmap ne "") {
  ($ns, $holder, $release) = userns($idmap);
  my @layers = split(/:/, $lower);
  for my $i (0 .. $#layers) { mkdir("$dir/l$i") or fail("mkdir: $!"); idmapped($layers[$i], "$dir/l$i", $ns) }
  $lower = join(":", map { "$dir/l$_" } 0 .. $#layers);
}
mnt("overlay", "$dir/root", "overlay", "lowerdir=$lower,upperdir=$upper/upper,workdir=$upper/work");
if ($idmap ne "") {
  syscall($nr_setns, fileno($ns), 0x10000000) == 0 or fail("setns: $!");
  require POSIX;
  $) = "0 0";
  POSIX::setgid(0) && POSIX::setuid(0) && $< == 0 && $> == 0 or fail("cannot become root of the session's user namespace: $!");
  syswrite($release, "x"); waitpid($holder, 0); close($ns);
}
if ($netns ne "") {
  open(my $nsf, "<", $netns) or fail("open $netns: $!");
  syscall($nr_setns, fileno($nsf), 0x40000000) == 0 or fail("setns $netns: $!");
  close($nsf);
}
opendir(my $fds, "/proc/self/fd") or fail("/proc/self/fd: $!");
my @extra = grep { /^\d+$/ && $_ > ${BWRAP_ARGS_FD} } readdir($fds);
closedir($fds);
syscall($nr_close, $_ + 0) for @extra;
syswrite($ctl, "ready\n");
close($ctl);
exec { $cmd[0] } @cmd;
print STDERR "exec $cmd[0]: $!\n";
exit 127;

sub userns {
  my ($base) = @_;
  $base =~ /^\d+$/ or fail("bad idmap base");
  pipe(my $r1, my $w1) or fail("pipe: $!"); pipe(my $r2, my $w2) or fail("pipe: $!");
  my $pid = fork(); defined $pid or fail("fork: $!");
  if ($pid == 0) { close($r1); close($w2); syscall($nr_unshare, 0x10000000) == 0 or exit 1; syswrite($w1, "u"); sysread($r2, my $x, 1); exit 0 }
  close($w1); close($r2);
  sysread($r1, my $c, 1) or fail("cannot make the session's user namespace");
  for my $m ("uid_map", "gid_map") { open(my $f, ">", "/proc/$pid/$m") or fail("$m: $!"); syswrite($f, "0 $base 65536\n") or fail("write $m: $!"); close($f) }
  open(my $ns, "<", "/proc/$pid/ns/user") or fail("open user namespace: $!");
  return ($ns, $pid, $w2);
}
sub idmapped {
  my ($src, $dst, $ns) = @_;
  my $fd = syscall($nr_open_tree, -100, $src, 0x80001);
  $fd >= 0 or fail("open_tree $src: $!");
  my $attr = pack("QQQQ", 0x00100000 | 0x7, 0, 0, fileno($ns));
  syscall($nr_setattr, $fd, my $e1 = "", 0x1000, $attr, 32) == 0 or fail("idmap $src: $!");
  syscall($nr_move, $fd, my $e2 = "", -100, $dst, 4) == 0 or fail("move_mount $dst: $!");
  syscall($nr_close, $fd);
}
sub open_pty {
  my ($rows, $cols) = @_;
  sysopen(my $m, "/dev/ptmx", 0x102 | 0x800) or fail("/dev/ptmx: $!");
  my ($unlock, $num, $size) = (pack("i", 0), pack("i", 0), pack("S4", $rows, $cols, 0, 0));
  ioctl($m, 0x40045431, $unlock) or fail("unlockpt: $!");
  ioctl($m, 0x80045430, $num) or fail("ptsname: $!");
  ioctl($m, 0x5414, $size) or fail("window size: $!");
  sysopen(my $s, "/dev/pts/" . unpack("i", $num), 0x102) or fail("open pty: $!");
  my $pid = fork(); defined $pid or fail("fork: $!");
  if ($pid == 0) { close($s); close($ctl); syscall($nr_close, $_) for (3, ${BWRAP_ARGS_FD}); relay($m) }
  close($m);
  require POSIX;
  POSIX::setsid() >= 0 or fail("setsid: $!");
  my $steal = 0;
  ioctl($s, 0x540E, $steal) or fail("controlling terminal: $!");
  open(STDIN, "<&", $s) or fail("dup: $!"); open(STDOUT, ">&", $s) or fail("dup: $!"); open(STDERR, ">&", $s) or fail("dup: $!");
  close($s);
}
sub relay {
  my ($m) = @_;
  my ($in, $out, $open) = ("", "", 1);
  while (1) {
    my ($r, $w) = ("", "");
    vec($r, fileno($m), 1) = 1; vec($r, 0, 1) = 1 if $open && length($out) < 1048576;
    vec($w, fileno($m), 1) = 1 if length($out) > 0;
    next if select($r, $w, undef, undef) < 0;
    if (vec($r, fileno($m), 1)) {
      my $got = sysread($m, my $data, 65536);
      next if !defined $got && $!{EAGAIN};
      exit 0 unless $got;
      while (length $data) { my $put = syswrite(STDOUT, $data); exit 0 unless defined $put; substr($data, 0, $put) = "" }
    }
    if (vec($w, fileno($m), 1)) { my $put = syswrite($m, $out); substr($out, 0, $put) = "" if $put }
    if ($open && vec($r, 0, 1)) {
      my $got = sysread(STDIN, $in, 65536, length $in);
      if (!$got) { $open = 0; next }
      while (length($in) >= 5) {
        my ($type, $len) = unpack("CN", $in);
        last if length($in) < 5 + $len;
        my $payload = substr($in, 5, $len); substr($in, 0, 5 + $len) = "";
        if ($type == 0) { $out .= $payload }
        elsif ($type == 1 && $payload =~ /^(\d{1,5}) (\d{1,5})$/) { my $ws = pack("S4", $1, $2, 0, 0); ioctl($m, 0x5414, $ws) }
      }
    }
  }
}
`;

/**
 * No startup files (bash sources ~/.bashrc when its stdin is a socket, as Node's pipes are) and
 * privileged mode (no BASH_ENV, no imported functions).
 */
const BASH_FLAGS = ["--norc", "--noprofile", "-p", "-c"];

/** Bash launcher: the mount binary, then the files to join at once (bash closes fds above 9). */
const BASH_LAUNCH = `
m=$1; shift; slot=("$@")
leave() { for p in "\${slot[@]}"; do d=\${p%/cgroup.procs}; echo $$ > "\${d%/*}/cgroup.procs"; rmdir "$d"; done 2>/dev/null; exit 0; }
for p; do echo $$ > "$p" || { echo "error: cannot join cgroup $p" >&${CONTROL_FD}; exit 1; }; done
echo idle >&${CONTROL_FD}
read -r count <&${CONTROL_FD} || leave
f=()
for ((i = 0; i < count; i++)); do IFS= read -r -d '' x <&${CONTROL_FD} || leave; f+=("$x"); done
dir=\${f[0]} tmpfs=\${f[1]} lower=\${f[2]} netns=\${f[6]} n=\${f[7]}
[ -z "\${f[3]}\${f[4]}\${f[5]}" ] || { echo "error: environment edit sessions need the perl launcher" >&${CONTROL_FD}; exit 1; }
$m -n -t tmpfs -o "nosuid,nodev,$tmpfs" tmpfs "$dir" 2>&${CONTROL_FD} || exit 1
echo mounted >&${CONTROL_FD}
for p in "\${f[@]:8:n}"; do echo $$ > "$p" || { echo "error: cannot join cgroup $p" >&${CONTROL_FD}; exit 1; }; done
read -r go <&${CONTROL_FD} && [ "$go" = go ] || exit 1
$m -n -t overlay -o "nosuid,nodev,lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" overlay "$dir/root" 2>&${CONTROL_FD} || exit 1
for fd in /proc/self/fd/*; do fd=\${fd##*/}; if [ "$fd" -gt ${BWRAP_ARGS_FD} ]; then eval "exec $fd>&-"; fi; done
echo ready >&${CONTROL_FD}
exec ${CONTROL_FD}>&-
[ -z "$netns" ] || exec nsenter --net="$netns" -- "\${f[@]:8+n}"
exec "\${f[@]:8+n}"
`;

/** Perl unmounter: umount2(UMOUNT_NOFOLLOW), then with MNT_DETACH as the fallback. */
const PERL_UNMOUNT = String.raw`
my $nr = shift; my $rc = 0;
for my $m (@ARGV) { my $p = $m; next if syscall($nr, $p, 8) == 0; next if syscall($nr, $p, 10) == 0; print STDERR "umount $m: $!\n"; $rc = 1 }
exit $rc;
`;

const BASH_UNMOUNT = `
u=$1; shift; rc=0
for m; do $u -n "$m" 2>/dev/null || $u -n -l "$m" || rc=1; done
exit $rc
`;

export interface LaunchRequest {
  /** The sandbox folder: the tmpfs goes here, with upper, work and root inside. */
  dir: string;
  tmpfsOptions: string;
  lowerdir: string;
  /** cgroup.procs files to join (none when the launcher already sits in the sandbox's cgroups). */
  cgroupProcs: string[];
  /** setpriv ... bwrap --args BWRAP_ARGS_FD -- argv (bwrap ... alone with `idmap`) */
  command: string[];
  /** Host folder holding upper/ and work/ of the overlay; default `dir` (the fresh tmpfs). */
  upper?: string;
  /** Mount the lower layers id-mapped and enter a user namespace as its root (sessions only). */
  idmapBase?: number;
  /** Give the sandbox a pseudo-terminal of this size (sessions only); stdin then takes frames. */
  pty?: { rows: number; cols: number };
  /** A network namespace file to enter just before exec (a sandbox network); default none. */
  netns?: string;
  /** bwrap's options, NUL-separated, delivered on BWRAP_ARGS_FD. */
  bwrapOptions: Buffer;
  /** Runs once the tmpfs is mounted and before the overlay is: fills the writable layer. */
  prepare: () => Promise<void>;
}

/** One launcher process, from its start until it becomes bwrap (or dies). */
export class Launcher {
  readonly child: ChildProcess;
  /** Settles once the launcher has joined its slot cgroups and waits for a request. */
  readonly idle: Promise<void>;
  private readonly control: Socket;
  private readonly bwrapArgs: Socket;
  private readonly sockets: Socket[];
  private readonly messages: string[] = [];
  private readonly exit: Promise<string>;
  private onLine: (line: string) => void = () => {};
  private closed = false;

  /**
   * Spawns a launcher with the sandbox's seccomp filter on descriptor 3; slotProcs are the
   * cgroup.procs files it joins right away.
   */
  constructor(tools: Tools, seccompFd: number, slotProcs: string[]) {
    const [file, args] =
      tools.helper === "perl"
        ? [
            tools.perl ?? "perl",
            [
              "-e",
              PERL_LAUNCH,
              "--",
              ...["mount", "close", "unshare", "setns", "open_tree", "mount_setattr", "move_mount"].map((name) =>
                String(requireSyscall(tools.arch, name)),
              ),
            ],
          ]
        : [tools.bash ?? "bash", [...BASH_FLAGS, BASH_LAUNCH, "bash", tools.mount ?? "mount"]];
    this.child = spawn(file, [...args, ...slotProcs], {
      stdio: ["pipe", "pipe", "pipe", seccompFd, "pipe", "pipe"],
      env: { ...HELPER_ENV },
    });
    const stdio = this.child.stdio as unknown as (Socket | null)[];
    const control = stdio[CONTROL_FD];
    const bwrapArgs = stdio[BWRAP_ARGS_FD];
    if (!control || !bwrapArgs) throw new Error("launcher spawned without its control pipes");
    this.control = control;
    this.bwrapArgs = bwrapArgs;
    this.sockets = stdio.filter((s): s is Socket => s !== null && typeof s === "object" && "unref" in s);
    for (const socket of this.sockets) socket.on("error", () => {});

    this.exit = new Promise((resolve) => {
      this.child.once("error", (err) => resolve(`cannot run ${file}: ${err.message}`));
      this.child.once("exit", (code, signal) => {
        // Its last words may still be in flight on the control socket.
        const report = (): void =>
          resolve(this.messages.length > 0 ? this.messages.join("; ") : `launcher exited with ${code ?? signal}`);
        if (this.control.destroyed || this.control.readableEnded) report();
        else {
          const timer = setTimeout(report, 1000);
          this.control.once("close", () => {
            clearTimeout(timer);
            report();
          });
        }
      });
    });

    let buffered = "";
    control.setEncoding("utf8");
    control.on("data", (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.startsWith("error: ")) this.messages.push(line.slice(7));
        else this.onLine(line);
      }
    });
    this.idle = new Promise((resolve, reject) => {
      this.onLine = (line) => {
        if (line === "idle") resolve();
      };
      this.exit.then((message) => reject(new Error(message)));
    });
    this.idle.catch(() => {});
  }

  /** Whether the launcher still waits for work. */
  get alive(): boolean {
    return (
      !this.closed && this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined
    );
  }

  /** Keeps (or stops keeping) the host's event loop alive for this process and its pipes. */
  ref(on: boolean): void {
    if (on) this.child.ref();
    else this.child.unref();
    for (const socket of this.sockets) {
      if (on) socket.ref();
      else socket.unref();
    }
  }

  /**
   * Sends the request and resolves once the launcher has exec'd towards bwrap (its pid is then
   * bwrap's). On failure the launcher has exited when the promise rejects, so the caller can
   * clean up its mounts.
   */
  run(req: LaunchRequest): Promise<ChildProcess> {
    this.ref(true);
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (message: string): void => {
        if (settled) return;
        settled = true;
        this.kill().then(() => reject(new Error(message)));
      };
      this.exit.then(fail);
      this.onLine = (line) => {
        if (line === "mounted") {
          req.prepare().then(
            () => this.control.write("go\n"),
            (err: Error) => fail(`preparing the writable layer: ${err.message}`),
          );
        } else if (line === "ready" && !settled) {
          settled = true;
          this.closed = true;
          this.control.destroy();
          resolve(this.child);
        }
      };
      const fields = [
        req.dir,
        req.tmpfsOptions,
        req.lowerdir,
        req.upper ?? "",
        req.idmapBase === undefined ? "" : String(req.idmapBase),
        req.pty ? `${req.pty.rows} ${req.pty.cols}` : "",
        req.netns ?? "",
        String(req.cgroupProcs.length),
        ...req.cgroupProcs,
        ...req.command,
      ];
      if (fields.some((f) => f.includes("\0"))) {
        fail("launch request fields may not contain NUL");
        return;
      }
      this.bwrapArgs.end(req.bwrapOptions);
      this.control.write(`${fields.length}\n${fields.map((f) => `${f}\0`).join("")}`);
    });
  }

  /** SIGKILLs the launcher (before it became bwrap) and waits until it is gone. */
  async kill(): Promise<void> {
    this.closed = true;
    // Keep the event loop alive until the exit is seen, even for an idle (unreferenced) launcher.
    this.ref(true);
    if (this.child.pid !== undefined && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
    }
    await this.exit;
    this.control.destroy();
  }
}

/**
 * Perl unmount server: the unmounter as one long-lived process. A request is a line with a count,
 * then that many NUL-terminated mount points; the answer is one line, empty when all of them
 * were unmounted, else their errors. It exits when its stdin closes (the host is gone).
 */
const PERL_UNMOUNT_SERVER = String.raw`
my $nr = shift; $| = 1;
while (defined(my $count = <STDIN>)) {
  chomp $count; my @points; my $err = "";
  { local $/ = "\0"; for (1 .. $count) { my $p = <STDIN>; exit 0 unless defined $p; chomp $p; push @points, $p } }
  for my $m (@points) { my $p = $m; next if syscall($nr, $p, 8) == 0; next if syscall($nr, $p, 10) == 0; $err .= "umount $m: $!; " }
  $err =~ s/
/ /g;
  print "$err
";
}
`;

/**
 * One unmount server per host process, started on first use. Spawning a helper for every
 * sandbox's teardown costs the host's event loop 20-40 ms once its RSS is a few hundred MiB (fork
 * copies its page tables); a request on a pipe costs nothing. Requests go one at a time; a server
 * that died is started again, and a request it could not answer falls back to a helper of its own.
 */
class UnmountServer {
  #child: ChildProcess | undefined;
  #lines: string[] = [];
  #waiting: ((line: string | null) => void) | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  request(tools: Tools, points: string[]): Promise<string | null> {
    const answer = this.#queue.then(() => this.#send(tools, points));
    this.#queue = answer.catch(() => {});
    return answer;
  }

  async #send(tools: Tools, points: string[]): Promise<string | null> {
    const child = this.#start(tools);
    child.ref();
    try {
      const line = new Promise<string | null>((resolve) => {
        const ready = this.#lines.shift();
        if (ready !== undefined) resolve(ready);
        else this.#waiting = resolve;
      });
      child.stdin?.write(`${points.length}\n${points.map((p) => `${p}\0`).join("")}`);
      return await line;
    } finally {
      child.unref();
    }
  }

  #start(tools: Tools): ChildProcess {
    if (this.#child && this.#child.exitCode === null && this.#child.signalCode === null) return this.#child;
    const child = spawn(
      tools.perl ?? "perl",
      ["-e", PERL_UNMOUNT_SERVER, "--", String(requireSyscall(tools.arch, "umount2"))],
      { stdio: ["pipe", "pipe", "ignore"], env: { ...HELPER_ENV } },
    );
    this.#child = child;
    this.#lines = [];
    let buffered = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const waiting = this.#waiting;
        this.#waiting = undefined;
        if (waiting) waiting(line);
        else this.#lines.push(line);
      }
    });
    const gone = () => {
      if (this.#child === child) this.#child = undefined;
      const waiting = this.#waiting;
      this.#waiting = undefined;
      waiting?.(null);
    };
    child.once("error", gone);
    child.once("exit", gone);
    child.stdin?.on("error", () => {});
    // Idle, it must not keep the host's event loop alive.
    for (const stream of [child.stdin, child.stdout]) (stream as unknown as Socket | null)?.unref();
    child.unref();
    return child;
  }
}

const unmountServer = new UnmountServer();

/** Unmounts the given mount points; resolves with the errors, empty when there were none. */
async function unmountPoints(tools: Tools, points: string[]): Promise<string> {
  if (tools.helper === "perl") {
    const answer = await unmountServer.request(tools, points);
    if (answer !== null) return answer.trim();
  }
  return unmountWithHelper(tools, points);
}

/** Runs a helper process of its own on the given mount points; resolves with its error output. */
function unmountWithHelper(tools: Tools, points: string[]): Promise<string> {
  const [file, args] =
    tools.helper === "perl"
      ? [tools.perl ?? "perl", ["-e", PERL_UNMOUNT, "--", String(requireSyscall(tools.arch, "umount2"))]]
      : [tools.bash ?? "bash", [...BASH_FLAGS, BASH_UNMOUNT, "bash", tools.umount ?? "umount"]];
  return new Promise((resolve) => {
    const child = spawn(file, [...args, ...points], { stdio: ["ignore", "ignore", "pipe"], env: { ...HELPER_ENV } });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    child.once("error", (err) => resolve(err.message));
    child.once("close", () => resolve(stderr.trim()));
  });
}

/** Unmounts every mount below dir (and at dir unless includeDir is false), deepest first. */
export async function unmountAll(tools: Tools, dir: string, includeDir = true): Promise<void> {
  let lastError = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const points = await mountPointsUnder(dir, includeDir);
    if (points.length === 0) return;
    lastError = await unmountPoints(tools, points);
  }
  const left = await mountPointsUnder(dir, includeDir);
  if (left.length > 0) throw new Error(`cannot unmount ${left.join(", ")}: ${lastError || "unknown error"}`);
}
