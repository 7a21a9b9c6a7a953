// The notifier core's arena structs and per-kernel state (reference §1.1, §1.2, §2.1):
// - struct mmu_notifier_subscriptions, one per mm, allocated at the first registration and
//   freed with the mm (mmdrop);
// - struct mmu_notifier (hlist subscription) and struct mmu_interval_notifier, which drivers
//   allocate (kzalloc of MnL.$size / MinL.$size, or embedded in their own struct at an even
//   offset) and hand to the core by word offset;
// - the global region: the one SRCU all mms share, the start-failure policy, and the list of
//   subscriptions mmu_notifier_put() left for after a grace period.
// NotifierCore is this thread's view of that (k.notifier): handle caches, ops resolution and
// the "is current inside an invalidation" bookkeeping that turns self-deadlocks into reports.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { defineStruct } from '../shm/layout.js';
import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import type { Task } from '../sched/task.js';
import { LockdepMap, invalidate_start_map } from '../sync/lockdep_api.js';
import { SPINLOCK_WORDS, Spinlock, spin_lock_init } from '../sync/spinlock.js';
import { SRCU_WORDS, SrcuStruct, init_srcu_struct } from '../sync/srcu.js';
import { WAITQUEUE_WORDS, WaitQueueHead, init_waitqueue_head } from '../sync/waitqueue.js';
import { MmL, mmLabel } from '../mm/types.js';
import { ITNodeL, interval_tree_nodes } from './interval_tree.js';
import { lookupOps, type MmuIntervalNotifierOps, type MmuNotifierOps, type OpsKind } from './ops.js';
import { NK } from './report.js';

/**
 * How the core handles a failed non-blockable start (reference §1.7):
 * - 'v5.12' (default, newest): every start is called; then the core calls every end itself,
 *   so the subscriptions whose start succeeded get their end; a failing notifier that has an
 *   end is a WARN.
 * - 'v4.19' (4.19-5.11): every start is called and the caller skips every end, so a
 *   notifier whose start succeeded never gets its end (the A/B problem). No WARNs (5.4 added them).
 */
export type NotifierPolicy = 'v5.12' | 'v4.19';
const POLICIES: readonly NotifierPolicy[] = ['v5.12', 'v4.19'];

declare module '../sched/kernel.js' {
  interface KernelConfig {
    /** the notifier start-failure policy, default 'v5.12' */
    notifierPolicy?: NotifierPolicy;
  }
  interface Kernel {
    readonly notifier: NotifierCore;
  }
}

/** struct mmu_notifier_subscriptions */
export const SubsL = defineStruct('mmu_notifier_subscriptions', {
  /** hlist head: the newest struct mmu_notifier, linked through MnL.next */
  list: 1,
  /** set at the first interval registration, never cleared */
  has_itree: 1,
  /** even: idle; odd: the itree is fully excluded. Starts at 2. Int32, wrapping. */
  invalidate_seq: 1,
  /** starts whose end has not run yet (itree bookkeeping) */
  active_invalidate_ranges: 1,
  /** interval tree root: an interval_tree_node offset (MinL.interval_tree of a subscription) */
  itree: 1,
  /** hlist head of mmu_interval_notifiers waiting for the final end, linked through MinL.deferred_next */
  deferred_list: 1,
  mm: 1,
  /** ours: ranges started and not ended (check 2 at teardown) */
  open_ranges: 1,
  lock: SPINLOCK_WORDS,
  wq: WAITQUEUE_WORDS,
});

/** The header both subscription structs start with. */
const HDR = { state: 1, ops: 1, mm: 1, priv: 1 } as const;

/** struct mmu_notifier */
export const MnL = defineStruct('mmu_notifier', {
  ...HDR,
  next: 1,
  /** the previous subscription, 0 when first (hlist pprev) */
  pprev: 1,
  /** 1 while on the mm's list (!hlist_unhashed); changed under the container lock */
  hashed: 1,
  users: 1,
  /** link on the put list while free_notifier waits for a grace period (rcu_head) */
  rcu_next: 1,
});

/** struct mmu_interval_notifier. interval_tree sits at an even offset (Float64 fields). */
export const MinL = defineStruct('mmu_interval_notifier', {
  ...HDR,
  interval_tree: ITNodeL.$size,
  deferred_next: 1,
  deferred_prev: 1,
  /** always odd once inserted; the callback stores cur_seq here (mmu_interval_set_seq) */
  invalidate_seq: 1,
});
if ((MinL.interval_tree & 1) !== 0) throw new Error('MinL.interval_tree must sit at an even offset');

