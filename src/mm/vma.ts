// struct vm_area_struct and the per-mm VMA list (mm->mmap, sorted by address, linked both
// ways), plus the shared anonymous object behind MAP_SHARED|MAP_ANONYMOUS mappings (the
// kernel's shmem inode from shmem_zero_setup): its page index -> frame table is a page-table
// root, so every mapping of it, in any mm, finds the same frames.
// Callers hold the mmap_lock: read to look up, write to change the list.

import { defineStruct } from '../shm/layout.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { PageL } from './page.js';
import { __free_page } from './page_alloc.js';
import { pte_pfn, pte_present } from './pgtable.js';
import { MMG_ANON_VMA_SEQ } from './mm_layer.js';
import { MmL, VM_ACCESS_FLAGS, VM_SOFTDIRTY } from './types.js';

/** struct vm_area_struct. Float64 fields first (even offsets). */
export const VmaL = defineStruct('vm_area_struct', {
  vm_start: 2, // f64
  vm_end: 2, // f64, exclusive
  vm_pgoff: 2, // f64: page offset; for private anon vm_start >> PAGE_SHIFT, for shared the object index
  vm_flags: 1,
  vm_mm: 1,
  vm_next: 1,
  vm_prev: 1,
  /** shared anonymous object (ShmL offset), 0 for private anonymous memory */
  shm: 1,
  /** anon_vma identity: 0 until the first anonymous page (anon_vma_prepare) */
  anon_vma: 1,
});

/** The shmem object of a shared anonymous mapping. */
export const ShmL = defineStruct('shmem_object', {
  size: 2, // f64: pages
  /** page-table root (pgtables pool index) mapping page index << PAGE_SHIFT -> frame */
  root: 1,
  /** VMAs referring to it (vm_file references) */
  refs: 1,
  /** raw lock over the index table (the page cache's xarray lock) */
  lock: 1,
  nrpages: 1,
});

// read once: struct offsets on hot paths
export const V_START = VmaL.vm_start;
export const V_END = VmaL.vm_end;
export const V_PGOFF = VmaL.vm_pgoff;
export const V_FLAGS = VmaL.vm_flags;
export const V_MM = VmaL.vm_mm;
export const V_NEXT = VmaL.vm_next;
export const V_PREV = VmaL.vm_prev;
export const V_SHM = VmaL.shm;
export const V_ANON = VmaL.anon_vma;
const M_MMAP = MmL.mmap;

export const vma_start = (k: Kernel, vma: number): number => k.arena.f64[(vma + V_START) >> 1];
export const vma_end = (k: Kernel, vma: number): number => k.arena.f64[(vma + V_END) >> 1];
export const vma_pgoff = (k: Kernel, vma: number): number => k.arena.f64[(vma + V_PGOFF) >> 1];
export const vma_flags = (k: Kernel, vma: number): number => k.arena.i32[vma + V_FLAGS];

export function vma_set_range(k: Kernel, vma: number, start: number, end: number, pgoff: number): void {
  const f = k.arena.f64;
  f[(vma + V_START) >> 1] = start;
  f[(vma + V_END) >> 1] = end;
  f[(vma + V_PGOFF) >> 1] = pgoff;
}

export function vma_pages(k: Kernel, vma: number): number {
  return (vma_end(k, vma) - vma_start(k, vma)) / k.mmLayer.pageSize;
}

export function vma_label(k: Kernel, vma: number): string {
  return `vma [0x${vma_start(k, vma).toString(16)}, 0x${vma_end(k, vma).toString(16)}) flags 0x${(vma_flags(k, vma) >>> 0).toString(16)}`;
}

/** vm_area_alloc: a zeroed VMA of `mm`, not linked; 0 when the pool is empty (-ENOMEM). */
export function vm_area_alloc(k: Kernel, mm: number): number {
  const pool = k.mmLayer.vmas;
  const i = pool.alloc();
  if (i === 0) return 0;
  const vma = pool.at(i);
  k.arena.i32[vma + V_MM] = mm;
  return vma;
}

