// Page-allocation fault injection (mm/fail_page_alloc.c over lib/fault-inject.c): the
// fail_page_alloc attributes the kernel shows in debugfs, kept in the zone header words of the
// arena (Zone.failAttr), and should_fail_alloc_page, which alloc_page asks first.
//
// should_fail_ex, as the kernel orders it: probability 0 never fails (the hot path: one
// load); `times` 0 never fails, -1 means no limit; `space` absorbs that many pages first;
// with `interval` > 1 only every interval-th candidate may fail; then a fail with
// `probability` percent. The random draw comes from a xoshiro128** stream in the attributes
// (seeded by fail_page_alloc_set), so a sim run with the same seeds fails the same
// allocations. fail_page_alloc's own filters: order < min-order, __GFP_NOFAIL, and with
// ignore-gfp-wait every allocation that may direct-reclaim are never failed.
// ignore-gfp-highmem is kept, but no gfp here carries __GFP_HIGHMEM (gfp.ts has no such
// bit), so it filters nothing. Not modelled: the per-task fail-nth and task-filter (make-it-fail),
// and the stack-trace filter.
//
// A forced failure with verbose > 0 prints "FAULT_INJECTION: forcing a failure." (klog kind
// 'fault_inject', at most FAIL_DUMP_BURST per FAIL_DUMP_INTERVAL_MS, as __ratelimit does)
// unless the allocation passed __GFP_NOWARN.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { Prng } from '../sched/prng.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import { __GFP_DIRECT_RECLAIM, __GFP_NOFAIL, __GFP_NOWARN } from './gfp.js';

// attribute words from Zone.failAttr
const A_PROB = 0; // probability, percent (0 = off)
const A_INTERVAL = 1;
const A_TIMES = 2; // -1 = no limit
const A_SPACE = 3;
const A_VERBOSE = 4;
const A_COUNT = 5; // the interval counter (attr->count)
const A_IGN_RECLAIM = 6; // ignore-gfp-wait
const A_IGN_HIGHMEM = 7;
const A_MIN_ORDER = 8;
const A_INJECTED = 9; // failures forced (ours)
const A_LOCK = 10;
const A_INIT = 11; // 1 once the kernel's defaults were written
const A_WAIT_ONLY = 12; // ours: fail only allocations that may direct-reclaim
const A_RS_BEGIN = 13; // ratelimit window start (ms)
const A_RS_PRINTED = 14;
const A_PRNG = 16; // 4 words of xoshiro128** state

/** DEFAULT_RATELIMIT_INTERVAL / DEFAULT_RATELIMIT_BURST */
export const FAIL_DUMP_INTERVAL_MS = 5000;
export const FAIL_DUMP_BURST = 10;

/** The debugfs files of /sys/kernel/debug/fail_page_alloc, by their meaning. */
export interface FailPageAllocAttr {
  /** percent of candidate allocations that fail, 0..100 (0 turns injection off) */
  probability: number;
  /** only every interval-th candidate may fail (1 = every one) */
  interval: number;
  /** failures left; -1 = no limit */
  times: number;
  /** pages that must be allocated before anything fails */
  space: number;
  /** 0 quiet, 1 a message per forced failure, 2 the message and the task */
  verbose: number;
  /** ignore-gfp-wait: never fail an allocation that may direct-reclaim */
  ignore_gfp_wait: boolean;
  /** ignore-gfp-highmem (inert: no __GFP_HIGHMEM here) */
  ignore_gfp_highmem: boolean;
  /** min-order: smaller allocations never fail */
  min_order: number;
  /** ours, not the kernel's: fail only allocations that may direct-reclaim */
  gfp_wait_only: boolean;
}

/** FAULT_ATTR_INITIALIZER with fail_page_alloc's own defaults */
export const FAIL_PAGE_ALLOC_DEFAULTS: Readonly<FailPageAllocAttr> = {
  probability: 0,
  interval: 1,
  times: 1,
  space: 0,
  verbose: 2,
  ignore_gfp_wait: true,
  ignore_gfp_highmem: true,
  min_order: 1,
  gfp_wait_only: false,
};

function write(k: Kernel, a: number, v: FailPageAllocAttr): void {
  const w = k.arena.i32;
  w[a + A_INTERVAL] = v.interval;
  w[a + A_TIMES] = v.times;
  w[a + A_SPACE] = v.space;
  w[a + A_VERBOSE] = v.verbose;
  w[a + A_IGN_RECLAIM] = v.ignore_gfp_wait ? 1 : 0;
  w[a + A_IGN_HIGHMEM] = v.ignore_gfp_highmem ? 1 : 0;
  w[a + A_MIN_ORDER] = v.min_order;
  w[a + A_WAIT_ONLY] = v.gfp_wait_only ? 1 : 0;
  Atomics.store(w, a + A_PROB, v.probability); // last: arms the hot path
}

function read(k: Kernel, a: number): FailPageAllocAttr {
  const w = k.arena.i32;
  if (w[a + A_INIT] === 0) return { ...FAIL_PAGE_ALLOC_DEFAULTS };
  return {
    probability: w[a + A_PROB],
    interval: w[a + A_INTERVAL],
    times: w[a + A_TIMES],
    space: w[a + A_SPACE],
    verbose: w[a + A_VERBOSE],
    ignore_gfp_wait: w[a + A_IGN_RECLAIM] !== 0,
    ignore_gfp_highmem: w[a + A_IGN_HIGHMEM] !== 0,
    min_order: w[a + A_MIN_ORDER],
    gfp_wait_only: w[a + A_WAIT_ONLY] !== 0,
  };
}

