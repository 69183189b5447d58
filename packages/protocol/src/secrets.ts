/**
 * Secrets of the vault as the API accepts and returns them: a value goes in, and only names and
 * metadata ever come out.
 */
import { z } from "zod";

/** A secret's name, as connections refer to it. */
export const SecretName = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/,
    "letters, digits, '_', '.' and '-', at most 64, starting with a letter or digit",
  );

export const MAX_SECRET_BYTES = 64 * 1024;

/** The body of `PUT /v1/secrets/{name}`. Its checks never quote the value back. */
export const SecretSet = z
  .object({
    value: z
      .string({ error: "a string" })
      .min(1, "not empty")
      .refine((v) => Buffer.byteLength(v) <= MAX_SECRET_BYTES, `at most ${MAX_SECRET_BYTES} bytes`),
  })
  .strict()
  .meta({ id: "SecretSet" });
export type SecretSet = z.infer<typeof SecretSet>;

/** A secret's metadata: never its value. */
export const Secret = z
  .object({ name: z.string(), version: z.number().int(), created_at: z.string(), updated_at: z.string() })
  .meta({ id: "Secret" });
export type Secret = z.infer<typeof Secret>;
