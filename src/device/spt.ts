// The shadow page table of a device address space: three levels of 512-entry directories and
// 512-entry leaves of two words (entry, the notifier sequence it was installed from), indexed
// by virtual page number exactly as the host's 4-level tables (src/mm/mm_pt.ts pte_lookup).
// Tables are allocated on first install and kept until the device goes away, so a lock-free
// reader (a device engine) never meets a freed table; a sparse address space costs only what
// it maps.
//
// Entries change only under the driver's notifier lock (installs go through
// shadow_pte_install in driver.ts); engines read them with Atomics.load, so the zap that an
// invalidation writes before it looks for in-flight accesses is seen (fence.ts).

import type { Kernel } from '../sched/kernel.js';
import { DevL, SPTE_PFN_SHIFT, SPTE_ATOMIC, SPTE_DEVICE_PRIVATE, SPTE_VALID, SPTE_WRITE, SPTE_WORDS, SPT_DIR_ENTRIES, SPT_LEAF_ENTRIES } from './types.js';

const LVL = 262144; // 2**18: pages under one level-1 entry

/**
 * The word offset of leaf entry 0 for the 512-page chunk holding vpn, or -1 if no leaf is
 * there. No lock, no allocation: the engine's translation.
 */
export function spt_leaf(k: Kernel, root: number, vpn: number): number {
  const w = k.arena.i32;
  const L = k.devices;
  const db = L.dirs.base;
  const hi = Math.floor(vpn / LVL);
  const lo = vpn - hi * LVL;
  const d1 = w[db + root * SPT_DIR_ENTRIES + ((hi >>> 9) & 511)];
  if (d1 === 0) return -1;
  const d2 = w[db + d1 * SPT_DIR_ENTRIES + (hi & 511)];
  if (d2 === 0) return -1;
  const leaf = w[db + d2 * SPT_DIR_ENTRIES + (lo >>> 9)];
  if (leaf === 0) return -1;
  return L.leaves.base + leaf * L.leaves.objWords;
}

/** The word offset of vpn's entry, or -1 (no leaf). */
export function spt_slot(k: Kernel, root: number, vpn: number): number {
  const leaf = spt_leaf(k, root, vpn);
  return leaf < 0 ? -1 : leaf + (vpn % SPT_LEAF_ENTRIES) * SPTE_WORDS;
}

/** The slot of vpn's entry, allocating missing tables; -2 when a pool is empty (-ENOMEM). */
export function spt_slot_alloc(k: Kernel, root: number, vpn: number): number {
  const w = k.arena.i32;
  const L = k.devices;
  const db = L.dirs.base;
  const hi = Math.floor(vpn / LVL);
  const lo = vpn - hi * LVL;
  let table = root;
  for (let level = 0; level < 2; level++) {
    const slot = db + table * SPT_DIR_ENTRIES + (level === 0 ? (hi >>> 9) & 511 : hi & 511);
    let child = w[slot];
    if (child === 0) {
      child = L.dirs.alloc();
      if (child === 0) return -2;
      Atomics.store(w, slot, child); // published after alloc zeroed it
    }
    table = child;
  }
  const slot = db + table * SPT_DIR_ENTRIES + (lo >>> 9);
  let leaf = w[slot];
  if (leaf === 0) {
    leaf = L.leaves.alloc();
    if (leaf === 0) return -2;
    Atomics.store(w, slot, leaf);
  }
  return L.leaves.base + leaf * L.leaves.objWords + (lo & 511) * SPTE_WORDS;
}

