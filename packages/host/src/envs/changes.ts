/**
 * What an environment edit session changed: the entries of its writable layer (an overlayfs
 * upperdir) compared with the merged view of the read-only layers below it.
 *
 * Rules:
 * - an entry absent from the lower view is added, a non-directory present there is modified;
 * - a directory present in the lower view is modified only when its type, permission bits or
 *   owner differ, or when it is opaque (it replaced the lower directory's listing), directly or
 *   through an opaque ancestor;
 * - a whiteout whose path the lower view has is removed, and so is each lower name hidden by an
 *   opaque directory without being recreated; only the top path of a removed subtree counts;
 * - bytes_added sums the sizes of the regular files counted as added, once per file however many
 *   names (hard links) it has;
 * - the upper's root and excluded paths are never counted.
 *
 * Threat model: the upper was written by a hostile user. The walk uses lstat and readdir only,
 * never follows a symlink, descends only into entries it has just seen to be directories (in the
 * upper and in the lower view alike), handles names as bytes (newlines and non-UTF-8 included),
 * and keeps a bounded sample of paths, so an enormous tree costs time but not memory beyond one
 * directory listing at a time per worker. Character and block devices other than whiteouts,
 * which no sandbox user can create, are reported to the caller (freezing refuses them).
 */
import type { Stats } from "node:fs";
import { lstat, mkdtemp, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freezeExcludeMessage, isFreezeExcludePath } from "@paddock/protocol";
import { isOpaque, isWhiteout, OPAQUE_XATTR } from "../fs/overlay-marks.ts";
import { isErrno, removeTree } from "../fs/store-fs.ts";
import { readXattrs, type XattrMap, xattrKey } from "../fs/xattrs.ts";
import { withLowerView } from "./overlay.ts";

export interface Changes {
  added: number;
  modified: number;
  removed: number;
  bytes_added: number;
  /** Up to CHANGES_SAMPLE_SIZE sandbox paths of each kind, the first in byte order. */
  sample: { added: string[]; modified: string[]; removed: string[] };
}

export const CHANGES_SAMPLE_SIZE = 50;

export interface ComputeChangesOptions {
  /** The writable layer (an overlayfs upperdir, or a frozen layer). */
  upper: string;
  /** The read-only layers below it, top first. */
  lowers: readonly string[];
  /** Sandbox paths whose upper entries are not counted (with everything below them). */
  exclude?: readonly string[];
  /** The upper's extended attributes, when already read; only the opaque marks are used. */
  xattrs?: XattrMap;
}

/**
 * Counts what `upper` adds, modifies and removes over `lowers`. Runs as root: with more than one
 * lower layer the lower view is a read-only overlay mounted for the duration of the call.
 * @example const changes = await computeChanges({ upper: "/run/paddock/s1/upper", lowers: [layer, rootfs] });
 */
export async function computeChanges(options: ComputeChangesOptions): Promise<Changes> {
  const exclude = excludeTree(options.exclude ?? []);
  const xattrs =
    options.xattrs ??
    (await readXattrs(options.upper, [Buffer.alloc(0)], {
      recursive: true,
      keep: (_path, name) => name.toString("latin1") === OPAQUE_XATTR,
    }));
  const scratch = await mkdtemp(join(tmpdir(), "paddock-lowers-"));
  try {
    const walk = await withLowerView(options.lowers, join(scratch, "view"), (view) =>
      walkChanges(options.upper, view, { exclude, xattrs }),
    );
    return walk.changes;
  } finally {
    await removeTree(scratch);
  }
}

/** Excluded sandbox paths as a tree of names (Latin-1 keys of the raw bytes). */
export interface ExcludeNode {
  excluded: boolean;
  children: Map<string, ExcludeNode>;
}

/**
 * Builds the exclusion tree of absolute, normalized sandbox paths ("/" itself is not allowed);
 * throws for any other entry, as the API's EnvFreeze schema refuses it.
 * @example excludeTree(["/tmp", "/opt/paddock/runner"])
 */
export function excludeTree(paths: readonly string[]): ExcludeNode {
  const root: ExcludeNode = { excluded: false, children: new Map() };
  for (const path of paths) {
    if (!isFreezeExcludePath(path)) throw new Error(freezeExcludeMessage(path));
    let node = root;
    for (const part of path.split("/").slice(1)) {
      const key = Buffer.from(part).toString("latin1");
      let child = node.children.get(key);
      if (!child) {
        child = { excluded: false, children: new Map() };
        node.children.set(key, child);
      }
      node = child;
    }
    node.excluded = true;
  }
  return root;
}

export interface WalkResult {
  changes: Changes;
  /** Sandbox paths of character or block devices that are not whiteouts. */
  devices: string[];
}

interface DirTask {
  rel: Buffer;
  /** The lower view has a directory at this path. */
  lowerDir: boolean;
  /** This directory or an ancestor is opaque: the lower listing here is hidden. */
  hidden: boolean;
  exclude: ExcludeNode | undefined;
}

const SLASH = Buffer.from("/");
const CONCURRENCY = 16;
const CHUNK = 64;

export interface WalkOptions {
  exclude: ExcludeNode;
  /** The upper's extended attributes; only the opaque marks are used. */
  xattrs: XattrMap;
  /** Called with every entry walked (the root and excluded entries aside). */
  onEntry?: (rel: Buffer, st: Stats) => void;
  /** The upper's owners are this much above the lower view's (an edit session's id range; see unshift.ts). */
  idShift?: number;
}

