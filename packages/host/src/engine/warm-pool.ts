/**
 * Warm sandboxes: booted ahead of a run, with the runner started and blocked reading its spec, so
 * a claimed run skips sandbox boot and Node's start-up. After an agent's run is claimed, one spare
 * with the same snapshot (image and layers) and limits is booted for its next run; spares expire
 * after an idle period and are few in all.
 *
 * Threat model: a warm sandbox has run nothing but the runner: no agent code, no input, no
 * per-run data (the input arrives through the read-only inputs folder at claim time, the rest in
 * the runner's spec). Each one is used for exactly one run and destroyed after it, like a cold one,
 * so a run never sees another run's writes. One that dies while waiting is dropped.
 */
import type { AgentSpec, Limits } from "@paddock/protocol";
import type { SandboxDriver, SandboxHandle, SandboxSpec } from "../sandbox/driver.ts";

export interface WarmPoolConfig {
  /** Spares kept in all; 0 disables the pool. */
  max: number;
  /** A spare unused this long is destroyed. */
  idleMs: number;
}

interface Spare {
  handle: SandboxHandle;
  timer: NodeJS.Timeout;
  dead: boolean;
}

/** What is fixed at boot (snapshot, runner, limits): what a spare must match to stand in for a cold boot. */
export function bootKey(spec: Pick<AgentSpec, "image" | "layers" | "limits">, runner: string): string {
  const { memory_mb, pids, cpus, disk_mb }: Limits = spec.limits;
  return JSON.stringify([spec.image, spec.layers, runner, memory_mb, pids, cpus, disk_mb]);
}

export class WarmPool {
  readonly #driver: SandboxDriver;
  readonly #config: WarmPoolConfig;
  readonly #log: (msg: string) => void;
  readonly #spares = new Map<string, Spare[]>();
  #booting = 0;
  #seq = 0;
  #closed = false;

  constructor(driver: SandboxDriver, config: WarmPoolConfig, log: (msg: string) => void) {
    this.#driver = driver;
    this.#config = config;
    this.#log = log;
  }

  get size(): number {
    let n = 0;
    for (const list of this.#spares.values()) n += list.length;
    return n;
  }

  /** A booted spare for this key, removed from the pool, or null. */
  take(key: string): SandboxHandle | null {
    const list = this.#spares.get(key);
    while (list && list.length > 0) {
      const spare = list.shift() as Spare;
      clearTimeout(spare.timer);
      if (!spare.dead) return spare.handle;
    }
    return null;
  }

  /** Boots a spare for `key` in the background, unless the pool is full or one is waiting. */
  replenish(key: string, spec: () => Promise<Omit<SandboxSpec, "id">>): void {
    if (this.#closed || this.#config.max === 0) return;
    if ((this.#spares.get(key)?.length ?? 0) > 0 || this.size + this.#booting >= this.#config.max) return;
    this.#booting++;
    const id = `warm-${process.pid.toString(36)}-${(++this.#seq).toString(36)}-${Date.now().toString(36)}`;
    void (async () => {
      let handle: SandboxHandle | null = null;
      try {
        handle = await this.#driver.boot({ ...(await spec()), id });
        if (this.#closed) {
          await handle.destroy();
          return;
        }
        const spare: Spare = {
          handle,
          dead: false,
          timer: setTimeout(() => this.#drop(key, spare), this.#config.idleMs),
        };
        spare.timer.unref();
        void handle.exited.then(() => {
          spare.dead = true;
          this.#drop(key, spare);
        });
        const list = this.#spares.get(key) ?? [];
        list.push(spare);
        this.#spares.set(key, list);
      } catch (err) {
        this.#log(`warm sandbox ${id}: ${err instanceof Error ? err.message : String(err)}`);
        await handle?.destroy().catch(() => {});
      } finally {
        this.#booting--;
      }
    })();
  }

  #drop(key: string, spare: Spare): boolean {
    clearTimeout(spare.timer);
    const list = this.#spares.get(key);
    const i = list?.indexOf(spare) ?? -1;
    if (!list || i === -1) return false;
    list.splice(i, 1);
    if (list.length === 0) this.#spares.delete(key);
    void spare.handle.destroy().catch(() => {});
    return true;
  }

  /** Destroys every spare; waits for boots under way to land and be destroyed too. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#spares.values()].flat();
    this.#spares.clear();
    await Promise.all(
      all.map((s) => {
        clearTimeout(s.timer);
        return s.handle.destroy().catch(() => {});
      }),
    );
    while (this.#booting > 0) await new Promise((r) => setTimeout(r, 10));
  }
}
