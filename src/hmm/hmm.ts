// hmm_range_fault (mm/hmm.c, reference §3): snapshot the CPU page table of a range into
// hmm_pfns, faulting pages in first where the caller asks for it. The caller holds the
// mmap_lock and got range.notifier_seq from mmu_interval_read_begin; the result is only good
// if mmu_interval_read_retry(notifier, seq) is still false under the driver lock (§3.4).
//
// The walk goes VMA by VMA (walk_page_range), then PTE table by PTE table. A fault runs
// handle_mm_fault for every page from the faulting one to the end of its PTE table, then
// restarts the walk from the first page not yet written (-EBUSY inside the loop): entries
// below `last` hold outputs, the rest still hold inputs. A fault may raise an invalidation
// (a COW break raises CLEAR), which the next check_retry turns into -EBUSY for the caller.
//
// Under `sim` the walk has scheduling points per VMA, per PTE table and per faulted page, the
// places a preemptible kernel may switch, so invalidations interleave with it.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EBUSY, EFAULT, EINVAL, EPERM } from '../shm/errno.js';
import { mmu_interval_check_retry } from '../notifier/interval.js';
import { MinL } from '../notifier/subscriptions.js';
import { FAULT_FLAG_REMOTE, FAULT_FLAG_WRITE, VM_FAULT_ERROR, handle_mm_fault } from '../mm/memory.js';
import { emitFault, emitFaultDone } from '../mm/events.js';
import { mmap_assert_locked } from '../mm/mm_inline.js';
import { pte_lookup, pte_protnone } from '../mm/mm_pt.js';
import { PageL, ZERO_PFN } from '../mm/page.js';
import {
  is_device_exclusive_entry,
  is_device_private_entry,
  is_migration_entry,
  is_swap_entry,
  is_writable_swp_entry,
  pte_pfn,
  pte_present,
  pte_special,
  pte_write,
  swp_offset,
  PTRS_PER_TABLE,
} from '../mm/pgtable.js';
import { MmL, VM_IO, VM_PFNMAP, VM_READ, VM_WRITE } from '../mm/types.js';
import { V_FLAGS, find_vma, vma_end, vma_start } from '../mm/vma.js';
import { HMM_PFN_ERROR, HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE } from './pfn.js';

export * from './pfn.js';

/** The bound drivers put on their read_begin / hmm_range_fault / read_retry loop, in ms. */
export const HMM_RANGE_DEFAULT_TIMEOUT = 1000;

/**
 * How long one migration_entry_wait sleeps at most before the walk looks again (ns). The
 * kernel sleeps on the folio lock; whoever removes a migration entry here wakes the PTE word
 * (k.sched.wake(slot, Infinity)), and the bound covers a remover that does not.
 */
export const MIGRATION_WAIT_NS = 1_000_000;

/** struct hmm_range: the caller's own (a stack variable in the kernel), read by the walk. */
export class HmmRange {
  /** struct mmu_interval_notifier * (word offset); its mm is the one walked */
  notifier = 0;
  /** mmu_interval_read_begin's result */
  notifier_seq = 0;
  /** page aligned, inclusive */
  start = 0;
  /** page aligned, exclusive */
  end = 0;
  /** in and out, two Uint32 words per page (pfn.ts) */
  hmm_pfns: Uint32Array = new Uint32Array(0);
  /** high-word masks (pfn.ts): request = (hmm_pfns[i] & pfn_flags_mask) | default_flags */
  default_flags = 0;
  pfn_flags_mask = 0;
  /** device-private pages of this pgmap owner are reported as they are, never faulted (0 = NULL) */
  dev_private_owner = 0;
}

// required_fault bits (mm/hmm.c)
const HMM_NEED_FAULT = 1 << 0;
const HMM_NEED_WRITE_FAULT = 1 << 1;
const HMM_NEED_ALL_BITS = HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT;
/** handle_pte's "sleep on a migration entry, then -EBUSY" */
const MIGRATION_WAIT = 1 << 2;

/** struct hmm_vma_walk */
interface HmmVmaWalk {
  readonly k: Kernel;
  readonly range: HmmRange;
  readonly mm: number;
  /** mm->pgd, read at each walk: the first fault of an mm allocates it */
  pgd: number;
  readonly ps: number;
  last: number;
  /** the slot and entry handle_pte saw a migration entry in */
  waitSlot: number;
  waitPte: number;
}

