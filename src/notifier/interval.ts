// mmu_interval_notifier (reference §2): subscriptions to one address interval, kept in the
// per-mm interval tree, with the collision-retry sequence protocol.
//
// subs.invalidate_seq is even while idle. An invalidation whose range overlaps a node makes it
// odd ("fully excluded": the tree may not change, inserts and removes are deferred); the last
// end of all concurrent invalidations makes it even again, applies the deferred changes and
// wakes read_begin/remove waiters. A subscription's own seq is always odd: the callback stores
// cur_seq there under the driver lock, so read_retry() sees every invalidation that began
// after read_begin().

import { current } from '../sched/current.js';
import { splat } from '../sched/splat.js';
import { EAGAIN, EDEADLK, EINVAL, EOVERFLOW } from '../shm/errno.js';
import { might_sleep } from '../sync/context.js';
import { lock_map_acquire, lock_map_release, might_lock } from '../sync/lockdep_api.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { wait_event, wake_up_all } from '../sync/waitqueue.js';
import { MmL, ULONG_MAX, is_ulong, mmLabel, ulong_last } from '../mm/types.js';
import { mmap_assert_write_locked, mmap_lock_of, mmdrop, mmgrab } from '../mm/mm_inline.js';
import { isThenable } from './drive.js';
import { interval_tree_insert, interval_tree_iter_first, interval_tree_iter_next, interval_tree_node_init, interval_tree_remove, it_last, it_start } from './interval_tree.js';
import { __mmu_notifier_register, callNonblock, mmu_notifier_register, notAtomic } from './mmu_notifier.js';
import { opsEntryOf, type MmuIntervalNotifierOps } from './ops.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MMU_NOTIFY_RELEASE, MmuNotifierRange, mmu_notifier_range_blockable, rangeLabel } from './range.js';
import { NK, WARN, withLocks } from './report.js';
import { MIN_DEFERRED_INSERT, MIN_DEFERRED_REMOVE, MIN_IN_TREE, MIN_NEW, MIN_REMOVED, MinL, SubsL, type NotifierCore } from './subscriptions.js';

const NODE = MinL.interval_tree;

// ---- the deferred list (container lock held) -----------------------------------------------

function deferred_add(w: Int32Array, subs: number, sub: number): void {
  const head = w[subs + SubsL.deferred_list];
  w[sub + MinL.deferred_next] = head;
  w[sub + MinL.deferred_prev] = 0;
  if (head !== 0) w[head + MinL.deferred_prev] = sub;
  w[subs + SubsL.deferred_list] = sub;
}

function deferred_del(w: Int32Array, subs: number, sub: number): void {
  const next = w[sub + MinL.deferred_next];
  const prev = w[sub + MinL.deferred_prev];
  if (prev !== 0) w[prev + MinL.deferred_next] = next;
  else w[subs + SubsL.deferred_list] = next;
  if (next !== 0) w[next + MinL.deferred_prev] = prev;
  w[sub + MinL.deferred_next] = 0;
  w[sub + MinL.deferred_prev] = 0;
}

// ---- the itree phases of start / end / release --------------------------------------------

/**
 * mn_itree_inv_end: one invalidation's end. The last one makes the seq even, applies the
 * deferred inserts and removes, and wakes every waiter.
 */
export function mn_itree_inv_end(core: NotifierCore, subs: number): void {
  const w = core.w;
  const l = core.lock(subs);
  spin_lock(l);
  const active = w[subs + SubsL.active_invalidate_ranges];
  if (active <= 0) {
    spin_unlock(l);
    splat(core.k, NK.pairing, `mmu_notifier: itree end without start on ${mmLabel(w[subs + SubsL.mm])}: active_invalidate_ranges is already 0 (left unchanged)`);
    return;
  }
  w[subs + SubsL.active_invalidate_ranges] = active - 1;
  const seq = w[subs + SubsL.invalidate_seq];
  if (active - 1 !== 0 || (seq & 1) === 0) {
    spin_unlock(l);
    return;
  }
  Atomics.store(w, subs + SubsL.invalidate_seq, (seq + 1) | 0);
  // like rtnl_unlock(): tree changes queued while excluded happen now
  const a = core.arena;
  for (let s = w[subs + SubsL.deferred_list]; s !== 0; ) {
    const next = w[s + MinL.deferred_next];
    if (w[s + MinL.state] === MIN_DEFERRED_INSERT) {
      interval_tree_insert(a, subs + SubsL.itree, s + NODE);
      w[s + MinL.state] = MIN_IN_TREE;
    } else {
      interval_tree_remove(a, subs + SubsL.itree, s + NODE);
      w[s + MinL.state] = MIN_REMOVED;
    }
    w[s + MinL.deferred_next] = 0;
    w[s + MinL.deferred_prev] = 0;
    s = next;
  }
  w[subs + SubsL.deferred_list] = 0;
  spin_unlock(l);
  wake_up_all(core.wq(subs));
}

