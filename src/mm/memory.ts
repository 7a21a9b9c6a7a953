// Page faults (mm/memory.c): handle_mm_fault for private and shared anonymous memory.
// - a read of an untouched private page maps the shared zero page read-only;
// - a write allocates a zeroed frame (do_anonymous_page), or, on a read-only PTE, reuses the
//   page when this is its only user, else copies it (wp_page_copy: MMU_NOTIFY_CLEAR on that
//   page, blockable, started before the PTE changes and ended after);
// - MMF_UNSTABLE (the OOM reaper started) makes a fault that would install an anon PTE fail
//   with VM_FAULT_SIGBUS (check_stable_address_space).
// The caller holds the mmap_lock for read. PTEs change only under the PTE lock, which is
// dropped across anything that may sleep (allocation, notifier start/end); the PTE is then
// checked again. A fault returns a number when it did not sleep, a promise when it did.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { spin_lock, spin_unlock } from '../sync/spinlock.js';
import { MMU_NOTIFY_CLEAR, MmuNotifierRange, mmu_notifier_range_init } from '../notifier/range.js';
import { mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start } from '../notifier/invalidate.js';
import { GFP_HIGHUSER_MOVABLE, GFP_KERNEL, __GFP_ZERO } from './gfp.js';
import { flush_tlb_mm, get_page, mm_pgd, _PAGE_PROTNONE, pte_alloc_lookup, pte_lookup, ptl_of, put_page, swapCacheHooks } from './mm_pt.js';
import { PG_anon, PG_anon_exclusive, PG_swapbacked, PG_swapcache, PG_uptodate, PageL, ZERO_PFN } from './page.js';
import { alloc_page, copyPage, memcgHooks } from './page_alloc.js';
import { folio_add_lru, folio_add_lru_vma } from './lru.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW, _PAGE_SPECIAL, is_swap_entry, mk_pte, pte_present, pte_special } from './pgtable.js';
import { page_add_rmap, page_remove_rmap } from './rmap.js';
import { MMF_UNSTABLE, MM_ANONPAGES, MM_SHMEMPAGES, MmL, VM_ACCESS_FLAGS, VM_SHARED, VM_WRITE } from './types.js';
import { ShmL, V_END, V_FLAGS, V_PGOFF, V_SHM, V_START, anon_vma_prepare, shmem_lock, shmem_lookup_locked, shmem_unlock } from './vma.js';

// enum fault_flag
export const FAULT_FLAG_WRITE = 1 << 0;
export const FAULT_FLAG_MKWRITE = 1 << 1;
export const FAULT_FLAG_ALLOW_RETRY = 1 << 2;
export const FAULT_FLAG_RETRY_NOWAIT = 1 << 3;
export const FAULT_FLAG_KILLABLE = 1 << 4;
export const FAULT_FLAG_TRIED = 1 << 5;
export const FAULT_FLAG_USER = 1 << 6;
export const FAULT_FLAG_REMOTE = 1 << 7;
export const FAULT_FLAG_INSTRUCTION = 1 << 8;
export const FAULT_FLAG_INTERRUPTIBLE = 1 << 9;
export const FAULT_FLAG_UNSHARE = 1 << 10;

// vm_fault_t
export const VM_FAULT_OOM = 0x000001;
export const VM_FAULT_SIGBUS = 0x000002;
export const VM_FAULT_MAJOR = 0x000004;
export const VM_FAULT_HWPOISON = 0x000010;
export const VM_FAULT_HWPOISON_LARGE = 0x000020;
export const VM_FAULT_SIGSEGV = 0x000040;
export const VM_FAULT_NOPAGE = 0x000100;
export const VM_FAULT_LOCKED = 0x000200;
export const VM_FAULT_RETRY = 0x000400;
export const VM_FAULT_FALLBACK = 0x000800;
export const VM_FAULT_DONE_COW = 0x001000;
export const VM_FAULT_COMPLETED = 0x004000;
export const VM_FAULT_ERROR = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE | VM_FAULT_FALLBACK;

const M_FLAGS = MmL.flags;
const M_RSS = MmL.rss_stat;
const P_FLAGS = PageL.flags;
const P_REF = PageL.refcount;
const PRESENT = 1;
const NEW_ANON = PG_anon | PG_anon_exclusive | PG_swapbacked | PG_uptodate;