/** struct mmu_notifier life (whether it is on the list is MnL.hashed) */
export const MN_NEW = 0;
export const MN_REGISTERED = 1; // registered; unregister or put still owes its mmdrop
export const MN_UNREGISTERING = 2;
export const MN_DEAD = 3; // unregistered or freed: may be registered again
export const MN_FREEING = 4; // put: free_notifier waits for a grace period

/** struct mmu_interval_notifier states (RB_EMPTY_NODE and the deferred item, made explicit) */
export const MIN_NEW = 0;
export const MIN_DEFERRED_INSERT = 1; // on deferred_list, not in the tree
export const MIN_IN_TREE = 2;
export const MIN_DEFERRED_REMOVE = 3; // in the tree and on deferred_list
export const MIN_REMOVED = 4;

const GlobalL = defineStruct('mmu_notifier_global', {
  policy: 1,
  put_lock: 1, // raw lock over put_list
  put_list: 1, // MnL subscriptions waiting for free_notifier, through MnL.rcu_next
  put_pending: 1,
  srcu: SRCU_WORDS, // DEFINE_STATIC_SRCU(srcu): one for every mm
});

/** The driver's state offset stored with a subscription of either kind (container_of). */
export function mmu_notifier_priv(sub: number): number {
  return current.k.arena.i32[sub + MnL.priv];
}

export function mm_has_notifiers(mm: number): boolean {
  return current.k.arena.i32[mm + MmL.notifier_subscriptions] !== 0;
}

export class NotifierCore {
  readonly w: Int32Array;
  readonly base: number;
  readonly srcu: SrcuStruct;
  /** word indexes of the put list */
  readonly putLock: number;
  readonly putList: number;
  readonly putPending: number;
  private readonly spins = new Map<number, Spinlock>();
  private readonly wqs = new Map<number, WaitQueueHead>();
  private readonly names = new Map<number, string>();
  private readonly depth = new Map<number, number>();
  private readonly onceKeys = new Set<string>();
  private startMap: LockdepMap | null = null;

  constructor(
    readonly k: Kernel,
    readonly arena: Arena,
  ) {
    this.w = arena.i32;
    this.base = arena.region('mmu_notifier');
    this.srcu = new SrcuStruct(k, this.base + GlobalL.srcu);
    this.putLock = this.base + GlobalL.put_lock;
    this.putList = this.base + GlobalL.put_list;
    this.putPending = this.base + GlobalL.put_pending;
  }

  static plan(plan: ArenaPlan): void {
    plan.region('mmu_notifier', GlobalL.$size);
  }

  /** At boot, once strings and lockdep are up. */
  static init(k: Kernel, policy: NotifierPolicy = 'v5.12'): void {
    init_srcu_struct(k, k.arena.region('mmu_notifier') + GlobalL.srcu, 'mmu_notifier_srcu');
    k.notifier.policy = policy;
  }

  get policy(): NotifierPolicy {
    return POLICIES[Atomics.load(this.w, this.base + GlobalL.policy)] ?? 'v5.12';
  }

  set policy(p: NotifierPolicy) {
    const i = POLICIES.indexOf(p);
    if (i < 0) throw new RangeError(`mmu notifier policy must be one of ${POLICIES.join(', ')}, got '${String(p)}'`);
    Atomics.store(this.w, this.base + GlobalL.policy, i);
  }

  /** __mmu_notifier_invalidate_range_start_map */
  get map(): LockdepMap {
    return (this.startMap ??= invalidate_start_map(this.k));
  }

  lock(subs: number): Spinlock {
    let l = this.spins.get(subs);
    if (!l) this.spins.set(subs, (l = new Spinlock(this.k, subs + SubsL.lock)));
    return l;
  }

  wq(subs: number): WaitQueueHead {
    let q = this.wqs.get(subs);
    if (!q) this.wqs.set(subs, (q = new WaitQueueHead(this.k, subs + SubsL.wq)));
    return q;
  }

  /** The ops name a subscription was registered with. */
  opsName(sub: number): string {
    const id = this.w[sub + MnL.ops];
    let n = this.names.get(id);
    if (n === undefined) this.names.set(id, (n = this.k.strings.get(id)));
    return n;
  }

  private resolve(sub: number, kind: OpsKind): MmuNotifierOps | MmuIntervalNotifierOps {
    const id = this.w[sub + MnL.ops];
    if (id === 0) throw new Error(`${kind} at ${sub} has no ops (was it initialised and registered?)`);
    return lookupOps(this.opsName(sub), kind).ops;
  }

  hlistOps(sub: number): MmuNotifierOps {
    return this.resolve(sub, 'mmu_notifier') as MmuNotifierOps;
  }

  intervalOps(sub: number): MmuIntervalNotifierOps {
    return this.resolve(sub, 'mmu_interval_notifier') as MmuIntervalNotifierOps;
  }