/** The cur_seq of the last inv_start_range on this thread (read right after the call). */
let startSeq = 0;

/**
 * mn_itree_inv_start_range: count the range in; exclude the tree if a node overlaps. Returns
 * the first overlapping node (0 if none) and leaves the seq for its callbacks in startSeq.
 */
function inv_start_range(core: NotifierCore, subs: number, range: MmuNotifierRange): number {
  const w = core.w;
  const l = core.lock(subs);
  spin_lock(l);
  w[subs + SubsL.active_invalidate_ranges]++;
  const node = interval_tree_iter_first(core.arena, subs + SubsL.itree, range.start, range.end - 1);
  if (node !== 0) Atomics.store(w, subs + SubsL.invalidate_seq, w[subs + SubsL.invalidate_seq] | 1);
  startSeq = w[subs + SubsL.invalidate_seq];
  spin_unlock(l);
  return node;
}

/**
 * mn_itree_invalidate (reference §2.3): call every overlapping subscription in tree order.
 * A false in a blockable range is a WARN and counts as done; in a non-blockable one it stops
 * the walk, ends this range's itree bookkeeping at once and fails the start with -EAGAIN.
 */
export function* mn_itree_invalidate(core: NotifierCore, subs: number, range: MmuNotifierRange): Generator<unknown, number, unknown> {
  const k = core.k;
  const a = core.arena;
  const blockable = mmu_notifier_range_blockable(range);
  const last = range.end - 1;
  let node = inv_start_range(core, subs, range);
  const cur_seq = startSeq;
  range._itree = true;
  try {
    // no lock: the odd seq keeps the tree still while callbacks run
    for (; node !== 0; node = interval_tree_iter_next(a, node, range.start, last)) {
      const sub = node - NODE;
      const ops = core.intervalOps(sub);
      let r: unknown;
      if (blockable) {
        r = ops.invalidate(sub, range, cur_seq);
        if (isThenable(r)) r = yield r;
      } else {
        // the kernel does not bracket these; sleeping here breaks the OOM reaper all the same
        r = callNonblock(() => ops.invalidate(sub, range, cur_seq));
        if (isThenable(r)) {
          notAtomic(k, `${core.opsName(sub)}.invalidate`, r);
          r = false;
        }
      }
      if (r) continue;
      if (blockable) {
        WARN(k, 'mn_itree_invalidate', 'mmu_notifier_range_blockable(range)', `${core.opsName(sub)}.invalidate returned false for ${rangeLabel(range)}; treated as done`);
        splat(k, NK.context, withLocks(k, `mmu_notifier: ${core.opsName(sub)}.invalidate returned false for the blockable range ${rangeLabel(range)}: false is allowed only when the range is not blockable`));
        continue;
      }
      // the non-blocking caller is not allowed to call invalidate_range_end
      range._itree = false;
      mn_itree_inv_end(core, subs);
      return -EAGAIN;
    }
  } catch (e) {
    // a callback threw: close this range's bookkeeping so other tasks do not hang on it
    if (range._itree) {
      range._itree = false;
      mn_itree_inv_end(core, subs);
    }
    throw e;
  }
  return 0;
}

