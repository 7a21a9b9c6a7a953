// kmalloc for arena objects: a few size classes, each an IndexPool, handing out word offsets.
// Kernel objects that are not pool-typed (locks in tests, driver state, small tables) live here.

import type { Arena, ArenaPlan } from './arena.js';
import { IndexPool } from './pool.js';

/** words per object -> object count */
export type KmallocConfig = Record<number, number>;
export const defaultKmalloc: KmallocConfig = { 8: 4096, 16: 2048, 32: 1024, 64: 512, 256: 128, 1024: 32 };

export class Kmalloc {
  private readonly pools: IndexPool[];

  constructor(arena: Arena, cfg: KmallocConfig) {
    this.pools = sizes(cfg).map((s) => new IndexPool(arena, `kmalloc-${s}`, s));
  }

  static plan(plan: ArenaPlan, cfg: KmallocConfig): void {
    for (const s of sizes(cfg)) IndexPool.plan(plan, `kmalloc-${s}`, s, cfg[s]);
  }

  static init(arena: Arena, cfg: KmallocConfig): void {
    for (const s of sizes(cfg)) IndexPool.init(arena, `kmalloc-${s}`, cfg[s]);
  }

  /** Zeroed words; returns the word offset, or 0 when no object of that size is left (-ENOMEM). */
  kzalloc(words: number): number {
    for (const p of this.pools) {
      if (p.objWords < words) continue;
      const i = p.alloc();
      return i === 0 ? 0 : p.at(i);
    }
    throw new RangeError(`kzalloc: ${words} words is larger than the largest size class`);
  }

  kfree(at: number): void {
    for (const p of this.pools) {
      const i = (at - p.base) / p.objWords;
      if (i >= 1 && i < p.capacity && Number.isInteger(i)) return p.free(i);
    }
    throw new RangeError(`kfree: ${at} is not a kmalloc object`);
  }

  /** objects in use, per size class */
  usage(): Record<string, number> {
    return Object.fromEntries(this.pools.map((p) => [`kmalloc-${p.objWords}`, p.used]));
  }
}

function sizes(cfg: KmallocConfig): number[] {
  return Object.keys(cfg).map(Number).sort((a, b) => a - b);
}