/** vm_area_dup: a copy (same range, flags, object and anon_vma), not linked. */
export function vm_area_dup(k: Kernel, orig: number): number {
  const pool = k.mmLayer.vmas;
  const i = pool.alloc();
  if (i === 0) return 0;
  const vma = pool.at(i);
  const w = k.arena.i32;
  w.copyWithin(vma, orig, orig + VmaL.$size);
  w[vma + V_NEXT] = 0;
  w[vma + V_PREV] = 0;
  if (w[vma + V_SHM] !== 0) shmem_get(k, w[vma + V_SHM]);
  return vma;
}

/** vm_area_free (remove_vma): drop the object reference and return the VMA to the pool. */
export function vm_area_free(k: Kernel, vma: number): void {
  const w = k.arena.i32;
  const shm = w[vma + V_SHM];
  w[vma + V_SHM] = 0;
  if (shm !== 0) shmem_put(k, shm);
  const pool = k.mmLayer.vmas;
  pool.free((vma - pool.base) / pool.objWords);
}

/** anon_vma_prepare: give the VMA its anon_vma identity before its first anonymous page. */
export function anon_vma_prepare(k: Kernel, vma: number): void {
  const w = k.arena.i32;
  if (w[vma + V_ANON] === 0) w[vma + V_ANON] = Atomics.add(w, k.mmLayer.g + MMG_ANON_VMA_SEQ, 1) + 1;
}

// ---- lookup ------------------------------------------------------------------------------

/** find_vma: the first VMA with vm_end > addr, or 0. */
export function find_vma(k: Kernel, mm: number, addr: number): number {
  const w = k.arena.i32;
  const f = k.arena.f64;
  for (let v = w[mm + M_MMAP]; v !== 0; v = w[v + V_NEXT]) {
    if (f[(v + V_END) >> 1] > addr) return v;
  }
  return 0;
}

/** vma_lookup: the VMA containing addr, or 0. */
export function vma_lookup(k: Kernel, mm: number, addr: number): number {
  const v = find_vma(k, mm, addr);
  return v !== 0 && k.arena.f64[(v + V_START) >> 1] <= addr ? v : 0;
}

/** find_vma_intersection: the first VMA overlapping [start, end), or 0. */
export function find_vma_intersection(k: Kernel, mm: number, start: number, end: number): number {
  const v = find_vma(k, mm, start);
  return v !== 0 && k.arena.f64[(v + V_START) >> 1] < end ? v : 0;
}

/** The last VMA ending at or below addr (find_vma_prev's prev), or 0. */
export function vma_prev_of(k: Kernel, mm: number, addr: number): number {
  const w = k.arena.i32;
  const f = k.arena.f64;
  let prev = 0;
  for (let v = w[mm + M_MMAP]; v !== 0; v = w[v + V_NEXT]) {
    if (f[(v + V_END) >> 1] > addr) break;
    prev = v;
  }
  return prev;
}

// ---- the list ----------------------------------------------------------------------------

/** vma_link: insert in address order; the caller checked there is no overlap. */
export function vma_link(k: Kernel, mm: number, vma: number): void {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const start = f[(vma + V_START) >> 1];
  let prev = 0;
  let next = w[mm + M_MMAP];
  while (next !== 0 && f[(next + V_START) >> 1] < start) {
    prev = next;
    next = w[next + V_NEXT];
  }
  w[vma + V_MM] = mm;
  w[vma + V_PREV] = prev;
  w[vma + V_NEXT] = next;
  if (prev === 0) w[mm + M_MMAP] = vma;
  else w[prev + V_NEXT] = vma;
  if (next !== 0) w[next + V_PREV] = vma;
  w[mm + MmL.map_count]++;
  w[mm + MmL.total_vm] += vma_pages(k, vma);
  update_highest_vm_end(k, mm);
}

