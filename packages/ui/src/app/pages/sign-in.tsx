/** Sign-in with an API key: the host answers with a session cookie, and the key is forgotten here. */
import { useState } from "preact/hooks";
import { ErrorNote } from "../components/ui.tsx";
import icon from "../icon.svg";
import { ApiError } from "../lib/api.ts";
import { signIn } from "../state.ts";

export function SignIn() {
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  return (
    <main class="sign-in">
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          try {
            await signIn(key);
            setKey("");
          } catch (err) {
            setError(
              err instanceof ApiError && err.status === 401
                ? new Error("That key is not valid (or was revoked).")
                : err,
            );
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1>
          <img src={icon} alt="" width={28} height={28} /> Paddock
        </h1>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autocomplete="off"
          placeholder="pdk.key_…"
          value={key}
          onInput={(e) => setKey(e.currentTarget.value)}
          required
        />
        <button type="submit" disabled={busy || key.trim() === ""}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <ErrorNote error={error} />
        <p class="hint">
          The admin key is in <code>DATA_DIR/admin.key</code>; a tenant's key comes from{" "}
          <code>paddock keys create --tenant NAME</code>. The key is exchanged for a session cookie and not kept by the
          page.
        </p>
      </form>
    </main>
  );
}
