/** Small pieces every page uses: links inside the app, status badges, loading and error states. */
import type { AnchorHTMLAttributes, ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "../lib/api.ts";
import { isPlainClick } from "../lib/router.ts";
import { navigate } from "../state.ts";

/** A link to a page of the app: followed without a reload. */
export function Link(props: AnchorHTMLAttributes & { href: string }) {
  const { href, onClick, ...rest } = props;
  return (
    <a
      href={href}
      {...rest}
      onClick={(e) => {
        onClick?.(e);
        if (!isPlainClick(e)) return;
        e.preventDefault();
        navigate(href);
      }}
    />
  );
}

export function Status({ status }: { status: string | null | undefined }) {
  return <span class={`status status-${status ?? "unknown"}`}>{status?.replace("_", " ") ?? "—"}</span>;
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof ApiError ? error.code : null;
  return (
    <p class="error" role="alert">
      {code ? <code>{code}</code> : null} {message}
    </p>
  );
}

export function Section(props: {
  title: string;
  actions?: ComponentChildren;
  children: ComponentChildren;
  id?: string;
}) {
  return (
    <section class="panel" id={props.id}>
      <header class="panel-head">
        <h2>{props.title}</h2>
        {props.actions ? <div class="actions">{props.actions}</div> : null}
      </header>
      {props.children}
    </section>
  );
}

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => Promise<void>;
}

/** Loads with `load` when `deps` change; `reload` loads again (the last answer wins). */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data: T | undefined; error: unknown; loading: boolean }>({
    data: undefined,
    error: null,
    loading: true,
  });
  const generation = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === generation.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => {
    void reload();
  }, [reload]);
  return { ...state, reload };
}

/**
 * A button that runs an action, showing it is busy and what went wrong. With `confirm`, a first
 * click asks (in the page, not a browser dialog) and a second one acts.
 */
export function ActionButton(props: {
  label: string;
  busyLabel?: string;
  confirm?: string;
  class?: string;
  disabled?: boolean;
  onAction: () => Promise<unknown>;
}) {
  const [busy, setBusy] = useState(false);
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const act = async () => {
    setAsking(false);
    setBusy(true);
    setError(null);
    try {
      await props.onAction();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (asking) {
    return (
      <span class="action confirm">
        <span>{props.confirm}</span>
        <button type="button" class="danger" onClick={act}>
          Yes
        </button>
        <button type="button" onClick={() => setAsking(false)}>
          No
        </button>
      </span>
    );
  }
  return (
    <span class="action">
      <button
        type="button"
        class={props.class}
        disabled={busy || props.disabled}
        onClick={() => (props.confirm ? setAsking(true) : act())}
      >
        {busy ? (props.busyLabel ?? `${props.label}…`) : props.label}
      </button>
      {error ? <ErrorNote error={error} /> : null}
    </span>
  );
}

/** Key/value pairs as a definition list. */
export function Facts({ items }: { items: [string, ComponentChildren][] }) {
  return (
    <dl class="facts">
      {items.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v ?? "—"}</dd>
        </div>
      ))}
    </dl>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <p class="empty">{children}</p>;
}

/** Offers `text` as a file download through a blob URL (nothing is sent anywhere). */
export function download(name: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: "text/plain;charset=utf-8" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
