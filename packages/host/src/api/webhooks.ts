/** Webhooks over HTTP: an agent's webhooks (create, list, delete) and the delivery endpoint. */
import { AppError, MAX_WEBHOOK_BODY_BYTES, Page, Webhook } from "@paddock/protocol";
import type { Context } from "hono";
import { z } from "zod";
import type { Agents } from "../agents/agents.ts";
import type { Webhooks } from "../triggers/webhooks.ts";
import { json, type RouteHelpers } from "./http.ts";

const Delivery = z
  .object({ run_id: z.string(), status: z.string(), deduplicated: z.boolean() })
  .meta({ id: "WebhookDelivery" });

function hookId(c: Context): string {
  const value = c.req.param("id") ?? "";
  // A malformed id cannot exist: the same answer as any unknown one.
  if (!/^whk_[0-9a-z]{32}$/.test(value)) throw new AppError("webhook_signature_invalid");
  return value;
}

export function registerWebhookRoutes<C extends Context>(
  deps: { webhooks: Webhooks; agents: Agents },
  h: RouteHelpers<C>,
): void {
  const { route, tenantOf } = h;
  const { webhooks, agents } = deps;
  route(
    "post",
    "/v1/agents/{id}/webhooks",
    {
      summary: "Create a webhook that starts runs of the agent; its secret is shown only in this answer",
      auth: "tenant",
      responses: { 201: json(Webhook, "Created") },
    },
    async (c) => {
      const agent = await agents.resolveLive(tenantOf(c), c.req.param("id") ?? "");
      return c.json(await webhooks.create(tenantOf(c), agent.row.id), 201);
    },
  );
  route(
    "get",
    "/v1/agents/{id}/webhooks",
    {
      summary: "List an agent's webhooks (never their secrets)",
      auth: "tenant",
      responses: { 200: json(Page(Webhook), "Webhooks") },
    },
    async (c) => {
      const agent = await agents.resolve(tenantOf(c), c.req.param("id") ?? "");
      return c.json({ data: await webhooks.list(tenantOf(c), agent.row.id), next_cursor: null });
    },
  );
  route(
    "delete",
    "/v1/webhooks/{id}",
    { summary: "Delete a webhook", auth: "tenant", responses: { 200: json(Webhook, "Deleted") } },
    async (c) => c.json(await webhooks.delete(tenantOf(c), c.req.param("id") ?? "")),
  );
  route(
    "post",
    "/v1/hooks/{id}",
    {
      summary:
        'Deliver to a webhook: x-paddock-timestamp (unix seconds), x-paddock-signature: sha256=HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>"), x-paddock-delivery (an id, deduplicated); the body becomes the run\'s input',
      auth: "none",
      responses: {
        202: json(Delivery, "A run was started (or had been, for a repeated delivery id)"),
        401: { description: "Bad or missing signature, unknown webhook, or a timestamp outside five minutes" },
        409: { description: "The webhook's agent is deleted (agent_archived)" },
        413: { description: "A body over 256 KiB" },
      },
    },
    async (c) => {
      const id = hookId(c);
      const declared = Number(c.req.header("content-length") ?? 0);
      if (declared > MAX_WEBHOOK_BODY_BYTES) throw new AppError("body_too_large");
      // Read with a running cap: a chunked body has no length to check first.
      const chunks: Buffer[] = [];
      let size = 0;
      const reader = c.req.raw.body?.getReader();
      for (;;) {
        const part = reader ? await reader.read() : { done: true as const, value: undefined };
        if (part.done) break;
        size += part.value.length;
        if (size > MAX_WEBHOOK_BODY_BYTES) {
          await reader?.cancel();
          throw new AppError("body_too_large");
        }
        chunks.push(Buffer.from(part.value));
      }
      const body = Buffer.concat(chunks);
      const headers: Record<string, string | undefined> = {};
      for (const name of ["x-paddock-timestamp", "x-paddock-signature", "x-paddock-delivery"]) {
        headers[name] = c.req.header(name);
      }
      const { run, created } = await webhooks.receive(id, headers, body);
      return c.json({ run_id: run.id, status: run.status, deduplicated: !created }, 202);
    },
  );
}