type NonPresentFault = (k: Kernel, mm: number, vma: number, addr: number, pte: number, flags: number) => number | Promise<number>;

/**
 * Hooks for non-present PTEs, filled by the layers that create them; called with the PTE lock
 * NOT held. do_swap_page: real swap entries (the swap layer). do_non_swap_entry: migration,
 * device-private and device-exclusive entries (device_entries.ts).
 */
export const faultHooks: { do_swap_page: NonPresentFault | null; do_non_swap_entry: NonPresentFault | null; pagefault_out_of_memory: ((k: Kernel) => void) | null } = {
  do_swap_page: null,
  do_non_swap_entry: null,
  pagefault_out_of_memory: null, // oom_kill.ts
};

/** check_stable_address_space */
function unstable(w: Int32Array, mm: number): boolean {
  return (Atomics.load(w, mm + M_FLAGS) & (1 << MMF_UNSTABLE)) !== 0;
}

/**
 * handle_mm_fault: resolve a fault at `address` in `vma` of `mm`, with the mmap_lock held.
 * Returns 0 or VM_FAULT_* bits. A write to a VMA without VM_WRITE, or any access to a VMA
 * without access rights (PROT_NONE), is VM_FAULT_SIGSEGV (x86's access_error, checked here
 * too so that every caller gets it).
 */
export function handle_mm_fault(mm: number, vma: number, address: number, flags: number): number | Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const f = k.arena.f64;
  const vflags = w[vma + V_FLAGS];
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  if (!(address >= f[(vma + V_START) >> 1] && address < f[(vma + V_END) >> 1])) return VM_FAULT_SIGSEGV;
  if (write ? (vflags & VM_WRITE) === 0 : (vflags & VM_ACCESS_FLAGS) === 0) return VM_FAULT_SIGSEGV;
  const ps = k.mmLayer.pageSize;
  const addr = address - (address % ps);
  const pgd = mm_pgd(k, mm);
  if (pgd === 0) return VM_FAULT_OOM;
  const slot = pte_lookup(k, pgd, addr);
  const pte = slot < 0 ? 0 : w[slot];
  if (pte === 0) {
    if ((vflags & VM_SHARED) !== 0) return do_shared_fault(k, mm, vma, addr, write);
    return do_anonymous_page(k, mm, vma, addr, write);
  }
  if (!pte_present(pte)) {
    const swap = is_swap_entry(pte);
    const hook = swap ? faultHooks.do_swap_page : faultHooks.do_non_swap_entry;
    if (hook) return hook(k, mm, vma, addr, pte, flags);
    splat(k, 'warn', `WARNING: handle_mm_fault: non-present PTE 0x${(pte >>> 0).toString(16)} at 0x${addr.toString(16)} and no ${swap ? 'swap layer' : 'device-memory layer (src/mm/device_entries.ts)'}`);
    return VM_FAULT_SIGBUS;
  }
  return handle_present(k, mm, vma, addr, write);
}

/** A present PTE: a write to a read-only one goes to do_wp_page; else a spurious fault. */
function handle_present(k: Kernel, mm: number, vma: number, addr: number, write: boolean): number | Promise<number> {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_lookup(k, w[mm + MmL.pgd], addr);
  let pte = slot < 0 ? 0 : w[slot];
  if ((pte & PRESENT) === 0) {
    spin_unlock(ptl); // zapped meanwhile: let the access retry
    return 0;
  }
  if ((pte & _PAGE_PROTNONE) !== 0) {
    // the VMA is accessible (checked by the caller) but the PTE kept PROT_NONE: fix it up
    pte &= ~(_PAGE_PROTNONE | _PAGE_RW);
    if ((w[vma + V_FLAGS] & (VM_SHARED | VM_WRITE)) === (VM_SHARED | VM_WRITE)) pte |= _PAGE_RW;
    w[slot] = pte;
  }
  if (write && (pte & _PAGE_RW) === 0) return do_wp_page(k, mm, vma, addr, slot, pte);
  w[slot] = pte | _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0);
  spin_unlock(ptl);
  return 0;
}

