/** Webhooks over HTTP: an agent's webhooks (create, list, delete) and the delivery endpoint. */
import { AppError, bodyTooLarge, MAX_WEBHOOK_BODY_BYTES, Page, Webhook, WebhookCreate } from "@paddock/protocol";
import { z } from "zod";
import type { Agents } from "../agents/agents.ts";
import type { Webhooks } from "../triggers/webhooks.ts";
import { type DefineRoute, json, jsonBody, pathParam, tenantOf } from "./http.ts";

const Delivery = z
  .object({ run_id: z.string(), status: z.string(), deduplicated: z.boolean() })
  .meta({ id: "WebhookDelivery" });
const WebhookId = z.string().regex(/^whk_[0-9a-z]{32}$/);
/** An agent by id or name, as the CLI names agents. */
const AgentRef = z.object({ id: pathParam(z.string().min(1).max(128), "agent") });

export function registerWebhookRoutes(route: DefineRoute, deps: { webhooks: Webhooks; agents: Agents }): void {
  const { webhooks, agents } = deps;
  route(
    {
      method: "post",
      path: "/v1/agents/{id}/webhooks",
      summary: "Create a webhook that starts runs of the agent; its secret is shown only in this answer",
      auth: "tenant",
      request: { params: AgentRef, body: jsonBody(WebhookCreate) },
      responses: { 201: json(Webhook, "Created") },
    },
    async (c) => {
      const agent = await agents.resolveLive(tenantOf(c), c.req.valid("param").id);
      return c.json(await webhooks.create(tenantOf(c), agent.row.id, c.req.valid("json")), 201);
    },
  );
  route(
    {
      method: "get",
      path: "/v1/agents/{id}/webhooks",
      summary: "List an agent's webhooks (never their secrets)",
      auth: "tenant",
      request: { params: AgentRef },
      responses: { 200: json(Page(Webhook), "Webhooks") },
    },
    async (c) => {
      // A deleted agent's webhooks are listed too: they refuse deliveries, and may be deleted.
      const agent = await agents.resolve(tenantOf(c), c.req.valid("param").id);
      return c.json({ data: await webhooks.list(tenantOf(c), agent.row.id), next_cursor: null }, 200);
    },
  );
  route(
    {
      method: "delete",
      path: "/v1/webhooks/{id}",
      summary: "Delete a webhook",
      auth: "tenant",
      request: { params: z.object({ id: pathParam(WebhookId, "webhook") }) },
      responses: { 200: json(Webhook, "Deleted") },
    },
    async (c) => c.json(await webhooks.delete(tenantOf(c), c.req.valid("param").id), 200),
  );
  route(
    {
      method: "post",
      path: "/v1/hooks/{id}",
      summary:
        'Deliver to a webhook: x-paddock-timestamp (unix seconds), x-paddock-signature: sha256=HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>"), x-paddock-delivery (an id, deduplicated); the body becomes the run\'s input',
      auth: "none",
      request: {
        // A malformed id cannot exist: the same answer as any unknown webhook.
        params: z.object({
          id: pathParam(WebhookId, "webhook", () => new AppError("webhook_signature_invalid")),
        }),
        // Read by the handler: the signature covers the exact bytes.
        body: {
          content: {
            "*/*": {
              schema: z.string().meta({ description: "Any body; JSON becomes the input as a value, else as text" }),
            },
          },
        },
      },
      responses: {
        202: json(Delivery, "A run was started (or had been, for a repeated delivery id)"),
        401: { description: "Bad or missing signature, unknown webhook, or a timestamp outside five minutes" },
        409: { description: "The webhook's agent is deleted (agent_archived) and the delivery id is new" },
        413: { description: "A body over 256 KiB" },
      },
    },
    async (c) => {
      const id = c.req.valid("param").id;
      const declared = Number(c.req.header("content-length") ?? 0);
      if (declared > MAX_WEBHOOK_BODY_BYTES) throw bodyTooLarge(MAX_WEBHOOK_BODY_BYTES);
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
          throw bodyTooLarge(MAX_WEBHOOK_BODY_BYTES);
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
