/** `paddock images build-base|import|list`: base images, managed on this machine (no host needed). */
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { parseLocalCommand, UsageError } from "../args.ts";
import { type Command, type CommandGroup, type Context, dataDirOf } from "../context.ts";
import { formatSize, formatTable } from "../format.ts";

const DATA_DIR_HELP = `  --data-dir DIR     data folder; images live in DIR/images (env PADDOCK_DATA_DIR;
                     default ./.paddock)`;

async function imageStore(values: { "data-dir"?: string | undefined }, ctx: Context) {
  const { ImageStore } = await import("@paddock/host");
  return new ImageStore({ imagesDir: join(dataDirOf(values, ctx), "images") });
}

const buildBase: Command = {
  name: "build-base",
  summary: "build the default base image (debootstrap; idempotent)",
  usage: `Usage: paddock images build-base [--data-dir DIR] [--mirror URL] [--suite SUITE] [--force]

Builds the default base image, a minimal Debian root filesystem with python3, unless it is
already built. Needs root and network access to the mirror; takes about a minute.

Options:
${DATA_DIR_HELP}
  --mirror URL       Debian mirror (default http://deb.debian.org/debian)
  --suite SUITE      Debian suite (default bookworm)
  --force            build a new image even if one is ready`,
  async run(argv, ctx) {
    const { values } = parseLocalCommand(argv, {
      command: "images build-base",
      options: {
        "data-dir": { type: "string" },
        mirror: { type: "string" },
        suite: { type: "string" },
        force: { type: "boolean" },
      },
    });
    const store = await imageStore(values, ctx);
    const image = await store.ensureBase({
      ...(values.mirror ? { mirror: values.mirror } : {}),
      ...(values.suite ? { suite: values.suite } : {}),
      force: values.force ?? false,
      log: (line) => ctx.err(line),
    });
    ctx.out(`base image ${image.digest}`);
    ctx.out(`  rootfs: ${image.rootfs}`);
    return 0;
  },
};

const importRootfs: Command = {
  name: "import",
  summary: "store a root filesystem (folder or tarball) as an image",
  usage: `Usage: paddock images import FOLDER|TARBALL [--default] [--data-dir DIR]

Stores a root filesystem in the image store: a folder is copied (and left as it is); a tarball
(plain, .gz or .zst, such as the output of 'docker export') is unpacked with every entry checked:
absolute paths, '..', device nodes and links leading outside are refused.

Options:
  --default          make it the default base image
${DATA_DIR_HELP}`,
  async run(argv, ctx) {
    const { values, positionals } = parseLocalCommand(argv, {
      command: "images import",
      options: { "data-dir": { type: "string" }, default: { type: "boolean" } },
      positionals: { min: 1, max: 1 },
    });
    const from = positionals[0];
    if (!from) throw new UsageError("missing FOLDER", "images import");
    const store = await imageStore(values, ctx);
    const setDefault = values.default ?? false;
    const log = (line: string) => ctx.err(line);
    const isFile = (await stat(from).catch(() => null))?.isFile() ?? false;
    const image = isFile
      ? await store.importTarball({ file: from, setDefault, log })
      : await store.importRootfs({ from, setDefault, log });
    ctx.out(`image ${image.digest}`);
    ctx.out(`  rootfs: ${image.rootfs}`);
    return 0;
  },
};

const list: Command = {
  name: "list",
  summary: "list the images on this machine",
  usage: `Usage: paddock images list [--data-dir DIR] [--json]

Options:
${DATA_DIR_HELP}
  --json             print the images as JSON`,
  async run(argv, ctx) {
    const { values } = parseLocalCommand(argv, {
      command: "images list",
      options: { "data-dir": { type: "string" }, json: { type: "boolean" } },
    });
    const images = await (await imageStore(values, ctx)).list();
    if (values.json) {
      ctx.out(JSON.stringify(images, null, 2));
    } else if (images.length === 0) {
      ctx.err("no images; build one with: paddock images build-base");
    } else {
      ctx.out(
        formatTable(
          ["DIGEST", "DEFAULT", "SOURCE", "SIZE", "CREATED"],
          images.map((i) => [
            i.digest,
            i.default ? "yes" : "",
            i.suite ? `${i.source} ${i.suite}` : i.source,
            formatSize(i.size_bytes),
            i.created_at,
          ]),
        ),
      );
    }
    return 0;
  },
};

export const images: CommandGroup = {
  name: "images",
  summary: "build, import and list base images",
  commands: [buildBase, importRootfs, list],
};
