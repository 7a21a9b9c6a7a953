// Notifier ops across threads. Subscriptions live in the arena and an invalidation may run in
// any worker, but ops are JS functions. So a driver module defines its ops under a stable name
// at its top level (`defineNotifierOps('dmirror', {...})`); the subscription stores the name's
// string id; the invalidating thread resolves the id back to this thread's ops. A driver
// module must therefore be imported in every worker that may invalidate its mm.
//
// Callbacks get the subscription's word offset; `mmu_notifier_priv(sub)` gives the driver's
// state offset stored at registration (container_of). Return values follow the kernel; a
// callback returns a Promise only when it slept, and only in a blockable range.

import type { MmuNotifierRange } from './range.js';

/** struct mmu_notifier_ops (v6.6+ names). Every callback is optional. */
export interface MmuNotifierOps {
  /** exit_mmap or unregister: tear down every secondary mapping. May sleep. */
  release?(sub: number, mm: number): void | Promise<void>;
  /** under the PTL: must not sleep. The core ORs the results. */
  clear_flush_young?(sub: number, mm: number, start: number, end: number): number;
  clear_young?(sub: number, mm: number, start: number, end: number): number;
  /** the core stops at the first non-zero */
  test_young?(sub: number, mm: number, address: number): number;
  /** 0, or -EAGAIN only when the range is not blockable. A start that can fail must not have an end. */
  invalidate_range_start?(sub: number, range: MmuNotifierRange): number | Promise<number>;
  invalidate_range_end?(sub: number, range: MmuNotifierRange): void | Promise<void>;
  /** under the PTL: must not sleep. Exclusive with invalidate_range_start/end. */
  arch_invalidate_secondary_tlbs?(sub: number, mm: number, start: number, end: number): void;
  /** mmu_notifier_get_locked: allocate a subscription; returns its offset or a negative errno */
  alloc_notifier?(mm: number): number;
  /** after mmu_notifier_put's grace period; must not sleep */
  free_notifier?(sub: number): void;
}

/** struct mmu_interval_notifier_ops */
export interface MmuIntervalNotifierOps {
  /**
   * Stop the device using SPTEs in the range, calling mmu_interval_set_seq(sub, cur_seq) under
   * the driver lock. False only when the range is not blockable and it would have to sleep.
   */
  invalidate(sub: number, range: MmuNotifierRange, cur_seq: number): boolean | Promise<boolean>;
}

export type OpsKind = 'mmu_notifier' | 'mmu_interval_notifier';

export interface OpsEntry {
  readonly name: string;
  readonly kind: OpsKind;
  readonly ops: MmuNotifierOps | MmuIntervalNotifierOps;
}

const registry = new Map<string, OpsEntry>();
const byOps = new WeakMap<object, OpsEntry>();

function define(name: string, kind: OpsKind, ops: object): void {
  if (typeof name !== 'string' || name === '') throw new TypeError('notifier ops need a non-empty name');
  const old = registry.get(name);
  if (old && old.kind !== kind) throw new Error(`notifier ops '${name}' are already defined in this thread as ${old.kind} ops`);
  // Defining a name again replaces it: a module evaluated twice in one thread does this.
  const e: OpsEntry = { name, kind, ops: ops as OpsEntry['ops'] };
  registry.set(name, e);
  byOps.set(ops, e);
}

/** Define mmu_notifier (hlist) ops under a name every worker will know. Returns `ops`. */
export function defineNotifierOps<T extends MmuNotifierOps>(name: string, ops: T): T {
  define(name, 'mmu_notifier', ops);
  return ops;
}

/** Define mmu_interval_notifier ops under a name every worker will know. Returns `ops`. */
export function defineIntervalNotifierOps<T extends MmuIntervalNotifierOps>(name: string, ops: T): T {
  if (typeof ops?.invalidate !== 'function') throw new TypeError(`interval notifier ops '${name}' need an invalidate()`);
  define(name, 'mmu_interval_notifier', ops);
  return ops;
}

/** The entry of ops made by define*Ops, or a clear error. */
export function opsEntryOf(ops: object, kind: OpsKind): OpsEntry {
  const e = byOps.get(ops);
  if (!e) throw new TypeError(`${kind} ops must be made by ${kind === 'mmu_notifier' ? 'defineNotifierOps' : 'defineIntervalNotifierOps'}(name, ops) so other workers can find them`);
  if (e.kind !== kind) throw new TypeError(`ops '${e.name}' are ${e.kind} ops, not ${kind} ops`);
  return e;
}

/** This thread's ops for `name`, or a clear error naming what to do. */
export function lookupOps(name: string, kind: OpsKind): OpsEntry {
  const e = registry.get(name);
  if (!e) throw new Error(`ops '${name}' not registered in this thread: import its module in every worker`);
  if (e.kind !== kind) throw new Error(`ops '${name}' are ${e.kind} ops in this thread, but the subscription is a ${kind}`);
  return e;
}
