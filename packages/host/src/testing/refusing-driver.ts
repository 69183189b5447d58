/**
 * A sandbox driver that starts nothing: every boot and every session layer is refused with
 * sandbox_unavailable. It lets the API and the services run on a machine without root, bubblewrap
 * or a base image, where what is tested is everything in front of the sandboxes.
 */
import { AppError } from "@paddock/protocol";
import type { SandboxDriver, SandboxHandle, SessionLayer } from "../sandbox/driver.ts";

export class RefusingSandboxDriver implements SandboxDriver {
  readonly name = "refusing";
  /** How many boots were refused. */
  refused = 0;

  async boot(): Promise<SandboxHandle> {
    this.refused++;
    throw new AppError("sandbox_unavailable", "This host's sandbox driver starts no sandboxes (tests without root).");
  }

  async reapOrphans(): Promise<number> {
    return 0;
  }

  async createSessionLayer(): Promise<SessionLayer> {
    this.refused++;
    throw new AppError(
      "sandbox_unavailable",
      "This host's sandbox driver makes no session layers (tests without root).",
    );
  }

  async removeSessionLayer(): Promise<void> {}
}