// ---- private anonymous memory ----------------------------------------------------------------

function do_anonymous_page(k: Kernel, mm: number, vma: number, addr: number, write: boolean): number | Promise<number> {
  const w = k.arena.i32;
  if (!write) {
    // Use the zero page for reads
    const ptl = ptl_of(k, mm);
    spin_lock(ptl);
    const slot = pte_alloc_lookup(k, w[mm + MmL.pgd], addr);
    let ret = 0;
    if (slot === -2) ret = VM_FAULT_OOM;
    else if (w[slot] !== 0) ret = 0;
    else if (unstable(w, mm)) ret = VM_FAULT_SIGBUS;
    else w[slot] = mk_pte(ZERO_PFN, false) | _PAGE_SPECIAL | _PAGE_ACCESSED;
    spin_unlock(ptl);
    return ret;
  }
  const r = folio_prealloc(k, mm, true);
  if (typeof r === 'number') return anon_install(k, mm, vma, addr, r);
  return r.then((pfn) => anon_install(k, mm, vma, addr, pfn));
}

function anon_install(k: Kernel, mm: number, vma: number, addr: number, pfn: number): number {
  if (pfn === 0) return VM_FAULT_OOM;
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  Atomics.or(w, p + P_FLAGS, NEW_ANON); // atomic: reclaim may lock a page it can reach
  k.arena.f64[(p + PageL.index) >> 1] = addr / k.mmLayer.pageSize;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_alloc_lookup(k, w[mm + MmL.pgd], addr);
  let ret = 0;
  if (slot === -2) ret = VM_FAULT_OOM;
  else if (w[slot] !== 0) ret = -1; // someone else mapped it: use theirs
  else if (unstable(w, mm)) ret = VM_FAULT_SIGBUS;
  else {
    anon_vma_prepare(k, vma);
    if (!page_add_rmap(k, pfn, mm, addr)) ret = VM_FAULT_OOM;
    else {
      folio_add_lru_vma(k, pfn, vma); // before the PTE makes it visible, as do_anonymous_page
      w[slot] = mk_pte(pfn, true) | _PAGE_DIRTY | _PAGE_ACCESSED;
      w[mm + M_RSS + MM_ANONPAGES]++;
    }
  }
  spin_unlock(ptl);
  if (ret !== 0) {
    Atomics.and(w, p + P_FLAGS, ~NEW_ANON);
    put_page(k, pfn);
    if (ret === -1) ret = 0;
  }
  return ret;
}

/**
 * do_wp_page: a write to a present read-only PTE of a private mapping, PTE lock held (it is
 * released here). Reuse the page if nobody else can see it, else copy it.
 */
function do_wp_page(k: Kernel, mm: number, vma: number, addr: number, slot: number, pte: number): number | Promise<number> {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  if ((w[vma + V_FLAGS] & VM_SHARED) !== 0) {
    // wp_page_shared: shmem needs no write notification
    w[slot] = pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED;
    spin_unlock(ptl);
    return 0;
  }
  if (pte_special(pte)) {
    spin_unlock(ptl);
    return wp_page_copy(k, mm, vma, addr, pte, ZERO_PFN);
  }
  const pfn = pte >>> 12;
  const p = k.zone.page(pfn);
  const pf = w[p + P_FLAGS];
  if ((pf & PG_anon) !== 0) {
    // wp_can_reuse_anon_folio: exclusive, or our reference is the only one
    if ((pf & PG_anon_exclusive) !== 0 || (w[p + P_REF] === 1 && (pf & PG_swapcache) === 0)) {
      Atomics.or(w, p + P_FLAGS, PG_anon_exclusive); // atomic: reclaim may hold the folio lock bit meanwhile
      w[slot] = pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED;
      spin_unlock(ptl);
      return 0;
    }
  }
  get_page(k, pfn);
  spin_unlock(ptl);
  return wp_page_copy(k, mm, vma, addr, pte, pfn);
}

/**
 * wp_page_copy: break COW (or leave the zero page) with a new frame. MMU_NOTIFY_CLEAR over the
 * one page, blockable; the PTE changes between start and end. `old` carries a reference taken
 * by the caller (none for the zero page).
 */
