/**
 * How an artifact is previewed: images (SVG included) only ever through <img>, where a browser
 * runs no script and loads nothing else; text-like files as escaped text (CSV as a table) up to a
 * size cap; anything else is only a download.
 */

export type PreviewKind = "image" | "csv" | "text" | "none";

/** Bytes of a text artifact read for its preview; the rest is a download away. */
export const TEXT_PREVIEW_BYTES = 256 * 1024;
/** The largest image previewed inline. */
export const IMAGE_PREVIEW_BYTES = 20 * 1024 * 1024;

const IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml", "image/avif"]);
const TEXT_TYPES = new Set([
  "application/json",
  "application/x-ndjson",
  "application/xml",
  "application/yaml",
  "application/x-yaml",
  "application/toml",
]);
const TEXT_EXTENSIONS =
  /\.(txt|log|md|markdown|json|jsonl|ndjson|ya?ml|toml|xml|html?|csv|tsv|ini|cfg|conf|py|js|ts|sh|sql)$/i;

export function previewKind(contentType: string, path: string, size: number): PreviewKind {
  const type = contentType.split(";")[0]?.trim().toLowerCase() ?? "";
  if (IMAGES.has(type)) return size <= IMAGE_PREVIEW_BYTES ? "image" : "none";
  if (type === "text/csv" || /\.csv$/i.test(path)) return "csv";
  if (type.startsWith("text/") || TEXT_TYPES.has(type) || type.endsWith("+json") || TEXT_EXTENSIONS.test(path)) {
    return "text";
  }
  return "none";
}

/**
 * Rows of CSV text (RFC 4180: quoted fields, doubled quotes, newlines inside quotes), at most
 * `maxRows` rows of `maxCols` fields; `more` says whether rows were left out.
 */
export function parseCsv(text: string, maxRows = 200, maxCols = 50): { rows: string[][]; more: boolean } {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const endField = () => {
    if (row.length < maxCols) row.push(field);
    field = "";
  };
  const endRow = () => {
    endField();
    rows.push(row);
    row = [];
  };
  while (i < text.length) {
    const c = text[i] as string;
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") endField();
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      endRow();
      if (rows.length > maxRows) return { rows: rows.slice(0, maxRows), more: true };
    } else field += c;
    i++;
  }
  if (field !== "" || row.length > 0) endRow();
  return { rows: rows.slice(0, maxRows), more: rows.length > maxRows };
}

/** A download's file name from an artifact path: its last part, in safe characters. */
export function fileName(path: string): string {
  const last = path.split("/").pop() || "artifact";
  return last.replace(/[^\w.-]/g, "_").slice(0, 120) || "artifact";
}