/** Walks `upper` against the lower view `view` (null: no lower layers). */
export async function walkChanges(upper: string, view: string | null, options: WalkOptions): Promise<WalkResult> {
  const upperRoot = Buffer.from(upper);
  const viewRoot = view === null ? null : Buffer.from(view);
  const at = (root: Buffer, rel: Buffer): Buffer => (rel.length === 0 ? root : Buffer.concat([root, SLASH, rel]));
  const counts = { added: 0, modified: 0, removed: 0, bytes_added: 0 };
  const samples = { added: new Sample(), modified: new Sample(), removed: new Sample() };
  const devices = new Sample();
  const linked = new Set<bigint | number>();
  // A file with several names in the upper counts its bytes once.
  const firstLink = (st: Stats): boolean => {
    if (st.nlink < 2) return true;
    if (linked.has(st.ino)) return false;
    linked.add(st.ino);
    return true;
  };
  const count = (kind: "added" | "modified" | "removed", rel: Buffer): void => {
    counts[kind]++;
    samples[kind].add(rel);
  };

  const lowerStat = async (rel: Buffer): Promise<Stats | null> => {
    if (viewRoot === null) return null;
    try {
      return await lstat(at(viewRoot, rel));
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) return null;
      throw err;
    }
  };

  const visitDir = async (task: DirTask, queue: DirTask[]): Promise<void> => {
    const names = await readdir(at(upperRoot, task.rel), { encoding: "buffer" });
    const present = new Set<string>();
    for (let i = 0; i < names.length; i += CHUNK) {
      await Promise.all(
        names.slice(i, i + CHUNK).map(async (name) => {
          const key = name.toString("latin1");
          const exclude = task.exclude?.children.get(key);
          if (exclude?.excluded) return;
          present.add(key);
          const rel = task.rel.length === 0 ? name : Buffer.concat([task.rel, SLASH, name]);
          const [st, lower] = await Promise.all([
            lstat(at(upperRoot, rel)),
            task.lowerDir ? lowerStat(rel) : Promise.resolve(null),
          ]);
          options.onEntry?.(rel, st);
          if (isWhiteout(st)) {
            if (lower) count("removed", rel);
            return;
          }
          if (st.isCharacterDevice() || st.isBlockDevice()) devices.add(rel);
          if (!st.isDirectory()) {
            if (lower) count("modified", rel);
            else {
              count("added", rel);
              if (st.isFile() && firstLink(st)) counts.bytes_added += st.size;
            }
            return;
          }
          const hidden = task.hidden || isOpaque(options.xattrs.get(xattrKey(rel)));
          if (!lower) count("added", rel);
          else if (!lower.isDirectory() || hidden || !sameOwnerAndMode(st, lower, options.idShift ?? 0)) {
            count("modified", rel);
          }
          queue.push({ rel, lowerDir: lower?.isDirectory() ?? false, hidden, exclude });
        }),
      );
    }
    if (task.hidden && task.lowerDir && viewRoot !== null) {
      for (const name of await readdir(at(viewRoot, task.rel), { encoding: "buffer" })) {
        const key = name.toString("latin1");
        if (present.has(key) || task.exclude?.children.get(key)?.excluded) continue;
        count("removed", task.rel.length === 0 ? name : Buffer.concat([task.rel, SLASH, name]));
      }
    }
  };

  await pool({ rel: Buffer.alloc(0), lowerDir: viewRoot !== null, hidden: false, exclude: options.exclude }, visitDir);
  return {
    changes: {
      ...counts,
      sample: { added: samples.added.paths(), modified: samples.modified.paths(), removed: samples.removed.paths() },
    },
    devices: devices.paths(),
  };
}

function sameOwnerAndMode(a: Stats, b: Stats, shift: number): boolean {
  return (a.mode & 0o7777) === (b.mode & 0o7777) && a.uid === b.uid + shift && a.gid === b.gid + shift;
}

/** Runs `visit` over a growing queue of directories, CONCURRENCY at a time, depth first. */
async function pool(root: DirTask, visit: (task: DirTask, queue: DirTask[]) => Promise<void>): Promise<void> {
  const queue: DirTask[] = [root];
  let active = 0;
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const pump = (): void => {
      while (!failed && active < CONCURRENCY && queue.length > 0) {
        const task = queue.pop() as DirTask;
        active++;
        visit(task, queue).then(
          () => {
            active--;
            if (active === 0 && queue.length === 0) resolve();
            else pump();
          },
          (err: unknown) => {
            failed = true;
            reject(err);
          },
        );
      }
    };
    pump();
  });
}

/** Keeps the CHANGES_SAMPLE_SIZE smallest paths (in byte order) seen, in bounded memory. */
class Sample {
  #items: Buffer[] = [];

  add(rel: Buffer): void {
    this.#items.push(Buffer.from(rel));
    if (this.#items.length >= 4 * CHANGES_SAMPLE_SIZE) this.#trim();
  }

  paths(): string[] {
    this.#trim();
    return this.#items.map((rel) => `/${rel.toString("utf8")}`);
  }

  #trim(): void {
    this.#items.sort(Buffer.compare);
    this.#items.length = Math.min(this.#items.length, CHANGES_SAMPLE_SIZE);
  }
}