/** The caller's arguments, checked where C would trust them. 0 or -EINVAL. */
function range_error(k: Kernel, range: HmmRange): number {
  const ps = k.mmLayer.pageSize;
  const { start, end, hmm_pfns } = range;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0) return -EINVAL;
  // walk_page_range: start >= end is -EINVAL
  if (start % ps !== 0 || end % ps !== 0 || end <= start) return -EINVAL;
  if (!(hmm_pfns instanceof Uint32Array) || hmm_pfns.length < (2 * (end - start)) / ps) return -EINVAL;
  return 0;
}

/**
 * hmm_range_fault: 0 with every page of the range in hmm_pfns; -EBUSY (the range was
 * invalidated: go back to mmu_interval_read_begin); -EFAULT (a page asked for has no VMA, no
 * read right, or its fault failed); -EPERM (write asked for in a VMA without VM_WRITE);
 * -EINVAL (bad range, hmm_pfns too short, no notifier).
 */
export async function hmm_range_fault(range: HmmRange): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const sub = range.notifier;
  if (!(sub > 0) || (sub & 1) !== 0) return -EINVAL;
  const mm = w[sub + MinL.mm];
  if (!(mm > 0)) return -EINVAL;
  mmap_assert_locked(mm);
  const bad = range_error(k, range);
  if (bad !== 0) return bad;
  const walk: HmmVmaWalk = { k, range, mm, pgd: w[mm + MmL.pgd], ps: k.mmLayer.pageSize, last: range.start, waitSlot: -1, waitPte: 0 };
  let ret: number;
  do {
    // If range is no longer valid force retry.
    if (mmu_interval_check_retry(sub, range.notifier_seq)) return -EBUSY;
    ret = await walk_page_range(walk);
  } while (ret === -EBUSY);
  return ret;
}

function point(k: Kernel): Promise<void> | undefined {
  return k.sched.point();
}

/** walk_page_range from walk.last to range.end: holes between VMAs, then each VMA. */
async function walk_page_range(walk: HmmVmaWalk): Promise<number> {
  const { k, range } = walk;
  const end = range.end;
  let start = walk.last;
  walk.pgd = k.arena.i32[walk.mm + MmL.pgd];
  let vma = find_vma(k, walk.mm, start);
  while (start < end) {
    let next: number;
    let err: number;
    if (vma === 0) {
      next = end;
      err = hmm_vma_walk_hole(walk, start, next, 0);
    } else if (start < vma_start(k, vma)) {
      next = Math.min(end, vma_start(k, vma));
      err = hmm_vma_walk_hole(walk, start, next, 0);
    } else {
      const cur = vma;
      next = Math.min(end, vma_end(k, cur));
      vma = find_vma(k, walk.mm, vma_end(k, cur));
      err = hmm_vma_walk_test(walk, cur, start, next);
      if (err < 0) return err;
      err = err > 0 ? 0 : await walk_vma(walk, cur, start, next);
    }
    if (err !== 0) return err;
    start = next;
    const p = point(k); // the mmap_lock is held: the VMA list cannot change across this
    if (p !== undefined) await p;
  }
  return 0;
}

/** __walk_page_range inside one VMA, one PTE table (PMD span) at a time. */
async function walk_vma(walk: HmmVmaWalk, vma: number, start: number, end: number): Promise<number> {
  const { k, pgd, ps } = walk;
  const span = ps * PTRS_PER_TABLE;
  for (let addr = start; addr < end; ) {
    const next = Math.min(end, (Math.floor(addr / span) + 1) * span);
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
    // no PTE table: pmd_none, a hole
    const r = slot < 0 ? hmm_vma_walk_hole(walk, addr, next, vma) : hmm_vma_walk_pmd(walk, addr, next, slot);
    if (r === 0) {
      addr = next;
      const p = point(k);
      if (p !== undefined) await p;
      continue;
    }
    if (r < 0) return r;
    if ((r & MIGRATION_WAIT) !== 0) return migration_entry_wait(walk);
    // a PTE needs a fault: fault it and everything after it in this table
    return hmm_vma_fault(walk, vma, walk.last, next, r);
  }
  return 0;
}

/**
 * hmm_vma_walk_pmd's PTE loop from the slot of `addr`. 0, a negative errno, or required_fault
 * bits (walk.last = the page that needs the fault), or MIGRATION_WAIT.
 */
