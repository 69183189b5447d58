/**
 * A host without an OTLP endpoint loads no OpenTelemetry SDK module: every module this process
 * resolves is watched (module.registerHooks) while a host's services are built and a run is
 * triggered and attempted; only a host given an endpoint brings the SDK in. The traceparent a
 * trigger gives is kept on the run either way. Needs no root.
 */
import assert from "node:assert/strict";
import { registerHooks } from "node:module";
import { test } from "node:test";

const resolved: string[] = [];
registerHooks({
  resolve(specifier, context, nextResolve) {
    const result = nextResolve(specifier, context);
    resolved.push(result.url);
    return result;
  },
});
// The API package alone is a set of no-op interfaces that prom-client (the metrics) imports; the
// SDK, exporter and resources are what tracing brings in.
const otel = () => resolved.filter((url) => url.includes("/@opentelemetry/") && !url.includes("/@opentelemetry/api/"));

test("the OpenTelemetry SDK is loaded only by a host that has an OTLP endpoint", async () => {
  // Imported only now, so that the hook sees every module the host pulls in.
  const { startNoRootHost } = await import("../testing/no-root-host.ts");
  const { startOtlpReceiver } = await import("../testing/otlp-receiver.ts");
  const { sqliteStore } = await import("../testing/stores.ts");
  const { waitFor } = await import("../testing/wait.ts");

  const plain = await startNoRootHost();
  try {
    assert.equal(plain.services.tracing, null);
    const request = (path: string, body: unknown, headers: Record<string, string> = {}) =>
      plain.services.app.request(path, {
        method: "POST",
        headers: { authorization: `Bearer ${plain.adminKey}`, "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
    const agent = await request("/v1/agents", { name: "quiet", command: ["/opt/paddock/runner/node", "-e", "1"] });
    assert.equal(agent.status, 201);
    const { id } = (await agent.json()) as { id: string };
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const given = await request(`/v1/agents/${id}/runs`, {}, { traceparent });
    const malformed = await request(`/v1/agents/${id}/runs`, {}, { traceparent: "00-zz-00f067aa0ba902b7-01" });
    assert.equal(given.status, 201);
    assert.equal(malformed.status, 201);
    const rows = async () => plain.db.selectFrom("runs").select(["id", "status", "trace_parent"]).execute();
    // Both runs are attempted (the sandbox driver refuses to boot them): the attempt's path ran too.
    await waitFor(async () => (await rows()).every((r) => r.status === "failed"), { what: "both runs to fail" });
    const byId = new Map((await rows()).map((r) => [r.id, r.trace_parent]));
    assert.equal(byId.get(((await given.json()) as { id: string }).id), traceparent);
    assert.equal(byId.get(((await malformed.json()) as { id: string }).id), null);
    assert.ok(resolved.length > 100, `the hook saw only ${resolved.length} modules`);
    assert.deepEqual(otel(), []);
  } finally {
    await plain.close();
  }

  const receiver = await startOtlpReceiver();
  const traced = await startNoRootHost(sqliteStore(), { config: { otlpEndpoint: receiver.url } });
  try {
    assert.ok(traced.services.tracing);
    assert.ok(
      otel().some((url) => url.includes("/@opentelemetry/sdk-trace/")),
      "a host with an endpoint loads the SDK (so the check above can fail)",
    );
  } finally {
    await traced.close();
    await receiver.close();
  }
});