  // ---- is the task inside an invalidation (start, end or release) of any mm? -----------

  enter(t: Task): void {
    this.depth.set(t.id, (this.depth.get(t.id) ?? 0) + 1);
  }

  leave(t: Task): void {
    const d = (this.depth.get(t.id) ?? 1) - 1;
    if (d <= 0) this.depth.delete(t.id);
    else this.depth.set(t.id, d);
  }

  inside(t: Task): boolean {
    return this.depth.has(t.id);
  }

  /** WARN_ON_ONCE: true the first time `key` is seen in this thread */
  once(key: string): boolean {
    if (this.onceKeys.has(key)) return false;
    this.onceKeys.add(key);
    return true;
  }
}

export function mmu_notifier_policy(k: Kernel): NotifierPolicy {
  return k.notifier.policy;
}

export function set_mmu_notifier_policy(k: Kernel, p: NotifierPolicy): void {
  k.notifier.policy = p;
}

/** Allocate and initialise an mm's container (not yet published). 0 = -ENOMEM. */
export function subscriptions_alloc(k: Kernel, mm: number): number {
  const subs = k.kmalloc.kzalloc(SubsL.$size);
  if (subs === 0) return 0;
  const w = k.arena.i32;
  w[subs + SubsL.invalidate_seq] = 2;
  w[subs + SubsL.mm] = mm;
  spin_lock_init(k, subs + SubsL.lock, 'subscriptions->lock', '&subscriptions->lock');
  init_waitqueue_head(k, subs + SubsL.wq, 'subscriptions->wq');
  return subs;
}

/**
 * __mmu_notifier_subscriptions_destroy, from __mmdrop: free the container. Anything left in
 * it is reported (check 7); a container that still has hlist subscriptions is leaked rather
 * than freed under them (the kernel BUGs).
 */
export function mmu_notifier_subscriptions_destroy(mm: number): void {
  const k = current.k;
  const w = k.arena.i32;
  const subs = w[mm + MmL.notifier_subscriptions];
  if (subs === 0) return;
  if (w[subs + SubsL.list] !== 0) {
    splat(k, NK.bug, `BUG: mmu_notifier_subscriptions_destroy: ${mmLabel(mm)} freed with subscriptions on its list (leaking the container)`);
    w[mm + MmL.notifier_subscriptions] = 0;
    return;
  }
  const left: string[] = [];
  const active = w[subs + SubsL.active_invalidate_ranges];
  if (active !== 0) left.push(`active_invalidate_ranges ${active} (an invalidation never ended: see §8.1)`);
  if (w[subs + SubsL.itree] !== 0) left.push('interval subscriptions still in the tree');
  if (w[subs + SubsL.deferred_list] !== 0) left.push('deferred interval inserts/removes never processed');
  const open = w[subs + SubsL.open_ranges];
  if (open !== 0) splat(k, NK.pairing, `mmu_notifier: unpaired start: ${open} invalidation(s) started on ${mmLabel(mm)} never called invalidate_range_end`);
  if (left.length) splat(k, NK.teardown, `mmu_notifier: ${mmLabel(mm)} freed with notifier state left behind: ${left.join('; ')}`);
  w[mm + MmL.notifier_subscriptions] = 0;
  k.kmalloc.kfree(subs);
}

export interface SubscriptionsState {
  has_itree: boolean;
  invalidate_seq: number;
  active_invalidate_ranges: number;
  /** hlist subscriptions, newest first */
  hlist: number[];
  /** interval subscriptions in tree order */
  itree: number[];
  deferred: number[];
  open_ranges: number;
}

/** A snapshot of an mm's notifier state (tests, reports). null: no container. */
export function mmu_notifier_subscriptions_state(mm: number): SubscriptionsState | null {
  const k = current.k;
  const w = k.arena.i32;
  const subs = w[mm + MmL.notifier_subscriptions];
  if (subs === 0) return null;
  const hlist: number[] = [];
  for (let s = w[subs + SubsL.list]; s !== 0 && hlist.length < 1 << 16; s = w[s + MnL.next]) hlist.push(s);
  const deferred: number[] = [];
  for (let s = w[subs + SubsL.deferred_list]; s !== 0 && deferred.length < 1 << 16; s = w[s + MinL.deferred_next]) deferred.push(s);
  return {
    has_itree: w[subs + SubsL.has_itree] !== 0,
    invalidate_seq: w[subs + SubsL.invalidate_seq],
    active_invalidate_ranges: w[subs + SubsL.active_invalidate_ranges],
    hlist,
    itree: interval_tree_nodes(k.arena, subs + SubsL.itree).map((n) => n - MinL.interval_tree),
    deferred,
    open_ranges: w[subs + SubsL.open_ranges],
  };
}
