// mmu_notifier: the per-mm hlist of subscriptions (reference §1). Registration, unregister,
// get/put, the hlist phases of start/end/release, and the young/TLB hooks.
// The list is newest-first. Walkers run inside the global SRCU and may sleep between
// callbacks; unlinking keeps a subscription's `next`, so a walker standing on it carries on
// (RCU), and unregister/put wait out the walkers before the memory may be reused.
// The start/end wrappers that combine this with the interval tree are in invalidate.ts.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EBUSY, EAGAIN, EDEADLK, EINVAL, ENOMEM, EOVERFLOW, errname } from '../shm/errno.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import { non_block_end, non_block_start } from '../sync/context.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { srcu_read_lock, srcu_read_unlock, synchronize_srcu } from '../sync/srcu.js';
import { MmL, UINT_MAX, mmLabel } from '../mm/types.js';
import { mmap_assert_write_locked, mmap_write_lock, mmap_write_unlock, mmdrop, mmgrab } from '../mm/mm_inline.js';
import { isThenable } from './drive.js';
import { opsEntryOf, type MmuNotifierOps } from './ops.js';
import { mmu_notifier_range_blockable, rangeLabel, type MmuNotifierRange } from './range.js';
import { NK, WARN, withLocks } from './report.js';
import { MN_DEAD, MN_FREEING, MN_NEW, MN_REGISTERED, MN_UNREGISTERING, MnL, SubsL, subscriptions_alloc, type NotifierCore } from './subscriptions.js';

/** The C initialiser `sub->ops = &ops`, plus the driver state offset for container_of. */
export function mmu_notifier_init(sub: number, ops: MmuNotifierOps, priv = 0): number {
  const k = current.k;
  const w = k.arena.i32;
  const e = opsEntryOf(ops, 'mmu_notifier');
  const st = w[sub + MnL.state];
  if (st === MN_REGISTERED || st === MN_UNREGISTERING || st === MN_FREEING) {
    splat(k, NK.misuse, `mmu_notifier_init: the subscription at ${sub} (${k.notifier.opsName(sub)}) is still registered`);
    return -EBUSY;
  }
  w[sub + MnL.ops] = k.strings.intern(e.name);
  w[sub + MnL.priv] = priv;
  return 0;
}

// ---- list helpers (container lock held) ---------------------------------------------------

function hlist_add_head(w: Int32Array, subs: number, sub: number): void {
  const head = w[subs + SubsL.list];
  w[sub + MnL.next] = head;
  w[sub + MnL.pprev] = 0;
  if (head !== 0) w[head + MnL.pprev] = sub;
  w[subs + SubsL.list] = sub;
  w[sub + MnL.hashed] = 1;
}

/** hlist_del_init_rcu: unlink, keeping `next` for a walker standing on `sub`. */
function hlist_del(w: Int32Array, subs: number, sub: number): void {
  const next = w[sub + MnL.next];
  const prev = w[sub + MnL.pprev];
  if (prev !== 0) w[prev + MnL.next] = next;
  else w[subs + SubsL.list] = next;
  if (next !== 0) w[next + MnL.pprev] = prev;
  w[sub + MnL.hashed] = 0;
}

// ---- register ------------------------------------------------------------------------------

/**
 * __mmu_notifier_register: the caller holds the mmap_lock for write and an mm_users
 * reference. sub = 0 only marks the mm as having interval notifiers (has_itree).
 */
