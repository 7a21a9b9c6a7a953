// Device accesses: bursts of pages through the shadow page table, each between
// device_access_begin and device_access_end (fence.ts). Per page: translate (one leaf lookup
// per 512 pages), check the mirror invariant against the host PTE (check.ts), touch the frame.
// A burst stops at the first page whose shadow PTE is missing or does not allow the access;
// device_miss says where and what the access wanted, for the fault it raises next.
//
// device_access and device_copy are the hot path: synchronous, no allocation, one Atomics
// store at each end of the burst. device_access_held keeps a burst in flight across a sleep
// (a slow DMA), which is what an invalidation's fence has to wait out.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { pte_lookup } from '../mm/mm_pt.js';
import { MmL } from '../mm/types.js';
import { host_pte, mirror_allows, mirror_violation } from './check.js';
import { device_access_begin, device_access_end } from './fence.js';
import { spt_leaf } from './spt.js';
import { DEVF_ATOMIC_EXCLUSIVE, DEV_FAULT_ATOMIC, DEV_FAULT_WRITE, DevL, EngL, SPTE_ATOMIC, SPTE_PFN_SHIFT, SPTE_VALID, SPTE_WRITE, SPT_LEAF_ENTRIES, engine_at } from './types.js';

/** what an access does to each page */
export const DEV_READ = 0;
export const DEV_WRITE = 1;
/** Atomics.add(word, 1) */
export const DEV_ATOMIC = 2;

/** Where the last burst of this thread stopped short, and what it wanted (DEV_FAULT_*). */
export const device_miss = { addr: 0, flags: 0 };

let lastSum = 0;
/** the sum of the words the last read burst of this thread read */
export function device_read_sum(): number {
  return lastSum;
}

const D_ROOT = DevL.root;
const D_MM = DevL.mm;
const D_FLAGS = DevL.flags;
const E_ACC = EngL.accesses;

function needOf(w: Int32Array, dev: number, op: number): number {
  if (op === DEV_READ) return SPTE_VALID;
  if (op === DEV_WRITE || (w[dev + D_FLAGS] & DEVF_ATOMIC_EXCLUSIVE) === 0) return SPTE_VALID | SPTE_WRITE;
  return SPTE_VALID | SPTE_WRITE | SPTE_ATOMIC;
}

function missFlags(op: number): number {
  return op === DEV_READ ? 0 : op === DEV_WRITE ? DEV_FAULT_WRITE : DEV_FAULT_WRITE | DEV_FAULT_ATOMIC;
}

/**
 * device_access: one burst of up to n pages from addr (page aligned) on engine `eng`: reads
 * `word` of each page, writes `value` to it, or increments it atomically. Returns the pages
 * done; fewer than n means the next page missed (device_miss).
 */
export function device_access(dev: number, eng: number, addr: number, n: number, op: number, word = 0, value = 0): number {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const root = w[dev + D_ROOT];
  const mm = w[dev + D_MM];
  const check = Atomics.load(w, k.devices.checkWord) !== 0;
  const need = needOf(w, dev, op);
  const write = op !== DEV_READ;
  const zd = k.zone.data;
  const pw = k.zone.pageWords;
  const pgd = w[mm + MmL.pgd];
  device_access_begin(k, dev, eng);
  let vpn = Math.floor(addr / ps);
  let chunk = -1;
  let leaf = -1;
  // the host PTE table of the chunk (host tables index 512 pages, as shadow leaves do); it
  // cannot go while a valid shadow entry of the chunk may be used (freeing it invalidates first)
  let host = -1;
  let done = 0;
  let sum = 0;
  for (; done < n; done++, vpn++) {
    const c = Math.floor(vpn / SPT_LEAF_ENTRIES);
    if (c !== chunk) {
      chunk = c;
      leaf = spt_leaf(k, root, vpn);
      host = check && pgd !== 0 ? pte_lookup(k, pgd, c * SPT_LEAF_ENTRIES * ps) : -1;
    }
    if (leaf < 0) break;
    const i = vpn - c * SPT_LEAF_ENTRIES;
    const s = leaf + i * 2;
    const e = Atomics.load(w, s);
    if ((e & need) !== need) break;
    if (check) {
      const pte = host < 0 ? 0 : w[host + i];
      if (!mirror_allows(pte, e, write)) mirror_violation(k, dev, vpn * ps, e, w[s + 1], write, pte);
    }
    const at = zd + (e >>> SPTE_PFN_SHIFT) * pw + word;
    if (op === DEV_READ) sum = (sum + w[at]) | 0;
    else if (op === DEV_WRITE) w[at] = value;
    else Atomics.add(w, at, 1);
  }
  device_access_end(k, dev, eng, done);
  if (done < n) {
    device_miss.addr = vpn * ps;
    device_miss.flags = missFlags(op);
  }
  if (done !== 0) Atomics.add(w, engine_at(dev, eng) + E_ACC, done);
  lastSum = sum;
  return done;
}

