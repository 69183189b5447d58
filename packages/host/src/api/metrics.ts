/**
 * `GET /metrics`: this node's Prometheus metrics in the text format, for the admin key or the
 * token of `serve --metrics-token-file` (a scraper then holds no API key). Each node of a cluster
 * answers with its own.
 */
import { z } from "zod";
import type { Metrics } from "../metrics/metrics.ts";
import type { DefineRoute } from "./http.ts";

/**
 * Adds the metrics route and its OpenAPI entry to the API.
 * @example registerMetricsRoutes(route, deps.metrics);
 */
export function registerMetricsRoutes(route: DefineRoute, metrics: Metrics): void {
  route(
    {
      method: "get",
      path: "/metrics",
      summary: "This node's metrics in the Prometheus text format (the admin key, or the metrics token)",
      auth: "metrics",
      responses: {
        200: {
          description: "Metrics",
          content: { "text/plain": { schema: z.string().meta({ description: "Prometheus text format 0.0.4" }) } },
        },
      },
    },
    async (c) => c.text(await metrics.text(), 200, { "content-type": metrics.contentType }),
  );
}
