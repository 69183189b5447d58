/**
 * The built-in agent: an LLM tool loop run inside the sandbox as the agent's command. It asks the
 * host's gateway for the next step (in the model's own wire format, OpenAI or Anthropic), runs the
 * tools the model calls (shell, read_file, write_file, http through a bridge connection,
 * call_agent for another agent's run, finish) and the tools of the run's MCP endpoint, and reports each call and result as an event. It holds no key: the run token is its API key, and
 * the host meters and bounds every call. A step limit ends a loop that never finishes.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import type { BuiltinAgentEvent } from "@paddock/protocol";
import { MARKER_PREFIX } from "@paddock/protocol/marker";
import { type McpSession, type McpTool, modelToolName, openMcp } from "./mcp.ts";
import { bridge, callAgent, fetchWaiting } from "./sdk.ts";

/** What the host writes to /inputs/agent.json for a built-in agent. */
export interface BuiltinAgentConfig {
  instructions: string;
  model: string;
  tools: string[];
  max_steps: number;
}

const OUTPUT_CAP = 16 * 1024;
const EVENT_CAP = 2 * 1024;
const SHELL_TIMEOUT_MS = 120_000;
const MAX_OUTPUT_TOKENS = 4096;

interface ToolCall {
  id: string;
  name: string;
  args: Record<string, unknown>;
}

const TOOL_SPECS: Record<string, { description: string; properties: Record<string, unknown>; required: string[] }> = {
  shell: {
    description: "Run a shell command (sh -c) in the sandbox; returns its exit code and output (capped).",
    properties: { command: { type: "string" } },
    required: ["command"],
  },
  read_file: {
    description: "Read a text file (capped).",
    properties: { path: { type: "string" } },
    required: ["path"],
  },
  write_file: {
    description: "Write a text file, replacing it.",
    properties: { path: { type: "string" }, content: { type: "string" } },
    required: ["path", "content"],
  },
  http: {
    description: "Call an allowed connection through the host bridge: method, path (with query), optional body.",
    properties: {
      connection: { type: "string" },
      method: { type: "string" },
      path: { type: "string" },
      body: { type: "string" },
    },
    required: ["connection", "method", "path"],
  },
  call_agent: {
    description: "Start a run of another agent (one this agent may call) with a JSON input and wait for its result.",
    properties: { agent: { type: "string" }, input: { type: "object" } },
    required: ["agent"],
  },
  finish: {
    description: "End the task with a summary of what was done.",
    properties: { summary: { type: "string" } },
    required: ["summary"],
  },
};

/** Writes one of the built-in agent's markers; the host records it as a `user` event. */
function emit<T extends BuiltinAgentEvent["type"]>(
  type: T,
  data: Extract<BuiltinAgentEvent, { type: T }>["data"],
): void {
  process.stdout.write(`${MARKER_PREFIX}${JSON.stringify({ type, data })}\n`);
}

const cap = (s: string, n: number) => (s.length > n ? `${s.slice(0, n)}… [${s.length - n} more characters]` : s);

function shell(command: string): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn("sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const take = (c: Buffer) => {
      if (out.length < OUTPUT_CAP * 2) out += c.toString("utf8");
    };
    child.stdout.on("data", take);
    child.stderr.on("data", take);
    const timer = setTimeout(() => child.kill("SIGKILL"), SHELL_TIMEOUT_MS);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolve(`could not start: ${err.message}`);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve(`exit ${signal ?? code}\n${cap(out, OUTPUT_CAP)}`);
    });
  });
}

/** The run's MCP tools offered to the model, by the name the model knows them by. */
interface McpOffer {
  session: McpSession;
  tools: Map<string, McpTool>;
}

