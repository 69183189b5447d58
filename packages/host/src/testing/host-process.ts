/**
 * Runs a host in its own process for crash tests: config from argv[2] (JSON), prints {url, adminKey}.
 * SIGTERM closes it cleanly (its sandboxes and networks removed) before it exits.
 */
import { startHost } from "../host.ts";

const config = JSON.parse(process.argv[2] ?? "{}");
const host = await startHost({ ...config, log: () => {} });
process.once("SIGTERM", () => void host.close().finally(() => process.exit(0)));
process.stdout.write(`${JSON.stringify({ url: host.url, adminKey: host.adminKey })}\n`);
