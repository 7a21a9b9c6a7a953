// The mm and notifier layers' event types (the event log, src/shm/events.ts), in their own
// numbered block after the device layer's: 96..127. They mark where CPU faults, invalidations
// and OOM reaps begin and end, so the trace writer (src/run/trace.ts) can draw them as spans,
// and carry sampled counters (free pages, rss) for its counter tracks.
//
// Each emitter is a plain function the hot path calls once: it tests `enabled` first (the log
// is off in speed runs), computes nothing before that, and allocates nothing. A record has
// three 32-bit words (a, b, c), so addresses travel as page numbers, low 32 bits.
//
// Types only plus these emitters, so the notifier core may import it without the mm's logic.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EV_NAMES } from '../shm/events.js';
import { MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL } from './types.js';

export const MM_EV_FIRST = 96;
export const MM_EV_LAST = 127;

export const MM_EV = {
  /** a page fault begins: a = mm, b = page number, c = FAULT_FLAG_* (USER: a CPU access; REMOTE: GUP, HMM) */
  FAULT: 96,
  /** a = mm, b = page number, c = VM_FAULT_* result (0 = resolved) */
  FAULT_DONE: 97,
  /** counter sample: a = mm (0 if none), b = free pages in the zone, c = the mm's resident pages (file + anon + shmem) */
  COUNTERS: 98,
  /** counter sample: a = mm, b = the mm's swap entries (MM_SWAPENTS) */
  SWAPENTS: 99,
  /** mmu_notifier_invalidate_range_start begins: a = mm, b = start page, c = end page (exclusive; -1 = ULONG_MAX) */
  INV_START: 100,
  /** the start returned: a = mm, b = MMU_NOTIFY_* | INV_BLOCKABLE, c = its result (0 or -errno; no end follows a failed non-blockable start) */
  INV_STARTED: 101,
  /** mmu_notifier_invalidate_range_end returned: a = mm, b = MMU_NOTIFY_* | INV_BLOCKABLE */
  INV_END: 102,
  /** oom_reap_task begins on a victim: a = mm, b = pid */
  REAP_BEGIN: 104,
  /** an oom_reap_task_mm attempt: a = mm, b = pid (c = 0) */
  REAP_ATTEMPT: 105,
  /** the attempt failed, the reaper sleeps HZ/10 and retries: a = mm, b = pid, c = attempts made */
  REAP_RETRY: 106,
  /** oom_reap_task ends: a = mm, b = pid, c = attempts made | REAP_UNABLE */
  REAP_END: 107,
  /** do_swap_page read the page from its slot (a major fault): a = mm, b = page number, c = swap slot */
  SWAPIN: 110,
  /** swap_writepage wrote a page to its slot: a = pfn, b = swap slot */
  SWAPOUT: 112,
  // Reserved for the reclaim layer (emit with k.events.emit; the trace draws them):
  /** shrink begins: a = memcg id (0 = global), b = pages wanted, c = 1 for kswapd, 0 for direct reclaim */
  RECLAIM: 108,
  /** a = memcg id, b = pages reclaimed */
  RECLAIM_DONE: 109,
  /** counter sample: a = swap slots in use, b = pages in the swap cache */
  SWAP_USAGE: 113,
} as const;

/** INV_STARTED / INV_END b: the range was blockable */
export const INV_BLOCKABLE = 0x100;
/** REAP_END c: the reaper gave up ("unable to reap") */
export const REAP_UNABLE = 0x10000;

for (const [k, v] of Object.entries(MM_EV)) EV_NAMES[v] = `mm_${k.toLowerCase()}`;

/** The low 32 bits of addr's page number. */
function pageOf(k: Kernel, addr: number): number {
  return Math.floor(addr / k.config.mem.pageSize) | 0;
}

export function emitFault(k: Kernel, mm: number, addr: number, flags: number): void {
  if (!k.events.enabled) return;
  k.events.emit(MM_EV.FAULT, current.id, mm, pageOf(k, addr), flags);
}

/** The fault's end, and a counter sample (free pages, the mm's rss). */
export function emitFaultDone(k: Kernel, mm: number, addr: number, ret: number): void {
  if (!k.events.enabled) return;
  const id = current.id;
  k.events.emit(MM_EV.FAULT_DONE, id, mm, pageOf(k, addr), ret);
  emitCounters(k, id, mm);
}

/** Free pages and the mm's rss (and its swap entries when it has any). */
export function emitCounters(k: Kernel, task: number, mm: number): void {
  const w = k.arena.i32;
  let rss = 0;
  let swap = 0;
  if (mm > 0) {
    const r = mm + MmL.rss_stat;
    rss = w[r + MM_FILEPAGES] + w[r + MM_ANONPAGES] + w[r + MM_SHMEMPAGES];
    swap = w[r + MM_SWAPENTS];
  }
  k.events.emit(MM_EV.COUNTERS, task, mm, k.zone.nrFree, rss);
  if (swap !== 0) k.events.emit(MM_EV.SWAPENTS, task, mm, swap, 0);
}

export function emitInvStart(k: Kernel, mm: number, start: number, end: number): void {
  if (!k.events.enabled) return;
  k.events.emit(MM_EV.INV_START, current.id, mm, pageOf(k, start), end >= 2 ** 64 ? -1 : pageOf(k, end));
}

/** The start's result; returns `ret` so a caller can `return emitInvStarted(...)`. */
export function emitInvStarted(k: Kernel, mm: number, event: number, blockable: boolean, ret: number): number {
  if (k.events.enabled) k.events.emit(MM_EV.INV_STARTED, current.id, mm, event | (blockable ? INV_BLOCKABLE : 0), ret);
  return ret;
}

export function emitInvEnd(k: Kernel, mm: number, event: number, blockable: boolean): void {
  if (!k.events.enabled) return;
  const id = current.id;
  k.events.emit(MM_EV.INV_END, id, mm, event | (blockable ? INV_BLOCKABLE : 0), 0);
  emitCounters(k, id, mm);
}

/** REAP_BEGIN / REAP_ATTEMPT / REAP_RETRY / REAP_END */
export function emitReap(k: Kernel, type: number, mm: number, pid: number, c: number): void {
  if (!k.events.enabled) return;
  const id = current.id;
  k.events.emit(type, id, mm, pid, c);
  if (type === MM_EV.REAP_END) emitCounters(k, id, mm);
}

export function emitSwapin(k: Kernel, mm: number, addr: number, slot: number): void {
  if (k.events.enabled) k.events.emit(MM_EV.SWAPIN, current.id, mm, pageOf(k, addr), slot);
}

export function emitSwapout(k: Kernel, pfn: number, slot: number): void {
  if (k.events.enabled) k.events.emit(MM_EV.SWAPOUT, current.id, pfn, slot, 0);
}