/** mn_itree_release: one blockable RELEASE over everything; subscriptions stay in the tree. */
export function* mn_itree_release(core: NotifierCore, subs: number, mm: number): Generator<unknown, void, unknown> {
  const k = core.k;
  const a = core.arena;
  const range = new MmuNotifierRange();
  range.flags = MMU_NOTIFIER_RANGE_BLOCKABLE;
  range.event = MMU_NOTIFY_RELEASE;
  range.mm = mm;
  range.start = 0;
  range.end = ULONG_MAX;
  let node = inv_start_range(core, subs, range);
  const cur_seq = startSeq;
  try {
    for (; node !== 0; node = interval_tree_iter_next(a, node, 0, ULONG_MAX)) {
      const sub = node - NODE;
      let r: unknown = core.intervalOps(sub).invalidate(sub, range, cur_seq);
      if (isThenable(r)) r = yield r;
      if (!r) WARN(k, 'mn_itree_release', '!ret', `${core.opsName(sub)}.invalidate returned false for the blockable RELEASE of ${mmLabel(mm)}`);
    }
  } finally {
    mn_itree_inv_end(core, subs);
  }
}

// ---- insert / remove ------------------------------------------------------------------------

function __mmu_interval_notifier_insert(sub: number, mm: number, subs: number, start: number, length: number, opsId: number, priv: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const core = k.notifier;
  w[sub + MinL.mm] = mm;
  w[sub + MinL.ops] = opsId;
  w[sub + MinL.priv] = priv;
  // the tree holds intervals with an inclusive last
  const last = length === 0 ? -1 : ulong_last(start, length);
  interval_tree_node_init(k.arena, sub + NODE, start, last < 0 ? start : last);
  w[sub + MinL.state] = MIN_NEW;
  if (last < 0) return -EOVERFLOW;
  const users = Atomics.load(w, mm + MmL.mm_users);
  if (users <= 0) {
    WARN(k, '__mmu_interval_notifier_insert', 'atomic_read(&mm->mm_users) <= 0', `${mmLabel(mm)} has mm_users ${users}: the caller must hold mmget; insert refused with -EINVAL`);
    return -EINVAL;
  }
  mmgrab(mm); // pairs with the mmdrop in mmu_interval_notifier_remove
  const l = core.lock(subs);
  spin_lock(l);
  const seq = w[subs + SubsL.invalidate_seq];
  if (w[subs + SubsL.active_invalidate_ranges] !== 0) {
    // some invalidation is in flight and we cannot know its range: assume it covers ours
    if ((seq & 1) !== 0) {
      deferred_add(w, subs, sub); // the tree may not change: insert at the final end
      w[sub + MinL.state] = MIN_DEFERRED_INSERT;
    } else {
      Atomics.store(w, subs + SubsL.invalidate_seq, seq | 1);
      interval_tree_insert(k.arena, subs + SubsL.itree, sub + NODE);
      w[sub + MinL.state] = MIN_IN_TREE;
    }
    Atomics.store(w, sub + MinL.invalidate_seq, w[subs + SubsL.invalidate_seq]);
  } else {
    if ((seq & 1) !== 0) WARN(k, '__mmu_interval_notifier_insert', 'mn_itree_is_invalidating(subscriptions)', `${mmLabel(mm)}: odd seq with no active range`);
    // odd, and not the current seq, so read_begin does not wait
    Atomics.store(w, sub + MinL.invalidate_seq, (seq - 1) | 0);
    interval_tree_insert(k.arena, subs + SubsL.itree, sub + NODE);
    w[sub + MinL.state] = MIN_IN_TREE;
  }
  spin_unlock(l);
  return 0;
}

/** Arguments the kernel's types would not even allow, and a subscription already in use. */
function insertArgsError(sub: number, mm: number, start: number, length: number): number {
  const k = current.k;
  const w = k.arena.i32;
  if ((sub & 1) !== 0 || sub <= 0) {
    splat(k, NK.misuse, `mmu_interval_notifier_insert: subscription offset ${sub} is not an even word offset (its interval tree node holds Float64 fields)`);
    return -EINVAL;
  }
  const st = w[sub + MinL.state];
  if (st !== MIN_NEW && st !== MIN_REMOVED) {
    splat(k, NK.misuse, `mmu_interval_notifier_insert: the subscription at ${sub} (${k.notifier.opsName(sub)}) is already inserted`);
    return -EINVAL;
  }
  if (!(mm > 0) || Atomics.load(w, mm + MmL.mm_count) <= 0) {
    splat(k, NK.misuse, `mmu_interval_notifier_insert: ${mmLabel(mm)} is not a live mm`);
    return -EINVAL;
  }
  if (!is_ulong(start) || !is_ulong(length)) {
    splat(k, NK.badRange, `mmu_interval_notifier_insert: start ${start} and length ${length} must be unsigned longs (integers in [0, ULONG_MAX])`);
    return -EINVAL;
  }
  return 0;
}