async function runTool(
  call: ToolCall,
  allowed: string[],
  mcp: McpOffer | null,
): Promise<{ ok: boolean; output: string; finish?: string }> {
  const mcpTool = mcp?.tools.get(call.name);
  if (mcp && mcpTool) {
    const out = await mcp.session.call(mcpTool.name, call.args);
    return { ok: out.ok, output: cap(out.output, OUTPUT_CAP) };
  }
  if (!allowed.includes(call.name)) return { ok: false, output: `unknown tool ${call.name}` };
  const a = call.args;
  const str = (k: string) => (typeof a[k] === "string" ? (a[k] as string) : "");
  try {
    switch (call.name) {
      case "shell":
        return { ok: true, output: await shell(str("command")) };
      case "read_file":
        return { ok: true, output: cap(readFileSync(str("path"), "utf8"), OUTPUT_CAP) };
      case "write_file":
        writeFileSync(str("path"), str("content"));
        return { ok: true, output: `wrote ${Buffer.byteLength(str("content"))} bytes to ${str("path")}` };
      case "http": {
        const method = (str("method") || "GET").toUpperCase();
        const res = await bridge.fetch(str("connection"), str("path"), {
          method,
          ...(a.body !== undefined && method !== "GET" ? { body: str("body") } : {}),
        });
        return { ok: res.ok, output: `status ${res.status}\n${cap(await res.text(), OUTPUT_CAP)}` };
      }
      case "call_agent": {
        const child = await callAgent(str("agent"), a.input);
        return { ok: child.status === "succeeded", output: cap(JSON.stringify(child), OUTPUT_CAP) };
      }
      case "finish":
        return { ok: true, output: "finished", finish: str("summary") };
    }
  } catch (err) {
    return { ok: false, output: err instanceof Error ? err.message : String(err) };
  }
  return { ok: false, output: `unknown tool ${call.name}` };
}

/** One model step in either wire format: the assistant message to keep, and the tool calls in it. */
interface Step {
  text: string;
  calls: ToolCall[];
}

function parseArgs(raw: unknown): Record<string, unknown> {
  if (typeof raw === "object" && raw !== null) return raw as Record<string, unknown>;
  try {
    const v = JSON.parse(String(raw));
    return typeof v === "object" && v !== null ? v : {};
  } catch {
    return {};
  }
}

async function gateway(path: string, body: unknown): Promise<Record<string, unknown>> {
  // A call past the budget's approve_above waits for its approval like any other.
  const res = await fetchWaiting(`${process.env.PADDOCK_BRIDGE_URL}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (!res.ok) {
    const error = json.error as { code?: string; message?: string } | undefined;
    throw new Error(`model call failed (${res.status} ${error?.code ?? ""}): ${error?.message ?? ""}`);
  }
  return json;
}

/**
 * The run's MCP tools when its agent's policy names MCP servers (the host then sets
 * PADDOCK_MCP_URL), each under a name the model accepts and no built-in tool has. An endpoint that
 * cannot be listed leaves the agent its own tools, and says so on stderr.
 */
async function mcpOffer(builtins: string[]): Promise<McpOffer | null> {
  const url = process.env.PADDOCK_MCP_URL;
  if (!url) return null;
  try {
    const { session, tools } = await openMcp(url);
    const byName = new Map<string, McpTool>();
    for (const tool of tools) {
      const name = modelToolName(tool.name);
      if (name && !builtins.includes(name) && !(name in TOOL_SPECS) && !byName.has(name)) byName.set(name, tool);
    }
    return { session, tools: byName };
  } catch (err) {
    process.stderr.write(`the run's MCP tools could not be listed: ${err instanceof Error ? err.message : err}\n`);
    return null;
  }
}

