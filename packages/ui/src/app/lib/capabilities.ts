/**
 * What this host's API offers, read from its OpenAPI document: which endpoints exist and which
 * query parameters each takes. A page leaves out a filter or a panel whose endpoint an older host
 * lacks, instead of showing a control that silently does nothing.
 */

interface OpenApiDoc {
  paths?: Record<string, Record<string, { parameters?: { name?: string; in?: string }[] }>>;
}

export interface Capabilities {
  /** Whether `method path` (as the document writes it, e.g. "/v1/runs/{id}/replay") exists. */
  has(method: string, path: string): boolean;
  /** Whether `method path` takes the query parameter `name`. */
  takes(method: string, path: string, name: string): boolean;
}

export function capabilitiesOf(doc: unknown): Capabilities {
  const paths = (doc as OpenApiDoc | null)?.paths ?? {};
  const op = (method: string, path: string) => paths[path]?.[method.toLowerCase()];
  return {
    has: (method, path) => op(method, path) !== undefined,
    takes: (method, path, name) =>
      (op(method, path)?.parameters ?? []).some((p) => p.in === "query" && p.name === name),
  };
}

/** Before the document is read (or when it cannot be): only what every host has. */
export const NO_CAPABILITIES: Capabilities = { has: () => false, takes: () => false };