/** Take a VMA off its mm's list (it is not freed). */
export function vma_unlink(k: Kernel, mm: number, vma: number): void {
  const w = k.arena.i32;
  const prev = w[vma + V_PREV];
  const next = w[vma + V_NEXT];
  if (prev === 0) w[mm + M_MMAP] = next;
  else w[prev + V_NEXT] = next;
  if (next !== 0) w[next + V_PREV] = prev;
  w[vma + V_PREV] = 0;
  w[vma + V_NEXT] = 0;
  w[mm + MmL.map_count]--;
  w[mm + MmL.total_vm] -= vma_pages(k, vma);
  update_highest_vm_end(k, mm);
}

function update_highest_vm_end(k: Kernel, mm: number): void {
  const w = k.arena.i32;
  let last = w[mm + M_MMAP];
  if (last !== 0) while (w[last + V_NEXT] !== 0) last = w[last + V_NEXT];
  k.arena.f64[(mm + MmL.highest_vm_end) >> 1] = last === 0 ? 0 : vma_end(k, last);
}

/** Change a linked VMA's bounds, keeping total_vm right. */
export function vma_adjust(k: Kernel, vma: number, start: number, end: number, pgoff: number): void {
  const w = k.arena.i32;
  const mm = w[vma + V_MM];
  w[mm + MmL.total_vm] -= vma_pages(k, vma);
  vma_set_range(k, vma, start, end, pgoff);
  w[mm + MmL.total_vm] += vma_pages(k, vma);
  update_highest_vm_end(k, mm);
}

/**
 * __split_vma: cut a linked VMA at addr (page aligned, strictly inside). The new VMA is the
 * part below addr if `newBelow`, else the part above; it is linked and returned. 0 = -ENOMEM.
 */
export function split_vma(k: Kernel, mm: number, vma: number, addr: number, newBelow: boolean): number {
  const start = vma_start(k, vma);
  const end = vma_end(k, vma);
  const pgoff = vma_pgoff(k, vma);
  if (!(addr > start && addr < end)) throw new RangeError(`split_vma: 0x${addr.toString(16)} is not inside ${vma_label(k, vma)}`);
  const nv = vm_area_dup(k, vma);
  if (nv === 0) return 0;
  const off = (addr - start) / k.mmLayer.pageSize;
  if (newBelow) {
    vma_set_range(k, nv, start, addr, pgoff);
    vma_adjust(k, vma, addr, end, pgoff + off);
  } else {
    vma_set_range(k, nv, addr, end, pgoff + off);
    vma_adjust(k, vma, start, addr, pgoff);
  }
  vma_link(k, mm, nv);
  return nv;
}

/** is_mergeable: b directly follows a, and the two would be one VMA had they been made together. */
export function can_vma_merge(k: Kernel, a: number, b: number): boolean {
  const w = k.arena.i32;
  if (vma_end(k, a) !== vma_start(k, b)) return false;
  if (((w[a + V_FLAGS] ^ w[b + V_FLAGS]) & ~VM_SOFTDIRTY) !== 0) return false;
  if (w[a + V_SHM] !== w[b + V_SHM]) return false;
  const aa = w[a + V_ANON];
  const ba = w[b + V_ANON];
  if (aa !== 0 && ba !== 0 && aa !== ba) return false;
  return vma_pgoff(k, a) + vma_pages(k, a) === vma_pgoff(k, b);
}

/** Merge vma with its neighbours where compatible (vma_merge); returns the VMA that remains. */
export function vma_merge_neighbours(k: Kernel, mm: number, vma: number): number {
  const w = k.arena.i32;
  let v = vma;
  const prev = w[v + V_PREV];
  if (prev !== 0 && can_vma_merge(k, prev, v)) {
    absorb(k, mm, prev, v);
    v = prev;
  }
  const next = w[v + V_NEXT];
  if (next !== 0 && can_vma_merge(k, v, next)) absorb(k, mm, v, next);
  return v;
}