function check(v: FailPageAllocAttr): void {
  const int = (x: number, lo: number, hi: number, what: string): void => {
    if (!Number.isInteger(x) || x < lo || x > hi) throw new RangeError(`fail_page_alloc: ${what} must be a whole number in [${lo}, ${hi}], got ${String(x)}`);
  };
  int(v.probability, 0, 100, 'probability');
  int(v.interval, 0, 2 ** 31 - 1, 'interval');
  int(v.times, -1, 2 ** 31 - 1, 'times');
  int(v.space, 0, 2 ** 31 - 1, 'space');
  int(v.verbose, 0, 2, 'verbose');
  int(v.min_order, 0, 31, 'min-order');
}

/** The attributes now (the kernel's defaults until someone wrote them). */
export function fail_page_alloc_get(k: Kernel): FailPageAllocAttr {
  return read(k, k.zone.failAttr);
}

/**
 * Write some attributes (the rest keep their values, or the kernel's defaults the first time).
 * `seed` restarts the random stream; the interval counter restarts too.
 */
export function fail_page_alloc_set(k: Kernel, attr: Partial<FailPageAllocAttr> & { seed?: number }): void {
  const a = k.zone.failAttr;
  const w = k.arena.i32;
  const { seed, ...rest } = attr;
  const v = { ...read(k, a), ...rest };
  check(v);
  arch_spin_lock(w, a + A_LOCK);
  try {
    if (w[a + A_INIT] === 0 || seed !== undefined) new Prng(w, a + A_PRNG).seed(seed ?? 1);
    w[a + A_INIT] = 1;
    w[a + A_COUNT] = 0;
    write(k, a, v);
  } finally {
    arch_spin_unlock(w, a + A_LOCK);
  }
}

/** Allocations failed by injection since boot. */
export function fail_page_alloc_injected(k: Kernel): number {
  return Atomics.load(k.arena.i32, k.zone.failAttr + A_INJECTED);
}

/** fail_dump: the notice, rate-limited. */
function fail_dump(k: Kernel, a: number): void {
  const w = k.arena.i32;
  const now = Math.floor(k.sched.now() / 1e6);
  if (w[a + A_RS_PRINTED] === 0 || now - w[a + A_RS_BEGIN] >= FAIL_DUMP_INTERVAL_MS) {
    w[a + A_RS_BEGIN] = now;
    w[a + A_RS_PRINTED] = 0;
  }
  if (w[a + A_RS_PRINTED] >= FAIL_DUMP_BURST) return;
  w[a + A_RS_PRINTED]++;
  const t = current;
  const who = w[a + A_VERBOSE] > 1 && t && t.k === k ? `\nCPU: ${t.name}/${t.id}` : '';
  k.klog.write(
    'fault_inject',
    t && t.k === k ? t.id : 0,
    k.sched.now(),
    `FAULT_INJECTION: forcing a failure.\nname fail_page_alloc, interval ${w[a + A_INTERVAL]}, probability ${w[a + A_PROB]}, space ${w[a + A_SPACE]}, times ${w[a + A_TIMES]}${who}`,
  );
}

/** should_fail_ex, the attribute lock held. */
function should_fail_locked(k: Kernel, a: number, size: number, nowarn: boolean): boolean {
  const w = k.arena.i32;
  if (w[a + A_PROB] === 0) return false;
  if (w[a + A_TIMES] === 0) return false;
  if (w[a + A_SPACE] > size) {
    w[a + A_SPACE] -= size;
    return false;
  }
  const interval = w[a + A_INTERVAL];
  if (interval > 1) {
    w[a + A_COUNT]++;
    if (w[a + A_COUNT] % interval !== 0) return false;
  }
  const p = w[a + A_PROB];
  if (p < 100 && p <= new Prng(w, a + A_PRNG).below(100)) return false;
  if (!nowarn && w[a + A_VERBOSE] > 0) fail_dump(k, a);
  if (w[a + A_TIMES] !== -1) w[a + A_TIMES]--;
  w[a + A_INJECTED]++;
  return true;
}

/**
 * should_fail_alloc_page (__should_fail_alloc_page): fail this allocation? Called by
 * alloc_page before it looks at the free list; never sleeps.
 */
export function should_fail_alloc_page(k: Kernel, gfp: number, order: number): boolean {
  const w = k.arena.i32;
  const a = k.zone.failAttr;
  if (w[a + A_PROB] === 0) return false; // a plain read, as the kernel's of attr->probability
  if (order < w[a + A_MIN_ORDER]) return false;
  if ((gfp & __GFP_NOFAIL) !== 0) return false;
  const mayReclaim = (gfp & __GFP_DIRECT_RECLAIM) !== 0;
  if (w[a + A_IGN_RECLAIM] !== 0 && mayReclaim) return false;
  if (w[a + A_WAIT_ONLY] !== 0 && !mayReclaim) return false;
  arch_spin_lock(w, a + A_LOCK);
  try {
    return should_fail_locked(k, a, 2 ** order, (gfp & __GFP_NOWARN) !== 0);
  } finally {
    arch_spin_unlock(w, a + A_LOCK);
  }
}
