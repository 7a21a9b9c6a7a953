// The invalidation entry points the mm calls (reference §1.5, §1.6): start (blockable),
// start_nonblock (the OOM reaper), end, and release (exit_mmap). Interval subscriptions run
// before the hlist, in both start and end. The lockdep map
// mmu_notifier_invalidate_range_start is held around every start and end (§6.3), so a lock a
// callback takes is ordered after it.
//
// The core also checks the caller's side of the contract (DESIGN.md check 2): every range
// that started is ended once; a range whose non-blockable start failed is not ended.

import { current } from '../sched/current.js';
import { splat } from '../sched/splat.js';
import { EINVAL } from '../shm/errno.js';
import { might_sleep } from '../sync/context.js';
import { lock_map_acquire, lock_map_release } from '../sync/lockdep_api.js';
import { MmL, ULONG_MAX, is_ulong, mmLabel } from '../mm/types.js';
import { emitInvEnd, emitInvStart, emitInvStarted } from '../mm/events.js';
import { drive } from './drive.js';
import { mn_itree_inv_end, mn_itree_invalidate, mn_itree_release } from './interval.js';
import { mn_hlist_invalidate_end, mn_hlist_invalidate_range_start, mn_hlist_release } from './mmu_notifier.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_RELEASE,
  RANGE_ENDED,
  RANGE_FAILED,
  RANGE_IDLE,
  RANGE_INVALID,
  RANGE_STARTED,
  mmu_notifier_range_blockable,
  rangeBeginStart,
  rangeLabel,
  type MmuNotifierRange,
} from './range.js';
import { NK, hex } from './report.js';
import { SubsL, type NotifierCore } from './subscriptions.js';

/** A range the core can run: a live mm and [start, end) of unsigned longs. Unaligned is reported, not refused. */
function checkRange(core: NotifierCore, range: MmuNotifierRange): boolean {
  const k = core.k;
  const { mm, start, end } = range;
  if (!(mm > 0) || Atomics.load(core.w, mm + MmL.mm_count) <= 0) {
    splat(k, NK.badRange, `mmu_notifier: invalidation of ${mmLabel(mm)}, which is not a live mm: refused`);
    return false;
  }
  if (!is_ulong(start) || !is_ulong(end) || start >= end) {
    splat(k, NK.badRange, `mmu_notifier: bad range [${start}, ${end}) on ${mmLabel(mm)}: start and end must be unsigned longs with start < end (end exclusive, at most ULONG_MAX): refused`);
    return false;
  }
  const ps = k.config.mem.pageSize; // the kernel's page size, not the 4096 default
  if (start % ps !== 0 || (end !== ULONG_MAX && end % ps !== 0)) {
    splat(k, NK.badRange, `mmu_notifier: range [${hex(start)}, ${hex(end)}) on ${mmLabel(mm)} is not page aligned`);
  }
  return true;
}