export function __mmu_notifier_register(sub: number, mm: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const core = k.notifier;
  mmap_assert_write_locked(mm);
  const users = Atomics.load(w, mm + MmL.mm_users);
  if (users <= 0) {
    splat(k, NK.bug, `kernel BUG at mm/mmu_notifier.c __mmu_notifier_register: BUG_ON(atomic_read(&mm->mm_users) <= 0): ${mmLabel(mm)} has mm_users ${users}; the caller must hold mmget (registration refused with -EINVAL)`);
    return -EINVAL;
  }
  if (sub !== 0) {
    const st = w[sub + MnL.state];
    if (st !== MN_NEW && st !== MN_DEAD) {
      splat(k, NK.misuse, `mmu_notifier_register: the subscription at ${sub} (${core.opsName(sub)}) is already registered`);
      return -EINVAL;
    }
    if (w[sub + MnL.ops] === 0) {
      splat(k, NK.misuse, `mmu_notifier_register: the subscription at ${sub} has no ops: call mmu_notifier_init(sub, ops) first`);
      return -EINVAL;
    }
    const ops = core.hlistOps(sub);
    // Subsystems register for arch_invalidate_secondary_tlbs or start/end, not both.
    if (ops.arch_invalidate_secondary_tlbs && (ops.invalidate_range_start || ops.invalidate_range_end)) {
      if (core.once(`secondary_tlbs:${core.opsName(sub)}`)) {
        WARN(k, '__mmu_notifier_register', 'subscription->ops->arch_invalidate_secondary_tlbs && (invalidate_range_start || invalidate_range_end)', `${core.opsName(sub)}: ops have both; registration refused with -EINVAL`);
      }
      return -EINVAL;
    }
  }
  let subs = w[mm + MmL.notifier_subscriptions];
  if (subs === 0) {
    subs = subscriptions_alloc(k, mm);
    if (subs === 0) return -ENOMEM;
    // mm_take_all_locks(mm) goes here once the mm has VMAs and rmap locks (mm layer).
    Atomics.store(w, mm + MmL.notifier_subscriptions, subs);
  }
  if (sub !== 0) {
    mmgrab(mm); // pairs with the mmdrop of unregister/put
    w[sub + MnL.mm] = mm;
    w[sub + MnL.users] = 1;
    w[sub + MnL.state] = MN_REGISTERED;
    const l = core.lock(subs);
    spin_lock(l);
    hlist_add_head(w, subs, sub);
    spin_unlock(l);
  } else {
    Atomics.store(w, subs + SubsL.has_itree, 1);
  }
  return 0;
}

function withWriteLock(mm: number, fn: () => number): number | Promise<number> {
  const locked = (): number => {
    try {
      return fn();
    } finally {
      mmap_write_unlock(mm);
    }
  };
  const p = mmap_write_lock(mm);
  return p ? p.then(locked) : locked();
}

/** mmu_notifier_register: takes the mmap_lock for write. The caller holds mmget. */
export function mmu_notifier_register(sub: number, mm: number): number | Promise<number> {
  return withWriteLock(mm, () => __mmu_notifier_register(sub, mm));
}

// ---- unregister, get/put ---------------------------------------------------------------------

/**
 * mmu_notifier_unregister: calls ->release if the subscription is still on the list, unlinks
 * it, waits for callbacks in flight (synchronize_srcu), drops the mm. Returns 0, or a negative
 * errno (with a record) when the call is a misuse the kernel would crash or hang on.
 */
