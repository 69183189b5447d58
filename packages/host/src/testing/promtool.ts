/**
 * promtool (Debian's prometheus package) checks an exposition the way Prometheus reads it: syntax,
 * and its lint of names, units and help texts.
 */
import { spawnSync } from "node:child_process";

/** Why promtool cannot check metrics here; false when it can. */
export function promtoolSkipReason(): string | false {
  const found = spawnSync("promtool", ["--version"], { stdio: "ignore" }).status === 0;
  return found ? false : "promtool is not installed (Debian's prometheus package; run make setup)";
}

/** What `promtool check metrics` says of `text`: whether it passed, and its output. */
export function promtoolCheck(text: string): { ok: boolean; output: string } {
  const checked = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  return { ok: checked.status === 0, output: `${checked.stdout}${checked.stderr}` };
}