function hmm_vma_walk_pmd(walk: HmmVmaWalk, addr: number, end: number, slot: number): number {
  const w = walk.k.arena.i32;
  const ps = walk.ps;
  let i = (addr - walk.range.start) / ps;
  for (; addr < end; addr += ps, slot++, i++) {
    const r = hmm_vma_handle_pte(walk, addr, i, slot, w[slot]);
    if (r !== 0) {
      if (r > 0) walk.last = addr;
      return r;
    }
  }
  return 0;
}

/** The request bits of page i (hmm_pte_need_fault). */
function hmm_pte_need_fault(range: HmmRange, pfn_req_flags: number, cpu_flags: number): number {
  pfn_req_flags = (pfn_req_flags & range.pfn_flags_mask) | range.default_flags;
  // We aren't ask to do anything ...
  if ((pfn_req_flags & HMM_PFN_REQ_FAULT) === 0) return 0;
  if ((pfn_req_flags & HMM_PFN_REQ_WRITE) !== 0 && (cpu_flags & HMM_PFN_WRITE) === 0) return HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT;
  if ((cpu_flags & HMM_PFN_VALID) === 0) return HMM_NEED_FAULT;
  return 0;
}

/** hmm_range_need_fault over pages [i, i + npages) */
function hmm_range_need_fault(range: HmmRange, i: number, npages: number, cpu_flags: number): number {
  // no fault can be asked for: skip the loop
  if (((range.default_flags | range.pfn_flags_mask) & HMM_PFN_REQ_FAULT) === 0) return 0;
  const pfns = range.hmm_pfns;
  let required = 0;
  for (let j = i; j < i + npages; j++) {
    required |= hmm_pte_need_fault(range, pfns[2 * j + 1], cpu_flags);
    if (required === HMM_NEED_ALL_BITS) return required;
  }
  return required;
}

/** hmm_pfns_fill: every page of [addr, end) gets cpu_flags (a high-word mask) and pfn 0. */
function hmm_pfns_fill(walk: HmmVmaWalk, addr: number, end: number, cpu_flags: number): void {
  const { range, ps } = walk;
  const pfns = range.hmm_pfns;
  for (let i = (addr - range.start) / ps; addr < end; addr += ps, i++) {
    pfns[2 * i] = 0;
    pfns[2 * i + 1] = (pfns[2 * i + 1] & HMM_PFN_INOUT_FLAGS) | cpu_flags;
  }
}

/** hmm_vma_walk_hole: no VMA (vma 0), or no page table inside one. 0, -EFAULT or required_fault bits. */
function hmm_vma_walk_hole(walk: HmmVmaWalk, addr: number, end: number, vma: number): number {
  const { range, ps } = walk;
  const required = hmm_range_need_fault(range, (addr - range.start) / ps, (end - addr) / ps, 0);
  if (vma === 0) {
    if (required !== 0) return -EFAULT;
    hmm_pfns_fill(walk, addr, end, HMM_PFN_ERROR);
    return 0;
  }
  if (required !== 0) {
    walk.last = addr;
    return required;
  }
  hmm_pfns_fill(walk, addr, end, 0);
  return 0;
}

/**
 * hmm_vma_walk_test: a VMA without struct pages (VM_IO, VM_PFNMAP) or without read access
 * cannot be mirrored: -EFAULT if a fault is asked for, else ERROR entries and skip it (1).
 */
function hmm_vma_walk_test(walk: HmmVmaWalk, vma: number, start: number, end: number): number {
  const f = walk.k.arena.i32[vma + V_FLAGS];
  if ((f & (VM_IO | VM_PFNMAP)) === 0 && (f & VM_READ) !== 0) return 0;
  const { range, ps } = walk;
  if (hmm_range_need_fault(range, (start - range.start) / ps, (end - start) / ps, 0) !== 0) return -EFAULT;
  hmm_pfns_fill(walk, start, end, HMM_PFN_ERROR);
  return 1;
}

/** pte_to_hmm_pfn_flags: a protnone PTE is not accessible */
function pte_to_hmm_pfn_flags(pte: number): number {
  if (!pte_present(pte) || pte_protnone(pte)) return 0;
  return pte_write(pte) ? HMM_PFN_VALID | HMM_PFN_WRITE : HMM_PFN_VALID;
}