export async function mmu_notifier_unregister(sub: number, mm: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const core = k.notifier;
  const st = w[sub + MnL.state];
  if (st !== MN_REGISTERED || Atomics.compareExchange(w, sub + MnL.state, MN_REGISTERED, MN_UNREGISTERING) !== MN_REGISTERED) {
    const why = st === MN_DEAD || st === MN_UNREGISTERING ? 'it was already unregistered (double unregister)' : st === MN_FREEING ? 'it was released with mmu_notifier_put' : 'it was never registered';
    splat(k, NK.misuse, `mmu_notifier_unregister: the subscription at ${sub}${w[sub + MnL.ops] ? ` (${core.opsName(sub)})` : ''} on ${mmLabel(mm)} is not registered: ${why}`);
    return -EINVAL;
  }
  if (w[sub + MnL.mm] !== mm) {
    w[sub + MnL.state] = MN_REGISTERED;
    splat(k, NK.misuse, `mmu_notifier_unregister: the subscription at ${sub} (${core.opsName(sub)}) belongs to ${mmLabel(w[sub + MnL.mm])}, not ${mmLabel(mm)}`);
    return -EINVAL;
  }
  if (core.inside(current)) {
    w[sub + MnL.state] = MN_REGISTERED;
    splat(k, NK.misuse, withLocks(k, `mmu_notifier_unregister called from inside an invalidation of ${core.opsName(sub)}: synchronize_srcu would wait for the callback that called it (refused with -EDEADLK)`));
    return -EDEADLK;
  }
  const subs = w[mm + MmL.notifier_subscriptions];
  if (Atomics.load(w, sub + MnL.hashed) !== 0) {
    const ops = core.hlistOps(sub);
    if (ops.release) {
      const idx = srcu_read_lock(core.srcu);
      try {
        const r = ops.release(sub, mm);
        if (isThenable(r)) await r;
      } finally {
        srcu_read_unlock(core.srcu, idx);
      }
    }
    const l = core.lock(subs);
    spin_lock(l);
    // __mmu_notifier_release may have unlinked it meanwhile
    if (w[sub + MnL.hashed] !== 0) hlist_del(w, subs, sub);
    spin_unlock(l);
  }
  await grace_period(core);
  w[sub + MnL.state] = MN_DEAD;
  mmdrop(mm);
  return 0;
}

/**
 * mmu_notifier_get_locked: the subscription of `ops` on this mm with one more user, or a new
 * one from ops.alloc_notifier, registered. Returns its offset or a negative errno.
 */
export function mmu_notifier_get_locked(ops: MmuNotifierOps, mm: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const core = k.notifier;
  mmap_assert_write_locked(mm);
  const id = k.strings.intern(opsEntryOf(ops, 'mmu_notifier').name);
  const subs = w[mm + MmL.notifier_subscriptions];
  if (subs !== 0) {
    const l = core.lock(subs);
    spin_lock(l);
    for (let s = w[subs + SubsL.list]; s !== 0; s = w[s + MnL.next]) {
      if (w[s + MnL.ops] !== id) continue;
      let ret = s;
      if (w[s + MnL.users] >>> 0 !== UINT_MAX) w[s + MnL.users] = (w[s + MnL.users] + 1) | 0;
      else ret = -EOVERFLOW;
      spin_unlock(l);
      return ret;
    }
    spin_unlock(l);
  }
  if (!ops.alloc_notifier) {
    splat(k, NK.misuse, `mmu_notifier_get: ops '${core.k.strings.get(id)}' have no alloc_notifier`);
    return -EINVAL;
  }
  const sub = ops.alloc_notifier(mm);
  if (sub <= 0) return sub < 0 ? sub : -ENOMEM;
  w[sub + MnL.ops] = id;
  const ret = __mmu_notifier_register(sub, mm);
  if (ret !== 0) {
    ops.free_notifier?.(sub);
    return ret;
  }
  return sub;
}

export function mmu_notifier_get(ops: MmuNotifierOps, mm: number): number | Promise<number> {
  return withWriteLock(mm, () => mmu_notifier_get_locked(ops, mm));
}

/**
 * mmu_notifier_put: drop a user; the last one unlinks the subscription and leaves
 * free_notifier and the mmdrop for after a grace period (call_srcu). They run at the next
 * grace period the core waits for: mmu_notifier_synchronize(), an unregister or a release.
 */