function wp_page_copy(k: Kernel, mm: number, vma: number, addr: number, orig: number, old: number): number | Promise<number> {
  const r = folio_prealloc(k, mm, old === ZERO_PFN);
  if (typeof r === 'number') return wp_copy_start(k, mm, vma, addr, orig, old, r);
  return r.then((pfn) => wp_copy_start(k, mm, vma, addr, orig, old, pfn));
}

function wp_copy_start(k: Kernel, mm: number, vma: number, addr: number, orig: number, old: number, pfn: number): number | Promise<number> {
  if (pfn === 0) {
    put_page(k, old);
    return VM_FAULT_OOM;
  }
  if (old !== ZERO_PFN) copyPage(k, pfn, old);
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  Atomics.or(w, p + P_FLAGS, NEW_ANON); // atomic: reclaim may lock a page it can reach
  k.arena.f64[(p + PageL.index) >> 1] = addr / k.mmLayer.pageSize;
  const range = new MmuNotifierRange();
  mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, mm, addr, addr + k.mmLayer.pageSize);
  const s = mmu_notifier_invalidate_range_start(range);
  if (s !== undefined) return s.then(() => wp_copy_commit(k, mm, vma, addr, orig, old, pfn, range));
  return wp_copy_commit(k, mm, vma, addr, orig, old, pfn, range);
}

function wp_copy_commit(k: Kernel, mm: number, vma: number, addr: number, orig: number, old: number, pfn: number, range: MmuNotifierRange): number | Promise<number> {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  let ret = 0;
  let replaced = false;
  spin_lock(ptl);
  const slot = pte_lookup(k, w[mm + MmL.pgd], addr);
  if (slot >= 0 && w[slot] === orig) {
    anon_vma_prepare(k, vma);
    if (!page_add_rmap(k, pfn, mm, addr)) ret = VM_FAULT_OOM;
    else {
      if (old !== ZERO_PFN) page_remove_rmap(k, old, mm, addr);
      else w[mm + M_RSS + MM_ANONPAGES]++;
      folio_add_lru_vma(k, pfn, vma);
      w[slot] = mk_pte(pfn, true) | _PAGE_DIRTY | _PAGE_ACCESSED;
      replaced = true;
    }
  }
  spin_unlock(ptl);
  if (!replaced) {
    // the PTE changed under us (or no rmap node): drop the copy, the access retries
    Atomics.and(w, k.zone.page(pfn) + P_FLAGS, ~NEW_ANON);
    put_page(k, pfn);
  } else if (old !== ZERO_PFN) {
    flush_tlb_mm(k, mm);
    swapCacheHooks.free_swap_cache?.(k, old);
    put_page(k, old); // the old PTE's reference
  }
  const e = mmu_notifier_invalidate_range_end(range);
  if (e === undefined) {
    put_page(k, old); // ours, from do_wp_page
    return ret;
  }
  return e.then(() => {
    put_page(k, old);
    return ret;
  });
}

// ---- shared anonymous memory (shmem) ---------------------------------------------------------

function do_shared_fault(k: Kernel, mm: number, vma: number, addr: number, write: boolean): number | Promise<number> {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const obj = w[vma + V_SHM];
  const index = f[(vma + V_PGOFF) >> 1] + (addr - f[(vma + V_START) >> 1]) / k.mmLayer.pageSize;
  if (obj === 0 || index >= f[(obj + ShmL.size) >> 1]) return VM_FAULT_SIGBUS; // beyond the object's end
  const got = shmem_get_page(k, obj, index, 0);
  if (got < 0) return VM_FAULT_OOM;
  if (got > 0) return shared_map(k, mm, vma, addr, got, write);
  const r = folio_prealloc(k, mm, true); // shmem_alloc_and_add_folio: charged to the faulting mm
  const cont = (fresh: number): number => {
    if (fresh === 0) return VM_FAULT_OOM;
    const pfn = shmem_get_page(k, obj, index, fresh);
    if (pfn < 0) return VM_FAULT_OOM;
    return shared_map(k, mm, vma, addr, pfn, write);
  };
  return typeof r === 'number' ? cont(r) : r.then(cont);
}