/** a takes over b's range; b is unlinked and freed. */
function absorb(k: Kernel, mm: number, a: number, b: number): void {
  const w = k.arena.i32;
  if (w[a + V_ANON] === 0) w[a + V_ANON] = w[b + V_ANON];
  const end = vma_end(k, b);
  vma_unlink(k, mm, b);
  vma_adjust(k, a, vma_start(k, a), end, vma_pgoff(k, a));
  vm_area_free(k, b);
}

/** VM_READ|VM_WRITE|VM_EXEC from PROT_* (calc_vm_prot_bits): the bit values coincide. */
export function calc_vm_prot_bits(prot: number): number {
  return prot & VM_ACCESS_FLAGS;
}

// ---- shared anonymous objects (shmem_zero_setup) ------------------------------------------

/** A new object of `pages` pages with one reference, or 0 (-ENOMEM). */
export function shmem_object_new(k: Kernel, pages: number): number {
  const pool = k.mmLayer.shm;
  const i = pool.alloc();
  if (i === 0) return 0;
  const obj = pool.at(i);
  const root = k.pgtables.pgd_alloc();
  if (root === 0) {
    pool.free(i);
    return 0;
  }
  const w = k.arena.i32;
  w[obj + ShmL.root] = root;
  w[obj + ShmL.refs] = 1;
  k.arena.f64[(obj + ShmL.size) >> 1] = pages;
  return obj;
}

export function shmem_get(k: Kernel, obj: number): void {
  Atomics.add(k.arena.i32, obj + ShmL.refs, 1);
}

/** Drop a reference; the last one frees every page of the object and its table. */
export function shmem_put(k: Kernel, obj: number): void {
  const w = k.arena.i32;
  const old = Atomics.sub(w, obj + ShmL.refs, 1);
  if (old > 1) return;
  if (old <= 0) {
    splat(k, 'bug', `BUG: shmem object @${obj.toString(16)} put with ${old} references`);
    return;
  }
  const pt = k.pgtables;
  const root = w[obj + ShmL.root];
  const z = k.zone;
  pt.walk(root, 0, k.mmLayer.vaLimit, (slot) => {
    const e = w[slot];
    w[slot] = 0;
    if (!pte_present(e)) return;
    const pfn = pte_pfn(e);
    // the page cache's reference; a mapping or pin still holding the page keeps it alive
    if (Atomics.sub(w, z.page(pfn) + PageL.refcount, 1) === 1) __free_page(k, pfn);
  });
  pt.free_pgtables(root, true);
  const pool = k.mmLayer.shm;
  pool.free((obj - pool.base) / pool.objWords);
}

/** Frame at page `index` of the object, 0 if none; the caller holds the object lock. */
export function shmem_lookup_locked(k: Kernel, obj: number, index: number, alloc: boolean): number {
  const root = k.arena.i32[obj + ShmL.root];
  return k.pgtables.pte_offset(root, index * k.mmLayer.pageSize, alloc);
}

export function shmem_lock(k: Kernel, obj: number): void {
  arch_spin_lock(k.arena.i32, obj + ShmL.lock);
}

export function shmem_unlock(k: Kernel, obj: number): void {
  arch_spin_unlock(k.arena.i32, obj + ShmL.lock);
}

/** Every VMA of mm, in order (reports and tests). */
export function vma_list(k: Kernel, mm: number): { start: number; end: number; flags: number; pgoff: number; shm: number }[] {
  const out = [];
  const w = k.arena.i32;
  for (let v = w[mm + M_MMAP]; v !== 0; v = w[v + V_NEXT]) {
    out.push({ start: vma_start(k, v), end: vma_end(k, v), flags: w[v + V_FLAGS], pgoff: vma_pgoff(k, v), shm: w[v + V_SHM] });
  }
  return out;
}