export async function runBuiltinAgent(): Promise<number> {
  const config = JSON.parse(readFileSync("/inputs/agent.json", "utf8")) as BuiltinAgentConfig;
  const input = readFileSync(process.env.PADDOCK_INPUT ?? "/inputs/input.json", "utf8");
  const models = await fetch(`${process.env.PADDOCK_BRIDGE_URL}/v1/models`, {
    headers: { authorization: `Bearer ${bridge.token()}` },
  }).then((r) => r.json() as Promise<{ data?: { id: string; api?: string }[] }>);
  const anthropic = models.data?.find((m) => m.id === config.model)?.api === "anthropic";
  const tools = config.tools.filter((t) => t in TOOL_SPECS);
  const mcp = await mcpOffer(tools);
  const offered = [
    ...tools.map((name) => ({
      name,
      description: TOOL_SPECS[name]?.description ?? "",
      schema: { type: "object", properties: TOOL_SPECS[name]?.properties, required: TOOL_SPECS[name]?.required },
    })),
    ...[...(mcp?.tools ?? [])].map(([name, t]) => ({
      name,
      description: t.description ?? "",
      schema: { type: "object", ...t.inputSchema },
    })),
  ];
  const task = `The run's input (JSON):\n${input}`;
  // biome-ignore lint/suspicious/noExplicitAny: the two wire formats' message lists.
  const messages: any[] = anthropic
    ? [{ role: "user", content: task }]
    : [
        { role: "system", content: config.instructions },
        { role: "user", content: task },
      ];

  for (let step = 1; step <= config.max_steps; step++) {
    let result: Step;
    if (anthropic) {
      const r = await gateway("/v1/messages", {
        model: config.model,
        max_tokens: MAX_OUTPUT_TOKENS,
        system: config.instructions,
        messages,
        tools: offered.map((t) => ({ name: t.name, description: t.description, input_schema: t.schema })),
      });
      const content = (r.content ?? []) as {
        type: string;
        text?: string;
        id?: string;
        name?: string;
        input?: unknown;
      }[];
      messages.push({ role: "assistant", content });
      result = {
        text: content.map((c) => c.text ?? "").join(""),
        calls: content
          .filter((c) => c.type === "tool_use")
          .map((c) => ({ id: c.id ?? "", name: c.name ?? "", args: parseArgs(c.input) })),
      };
    } else {
      const r = await gateway("/v1/chat/completions", {
        model: config.model,
        max_tokens: MAX_OUTPUT_TOKENS,
        messages,
        tools: offered.map((t) => ({
          type: "function",
          function: { name: t.name, description: t.description, parameters: t.schema },
        })),
      });
      const message = ((r.choices as { message?: Record<string, unknown> }[] | undefined)?.[0]?.message ?? {}) as {
        content?: string | null;
        tool_calls?: { id: string; function: { name: string; arguments: string } }[];
      };
      messages.push({ role: "assistant", content: message.content ?? null, tool_calls: message.tool_calls });
      result = {
        text: message.content ?? "",
        calls: (message.tool_calls ?? []).map((c) => ({
          id: c.id,
          name: c.function.name,
          args: parseArgs(c.function.arguments),
        })),
      };
    }
    if (result.text) emit("agent.message", { step, text: cap(result.text, EVENT_CAP) });
    if (result.calls.length === 0) {
      // No tool asked for: the model's answer is the result.
      emit("agent.finished", { step, summary: cap(result.text, EVENT_CAP) });
      return 0;
    }
    const replies: { id: string; output: string; ok: boolean }[] = [];
    let finished: string | undefined;
    for (const call of result.calls) {
      const argText = JSON.stringify(call.args);
      emit("tool.call", {
        step,
        id: call.id,
        name: call.name,
        args: argText.length <= EVENT_CAP ? call.args : cap(argText, EVENT_CAP),
      });
      const out = await runTool(call, tools, mcp);
      emit("tool.result", { step, id: call.id, name: call.name, ok: out.ok, output: cap(out.output, EVENT_CAP) });
      replies.push({ id: call.id, output: out.output, ok: out.ok });
      if (out.finish !== undefined) finished = out.finish;
    }
    if (finished !== undefined) {
      emit("agent.finished", { step, summary: cap(finished, EVENT_CAP) });
      return 0;
    }
    if (anthropic) {
      messages.push({
        role: "user",
        content: replies.map((r) => ({ type: "tool_result", tool_use_id: r.id, content: r.output, is_error: !r.ok })),
      });
    } else {
      for (const r of replies) messages.push({ role: "tool", tool_call_id: r.id, content: r.output });
    }
  }
  emit("agent.step_limit", { max_steps: config.max_steps });
  return 1;
}
