/**
 * A local stand-in for the external model providers, speaking OpenAI's chat completions and
 * Anthropic's messages wire formats, streaming and not, with usage figures it computes itself (so
 * tests can compare the host's metering against them). What it answers is chosen by the last user
 * message: `status:429` / `status:500` fail like a provider, `echo-key` answers with the key the
 * host attached, `slow` streams forty chunks slowly; anything else gets a short reply. A test may
 * also queue scripted answers (tool calls) per model. Used by tests and by `paddock bench gateway`.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { isEvent, type RunEvent } from "@paddock/protocol";

export interface SeenLlmRequest {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
}

/** A scripted answer: text, or tool calls (name and JSON arguments). */
export type ScriptedAnswer = { text: string } | { tools: { id: string; name: string; arguments: unknown }[] };

export interface LlmStandIn {
  url: string;
  seen: SeenLlmRequest[];
  /** Streams the stand-in cut off because the caller went away. */
  aborted: number;
  /** Queues answers for `model`, served in order before the default behaviour. */
  script(model: string, answers: ScriptedAnswer[]): void;
  /** What the stand-in reported for each answer it completed: model, input and output tokens. */
  usage: { model: string; input: number; output: number }[];
  close(): Promise<void>;
}

/**
 * An agent (an ES module for the runner's node) that fires `count` chat completions at once
 * through its bridge, after `delay_ms` (input; default 0); whatever happens to the run, the host's
 * record tells. It prints [status, error code] of each call as one JSON line.
 */
export const FLOOD_AGENT = `
import { readFileSync } from "node:fs";
const token = readFileSync(process.env.PADDOCK_TOKEN_FILE, "utf8").trim();
const { count, delay_ms = 0 } = JSON.parse(readFileSync(process.env.PADDOCK_INPUT, "utf8"));
const once = () => fetch(process.env.PADDOCK_BRIDGE_URL + "/v1/chat/completions", {
  method: "POST",
  headers: { authorization: "Bearer " + token, "content-type": "application/json" },
  body: JSON.stringify({ model: "gpt-test", max_tokens: 400, messages: [{ role: "user", content: "count to ten please" }] }),
}).then(async (r) => [r.status, (await r.json()).error?.code ?? null]).catch((e) => [0, String(e)]);
// Credits held by other calls in flight come back as those settle: wait and retry, as a client should.
async function call() {
  for (let i = 0; ; i++) {
    const result = await once();
    if (result[1] !== "credits_held" || i > 500) return result;
    await new Promise((r) => setTimeout(r, 10));
  }
}
await new Promise((r) => setTimeout(r, delay_ms));
const results = await Promise.all(Array.from({ length: count }, call));
console.log(JSON.stringify(results));
`;

/** What FLOOD_AGENT printed: [status, error code] of each call. */
export function floodResults(events: RunEvent[]): [number, string | null][] {
  const line = events.filter(isEvent("log")).find((e) => e.data.line.startsWith("[["))?.data.line ?? "[]";
  return JSON.parse(line);
}

const words = (s: string) => s.split(/\s+/).filter(Boolean);

/** Text of a message's content in either format. */
function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p: { text?: unknown; content?: unknown }) =>
        typeof p?.text === "string" ? p.text : typeof p?.content === "string" ? p.content : "",
      )
      .join(" ");
  }
  return "";
}