function* startGen(core: NotifierCore, range: MmuNotifierRange, blockable: boolean): Generator<unknown, number, unknown> {
  const k = core.k;
  const w = core.w;
  const t = current;
  rangeBeginStart(range);
  lock_map_acquire(core.map);
  core.enter(t);
  try {
    if (!checkRange(core, range)) {
      range._state = RANGE_INVALID;
      return -EINVAL;
    }
    const subs = w[range.mm + MmL.notifier_subscriptions];
    if (subs === 0) {
      range._state = RANGE_STARTED;
      return 0;
    }
    if (blockable) range.flags |= MMU_NOTIFIER_RANGE_BLOCKABLE;
    else range.flags &= ~MMU_NOTIFIER_RANGE_BLOCKABLE;
    range._subs = subs;
    Atomics.add(w, subs + SubsL.open_ranges, 1);
    let ret = 0;
    try {
      if (w[subs + SubsL.has_itree] !== 0) ret = yield* mn_itree_invalidate(core, subs, range);
      // an itree failure returns at once: the hlist is not called at all
      if (ret === 0 && w[subs + SubsL.list] !== 0) {
        ret = yield* mn_hlist_invalidate_range_start(core, subs, range);
        if (ret !== 0 && !blockable && range._itree) {
          // Reproduced as read (reference §8.1): the caller gets the error and calls no end,
          // so this range's itree bookkeeping is never lowered.
          const s = w[subs + SubsL.invalidate_seq];
          splat(
            k,
            NK.itreeLeak,
            `mmu_notifier: §8.1 itree leak: an hlist notifier failed the non-blockable start of ${rangeLabel(range)} after the interval notifiers had succeeded. ` +
              `The caller calls no end, so active_invalidate_ranges stays raised (now ${w[subs + SubsL.active_invalidate_ranges]}) and invalidate_seq ${s} ` +
              `${(s & 1) !== 0 ? 'stays odd' : 'can never return to even once it goes odd'}: mmu_interval_read_begin and mmu_interval_notifier_remove on ${mmLabel(range.mm)} will wait forever (reference §8.1, kept as the kernel does it).`,
          );
        }
      }
    } catch (e) {
      // a callback threw: abandon the range without leaving other tasks waiting on it
      if (range._itree) {
        range._itree = false;
        mn_itree_inv_end(core, subs);
      }
      closeOpen(w, range);
      range._state = RANGE_FAILED;
      throw e;
    }
    if (ret !== 0 && !blockable) {
      closeOpen(w, range);
      range._state = RANGE_FAILED;
      return ret;
    }
    range._state = RANGE_STARTED; // a blockable caller ignores errors and will call end
    return ret;
  } finally {
    core.leave(t);
    lock_map_release(core.map);
  }
}

function closeOpen(w: Int32Array, range: MmuNotifierRange): void {
  if (range._subs !== 0) Atomics.sub(w, range._subs + SubsL.open_ranges, 1);
  range._subs = 0;
}

/**
 * Most mms have no notifiers: prime lockdep and mark the range started without building a
 * generator. Returns -1 when the full path is needed.
 */
function startNoNotifiers(core: NotifierCore, range: MmuNotifierRange): number {
  const mm = range.mm;
  if (!(mm > 0) || core.w[mm + MmL.notifier_subscriptions] !== 0 || range._state === RANGE_STARTED) return -1;
  lock_map_acquire(core.map);
  lock_map_release(core.map);
  range._owed.length = 0;
  range._itree = false;
  range._subs = 0;
  if (!checkRange(core, range)) {
    range._state = RANGE_INVALID;
    return -EINVAL;
  }
  range._state = RANGE_STARTED;
  return 0;
}

/**
 * mmu_notifier_invalidate_range_start: blockable. Callbacks may sleep; errors are reported
 * and ignored (the caller always calls end). Returns a promise only if a callback slept.
 */
export function mmu_notifier_invalidate_range_start(range: MmuNotifierRange): Promise<void> | undefined {
  might_sleep('mmu_notifier_invalidate_range_start');
  const core = current.k.notifier;
  emitInvStart(core.k, range.mm, range.start, range.end);
  const fast = startNoNotifiers(core, range);
  if (fast !== -1) return void emitInvStarted(core.k, range.mm, range.event, true, fast);
  const r = drive(startGen(core, range, true));
  if (typeof r === 'number') return void emitInvStarted(core.k, range.mm, range.event, true, r);
  return r.then((v) => void emitInvStarted(core.k, range.mm, range.event, true, v));
}

/**
 * mmu_notifier_invalidate_range_start_nonblock (__must_check): callbacks must not sleep.
 * On an error (-EAGAIN) the caller must not touch the range's PTEs and must not call end.
 */
export function mmu_notifier_invalidate_range_start_nonblock(range: MmuNotifierRange): number {
  const core = current.k.notifier;
  emitInvStart(core.k, range.mm, range.start, range.end);
  const fast = startNoNotifiers(core, range);
  if (fast !== -1) return emitInvStarted(core.k, range.mm, range.event, false, fast);
  const r = drive(startGen(core, range, false));
  if (typeof r !== 'number') throw new Error('mmu_notifier_invalidate_range_start_nonblock: a non-blockable start waited');
  return emitInvStarted(core.k, range.mm, range.event, false, r);
}