/** Write page i's output: sticky input flags | pfn | cpu_flags. */
function set_out(pfns: Uint32Array, i: number, pfn: number, cpu_flags: number): void {
  pfns[2 * i] = pfn;
  pfns[2 * i + 1] = (pfns[2 * i + 1] & HMM_PFN_INOUT_FLAGS) | cpu_flags;
}

/** hmm_vma_handle_pte for page i at addr: 0 (output written), -EFAULT, required_fault bits or MIGRATION_WAIT. */
function hmm_vma_handle_pte(walk: HmmVmaWalk, addr: number, i: number, slot: number, pte: number): number {
  const { k, range } = walk;
  const pfns = range.hmm_pfns;
  const req = pfns[2 * i + 1];
  if (pte === 0) {
    const required = hmm_pte_need_fault(range, req, 0);
    if (required !== 0) return required;
    set_out(pfns, i, 0, 0);
    return 0;
  }
  if (!pte_present(pte)) {
    // Don't fault in device private pages owned by the caller, just report the PFN.
    if (is_device_private_entry(pte)) {
      const pfn = swp_offset(pte);
      const owner = pfn < k.zone.nrPages ? k.arena.i32[k.zone.page(pfn) + PageL.owner] : 0;
      if (owner !== 0 && owner === range.dev_private_owner) {
        set_out(pfns, i, pfn, is_writable_swp_entry(pte) ? HMM_PFN_VALID | HMM_PFN_WRITE : HMM_PFN_VALID);
        return 0;
      }
    }
    const required = hmm_pte_need_fault(range, req, 0);
    if (required === 0) {
      set_out(pfns, i, 0, 0);
      return 0;
    }
    if (is_swap_entry(pte) || is_device_private_entry(pte) || is_device_exclusive_entry(pte)) return required;
    if (is_migration_entry(pte)) {
      walk.last = addr;
      walk.waitSlot = slot;
      walk.waitPte = pte;
      return MIGRATION_WAIT;
    }
    // Report error for everything else
    return -EFAULT;
  }
  const cpu_flags = pte_to_hmm_pfn_flags(pte);
  const required = hmm_pte_need_fault(range, req, cpu_flags);
  if (required !== 0) return required;
  const pfn = pte_pfn(pte);
  // a special mapping without a struct page; the zero page has one
  if (pte_special(pte) && pfn !== ZERO_PFN) {
    if (hmm_pte_need_fault(range, req, 0) !== 0) return -EFAULT;
    set_out(pfns, i, 0, HMM_PFN_ERROR);
    return 0;
  }
  set_out(pfns, i, pfn, cpu_flags);
  return 0;
}

/**
 * hmm_vma_fault: fault every page of [addr, end) (-EPERM for a write fault in a VMA without
 * VM_WRITE), then -EBUSY so the walk restarts at addr; -EFAULT if a fault failed.
 */
async function hmm_vma_fault(walk: HmmVmaWalk, vma: number, addr: number, end: number, required: number): Promise<number> {
  const k = walk.k;
  walk.last = addr;
  let fault_flags = FAULT_FLAG_REMOTE;
  if ((required & HMM_NEED_WRITE_FAULT) !== 0) {
    if ((k.arena.i32[vma + V_FLAGS] & VM_WRITE) === 0) return -EPERM;
    fault_flags |= FAULT_FLAG_WRITE;
  }
  for (; addr < end; addr += walk.ps) {
    emitFault(k, walk.mm, addr, fault_flags);
    let r = handle_mm_fault(walk.mm, vma, addr, fault_flags);
    if (typeof r !== 'number') r = await r;
    emitFaultDone(k, walk.mm, addr, r);
    if ((r & VM_FAULT_ERROR) !== 0) return -EFAULT;
    const p = point(k);
    if (p !== undefined) await p;
  }
  return -EBUSY;
}

/**
 * migration_entry_wait: sleep until the PTE stops being that migration entry (or a bound
 * passes), then -EBUSY: the walk restarts at the page.
 */
async function migration_entry_wait(walk: HmmVmaWalk): Promise<number> {
  const k = walk.k;
  const slot = walk.waitSlot;
  walk.waitSlot = -1;
  if (Atomics.load(k.arena.i32, slot) === walk.waitPte) {
    const r = k.sched.wait(slot, walk.waitPte, MIGRATION_WAIT_NS);
    if (typeof r !== 'number') await r;
  }
  return -EBUSY;
}
