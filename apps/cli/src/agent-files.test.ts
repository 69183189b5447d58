import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, symlink, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentCreate, MAX_FILES_BYTES } from "@paddock/protocol";
import { loadAgentFile, readFilesDir } from "./agent-files.ts";
import { CliError } from "./args.ts";

let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), "paddock-agent-files-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function tree(name: string, files: Record<string, string | Buffer>): Promise<string> {
  const root = join(tmp, name);
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), content);
  }
  await mkdir(root, { recursive: true });
  return root;
}

const refused = (pattern: RegExp) => (err: unknown) => err instanceof CliError && pattern.test(err.message);

describe("readFilesDir", () => {
  it("reads every text file below the folder as a relative POSIX path", async () => {
    const root = await tree("plain", {
      "main.py": "print('hi')\n",
      "lib/util.py": "X = 1\n",
      "data/deep/é.txt": "café\n",
      ".git/HEAD": "ref: x\n",
      "lib/__pycache__/util.cpython-311.pyc": Buffer.from([0, 1, 2]),
    });
    const files = await readFilesDir(root);
    assert.deepEqual(Object.keys(files), ["data/deep/é.txt", "lib/util.py", "main.py"]);
    assert.equal(files["data/deep/é.txt"], "café\n");
  });

  it("refuses binary and non-UTF-8 files by name", async () => {
    const nul = await tree("nul", { "ok.txt": "fine", "img/logo.png": Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0]) });
    await assert.rejects(readFilesDir(nul), refused(/^img\/logo\.png: a binary file/));
    const latin1 = await tree("latin1", { "old.txt": Buffer.from([0x63, 0x61, 0x66, 0xe9]) });
    await assert.rejects(readFilesDir(latin1), refused(/^old\.txt: not valid UTF-8/));
  });

  it("refuses a file larger than the API accepts without reading it", async () => {
    const root = await tree("big", {});
    await writeFile(join(root, "huge.csv"), "");
    await truncate(join(root, "huge.csv"), MAX_FILES_BYTES + 1);
    await assert.rejects(readFilesDir(root), refused(/^huge\.csv: \d+ bytes; agent files may hold at most/));
  });

  it("refuses files that together exceed the limit", async () => {
    const half = "x".repeat(MAX_FILES_BYTES / 2 + 1);
    const root = await tree("total", { "a.txt": half, "b.txt": half });
    await assert.rejects(readFilesDir(root), refused(/add up to more than/));
  });

  it("refuses symlinks that point outside the folder, follows those inside", async () => {
    const secret = await tree("secret", { id_rsa: "PRIVATE KEY\n" });
    const root = await tree("links", { "real.txt": "inside\n" });
    await symlink(join(root, "real.txt"), join(root, "alias.txt"));
    assert.deepEqual(await readFilesDir(root), { "alias.txt": "inside\n", "real.txt": "inside\n" });
    await symlink(join(secret, "id_rsa"), join(root, "key"));
    await assert.rejects(readFilesDir(root), refused(/^key: a symlink that points outside/));
  });

  it("refuses a symlinked folder that leads outside", async () => {
    const outside = await tree("outside-dir", { "x.txt": "x" });
    const root = await tree("dirlink", { "a.txt": "a" });
    await symlink(outside, join(root, "sub"));
    await assert.rejects(readFilesDir(root), refused(/^sub: a symlink that points outside/));
  });

  it("refuses a folder that does not exist", async () => {
    await assert.rejects(readFilesDir(join(tmp, "missing")), refused(/does not exist/));
  });
});

describe("loadAgentFile", () => {
  it("expands files_dir relative to the JSON file", async () => {
    const root = await tree("agent", { "src/run.sh": "echo hi\n", "src/conf/a.json": "{}\n" });
    await writeFile(
      join(root, "agent.json"),
      JSON.stringify({ name: "a", command: ["sh", "run.sh"], files_dir: "src", files: { "extra.txt": "e" } }),
    );
    const body = await loadAgentFile(join(root, "agent.json"));
    assert.deepEqual(body, {
      name: "a",
      command: ["sh", "run.sh"],
      files: { "conf/a.json": "{}\n", "run.sh": "echo hi\n", "extra.txt": "e" },
    });
  });

  it("refuses a files_dir outside the JSON file's folder", async () => {
    await tree("sibling", { "x.txt": "x" });
    const root = await tree("escape", {});
    for (const filesDir of ["../sibling", "/etc", "sub/../../sibling"]) {
      await writeFile(join(root, "agent.json"), JSON.stringify({ name: "a", command: ["true"], files_dir: filesDir }));
      await assert.rejects(loadAgentFile(join(root, "agent.json")), refused(/must stay inside/), filesDir);
    }
    await symlink(join(tmp, "sibling"), join(root, "link"));
    await writeFile(join(root, "agent.json"), JSON.stringify({ name: "a", command: ["true"], files_dir: "link" }));
    await assert.rejects(loadAgentFile(join(root, "agent.json")), refused(/must stay inside/));
  });

  it("refuses a file both inline and in files_dir, and malformed definitions", async () => {
    const root = await tree("dup", { "f/a.txt": "a" });
    const path = join(root, "agent.json");
    await writeFile(path, JSON.stringify({ name: "a", command: ["true"], files_dir: "f", files: { "a.txt": "b" } }));
    await assert.rejects(loadAgentFile(path), refused(/'a\.txt' is both in files and in files_dir/));
    await writeFile(path, "[1, 2]");
    await assert.rejects(loadAgentFile(path), refused(/must hold a JSON object/));
    await writeFile(path, "{ name: ");
    await assert.rejects(loadAgentFile(path), refused(/is not valid JSON/));
    await assert.rejects(loadAgentFile(join(root, "nope.json")), refused(/cannot read .*ENOENT/));
  });

  it("turns the example agent into a valid AgentCreate body", async () => {
    const path = new URL("../../../examples/report-agent/agent.json", import.meta.url).pathname;
    const body = AgentCreate.parse(await loadAgentFile(path));
    assert.equal(body.name, "report-demo");
    assert.deepEqual(body.command, ["python3", "summarize.py"]);
    const files = body.files ?? {};
    assert.deepEqual(Object.keys(files).sort(), ["data/sales.csv", "summarize.py"]);
    const csv = await readFile(new URL("../../../examples/report-agent/files/data/sales.csv", import.meta.url), "utf8");
    assert.equal(files["data/sales.csv"], csv);
  });
});