/** Visit every leaf chunk overlapping [firstVpn, lastVpn]: fn(leaf word offset, chunk's first vpn). */
export function spt_walk_leaves(k: Kernel, root: number, firstVpn: number, lastVpn: number, fn: (leaf: number, vpn0: number) => void): void {
  const w = k.arena.i32;
  const L = k.devices;
  const db = L.dirs.base;
  // pages under an entry of each directory level
  const spans = [LVL * 512, LVL, SPT_LEAF_ENTRIES];
  const walk = (table: number, level: number, base: number): void => {
    const span = spans[level];
    const a = Math.max(0, Math.floor((firstVpn - base) / span));
    const b = Math.min(SPT_DIR_ENTRIES - 1, Math.floor((lastVpn - base) / span));
    for (let i = a; i <= b; i++) {
      const child = w[db + table * SPT_DIR_ENTRIES + i];
      if (child === 0) continue;
      const v0 = base + i * span;
      if (level === 2) fn(L.leaves.base + child * L.leaves.objWords, v0);
      else walk(child, level + 1, v0);
    }
  };
  if (lastVpn >= firstVpn) walk(root, 0, 0);
}

/** The vpn range [first, last] of [start, end) bytes, clamped to what the tables index. */
export function vpn_range(k: Kernel, start: number, end: number): [number, number] {
  const ps = k.mmLayer.pageSize;
  const first = Math.floor(Math.max(0, start) / ps);
  const last = Math.min(Math.ceil(Math.min(end, k.mmLayer.vaLimit) / ps), LVL * LVL) - 1;
  return [first, last];
}

/** Clear the entries of [start, end); returns how many were set. Driver lock held. */
export function spt_clear(k: Kernel, root: number, start: number, end: number): number {
  const w = k.arena.i32;
  const [first, last] = vpn_range(k, start, end);
  let n = 0;
  spt_walk_leaves(k, root, first, last, (leaf, v0) => {
    const a = Math.max(first, v0) - v0;
    const b = Math.min(last, v0 + SPT_LEAF_ENTRIES - 1) - v0;
    for (let i = a; i <= b; i++) {
      const s = leaf + i * SPTE_WORDS;
      if (w[s] === 0) continue;
      Atomics.store(w, s, 0);
      w[s + 1] = 0;
      n++;
    }
  });
  return n;
}

/** Free every table of a device (it has no engine and no notifier left). */
export function spt_free(k: Kernel, dev: number): void {
  const w = k.arena.i32;
  const L = k.devices;
  const db = L.dirs.base;
  const root = w[dev + DevL.root];
  if (root === 0) return;
  const free = (table: number, level: number): void => {
    for (let i = 0; i < SPT_DIR_ENTRIES; i++) {
      const slot = db + table * SPT_DIR_ENTRIES + i;
      const child = w[slot];
      if (child === 0) continue;
      w[slot] = 0;
      if (level === 2) L.leaves.free(child);
      else {
        free(child, level + 1);
        L.dirs.free(child);
      }
    }
  };
  free(root, 0);
  L.dirs.free(root);
  w[dev + DevL.root] = 0;
}

/** A shadow PTE as tests and reports see it. */
export interface ShadowPte {
  addr: number;
  pfn: number;
  write: boolean;
  atomic: boolean;
  devicePrivate: boolean;
  seq: number;
}

export function spte_decode(addr: number, e: number, seq: number): ShadowPte {
  return {
    addr,
    pfn: e >>> SPTE_PFN_SHIFT,
    write: (e & SPTE_WRITE) !== 0,
    atomic: (e & SPTE_ATOMIC) !== 0,
    devicePrivate: (e & SPTE_DEVICE_PRIVATE) !== 0,
    seq,
  };
}

/** Every valid entry of a device in [start, end), in address order. */
export function shadowEntries(k: Kernel, dev: number, start = 0, end = Infinity): ShadowPte[] {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const [first, last] = vpn_range(k, start, end);
  const out: ShadowPte[] = [];
  spt_walk_leaves(k, w[dev + DevL.root], first, last, (leaf, v0) => {
    for (let i = Math.max(first, v0) - v0; i <= Math.min(last, v0 + SPT_LEAF_ENTRIES - 1) - v0; i++) {
      const e = w[leaf + i * SPTE_WORDS];
      if ((e & SPTE_VALID) !== 0) out.push(spte_decode((v0 + i) * ps, e, w[leaf + i * SPTE_WORDS + 1]));
    }
  });
  return out;
}