/**
 * shmem_get_folio: the object's frame at `index` with a reference for the caller. If there is
 * none, insert `fresh` (when given) or return 0; an unused `fresh` is freed. -1 = -ENOMEM.
 */
function shmem_get_page(k: Kernel, obj: number, index: number, fresh: number): number {
  const w = k.arena.i32;
  shmem_lock(k, obj);
  const slot = shmem_lookup_locked(k, obj, index, true);
  let pfn = 0;
  if (slot >= 0) {
    if (w[slot] !== 0) pfn = w[slot] >>> 12;
    else if (fresh !== 0) {
      const p = k.zone.page(fresh);
      Atomics.or(w, p + P_FLAGS, PG_swapbacked | PG_uptodate);
      k.arena.f64[(p + PageL.index) >> 1] = index;
      w[slot] = mk_pte(fresh, false); // the page cache's reference is the allocation's
      w[obj + ShmL.nrpages]++;
      folio_add_lru(k, fresh); // shmem_add_to_page_cache, then folio_add_lru
      pfn = fresh;
      fresh = 0;
    }
    if (pfn !== 0) get_page(k, pfn);
  }
  shmem_unlock(k, obj);
  if (fresh !== 0) put_page(k, fresh);
  return slot < 0 ? -1 : pfn;
}

/** finish_fault for a shared mapping: writable when the VMA is (no write notification). */
function shared_map(k: Kernel, mm: number, vma: number, addr: number, pfn: number, write: boolean): number {
  const w = k.arena.i32;
  const ptl = ptl_of(k, mm);
  spin_lock(ptl);
  const slot = pte_alloc_lookup(k, w[mm + MmL.pgd], addr);
  let ret = 0;
  let mapped = false;
  if (slot === -2) ret = VM_FAULT_OOM;
  else if (w[slot] === 0) {
    if (!page_add_rmap(k, pfn, mm, addr)) ret = VM_FAULT_OOM;
    else {
      w[slot] = mk_pte(pfn, (w[vma + V_FLAGS] & VM_WRITE) !== 0) | _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0);
      w[mm + M_RSS + MM_SHMEMPAGES]++;
      mapped = true;
    }
  }
  spin_unlock(ptl);
  if (!mapped) put_page(k, pfn);
  return ret;
}

/**
 * folio_prealloc: a new frame (zeroed if asked) charged to mm's memcg, or 0 when either the
 * allocation or the charge failed (the fault then returns VM_FAULT_OOM).
 */
export function folio_prealloc(k: Kernel, mm: number, zero: boolean): number | Promise<number> {
  const r = alloc_page(k, GFP_HIGHUSER_MOVABLE | (zero ? __GFP_ZERO : 0));
  if (typeof r !== 'number') return r.then((pfn) => folio_charge(k, mm, pfn));
  return folio_charge(k, mm, r);
}

/** mem_cgroup_charge of a fresh frame; on failure the frame goes back and the result is 0. */
function folio_charge(k: Kernel, mm: number, pfn: number): number | Promise<number> {
  const charge = memcgHooks.charge;
  if (pfn === 0 || charge === null) return pfn;
  const c = charge(k, pfn, mm, GFP_KERNEL);
  if (c === 0) return pfn;
  if (typeof c !== 'number') return c.then((v) => (v === 0 ? pfn : (put_page(k, pfn), 0)));
  put_page(k, pfn);
  return 0;
}

/**
 * A fault result as the signal a user access raises: 0 (retry the access), SIGSEGV or SIGBUS.
 * VM_FAULT_OOM goes to pagefault_out_of_memory and the access is retried, as x86's
 * mm_fault_error does: the OOM killer already ran where the allocation or charge failed.
 */
export function fault_signal(ret: number): number {
  if ((ret & VM_FAULT_OOM) !== 0) {
    faultHooks.pagefault_out_of_memory?.(current.k);
    return 0;
  }
  if ((ret & VM_FAULT_SIGSEGV) !== 0) return SIGSEGV;
  if ((ret & VM_FAULT_ERROR) !== 0) return SIGBUS;
  return 0;
}

export const SIGBUS = 7;
export const SIGKILL = 9;
export const SIGSEGV = 11;