/**
 * mmu_interval_notifier_insert: subscribe `sub` to [start, start + length) of mm. The caller
 * holds mmget. May take the mmap_lock (the first interval registration of an mm). The node may
 * not be in the tree yet on return: establish SPTEs only through read_begin/read_retry.
 */
export function mmu_interval_notifier_insert(
  sub: number,
  mm: number,
  start: number,
  length: number,
  ops: MmuIntervalNotifierOps,
  priv = 0,
): number | Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const opsId = k.strings.intern(opsEntryOf(ops, 'mmu_interval_notifier').name);
  const bad = insertArgsError(sub, mm, start, length);
  if (bad) return bad;
  might_lock(mmap_lock_of(mm));
  const subs = Atomics.load(w, mm + MmL.notifier_subscriptions);
  if (subs === 0 || Atomics.load(w, subs + SubsL.has_itree) === 0) {
    const then = (ret: number): number => (ret !== 0 ? ret : __mmu_interval_notifier_insert(sub, mm, w[mm + MmL.notifier_subscriptions], start, length, opsId, priv));
    const r = mmu_notifier_register(0, mm);
    return typeof r === 'number' ? then(r) : r.then(then);
  }
  return __mmu_interval_notifier_insert(sub, mm, subs, start, length, opsId, priv);
}

/** mmu_interval_notifier_insert_locked: the caller holds the mmap_lock for write. */
export function mmu_interval_notifier_insert_locked(
  sub: number,
  mm: number,
  start: number,
  length: number,
  ops: MmuIntervalNotifierOps,
  priv = 0,
): number {
  const k = current.k;
  const w = k.arena.i32;
  const opsId = k.strings.intern(opsEntryOf(ops, 'mmu_interval_notifier').name);
  const bad = insertArgsError(sub, mm, start, length);
  if (bad) return bad;
  mmap_assert_write_locked(mm);
  const subs = w[mm + MmL.notifier_subscriptions];
  if (subs === 0 || w[subs + SubsL.has_itree] === 0) {
    const ret = __mmu_notifier_register(0, mm);
    if (ret !== 0) return ret;
  }
  return __mmu_interval_notifier_insert(sub, mm, w[mm + MmL.notifier_subscriptions], start, length, opsId, priv);
}

function seq_released(core: NotifierCore, subs: number, seq: number): boolean {
  const l = core.lock(subs);
  spin_lock(l);
  const ret = core.w[subs + SubsL.invalidate_seq] !== seq;
  spin_unlock(l);
  return ret;
}

/**
 * mmu_interval_notifier_remove: after it returns, no callback of `sub` runs or will run. Waits
 * for the final end when the tree is excluded. Never from a callback: that would wait for
 * itself, so it is refused with -EDEADLK and a record. Returns 0 or a negative errno.
 */
