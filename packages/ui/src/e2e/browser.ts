/**
 * The dashboard's browser tests drive Debian's Chromium (installed by `make setup`) through
 * playwright-core, never a downloaded browser. A page is watched for what must never happen on
 * it: a script error, a dialog (an agent's SVG or text that ran script), or a console error.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
/** Where the tests save their screenshots of the main pages (the README shows them). */
export const SCREENSHOTS = new URL("../../../../docs/", import.meta.url).pathname;

/** Why the browser tests cannot run here, or false. */
export function browserSkipReason(): string | false {
  if (process.platform !== "linux") return "the browser tests use Debian's chromium on Linux";
  if (!existsSync(CHROMIUM)) return `no browser at ${CHROMIUM} (make setup installs Debian's chromium)`;
  return false;
}

/** Headless Chromium; as root, without its own sandbox (which refuses to run as root). */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...(process.getuid?.() === 0 ? ["--no-sandbox"] : []), "--disable-dev-shm-usage"],
  });
}

/** What a page did that it must not: uncaught errors, dialogs, console errors. */
export interface Watched {
  errors: string[];
  dialogs: string[];
  console: string[];
}

/** A new context and page of `browser`, watched; `viewport` sizes its screenshots. */
export async function watchedPage(browser: Browser): Promise<{ context: BrowserContext; page: Page; seen: Watched }> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const seen: Watched = { errors: [], dialogs: [], console: [] };
  page.on("pageerror", (err) => seen.errors.push(err.message));
  page.on("dialog", (dialog) => {
    seen.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    void dialog.dismiss();
  });
  page.on("console", (msg) => {
    // A failed request is logged as an error by the browser itself; the tests expect some (401s).
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) seen.console.push(msg.text());
  });
  return { context, page, seen };
}

/** Fails if the page did what it must not (ran script, opened a dialog, logged an error). */
export function assertClean(seen: Watched, what: string): void {
  assert.deepEqual(seen.errors, [], `${what}: page errors`);
  assert.deepEqual(seen.dialogs, [], `${what}: dialogs`);
  assert.deepEqual(seen.console, [], `${what}: console errors`);
}

/** Signs in on the dashboard's form with `key`; resolves once the form is gone (or shows an error). */
export async function signIn(page: Page, baseUrl: string, key: string, path = "/ui"): Promise<void> {
  await page.goto(`${baseUrl}${path}`);
  await page.fill("#api-key", key);
  await page.click("button[type=submit]");
}

export async function screenshot(page: Page, name: string): Promise<void> {
  await mkdir(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `dashboard-${name}.png`) });
}
