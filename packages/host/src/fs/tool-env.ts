/**
 * The environment of the tools the host starts (cp, mknod, find, ip, nft, debootstrap, the
 * sandbox launcher...). It is built from nothing, never copied from process.env: whatever the host
 * was started with (a master key in PADDOCK_MASTER_KEY, provider keys, the operator's shell
 * settings) stays out of every tool and, through one, out of every sandbox. A caller names each
 * extra variable a tool needs.
 */

/**
 * The host's system folders, searched for tools started by name; not the PATH the host was started
 * with, nor a sandbox's (DEFAULT_PATH in images/resolve-command.ts, folders of an image).
 */
export const TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Proxy settings, which a tool that downloads (debootstrap) needs on a network behind a proxy. */
const PROXY_VARIABLES = ["http_proxy", "https_proxy", "ftp_proxy", "no_proxy"].flatMap((n) => [n, n.toUpperCase()]);

/**
 * A minimal environment: PATH and the C locale (the tools' output is parsed), then `extra`.
 * @example execFile("cp", ["-a", "--", from, to], { env: toolEnv() });
 */
export function toolEnv(extra: Readonly<Record<string, string>> = {}): Record<string, string> {
  return { PATH: TOOL_PATH, LC_ALL: "C", ...extra };
}

/**
 * The proxy settings found in `env`, and nothing else of it.
 * @example toolEnv({ DEBIAN_FRONTEND: "noninteractive", ...proxySettings(process.env) })
 */
export function proxySettings(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const found: Record<string, string> = {};
  for (const name of PROXY_VARIABLES) {
    const value = env[name];
    if (value !== undefined) found[name] = value;
  }
  return found;
}
