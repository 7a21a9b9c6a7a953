// What the notifier core writes to klog. Kernel messages keep the kernel's wording (pr_info,
// WARN_ON, BUG_ON); the checks of DESIGN.md ("The checks" 2, 3, 7) add records of their own
// kinds, so the check layer can tell a kernel splat from a broken rule of the contract.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { heldLocksText } from '../sched/report.js';
import { splat } from '../sched/splat.js';

/** klog kinds the notifier core writes */
export const NK = {
  /** pr_info "%pS callback failed with %d in %sblockable context." (§1.5) */
  startFailed: 'notifier_start_failed',
  /** a kernel WARN_ON / WARN_ON_ONCE */
  warn: 'warn',
  /** a kernel BUG_ON; the emulator returns an error instead of stopping */
  bug: 'bug',
  /** check 2: a start without its end, an end without its start, an end after a failed start */
  pairing: 'notifier_pairing',
  /** check 3: a blockable invalidation that fails, -EAGAIN from a blockable start, a sleep in a non-blockable callback */
  context: 'notifier_context',
  /** reference §8.1: the hlist failed after the itree phase succeeded; the itree bookkeeping stays raised */
  itreeLeak: 'notifier_itree_leak',
  /** API misuse: double unregister/remove/insert, remove or read_begin from inside an invalidation */
  misuse: 'notifier_misuse',
  /** a range that is not [start, end) of unsigned longs, or not page aligned */
  badRange: 'notifier_bad_range',
  /** check 7: an mm freed with notifier state left behind */
  teardown: 'notifier_teardown',
} as const;

/** A kernel WARN: where, the condition, and what was going on. */
export function WARN(k: Kernel, fn: string, cond: string, detail: string): number {
  const t = current;
  const who = t && t.k === k ? `${t.name}/${t.id}` : 'swapper/0';
  return splat(k, NK.warn, `WARNING: ${who} at mm/mmu_notifier.c ${fn}: WARN_ON(${cond})\n${detail}`);
}

/** A record with the held locks of current appended (context violations). */
export function withLocks(k: Kernel, text: string): string {
  const t = current;
  return t && t.k === k ? `${text}\n${heldLocksText(k, t)}` : text;
}

export const EVENT_NAMES = ['UNMAP', 'CLEAR', 'PROTECTION_VMA', 'PROTECTION_PAGE', 'SOFT_DIRTY', 'RELEASE', 'MIGRATE', 'EXCLUSIVE'] as const;

export function hex(v: number): string {
  return v >= 2 ** 64 ? 'ULONG_MAX' : `0x${v.toString(16)}`;
}