/** Starts the stand-in on `address` (loopback by default; a bench puts it on the sandbox links' host side). */
export async function startLlmStandIn(address = "127.0.0.1"): Promise<LlmStandIn> {
  const seen: SeenLlmRequest[] = [];
  const usage: LlmStandIn["usage"] = [];
  const scripts = new Map<string, ScriptedAnswer[]>();
  const state = { aborted: 0 };

  const server = http.createServer({ keepAlive: true }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {}
      seen.push({ path: req.url ?? "", headers: req.headers, body });
      const anthropic = req.url === "/v1/messages";
      const responses = req.url === "/v1/responses";
      if (req.url !== "/v1/chat/completions" && !anthropic && !responses) {
        res.writeHead(404).end();
        return;
      }
      // The Responses API takes `input`: a string or a list of messages.
      const messages = (
        responses
          ? typeof body.input === "string"
            ? [{ role: "user", content: body.input }]
            : (body.input ?? [])
          : (body.messages ?? [])
      ) as { role: string; content: unknown }[];
      const all = [typeof body.system === "string" ? body.system : "", ...messages.map((m) => textOf(m.content))].join(
        " ",
      );
      const last = textOf(messages.at(-1)?.content);
      const input = words(all).length + 3 * messages.length + 5;
      const model = String(body.model);
      const max = Number(body.max_tokens ?? body.max_completion_tokens ?? body.max_output_tokens ?? 4096);
      const fail = (status: number, message: string) => {
        const type = status === 429 ? "rate_limit_error" : "api_error";
        const out = anthropic ? { type: "error", error: { type, message } } : { error: { message, type, code: null } };
        res.writeHead(status, {
          "content-type": "application/json",
          ...(status === 429 ? { "retry-after": "1" } : {}),
        });
        res.end(JSON.stringify(out));
      };
      if (last.includes("status:429")) return fail(429, "Rate limit reached for requests");
      if (last.includes("status:500")) return fail(500, "The server had an error while processing your request");
      const scripted = scripts.get(model)?.shift();
      let answer: ScriptedAnswer;
      if (scripted) answer = scripted;
      else if (last.includes("echo-key")) {
        answer = { text: `key ${String(req.headers.authorization ?? req.headers["x-api-key"] ?? "")}` };
      } else if (last.includes("slow")) answer = { text: Array.from({ length: 40 }, (_, i) => `w${i}`).join(" ") };
      else answer = { text: `Hello from ${model}: you said ${words(last).length} words` };
      let pieces: string[] = "text" in answer ? words(answer.text).slice(0, Math.max(1, max)) : [];
      if ("text" in answer) pieces = pieces.map((w, i) => (i === 0 ? w : ` ${w}`));
      const output = "text" in answer ? pieces.length : answer.tools.length * 8;
      const slow = last.includes("slow");
      const stream = body.stream === true;
      const includeUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true;
      const id = `id-${seen.length}`;
      const done = () => usage.push({ model, input, output });

      const responseObject = (status: string) => ({
        id,
        object: "response",
        created_at: 0,
        status,
        model,
        output:
          status === "completed"
            ? [
                {
                  type: "message",
                  id: `msg-${id}`,
                  status: "completed",
                  role: "assistant",
                  content: [{ type: "output_text", text: pieces.join(""), annotations: [] }],
                },
              ]
            : [],
        usage:
          status === "completed" ? { input_tokens: input, output_tokens: output, total_tokens: input + output } : null,
      });
      if (!stream && responses) {
        res.writeHead(200, { "content-type": "application/json" });
        done();
        res.end(JSON.stringify(responseObject("completed")));
        return;
      }
      if (!stream) {
        res.writeHead(200, { "content-type": "application/json" });
        done();
        if (anthropic) {
          const content =
            "text" in answer
              ? [{ type: "text", text: pieces.join("") }]
              : answer.tools.map((t) => ({ type: "tool_use", id: t.id, name: t.name, input: t.arguments }));
          res.end(
            JSON.stringify({
              id,
              type: "message",
              role: "assistant",
              model,
              content,
              stop_reason: "text" in answer ? "end_turn" : "tool_use",
              stop_sequence: null,
              usage: { input_tokens: input, output_tokens: output },
            }),
          );
        } else {
          const message =
            "text" in answer
              ? { role: "assistant", content: pieces.join("") }
              : {
                  role: "assistant",
                  content: null,
                  tool_calls: answer.tools.map((t) => ({
                    id: t.id,
                    type: "function",
                    function: { name: t.name, arguments: JSON.stringify(t.arguments) },
                  })),
                };
          res.end(
            JSON.stringify({
              id,
              object: "chat.completion",
              created: 0,
              model,
              choices: [{ index: 0, message, finish_reason: "text" in answer ? "stop" : "tool_calls" }],
              usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output },
            }),
          );
        }
        return;
      }

      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const events: string[] = [];
      const sse = (event: string | null, data: unknown) =>
        events.push(
          `${event ? `event: ${event}\n` : ""}data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`,
        );
      if (responses) {
        sse("response.created", {
          type: "response.created",
          sequence_number: 0,
          response: responseObject("in_progress"),
        });
        pieces.forEach((delta, i) => {
          const data = { type: "response.output_text.delta", sequence_number: i + 1, item_id: `msg-${id}` };
          sse("response.output_text.delta", { ...data, output_index: 0, content_index: 0, delta });
        });
        sse("response.completed", {
          type: "response.completed",
          sequence_number: pieces.length + 1,
          response: responseObject("completed"),
        });
      } else if (anthropic) {
        sse("message_start", {
          type: "message_start",
          message: {
            id,
            type: "message",
            role: "assistant",
            model,
            content: [],
            stop_reason: null,
            stop_sequence: null,
            usage: { input_tokens: input, output_tokens: 1 },
          },
        });
        if ("text" in answer) {
          sse("content_block_start", {
            type: "content_block_start",
            index: 0,
            content_block: { type: "text", text: "" },
          });
          for (const p of pieces) {
            sse("content_block_delta", {
              type: "content_block_delta",
              index: 0,
              delta: { type: "text_delta", text: p },
            });
          }
          sse("content_block_stop", { type: "content_block_stop", index: 0 });
        } else {
          answer.tools.forEach((t, index) => {
            sse("content_block_start", {
              type: "content_block_start",
              index,
              content_block: { type: "tool_use", id: t.id, name: t.name, input: {} },
            });
            sse("content_block_delta", {
              type: "content_block_delta",
              index,
              delta: { type: "input_json_delta", partial_json: JSON.stringify(t.arguments) },
            });
            sse("content_block_stop", { type: "content_block_stop", index });
          });
        }
        sse("message_delta", {
          type: "message_delta",
          delta: { stop_reason: "text" in answer ? "end_turn" : "tool_use", stop_sequence: null },
          usage: { output_tokens: output },
        });
        sse("message_stop", { type: "message_stop" });
      } else {
        const chunk = (delta: unknown, finish: string | null) => ({
          id,
          object: "chat.completion.chunk",
          created: 0,
          model,
          choices: [{ index: 0, delta, finish_reason: finish }],
        });
        sse(null, chunk({ role: "assistant", content: "" }, null));
        if ("text" in answer) for (const p of pieces) sse(null, chunk({ content: p }, null));
        else {
          answer.tools.forEach((t, index) => {
            const call = {
              index,
              id: t.id,
              type: "function",
              function: { name: t.name, arguments: JSON.stringify(t.arguments) },
            };
            sse(null, chunk({ tool_calls: [call] }, null));
          });
        }
        sse(null, chunk({}, "text" in answer ? "stop" : "tool_calls"));
        if (includeUsage) {
          sse(null, {
            id,
            object: "chat.completion.chunk",
            created: 0,
            model,
            choices: [],
            usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output },
          });
        }
        sse(null, "[DONE]");
      }
      let i = 0;
      let gone = false;
      res.on("close", () => {
        if (i < events.length) {
          gone = true;
          state.aborted += 1;
        }
      });
      const next = () => {
        if (gone) return;
        if (i >= events.length) {
          done();
          res.end();
          return;
        }
        res.write(events[i++]);
        if (slow) setTimeout(next, 25);
        else next();
      };
      next();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, address, () => resolve()));
  return {
    url: `http://${address}:${(server.address() as AddressInfo).port}`,
    seen,
    usage,
    get aborted() {
      return state.aborted;
    },
    script(model, answers) {
      scripts.set(model, [...(scripts.get(model) ?? []), ...answers]);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
