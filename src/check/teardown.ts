// DESIGN check 7, teardown: after the last exit no frame, page table, VMA, rmap node, process,
// kmalloc object (mm structs, notifier subscriptions, driver state), device or shadow table is
// left behind, and every task has ended. Usage is sampled before the run and compared after
// it; each layer's counts come from a usage source, and a later layer (swap, memcg) adds its
// own with registerUsageSource. Observes only.

import type { Kernel } from '../sched/kernel.js';
import { TASK_BLOCKED, TASK_RUNNABLE, TASK_STATE_NAMES } from '../sched/task.js';
import { mmUsage } from '../mm/mm_layer.js';
import { deviceUsage } from '../device/layer.js';
import { swapUsage } from '../mm/swapfile.js';
import { memcgStats } from '../mm/memcontrol_files.js';

export type Usage = Record<string, Record<string, number>>;

type UsageSource = (k: Kernel) => Record<string, number> | null;

const sources = new Map<string, UsageSource>([
  ['mm', (k) => mmUsage(k)],
  ['kmalloc', (k) => k.kmalloc.usage()],
  ['device', (k) => deviceUsage(k)],
  ['swap', (k) => swapUsage(k)],
  ['memcg', memcgCharged],
]);

/** pages still charged to any memcg (every charge is uncharged at the final free) */
function memcgCharged(k: Kernel): Record<string, number> {
  let charged = 0;
  for (let id = 1; id <= k.memcg.capacity; id++) charged += memcgStats(k, id)?.current ?? 0;
  return { charged };
}

/** Add a layer's counts (objects in use; `freePages`-style keys count what is free). */
export function registerUsageSource(name: string, fn: UsageSource): void {
  sources.set(name, fn);
}

/** What every layer has in use now. */
export function kernelUsage(k: Kernel): Usage {
  const out: Usage = {};
  for (const [name, fn] of sources) {
    const u = fn(k);
    if (u) out[name] = { ...u };
  }
  return out;
}

/** Fields counting what is free rather than what is used: a leak makes them go down. */
const FREE_FIELDS = new Set(['freePages']);

/** Kernel-style messages for everything not back where it started, and every task not ended. */
export function teardownLeaks(k: Kernel, before: Usage, ignore: Partial<Usage> = {}): string[] {
  const out: string[] = [];
  const after = kernelUsage(k);
  for (const [layer, counts] of Object.entries(before)) {
    const now = after[layer] ?? {};
    const diffs: string[] = [];
    for (const [field, was] of Object.entries(counts)) {
      const delta = (now[field] ?? 0) - was - (ignore[layer]?.[field] ?? 0);
      if (delta === 0) continue;
      const leaked = FREE_FIELDS.has(field) ? -delta : delta;
      diffs.push(`${field}: ${was} before, ${now[field] ?? 0} after (${leaked > 0 ? `${leaked} leaked` : `${-leaked} more than before`})`);
    }
    if (diffs.length === 0) continue;
    if (layer === 'kmalloc') out.push(`kmemleak: ${diffs.length} kmalloc cache(s) hold objects allocated during the run and never freed\n  ${diffs.join('\n  ')}`);
    else out.push(`BUG: teardown: ${layer} state left behind after the last exit\n  ${diffs.join('\n  ')}`);
  }
  const live = k.tasks.live().filter((t) => t.state === TASK_RUNNABLE || t.state === TASK_BLOCKED);
  if (live.length > 0) out.push(`BUG: teardown: ${live.length} task(s) never ended: ${live.map((t) => `${t.name}/${t.id} (${TASK_STATE_NAMES[t.state]})`).join(', ')}`);
  return out;
}
