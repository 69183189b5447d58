/**
 * A run's artifacts: listed with their size and type, each a download; images (SVG included)
 * previewed only through <img>, where no script of theirs runs; text, Markdown, JSON and CSV shown
 * as escaped text (CSV as a table) up to a size cap.
 */
import type { Artifact } from "@paddock/protocol";
import { useEffect, useState } from "preact/hooks";
import { bytes } from "../lib/format.ts";
import { fileName, parseCsv, previewKind, TEXT_PREVIEW_BYTES } from "../lib/preview.ts";
import { api } from "../state.ts";
import { Empty, ErrorNote } from "./ui.tsx";

const contentUrl = (a: Artifact) =>
  `/v1/runs/${encodeURIComponent(a.run_id)}/artifacts/${encodeURIComponent(a.id)}/content`;

export function Artifacts({ artifacts }: { artifacts: Artifact[] }) {
  const [open, setOpen] = useState<ReadonlySet<string>>(new Set());
  const toggle = (id: string) => {
    const next = new Set(open);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setOpen(next);
  };
  if (artifacts.length === 0) return <Empty>No artifacts: files the run writes under /outputs appear here.</Empty>;
  return (
    <ul class="artifacts">
      {artifacts.map((a) => {
        const kind = previewKind(a.content_type, a.path, a.size);
        return (
          <li key={a.id} data-artifact={a.path}>
            <div class="artifact-head">
              <span class="mono artifact-path">{a.path}</span>
              <span class="muted">
                {bytes(a.size)} · {a.content_type}
                {a.attempt > 1 ? ` · attempt ${a.attempt}` : ""}
              </span>
              {kind !== "none" ? (
                <button type="button" class="link" onClick={() => toggle(a.id)}>
                  {open.has(a.id) ? "Hide" : "Preview"}
                </button>
              ) : null}
              <a href={contentUrl(a)} download={fileName(a.path)}>
                Download
              </a>
            </div>
            {open.has(a.id) ? <Preview artifact={a} kind={kind} /> : null}
          </li>
        );
      })}
    </ul>
  );
}

function Preview({ artifact, kind }: { artifact: Artifact; kind: ReturnType<typeof previewKind> }) {
  if (kind === "image") {
    return (
      <div class="preview preview-image">
        <img src={contentUrl(artifact)} alt={artifact.path} loading="lazy" />
      </div>
    );
  }
  return <TextPreview artifact={artifact} csv={kind === "csv"} />;
}

function TextPreview({ artifact, csv }: { artifact: Artifact; csv: boolean }) {
  const [state, setState] = useState<{ text: string; cut: boolean } | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    readStart(contentUrl(artifact), TEXT_PREVIEW_BYTES).then(setState, setError);
  }, [artifact]);
  if (error) return <ErrorNote error={error} />;
  if (!state) return <p class="loading">Reading…</p>;
  const note = state.cut ? (
    <p class="note">
      The first {bytes(TEXT_PREVIEW_BYTES)} of {bytes(artifact.size)}; download it for the rest.
    </p>
  ) : null;
  if (csv) {
    const { rows, more } = parseCsv(state.text);
    return (
      <div class="preview preview-csv">
        {note}
        <table>
          <tbody>
            {rows.map((row, i) => (
              <tr key={i}>{row.map((cell, j) => (i === 0 ? <th key={j}>{cell}</th> : <td key={j}>{cell}</td>))}</tr>
            ))}
          </tbody>
        </table>
        {more ? <p class="note">More rows follow; download the file for all of them.</p> : null}
      </div>
    );
  }
  return (
    <div class="preview preview-text">
      {note}
      <pre>{state.text}</pre>
    </div>
  );
}

/** The first `max` bytes of a file as text; the rest is not read. */
async function readStart(url: string, max: number): Promise<{ text: string; cut: boolean }> {
  const res = await api.raw(url);
  const reader = res.body?.getReader();
  if (!reader) return { text: await res.text(), cut: false };
  const chunks: Uint8Array[] = [];
  let size = 0;
  let cut = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size >= max) {
      cut = true;
      await reader.cancel();
      break;
    }
  }
  const all = new Uint8Array(Math.min(size, max));
  let at = 0;
  for (const c of chunks) {
    const part = c.subarray(0, Math.max(0, all.length - at));
    all.set(part, at);
    at += part.length;
  }
  return { text: new TextDecoder("utf-8", { fatal: false }).decode(all), cut };
}