export function mmu_interval_notifier_remove(sub: number): number | Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const core = k.notifier;
  might_sleep('mmu_interval_notifier_remove');
  const st = w[sub + MinL.state];
  if (st !== MIN_IN_TREE && st !== MIN_DEFERRED_INSERT) {
    const why = st === MIN_REMOVED || st === MIN_DEFERRED_REMOVE ? 'it was already removed (double remove)' : 'it was never inserted';
    splat(k, NK.misuse, `mmu_interval_notifier_remove: the subscription at ${sub}${w[sub + MinL.ops] ? ` (${core.opsName(sub)})` : ''} is not inserted: ${why}`);
    return -EINVAL;
  }
  if (core.inside(t)) {
    splat(k, NK.misuse, withLocks(k, `mmu_interval_notifier_remove(${core.opsName(sub)}) called from inside an invalidation: it would wait for the end of the invalidation it is part of (refused with -EDEADLK; the subscription stays inserted)`));
    return -EDEADLK;
  }
  const mm = w[sub + MinL.mm];
  const subs = w[mm + MmL.notifier_subscriptions];
  const l = core.lock(subs);
  let seq = 0;
  let wait = false;
  spin_lock(l);
  // read again under the lock: the final end may have moved a deferred insert into the tree
  // since the check above, and acting on the stale state would free a node still in the tree
  const state = w[sub + MinL.state];
  if ((w[subs + SubsL.invalidate_seq] & 1) !== 0) {
    if (state === MIN_DEFERRED_INSERT) {
      // inserted while excluded, never made it into the tree: just unlink
      deferred_del(w, subs, sub);
      w[sub + MinL.state] = MIN_REMOVED;
    } else {
      deferred_add(w, subs, sub);
      w[sub + MinL.state] = MIN_DEFERRED_REMOVE;
      seq = w[subs + SubsL.invalidate_seq];
      wait = true;
    }
  } else {
    if (state !== MIN_IN_TREE) {
      WARN(k, 'mmu_interval_notifier_remove', 'RB_EMPTY_NODE(&interval_sub->interval_tree.rb)', `${core.opsName(sub)}: a deferred insert with an even seq`);
      deferred_del(w, subs, sub);
    } else {
      interval_tree_remove(k.arena, subs + SubsL.itree, sub + NODE);
    }
    w[sub + MinL.state] = MIN_REMOVED;
  }
  spin_unlock(l);
  // a possible sleep on the invalidation's progress: the caller must hold no lock callbacks take
  lock_map_acquire(core.map);
  lock_map_release(core.map);
  if (wait) {
    const p = wait_event(core.wq(subs), () => seq_released(core, subs, seq));
    if (p) {
      return p.then(() => {
        mmdrop(mm);
        return 0;
      });
    }
  }
  mmdrop(mm);
  return 0;
}

// ---- the read side --------------------------------------------------------------------------

/**
 * mmu_interval_read_begin: the seq to pass to read_retry. If an invalidation of this
 * subscription is in flight, sleeps until the final end of every invalidation on the mm.
 * The result may already be stale; callers loop with their own time bound.
 */
export function mmu_interval_read_begin(sub: number): number | Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const core = k.notifier;
  const st = w[sub + MinL.state];
  if (st !== MIN_IN_TREE && st !== MIN_DEFERRED_INSERT && st !== MIN_DEFERRED_REMOVE) {
    splat(k, NK.misuse, `mmu_interval_read_begin: the subscription at ${sub} is not inserted; returning a seq that always retries`);
    return 0; // even: never equal to a subscription's (odd) seq
  }
  const subs = w[w[sub + MinL.mm] + MmL.notifier_subscriptions];
  const l = core.lock(subs);
  spin_lock(l);
  const seq = Atomics.load(w, sub + MinL.invalidate_seq);
  const invalidating = seq === w[subs + SubsL.invalidate_seq];
  spin_unlock(l);
  // might-lock: read_begin may wait for callbacks, so no lock they take may be held here
  lock_map_acquire(core.map);
  lock_map_release(core.map);
  if (!invalidating) return seq;
  if (core.inside(t)) {
    splat(k, NK.misuse, withLocks(k, `mmu_interval_read_begin(${core.opsName(sub)}) called from inside an invalidation of its mm: it would wait for its own end. Returning a seq that always retries`));
    return (seq + 1) | 0; // even
  }
  const p = wait_event(core.wq(subs), () => Atomics.load(w, subs + SubsL.invalidate_seq) !== seq);
  return p ? p.then(() => seq) : seq;
}

/** mmu_interval_read_retry: under the driver lock that the callback holds for set_seq. True = retry. */
export function mmu_interval_read_retry(sub: number, seq: number): boolean {
  return Atomics.load(current.k.arena.i32, sub + MinL.invalidate_seq) !== seq;
}

/** mmu_interval_check_retry: the same test without the lock; true is reliable, false a hint. */
export function mmu_interval_check_retry(sub: number, seq: number): boolean {
  return Atomics.load(current.k.arena.i32, sub + MinL.invalidate_seq) !== seq;
}

/** mmu_interval_set_seq: from the invalidate callback, under the driver lock. */
export function mmu_interval_set_seq(sub: number, cur_seq: number): void {
  Atomics.store(current.k.arena.i32, sub + MinL.invalidate_seq, cur_seq);
}

/** The interval a subscription covers, [start, last] inclusive (tests, reports). */
export function mmu_interval_notifier_range(sub: number): { start: number; last: number } {
  const a = current.k.arena;
  return { start: it_start(a, sub + NODE), last: it_last(a, sub + NODE) };
}