export function mmu_notifier_put(sub: number): void {
  const k = current.k;
  const w = k.arena.i32;
  const core = k.notifier;
  if (w[sub + MnL.state] !== MN_REGISTERED) {
    splat(k, NK.misuse, `mmu_notifier_put: the subscription at ${sub} is not registered (a put too many?)`);
    return;
  }
  const mm = w[sub + MnL.mm];
  const subs = w[mm + MmL.notifier_subscriptions];
  const l = core.lock(subs);
  spin_lock(l);
  const users = w[sub + MnL.users];
  if (users === 0) {
    spin_unlock(l);
    WARN(k, 'mmu_notifier_put', '!subscription->users', `${core.opsName(sub)} on ${mmLabel(mm)}`);
    return;
  }
  w[sub + MnL.users] = users - 1;
  if (users - 1 !== 0) {
    spin_unlock(l);
    return;
  }
  if (w[sub + MnL.hashed] !== 0) hlist_del(w, subs, sub);
  w[sub + MnL.state] = MN_FREEING;
  spin_unlock(l);
  arch_spin_lock(w, core.putLock);
  w[sub + MnL.rcu_next] = w[core.putList];
  w[core.putList] = sub;
  w[core.putPending]++;
  arch_spin_unlock(w, core.putLock);
}

/** synchronize_srcu, then the free_notifier/mmdrop of every put queued before it began. */
export async function grace_period(core: NotifierCore): Promise<void> {
  const w = core.w;
  arch_spin_lock(w, core.putLock);
  let batch = w[core.putList];
  w[core.putList] = 0;
  arch_spin_unlock(w, core.putLock);
  await synchronize_srcu(core.srcu);
  while (batch !== 0) {
    const sub = batch;
    batch = w[sub + MnL.rcu_next];
    const mm = w[sub + MnL.mm];
    const ops = core.hlistOps(sub);
    Atomics.sub(w, core.putPending, 1);
    w[sub + MnL.state] = MN_DEAD; // before free_notifier: the driver may free the memory
    const r: unknown = ops.free_notifier?.(sub);
    if (isThenable(r)) notAtomic(core.k, core.opsName(sub) + '.free_notifier', r);
    mmdrop(mm);
  }
}

/** mmu_notifier_synchronize: wait until every put so far has freed its subscription. */
export function mmu_notifier_synchronize(): Promise<void> {
  return grace_period(current.k.notifier);
}

// ---- hlist phases of start / end / release ----------------------------------------------

/** A callback that must not sleep returned a promise: report; it is treated as having failed. */
export function notAtomic(k: Kernel, what: string, p: PromiseLike<unknown>): void {
  splat(
    k,
    NK.context,
    withLocks(k, `mmu_notifier: ${what} returned a Promise where it must not sleep (a non-blockable range, or under the PTL): such callbacks must be synchronous; its result is taken as a failure`),
  );
  Promise.resolve(p).then(undefined, () => {}); // nobody waits for it; keep a rejection quiet
}

/** Run a callback of a non-blockable range between non_block_start() and non_block_end(). */
export function callNonblock<R>(fn: () => R): R {
  non_block_start();
  try {
    return fn();
  } finally {
    non_block_end();
  }
}

/** Take `sub` off the range's owed ends; an end nobody owes is a check-2 violation. */
function pairEnd(core: NotifierCore, range: MmuNotifierRange, sub: number, failed: readonly number[]): void {
  const i = range._owed.indexOf(sub);
  if (i >= 0) {
    range._owed.splice(i, 1);
    return;
  }
  const name = core.opsName(sub);
  const why = failed.includes(sub) ? 'its invalidate_range_start failed (a failing start must not have an end)' : 'its invalidate_range_start was never called for this range';
  splat(core.k, NK.pairing, `mmu_notifier: end without start: ${name}.invalidate_range_end called for ${rangeLabel(range)}, but ${why}`);
}

