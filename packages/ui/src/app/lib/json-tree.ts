/**
 * A JSON value as a collapsible tree: each node knows its kind, a one-line preview and, for
 * objects and arrays, how to list its children (a bounded number at a time). Values are shown as
 * text, never as markup.
 */

export type JsonKind = "object" | "array" | "string" | "number" | "boolean" | "null";

export interface JsonNode {
  /** A stable path from the root (e.g. `$.items[3].name`), the key of its open/closed state. */
  path: string;
  /** Its key in its parent: a name, an index, or null for the root. */
  key: string | number | null;
  kind: JsonKind;
  /** One line: the value itself for a scalar (strings cut), `{3 keys}` / `[12 items]` otherwise. */
  preview: string;
  /** Children of an object or array; 0 for a scalar. */
  size: number;
  value: unknown;
}

/** The most characters of a string a preview shows. */
export const PREVIEW_CHARS = 300;
/** Children listed at once; more are a click away. */
export const CHILDREN_PAGE = 200;

export function kindOf(value: unknown): JsonKind {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return "array";
  switch (typeof value) {
    case "string":
      return "string";
    case "number":
    case "bigint":
      return "number";
    case "boolean":
      return "boolean";
    default:
      return "object";
  }
}

const IDENT = /^[A-Za-z_$][\w$]*$/;

function childPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  return IDENT.test(key) ? `${parent}.${key}` : `${parent}[${JSON.stringify(key)}]`;
}

export function nodeOf(value: unknown, key: string | number | null = null, path = "$"): JsonNode {
  const kind = kindOf(value);
  switch (kind) {
    case "object": {
      const size = Object.keys(value as object).length;
      return { path, key, kind, preview: `{${size} ${size === 1 ? "key" : "keys"}}`, size, value };
    }
    case "array": {
      const size = (value as unknown[]).length;
      return { path, key, kind, preview: `[${size} ${size === 1 ? "item" : "items"}]`, size, value };
    }
    case "string": {
      const s = value as string;
      const shown = s.length > PREVIEW_CHARS ? `${s.slice(0, PREVIEW_CHARS)}…` : s;
      return { path, key, kind, preview: JSON.stringify(shown), size: 0, value };
    }
    default:
      return { path, key, kind, preview: value === undefined ? "null" : String(value), size: 0, value };
  }
}

/** The children of an object or array node, `limit` at most; `more` says how many are left. */
export function childrenOf(node: JsonNode, limit = CHILDREN_PAGE): { nodes: JsonNode[]; more: number } {
  if (node.kind === "array") {
    const items = node.value as unknown[];
    const nodes = items.slice(0, limit).map((v, i) => nodeOf(v, i, childPath(node.path, i)));
    return { nodes, more: Math.max(0, items.length - limit) };
  }
  if (node.kind === "object") {
    const entries = Object.entries(node.value as Record<string, unknown>);
    const nodes = entries.slice(0, limit).map(([k, v]) => nodeOf(v, k, childPath(node.path, k)));
    return { nodes, more: Math.max(0, entries.length - limit) };
  }
  return { nodes: [], more: 0 };
}

/** The paths open at first: the root and its children down to `depth` levels, when they are small. */
export function initiallyOpen(value: unknown, depth = 1, maxChildren = 20): Set<string> {
  const open = new Set<string>();
  const walk = (node: JsonNode, level: number) => {
    if (node.size === 0 || node.size > maxChildren || level > depth) return;
    open.add(node.path);
    for (const child of childrenOf(node, maxChildren).nodes) walk(child, level + 1);
  };
  walk(nodeOf(value), 0);
  return open;
}