/**
 * device_copy: DMA n pages from src to dst (both page aligned) in one burst, whole pages.
 * Returns the pages copied; on a miss device_miss names the source (read) or destination
 * (write) page that missed.
 */
export function device_copy(dev: number, eng: number, src: number, dst: number, n: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const root = w[dev + D_ROOT];
  const mm = w[dev + D_MM];
  const check = Atomics.load(w, k.devices.checkWord) !== 0;
  const zd = k.zone.data;
  const pw = k.zone.pageWords;
  device_access_begin(k, dev, eng);
  let sv = Math.floor(src / ps);
  let dv = Math.floor(dst / ps);
  let done = 0;
  for (; done < n; done++, sv++, dv++) {
    const sl = spt_leaf(k, root, sv);
    const ss = sl < 0 ? -1 : sl + (sv % SPT_LEAF_ENTRIES) * 2;
    const se = ss < 0 ? 0 : Atomics.load(w, ss);
    if ((se & SPTE_VALID) === 0) {
      device_miss.addr = sv * ps;
      device_miss.flags = 0;
      break;
    }
    const dl = spt_leaf(k, root, dv);
    const ds = dl < 0 ? -1 : dl + (dv % SPT_LEAF_ENTRIES) * 2;
    const de = ds < 0 ? 0 : Atomics.load(w, ds);
    if ((de & (SPTE_VALID | SPTE_WRITE)) !== (SPTE_VALID | SPTE_WRITE)) {
      device_miss.addr = dv * ps;
      device_miss.flags = DEV_FAULT_WRITE;
      break;
    }
    if (check) {
      const sp = host_pte(k, mm, sv * ps);
      if (!mirror_allows(sp, se, false)) mirror_violation(k, dev, sv * ps, se, w[ss + 1], false, sp);
      const dp = host_pte(k, mm, dv * ps);
      if (!mirror_allows(dp, de, true)) mirror_violation(k, dev, dv * ps, de, w[ds + 1], true, dp);
    }
    const from = zd + (se >>> SPTE_PFN_SHIFT) * pw;
    w.copyWithin(zd + (de >>> SPTE_PFN_SHIFT) * pw, from, from + pw);
  }
  device_access_end(k, dev, eng, done);
  if (done !== 0) Atomics.add(w, engine_at(dev, eng) + E_ACC, 2 * done);
  return done;
}

/**
 * device_access_held: a burst that stays in flight for holdNs between translation and the
 * touch (a slow DMA): translate up to n pages, sleep, then check and touch each through the
 * translation it made. An invalidation that zaps these pages meanwhile must wait for the end.
 */
export async function device_access_held(dev: number, eng: number, addr: number, n: number, op: number, word: number, value: number, holdNs: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const root = w[dev + D_ROOT];
  const need = needOf(w, dev, op);
  const ents = new Int32Array(n);
  const seqs = new Int32Array(n);
  device_access_begin(k, dev, eng);
  let done = 0;
  for (let vpn = Math.floor(addr / ps); done < n; done++, vpn++) {
    const leaf = spt_leaf(k, root, vpn);
    const e = leaf < 0 ? 0 : Atomics.load(w, leaf + (vpn % SPT_LEAF_ENTRIES) * 2);
    if ((e & need) !== need) break;
    ents[done] = e;
    seqs[done] = w[leaf + (vpn % SPT_LEAF_ENTRIES) * 2 + 1];
  }
  if (done > 0) {
    const p = k.sched.sleep(holdNs);
    if (p !== undefined) await p;
  }
  touch(k, dev, addr, done, ents, seqs, op, word, value);
  device_access_end(k, dev, eng, done);
  if (done < n) {
    device_miss.addr = addr + done * ps;
    device_miss.flags = missFlags(op);
  }
  if (done !== 0) Atomics.add(w, engine_at(dev, eng) + E_ACC, done);
  return done;
}

function touch(k: Kernel, dev: number, addr: number, n: number, ents: Int32Array, seqs: Int32Array, op: number, word: number, value: number): void {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const mm = w[dev + D_MM];
  const check = Atomics.load(w, k.devices.checkWord) !== 0;
  const write = op !== DEV_READ;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = ents[i];
    const a = addr + i * ps;
    if (check) {
      const pte = host_pte(k, mm, a);
      if (!mirror_allows(pte, e, write)) mirror_violation(k, dev, a, e, seqs[i], write, pte);
    }
    const at = k.zone.data + (e >>> SPTE_PFN_SHIFT) * k.zone.pageWords + word;
    if (op === DEV_READ) sum = (sum + w[at]) | 0;
    else if (op === DEV_WRITE) w[at] = value;
    else Atomics.add(w, at, 1);
  }
  lastSum = sum;
}