/** mn_hlist_invalidate_range_start (reference §1.5 step 2). Returns 0 or the error. */
export function* mn_hlist_invalidate_range_start(core: NotifierCore, subs: number, range: MmuNotifierRange): Generator<unknown, number, unknown> {
  const k = core.k;
  const w = core.w;
  const blockable = mmu_notifier_range_blockable(range);
  const modern = core.policy === 'v5.12';
  const failed: number[] = [];
  let ret = 0;
  const idx = srcu_read_lock(core.srcu);
  try {
    for (let sub = w[subs + SubsL.list]; sub !== 0; sub = w[sub + MnL.next]) {
      const ops = core.hlistOps(sub);
      if (!ops.invalidate_range_start) {
        if (ops.invalidate_range_end) range._owed.push(sub);
        continue;
      }
      let r: unknown;
      if (blockable) {
        r = ops.invalidate_range_start(sub, range);
        if (isThenable(r)) r = yield r;
      } else {
        r = callNonblock(() => ops.invalidate_range_start!(sub, range));
        if (isThenable(r)) {
          notAtomic(k, `${core.opsName(sub)}.invalidate_range_start`, r);
          r = -EAGAIN;
        }
      }
      const rc = r == null ? 0 : Number(r) | 0;
      if (rc === 0) {
        if (ops.invalidate_range_end) range._owed.push(sub);
        continue;
      }
      const name = core.opsName(sub);
      splat(k, NK.startFailed, `${name}.invalidate_range_start callback failed with ${rc} in ${blockable ? '' : 'non-'}blockable context.`);
      if (modern) {
        if (blockable || rc !== -EAGAIN) WARN(k, 'mn_hlist_invalidate_range_start', 'mmu_notifier_range_blockable(range) || _ret != -EAGAIN', `${name} returned ${errname(rc)} for ${rangeLabel(range)}`);
        // no notifier can know whether its start failed, so one that can fail must not have an end
        if (ops.invalidate_range_end) WARN(k, 'mn_hlist_invalidate_range_start', 'ops->invalidate_range_end', `${name}.invalidate_range_start can fail, so it must not have an invalidate_range_end`);
      }
      if (blockable) {
        splat(k, NK.context, withLocks(k, `mmu_notifier: ${name}.invalidate_range_start returned ${errname(rc)} for the blockable range ${rangeLabel(range)}: a blockable start must not fail (only a non-blockable one may, with -EAGAIN)`));
      }
      failed.push(sub);
      ret = rc;
    }
    if (ret !== 0) {
      if (modern) {
        // 5.12: whoever succeeded expects its end; call every end now (reference §1.5)
        for (let sub = w[subs + SubsL.list]; sub !== 0; sub = w[sub + MnL.next]) {
          const ops = core.hlistOps(sub);
          if (!ops.invalidate_range_end) continue;
          pairEnd(core, range, sub, failed);
          if (blockable) {
            const r = ops.invalidate_range_end(sub, range);
            if (isThenable(r)) yield r;
          } else {
            // the kernel calls these bare; we keep the non-blockable rule checked here too
            const r = callNonblock(() => ops.invalidate_range_end!(sub, range));
            if (isThenable(r)) notAtomic(k, `${core.opsName(sub)}.invalidate_range_end`, r);
          }
        }
        range._owed.length = 0;
      } else if (!blockable) {
        // 4.19: the caller gets the error and skips every end
        for (const sub of range._owed) {
          splat(
            k,
            NK.pairing,
            `mmu_notifier: unpaired start: ${core.opsName(sub)}.invalidate_range_start succeeded for ${rangeLabel(range)}, but another notifier failed and the caller skips every invalidate_range_end (v4.19 rules): it never gets its end (the A/B problem, reference §1.7)`,
          );
        }
        range._owed.length = 0;
      }
    }
  } finally {
    srcu_read_unlock(core.srcu, idx);
  }
  return ret;
}

