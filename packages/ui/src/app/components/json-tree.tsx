/** A JSON value as a collapsible tree; every value is text (never markup). */
import { useState } from "preact/hooks";
import { CHILDREN_PAGE, childrenOf, initiallyOpen, type JsonNode, nodeOf, PREVIEW_CHARS } from "../lib/json-tree.ts";
import { download } from "./ui.tsx";

/** The longest string shown whole in the page; a longer one is a download. */
const MAX_SHOWN_STRING = 100_000;

export function JsonTree({ value, label }: { value: unknown; label?: string }) {
  const [open, setOpen] = useState<Set<string>>(() => initiallyOpen(value));
  const toggle = (path: string) => {
    const next = new Set(open);
    if (next.has(path)) next.delete(path);
    else next.add(path);
    setOpen(next);
  };
  return (
    <div class="json-tree" title={label}>
      <JsonRow node={nodeOf(value)} open={open} toggle={toggle} />
    </div>
  );
}

function JsonRow({ node, open, toggle }: { node: JsonNode; open: Set<string>; toggle: (path: string) => void }) {
  const [limit, setLimit] = useState(CHILDREN_PAGE);
  const [full, setFull] = useState(false);
  const long = node.kind === "string" && (node.value as string).length > PREVIEW_CHARS;
  const expandable = node.size > 0;
  const isOpen = expandable && open.has(node.path);
  const key = node.key === null ? null : typeof node.key === "number" ? `${node.key}` : node.key;
  const children = isOpen ? childrenOf(node, limit) : null;
  return (
    <div class="json-node">
      <div class="json-line">
        {expandable ? (
          <button
            type="button"
            class="twisty"
            aria-label={isOpen ? "Collapse" : "Expand"}
            onClick={() => toggle(node.path)}
          >
            {isOpen ? "▾" : "▸"}
          </button>
        ) : (
          <span class="twisty" />
        )}
        {key !== null ? <span class="json-key">{key}: </span> : null}
        <span class={`json-${node.kind}`}>
          {isOpen ? (node.kind === "array" ? "[" : "{") : full ? JSON.stringify(node.value) : node.preview}
        </span>
        {long ? (
          <>
            {" "}
            {(node.value as string).length <= MAX_SHOWN_STRING ? (
              <button type="button" class="link" onClick={() => setFull(!full)}>
                {full ? "less" : `all ${(node.value as string).length} characters`}
              </button>
            ) : null}{" "}
            <button type="button" class="link" onClick={() => download("value.txt", node.value as string)}>
              download
            </button>
          </>
        ) : null}
      </div>
      {children ? (
        <div class="json-children">
          {children.nodes.map((child) => (
            <JsonRow key={child.path} node={child} open={open} toggle={toggle} />
          ))}
          {children.more > 0 ? (
            <button type="button" class="link" onClick={() => setLimit(limit + CHILDREN_PAGE)}>
              {children.more} more…
            </button>
          ) : null}
          <div class="json-line">
            <span class="twisty" />
            {node.kind === "array" ? "]" : "}"}
          </div>
        </div>
      ) : null}
    </div>
  );
}
