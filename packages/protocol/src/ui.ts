/** What the dashboard's sign-in answers: who the session (or key) is, and the session's CSRF value. */
import { z } from "zod";

export const UiSession = z
  .object({
    tenant_id: z.string(),
    tenant_name: z.string(),
    key_id: z.string(),
    role: z.enum(["admin", "tenant"]),
    /**
     * The value writes made with the session cookie send in `x-paddock-csrf`; null when the
     * request came with the API key itself (which needs none).
     */
    csrf_token: z.string().nullable(),
    /** When the session ends; null for a request made with the key. */
    expires_at: z.string().nullable(),
  })
  .meta({ id: "UiSession" });
export type UiSession = z.infer<typeof UiSession>;
