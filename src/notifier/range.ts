// struct mmu_notifier_range (reference §1.3, §1.4): what an invalidation covers. Like the
// kernel's, it is the invalidating task's own (a stack variable there, a JS object here):
// start and end run on the same task, and callbacks only read it. The core also keeps the
// range's start/end pairing state on it (DESIGN.md check 2), which no driver should touch.

import { current } from '../sched/current.js';
import { splat } from '../sched/splat.js';
import { mmLabel } from '../mm/types.js';
import { EVENT_NAMES, NK, hex } from './report.js';
import { SubsL } from './subscriptions.js';

/** enum mmu_notifier_event: the values are fixed (reference §1.4) */
export const MMU_NOTIFY_UNMAP = 0;
export const MMU_NOTIFY_CLEAR = 1;
export const MMU_NOTIFY_PROTECTION_VMA = 2;
export const MMU_NOTIFY_PROTECTION_PAGE = 3;
export const MMU_NOTIFY_SOFT_DIRTY = 4;
export const MMU_NOTIFY_RELEASE = 5;
export const MMU_NOTIFY_MIGRATE = 6;
export const MMU_NOTIFY_EXCLUSIVE = 7;
export type MmuNotifierEvent = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7;

export const MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0;

/** pairing states of a range (the core's bookkeeping) */
export const RANGE_IDLE = 0; // initialised, not started
export const RANGE_STARTED = 1; // start returned 0 (or the void start ran): the caller owes an end
export const RANGE_FAILED = 2; // a non-blockable start failed: the caller must not call end
export const RANGE_ENDED = 3;
export const RANGE_INVALID = 4; // refused at start (bad bounds): end is a no-op

export class MmuNotifierRange {
  /** struct mm_struct * (word offset) */
  mm = 0;
  start = 0;
  /** exclusive */
  end = 0;
  /** MMU_NOTIFIER_RANGE_BLOCKABLE; the start wrappers set or clear it */
  flags = 0;
  event: MmuNotifierEvent = MMU_NOTIFY_UNMAP;
  /** void *owner: a device's pgmap owner id for MIGRATE/EXCLUSIVE, 0 = NULL */
  owner = 0;

  // ---- the core's pairing bookkeeping ------------------------------------------------------
  /** @internal RANGE_* */
  _state = RANGE_IDLE;
  /** @internal hlist subscriptions whose end this range still owes, in list order */
  _owed: number[] = [];
  /** @internal the itree phase raised active_invalidate_ranges and has not lowered it */
  _itree = false;
  /** @internal the container whose open_ranges counts this range, 0 if none */
  _subs = 0;
}

/**
 * A new start or init that finds the range started and never ended reports it, and closes
 * the open-range count so teardown does not report it again. Anything the lost end would have
 * done stays undone (the itree stays raised, as it would in the kernel).
 */
function checkReuse(range: MmuNotifierRange): void {
  if (range._state !== RANGE_STARTED) return;
  const k = current.k;
  splat(
    k,
    NK.pairing,
    `mmu_notifier: unpaired start: ${rangeLabel(range)} was started and is being reused without its invalidate_range_end` +
      (range._itree ? '\nits itree bookkeeping stays raised: mmu_interval_read_begin and remove on this mm will wait forever' : ''),
  );
  if (range._subs !== 0) Atomics.sub(k.arena.i32, range._subs + SubsL.open_ranges, 1);
  range._subs = 0;
}

export function mmu_notifier_range_init(
  range: MmuNotifierRange,
  event: MmuNotifierEvent,
  flags: number,
  mm: number,
  start: number,
  end: number,
): MmuNotifierRange {
  checkReuse(range);
  range.event = event;
  range.mm = mm;
  range.start = start;
  range.end = end;
  range.flags = flags;
  range.owner = 0;
  range._state = RANGE_IDLE;
  range._owed.length = 0;
  range._itree = false;
  range._subs = 0;
  return range;
}

export function mmu_notifier_range_init_owner(
  range: MmuNotifierRange,
  event: MmuNotifierEvent,
  flags: number,
  mm: number,
  start: number,
  end: number,
  owner: number,
): MmuNotifierRange {
  mmu_notifier_range_init(range, event, flags, mm, start, end);
  range.owner = owner;
  return range;
}

export function mmu_notifier_range_blockable(range: MmuNotifierRange): boolean {
  return (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0;
}

/** "[0x1000, 0x3000) UNMAP non-blockable on mm@40": how reports name a range */
export function rangeLabel(r: MmuNotifierRange): string {
  const ev = EVENT_NAMES[r.event] ?? `event ${r.event}`;
  return `[${hex(r.start)}, ${hex(r.end)}) ${ev} ${mmu_notifier_range_blockable(r) ? '' : 'non-'}blockable on ${mmLabel(r.mm)}`;
}

/** @internal called by the start wrappers before they change state */
export function rangeBeginStart(range: MmuNotifierRange): void {
  checkReuse(range);
  range._state = RANGE_IDLE;
  range._owed.length = 0;
  range._itree = false;
  range._subs = 0;
}