/** mn_hlist_invalidate_end (reference §1.5, end step 2) */
export function* mn_hlist_invalidate_end(core: NotifierCore, subs: number, range: MmuNotifierRange): Generator<unknown, void, unknown> {
  const w = core.w;
  const blockable = mmu_notifier_range_blockable(range);
  const idx = srcu_read_lock(core.srcu);
  try {
    for (let sub = w[subs + SubsL.list]; sub !== 0; sub = w[sub + MnL.next]) {
      const ops = core.hlistOps(sub);
      if (!ops.invalidate_range_end) continue;
      pairEnd(core, range, sub, []);
      if (blockable) {
        const r = ops.invalidate_range_end(sub, range);
        if (isThenable(r)) yield r;
      } else {
        const r = callNonblock(() => ops.invalidate_range_end!(sub, range));
        if (isThenable(r)) notAtomic(core.k, `${core.opsName(sub)}.invalidate_range_end`, r);
      }
    }
  } finally {
    srcu_read_unlock(core.srcu, idx);
    range._owed.length = 0; // subscriptions unlinked meanwhile are owed nothing
  }
}

/** mn_hlist_release: ->release for every subscription, unlink them all, wait for callbacks. */
export function* mn_hlist_release(core: NotifierCore, subs: number, mm: number): Generator<unknown, void, unknown> {
  const w = core.w;
  const idx = srcu_read_lock(core.srcu);
  try {
    for (let sub = w[subs + SubsL.list]; sub !== 0; sub = w[sub + MnL.next]) {
      const ops = core.hlistOps(sub);
      if (!ops.release) continue;
      const r = ops.release(sub, mm);
      if (isThenable(r)) yield r;
    }
    const l = core.lock(subs);
    spin_lock(l);
    // unregister, arriving later, only waits for ->release and drops the mm
    while (w[subs + SubsL.list] !== 0) hlist_del(w, subs, w[subs + SubsL.list]);
    spin_unlock(l);
  } finally {
    srcu_read_unlock(core.srcu, idx);
  }
  yield grace_period(core);
}

// ---- young and secondary TLB hooks (under the PTL: callbacks must not sleep) -------------

type AtomicHook = 'clear_flush_young' | 'clear_young' | 'test_young' | 'arch_invalidate_secondary_tlbs';

function forEachAtomic(mm: number, hook: AtomicHook, call: (ops: MmuNotifierOps, sub: number) => unknown, stopAtNonZero: boolean, or: boolean): number {
  const k = current.k;
  const w = k.arena.i32;
  const subs = w[mm + MmL.notifier_subscriptions];
  if (subs === 0) return 0;
  const core = k.notifier;
  let young = 0;
  const idx = srcu_read_lock(core.srcu);
  try {
    for (let sub = w[subs + SubsL.list]; sub !== 0; sub = w[sub + MnL.next]) {
      const ops = core.hlistOps(sub);
      if (!ops[hook]) continue;
      let r = call(ops, sub);
      if (isThenable(r)) {
        notAtomic(k, `${core.opsName(sub)}.${hook}`, r);
        r = 0;
      }
      const v = r == null ? 0 : Number(r) | 0;
      if (or) young |= v;
      else young = v;
      if (stopAtNonZero && v !== 0) break;
    }
  } finally {
    srcu_read_unlock(core.srcu, idx);
  }
  return young;
}

export function mmu_notifier_clear_flush_young(mm: number, start: number, end: number): number {
  return forEachAtomic(mm, 'clear_flush_young', (ops, sub) => ops.clear_flush_young!(sub, mm, start, end), false, true);
}

export function mmu_notifier_clear_young(mm: number, start: number, end: number): number {
  return forEachAtomic(mm, 'clear_young', (ops, sub) => ops.clear_young!(sub, mm, start, end), false, true);
}

export function mmu_notifier_test_young(mm: number, address: number): number {
  return forEachAtomic(mm, 'test_young', (ops, sub) => ops.test_young!(sub, mm, address), true, false);
}

export function mmu_notifier_arch_invalidate_secondary_tlbs(mm: number, start: number, end: number): void {
  forEachAtomic(mm, 'arch_invalidate_secondary_tlbs', (ops, sub) => ops.arch_invalidate_secondary_tlbs!(sub, mm, start, end), false, true);
}
