// mm/page_counter.c: a lockless counter of pages against a limit, as memory cgroups use it
// (memory.current, memory.max, memory.peak, the failure count). `c` is the word offset of the
// counter's four words in the arena. Counts are whole pages in int32 words; PAGE_COUNTER_MAX
// stands for "max" (no limit).

import { EINVAL } from '../shm/errno.js';

export const PAGE_COUNTER_MAX = 0x7fffffff;

// words of a page counter
export const PC_USAGE = 0;
export const PC_MAX = 1;
export const PC_WATERMARK = 2;
export const PC_FAILCNT = 3;
export const PAGE_COUNTER_WORDS = 4;

export function page_counter_init(w: Int32Array, c: number): void {
  w[c + PC_USAGE] = 0;
  w[c + PC_MAX] = PAGE_COUNTER_MAX;
  w[c + PC_WATERMARK] = 0;
  w[c + PC_FAILCNT] = 0;
}

export function page_counter_read(w: Int32Array, c: number): number {
  return Atomics.load(w, c + PC_USAGE);
}

function propagate_watermark(w: Int32Array, c: number, usage: number): void {
  for (let old = Atomics.load(w, c + PC_WATERMARK); usage > old; old = Atomics.load(w, c + PC_WATERMARK)) {
    if (Atomics.compareExchange(w, c + PC_WATERMARK, old, usage) === old) return;
  }
}

/** page_counter_charge: charge regardless of the limit (a forced charge). */
export function page_counter_charge(w: Int32Array, c: number, nr: number): void {
  propagate_watermark(w, c, Atomics.add(w, c + PC_USAGE, nr) + nr);
}

/**
 * page_counter_try_charge: charge unless that takes usage past max. Add first, then back out,
 * as the kernel does: a racing charger may fail transiently, but the limit holds.
 */
export function page_counter_try_charge(w: Int32Array, c: number, nr: number): boolean {
  const usage = Atomics.add(w, c + PC_USAGE, nr) + nr;
  if (usage > Atomics.load(w, c + PC_MAX)) {
    Atomics.sub(w, c + PC_USAGE, nr);
    Atomics.add(w, c + PC_FAILCNT, 1);
    return false;
  }
  propagate_watermark(w, c, usage);
  return true;
}

/** page_counter_uncharge; false (and no change) if that would go below zero (the kernel WARNs). */
export function page_counter_uncharge(w: Int32Array, c: number, nr: number): boolean {
  const left = Atomics.sub(w, c + PC_USAGE, nr) - nr;
  if (left < 0) {
    Atomics.add(w, c + PC_USAGE, nr);
    return false;
  }
  return true;
}

/** mem_cgroup_margin's part: pages that can still be charged. */
export function page_counter_margin(w: Int32Array, c: number): number {
  const usage = Atomics.load(w, c + PC_USAGE);
  const max = Atomics.load(w, c + PC_MAX);
  return usage < max ? max - usage : 0;
}

/** xchg(&counter->max, max): memory.max writes set the limit first, then reclaim to it. */
export function page_counter_xchg_max(w: Int32Array, c: number, max: number): number {
  return Atomics.exchange(w, c + PC_MAX, max);
}

const SUFFIX: Record<string, number> = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * page_counter_memparse: `max` names PAGE_COUNTER_MAX; anything else is memparse's unsigned
 * bytes with an optional K/M/G/T/P/E suffix, rounded down to pages. Whitespace around is
 * stripped (strstrip). -EINVAL for anything else (a sign, a fraction, trailing characters).
 */
export function page_counter_memparse(buf: string, max: string, pageSize: number): number {
  const s = buf.trim();
  if (s === max) return PAGE_COUNTER_MAX;
  const m = /^(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)([kmgtpe]?)$/i.exec(s);
  if (m === null) return -EINVAL;
  const bytes = Number(m[1].startsWith('0x') || m[1].startsWith('0X') ? m[1] : m[1].length > 1 && m[1][0] === '0' ? parseInt(m[1], 8) : m[1]) * (m[2] === '' ? 1 : SUFFIX[m[2].toLowerCase()]);
  return Math.min(Math.floor(bytes / pageSize), PAGE_COUNTER_MAX);
}