function* endGen(core: NotifierCore, range: MmuNotifierRange, subs: number): Generator<unknown, void, unknown> {
  const k = core.k;
  const w = core.w;
  const t = current;
  lock_map_acquire(core.map);
  core.enter(t);
  try {
    if (w[subs + SubsL.has_itree] !== 0) {
      if (range._itree) {
        range._itree = false;
        // may make the seq even and wake readers before the hlist ends run
        mn_itree_inv_end(core, subs);
      } else {
        splat(k, NK.pairing, `mmu_notifier: end without start: ${rangeLabel(range)} started before the mm had interval notifiers; its end skips the itree (the kernel would underflow active_invalidate_ranges)`);
      }
    }
    if (w[subs + SubsL.list] !== 0) yield* mn_hlist_invalidate_end(core, subs, range);
    range._owed.length = 0;
  } finally {
    core.leave(t);
    lock_map_release(core.map);
  }
}

/** mmu_notifier_invalidate_range_end: may sleep when the range is blockable. */
export function mmu_notifier_invalidate_range_end(range: MmuNotifierRange): Promise<void> | undefined {
  const k = current.k;
  const core = k.notifier;
  if (mmu_notifier_range_blockable(range)) might_sleep('mmu_notifier_invalidate_range_end');
  const st = range._state;
  if (st !== RANGE_STARTED) {
    if (st !== RANGE_INVALID) {
      const why =
        st === RANGE_IDLE
          ? 'it was never started'
          : st === RANGE_FAILED
            ? 'its non-blockable start failed, and a caller that gets an error must not call end (reference §1.5 step 3)'
            : st === RANGE_ENDED
              ? 'it was already ended'
              : `its state is ${st}`;
      splat(k, NK.pairing, `mmu_notifier: end without start: invalidate_range_end for ${rangeLabel(range)}, but ${why}; ignored`);
    }
    return undefined;
  }
  range._state = RANGE_ENDED;
  closeOpen(core.w, range);
  const subs = range.mm > 0 ? core.w[range.mm + MmL.notifier_subscriptions] : 0;
  if (subs === 0) return void emitInvEnd(k, range.mm, range.event, mmu_notifier_range_blockable(range));
  const r = drive(endGen(core, range, subs));
  if (r === undefined) return void emitInvEnd(k, range.mm, range.event, mmu_notifier_range_blockable(range));
  return r.then(() => emitInvEnd(k, range.mm, range.event, mmu_notifier_range_blockable(range)));
}

function* releaseGen(core: NotifierCore, subs: number, mm: number): Generator<unknown, void, unknown> {
  const t = current;
  core.enter(t);
  try {
    if (core.w[subs + SubsL.has_itree] !== 0) yield* mn_itree_release(core, subs, mm);
  } finally {
    core.leave(t);
  }
  if (core.w[subs + SubsL.list] !== 0) {
    core.enter(t);
    try {
      yield* mn_hlist_release(core, subs, mm);
    } finally {
      core.leave(t);
    }
  }
}

/**
 * __mmu_notifier_release (exit_mmap, the mm has notifiers): one blockable RELEASE over
 * [0, ULONG_MAX] to the interval subscriptions, which stay in the tree; ->release to every
 * hlist subscription, which are then unlinked. Later invalidations reach only the interval
 * subscriptions.
 */
export function __mmu_notifier_release(mm: number): Promise<void> | undefined {
  const core = current.k.notifier;
  emitInvStart(core.k, mm, 0, ULONG_MAX);
  emitInvStarted(core.k, mm, MMU_NOTIFY_RELEASE, true, 0);
  const r = drive(releaseGen(core, core.w[mm + MmL.notifier_subscriptions], mm));
  if (r === undefined) return void emitInvEnd(core.k, mm, MMU_NOTIFY_RELEASE, true);
  return r.then(() => emitInvEnd(core.k, mm, MMU_NOTIFY_RELEASE, true));
}

/** mmu_notifier_release: __mmu_notifier_release if the mm has notifiers. */
export function mmu_notifier_release(mm: number): Promise<void> | undefined {
  return current.k.arena.i32[mm + MmL.notifier_subscriptions] === 0 ? undefined : __mmu_notifier_release(mm);
}
