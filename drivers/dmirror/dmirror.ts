// struct dmirror (one open device file) and its mirror: the shadow page table `pt`, the interval
// notifier over the whole address space, dmirror_interval_invalidate, the fault path
// (dmirror_fault / dmirror_range_fault, the §3.4 loop) and the device's reads and writes
// through pt with the mirror invariant checked at every page access.
//
// pt models test_hmm's xarray: indexed by virtual pfn, holding a tagged page and no reference.
// Here it is a 4-level radix of the host's page-table pool (any pfn of the address space, the
// tables freed at release); an entry is pfn << 3 | tag << 1 | 1, tag being the xarray pointer
// tag (0 read-only, DPT_XA_TAG_ATOMIC 1, DPT_XA_TAG_WRITE 3).

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { heldLocksText } from '../../src/sched/report.js';
import { splat } from '../../src/sched/splat.js';
import { defineStruct } from '../../src/shm/layout.js';
import { EBUSY, EFAULT, ENOMEM } from '../../src/shm/errno.js';
import { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_trylock, mutex_unlock } from '../../src/sync/mutex.js';
import {
  MMU_NOTIFY_MIGRATE,
  MinL,
  defineIntervalNotifierOps,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
} from '../../src/notifier/index.js';
import { zone_device_data } from '../../src/mm/memremap.js';
import { mmap_read_lock, mmap_read_unlock } from '../../src/mm/mm_inline.js';
import { mmget_not_zero, mmput } from '../../src/mm/mm_struct.js';
import { pte_lookup, pte_protnone } from '../../src/mm/mm_pt.js';
import { PG_device_private, PageL } from '../../src/mm/page.js';
import { is_device_exclusive_entry, is_device_private_entry, is_migration_entry, is_writable_swp_entry, pte_pfn, pte_present, pte_write, swp_offset } from '../../src/mm/pgtable.js';
import { MmL, PAGE_ALIGN_DOWN, ULONG_MAX } from '../../src/mm/types.js';
import {
  HMM_PFN_ERROR,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmRange,
  hmm_pfn_flags,
  hmm_pfn_to_pfn,
  hmm_pfns_alloc,
  hmm_range_fault,
} from '../../src/hmm/hmm.js';

export const DPT_XA_TAG_ATOMIC = 1;
export const DPT_XA_TAG_WRITE = 3;

/** ARRAY_SIZE(pfns): pages per dmirror_range_fault / migrate / snapshot chunk (unsigned long pfns[64]) */
export const DMIRROR_CHUNK_PAGES = 64;
export const DMIRROR_RANGE_FAULT_TIMEOUT = HMM_RANGE_DEFAULT_TIMEOUT;
/** READ/WRITE rounds that copied nothing before we call it the livelock test_hmm would spin in */
export const DMIRROR_LIVELOCK_ROUNDS = 256;

/** invalidations remembered per open file (a ring), for tests and reports */
export const DMIRROR_LOG_ENTRIES = 16;
const LOG_WORDS = 6; // start f64, end f64, event, blockable

/** struct dmirror */
export const DmirrorL = defineStruct('dmirror', {
  notifier: MinL.$size, // the embedded struct mmu_interval_notifier, at offset 0 (even)
  log: DMIRROR_LOG_ENTRIES * LOG_WORDS,
  mutex: MUTEX_WORDS,
  magic: 1, // DMIRROR_MAGIC while open: a device page's rpage may outlive its dmirror
  mdevice: 1, // struct dmirror_device *
  pt: 1, // the shadow table's root (a host page-table pool index)
  flags: 1, // HMM_DMIRROR_FLAGS
  // ours: what tests and reports read
  log_head: 1, // invalidations that reached the erase
  ev: 8, // of those, per event
  eagain: 1, // non-blockable invalidations refused (trylock failed)
  busy: 1, // hmm_range_fault returned -EBUSY
  retries: 1, // mmu_interval_read_retry said retry under the mutex
  programs: 1, // dmirror_do_fault calls
  timeouts: 1, // dmirror_range_fault gave up with -EBUSY
  accesses: 1, // device page accesses checked
  violations: 1, // mirror-invariant failures
  livelocks: 1,
  migrate_skipped: 1, // MIGRATE invalidations of our own device, ignored without set_seq
  migrate_races: 1, // faults stored while such a migration ran under them (§8.3: read_retry cannot see it)
});

const E_PRESENT = 1;
const TAG_SHIFT = 1;
const PFN_SHIFT = 3;

export const DMIRROR_MAGIC = 0x444d4952;

export const dmirror_mutex = (k: Kernel, d: number): Mutex => new Mutex(k, d + DmirrorL.mutex);
export const dmirror_mm = (k: Kernel, d: number): number => k.arena.i32[d + DmirrorL.notifier + MinL.mm];
export const dmirror_mdevice = (k: Kernel, d: number): number => k.arena.i32[d + DmirrorL.mdevice];

// ---- pt: the xarray ------------------------------------------------------------------------------

/** xa_load: the entry word at virtual pfn, 0 if none */
export function xa_load(k: Kernel, d: number, vpn: number): number {
  const slot = pte_lookup(k, k.arena.i32[d + DmirrorL.pt], vpn * k.mmLayer.pageSize);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

export const xa_untag_pfn = (e: number): number => e >>> PFN_SHIFT;
export const xa_pointer_tag = (e: number): number => (e >>> TAG_SHIFT) & 3;

/** xa_store(GFP_ATOMIC): 0, or -ENOMEM when the table pool is empty (the xarray's node allocation) */
export function xa_store(k: Kernel, d: number, vpn: number, pfn: number, tag: number): number {
  const slot = k.pgtables.pte_offset(k.arena.i32[d + DmirrorL.pt], vpn * k.mmLayer.pageSize, true);
  if (slot < 0) return -ENOMEM;
  k.arena.i32[slot] = (pfn << PFN_SHIFT) | (tag << TAG_SHIFT) | E_PRESENT;
  return 0;
}

export function xa_erase(k: Kernel, d: number, vpn: number): void {
  const slot = pte_lookup(k, k.arena.i32[d + DmirrorL.pt], vpn * k.mmLayer.pageSize);
  if (slot >= 0) k.arena.i32[slot] = 0;
}

/** xa_for_each_range(first, last) + xa_erase: `last` is inclusive */
function xa_erase_range(k: Kernel, d: number, first: number, last: number): number {
  const ps = k.mmLayer.pageSize;
  const w = k.arena.i32;
  let n = 0;
  const top = 2 ** (k.mmLayer.pageShift + 36); // what 4 levels of 512 cover
  k.pgtables.walk(w[d + DmirrorL.pt], first * ps, Math.min(top, (last + 1) * ps), (slot) => {
    if (w[slot] !== 0) n++;
    w[slot] = 0;
  });
  return n;
}

export interface PtEntry {
  vpn: number;
  pfn: number;
  tag: number;
}

/** Every entry of pt in [start, end), in address order (tests, reports). */
export function dmirror_pt_entries(k: Kernel, d: number, start = 0, end = 2 ** 48): PtEntry[] {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const out: PtEntry[] = [];
  k.pgtables.walk(w[d + DmirrorL.pt], start, end, (slot, addr) => {
    const e = w[slot];
    if (e !== 0) out.push({ vpn: addr / ps, pfn: xa_untag_pfn(e), tag: xa_pointer_tag(e) });
  });
  return out;
}

// ---- invalidation ----------------------------------------------------------------------------

function log_invalidation(k: Kernel, d: number, event: number, start: number, end: number, blockable: boolean): void {
  const w = k.arena.i32;
  const n = w[d + DmirrorL.log_head]++;
  const e = d + DmirrorL.log + (n % DMIRROR_LOG_ENTRIES) * LOG_WORDS;
  k.arena.f64[e >> 1] = start;
  k.arena.f64[(e >> 1) + 1] = end;
  w[e + 4] = event;
  w[e + 5] = blockable ? 1 : 0;
  w[d + DmirrorL.ev + event]++;
}

/** dmirror_do_update: erase [start >> PAGE_SHIFT, end >> PAGE_SHIFT], one page past the range (§4 quirk) */
function dmirror_do_update(k: Kernel, d: number, start: number, end: number): void {
  const ps = k.mmLayer.pageSize;
  xa_erase_range(k, d, Math.floor(start / ps), Math.floor(end / ps));
}

export const dmirror_min_ops = defineIntervalNotifierOps('dmirror_min_ops', {
  invalidate(mni, range, cur_seq) {
    const k = current.k;
    const d = mmu_notifier_priv(mni);
    // Ignore invalidation callbacks for device private pages since the invalidation is
    // handled as part of the migration process.
    if (range.event === MMU_NOTIFY_MIGRATE && range.owner === dmirror_mdevice(k, d)) {
      Atomics.add(k.arena.i32, d + DmirrorL.migrate_skipped, 1);
      return true;
    }
    const m = dmirror_mutex(k, d);
    const blockable = mmu_notifier_range_blockable(range);
    const body = (): boolean => {
      mmu_interval_set_seq(mni, cur_seq);
      dmirror_do_update(k, d, range.start, range.end);
      log_invalidation(k, d, range.event, range.start, range.end, blockable);
      mutex_unlock(m);
      return true;
    };
    if (!blockable) {
      if (mutex_trylock(m)) return body();
      k.arena.i32[d + DmirrorL.eagain]++;
      return false;
    }
    const p = mutex_lock(m);
    return p ? p.then(body) : body();
  },
});

export interface DmirrorInvalidation {
  event: number;
  start: number;
  end: number;
  blockable: boolean;
}

/** The invalidations that reached the erase, oldest first (at most DMIRROR_LOG_ENTRIES). */
export function dmirror_log_of(k: Kernel, d: number): DmirrorInvalidation[] {
  const w = k.arena.i32;
  const n = w[d + DmirrorL.log_head];
  const out: DmirrorInvalidation[] = [];
  for (let j = Math.max(0, n - DMIRROR_LOG_ENTRIES); j < n; j++) {
    const e = d + DmirrorL.log + (j % DMIRROR_LOG_ENTRIES) * LOG_WORDS;
    out.push({ start: k.arena.f64[e >> 1], end: k.arena.f64[(e >> 1) + 1], event: w[e + 4], blockable: w[e + 5] === 1 });
  }
  return out;
}

// ---- the mirror invariant ----------------------------------------------------------------------

/**
 * DESIGN "The checks" 1, at one device access of the page at `vpn` through entry `e`: the host
 * PTE maps the same page now, writable if the access writes. pt holds the backing page of a
 * device-private page (BACKING_PAGE) and the page itself for an exclusive entry, so those host
 * entries are followed to it. Reports and returns false when it does not hold.
 */
export function dmirror_check_access(k: Kernel, d: number, vpn: number, e: number, write: boolean): boolean {
  const w = k.arena.i32;
  const addr = vpn * k.mmLayer.pageSize;
  const pgd = w[dmirror_mm(k, d) + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  const pte = slot < 0 ? 0 : w[slot];
  const pfn = xa_untag_pfn(e);
  w[d + DmirrorL.accesses]++;
  let ok: boolean;
  if (pte_present(pte)) ok = !pte_protnone(pte) && pte_pfn(pte) === pfn && (!write || pte_write(pte));
  else if (is_device_private_entry(pte)) {
    // pt names the device page itself (a fault found it in place) or its rpage (migration)
    const dpfn = swp_offset(pte);
    const isDev = (w[k.zone.page(dpfn) + PageL.flags] & PG_device_private) !== 0;
    ok = isDev && (dpfn === pfn || zone_device_data(k, dpfn) === pfn) && (!write || is_writable_swp_entry(pte));
  } else if (is_device_exclusive_entry(pte)) ok = swp_offset(pte) === pfn && (!write || is_writable_swp_entry(pte));
  else ok = false;
  if (ok) return true;
  w[d + DmirrorL.violations]++;
  // §8.3's other face: our own device's page is migrating; its MIGRATE was ignored and the
  // entry goes only in dmirror_devmem_fault_alloc_and_copy, so it is still here meanwhile
  const dp = is_migration_entry(pte) ? swp_offset(pte) : 0;
  const ownMigration = dp !== 0 && (w[k.zone.page(dp) + PageL.flags] & PG_device_private) !== 0 && w[k.zone.page(dp) + PageL.owner] === dmirror_mdevice(k, d);
  if (ownMigration) w[d + DmirrorL.migrate_races]++;
  const tag = xa_pointer_tag(e);
  splat(
    k,
    'mirror_invariant',
    `mirror invariant: dmirror @${d.toString(16)} ${write ? 'writes' : 'reads'} 0x${addr.toString(16)} through pt (pfn ${pfn}, tag ${tag}), ` +
      `but the host PTE is 0x${(pte >>> 0).toString(16)}${pte_present(pte) ? ` (pfn ${pte_pfn(pte)}${pte_write(pte) ? ', write' : ', read-only'}${pte_protnone(pte) ? ', PROT_NONE' : ''})` : pte === 0 ? ' (none)' : ' (not present)'}: an invalidation was lost` +
      (ownMigration ? ' (test_hmm ignores MIGRATE of its own device: the migration of this page is in flight)' : '') +
      `\n${heldLocksText(k, current)}`,
  );
  return false;
}

// ---- open / release --------------------------------------------------------------------------

/** dmirror_fops_open's body for the opener's mm (held with mm_users > 0): the dmirror, or -errno. */
export function dmirror_create(k: Kernel, mdevice: number, mm: number): number | Promise<number> {
  const d = k.kmalloc.kzalloc(DmirrorL.$size);
  if (d === 0) return -ENOMEM;
  const pt = k.pgtables.pgd_alloc();
  if (pt === 0) {
    k.kmalloc.kfree(d);
    return -ENOMEM;
  }
  const w = k.arena.i32;
  w[d + DmirrorL.mdevice] = mdevice;
  w[d + DmirrorL.pt] = pt;
  w[d + DmirrorL.magic] = DMIRROR_MAGIC;
  mutex_init(k, d + DmirrorL.mutex, 'dmirror->mutex', '&dmirror->mutex');
  const done = (ret: number): number => {
    if (ret === 0) return d;
    k.pgtables.free_pgtables(pt, true);
    k.kmalloc.kfree(d);
    return ret;
  };
  // Mirror this process address space
  const r = mmu_interval_notifier_insert(d + DmirrorL.notifier, mm, 0, PAGE_ALIGN_DOWN(ULONG_MAX), dmirror_min_ops, d);
  return typeof r === 'number' ? done(r) : r.then(done);
}

/** dmirror_fops_release: remove the notifier (no callback runs after it), xa_destroy, kfree. */
export async function dmirror_destroy(k: Kernel, d: number): Promise<void> {
  const r = mmu_interval_notifier_remove(d + DmirrorL.notifier);
  if (typeof r !== 'number') await r;
  k.pgtables.free_pgtables(k.arena.i32[d + DmirrorL.pt], true);
  k.arena.i32[d + DmirrorL.magic] = 0;
  k.kmalloc.kfree(d);
}

// ---- the fault path ----------------------------------------------------------------------------

/** dmirror_do_fault: store range's pages in pt, mutex held. */
function dmirror_do_fault(k: Kernel, d: number, range: HmmRange): number {
  const ps = k.mmLayer.pageSize;
  const pfns = range.hmm_pfns;
  k.arena.i32[d + DmirrorL.programs]++;
  for (let j = 0, vpn = range.start / ps; vpn < range.end / ps; j++, vpn++) {
    const f = hmm_pfn_flags(pfns, j);
    // Since we asked for hmm_range_fault() to populate pages, it shouldn't return an error entry on success.
    if ((f & HMM_PFN_ERROR) !== 0) splat(k, 'warn', `WARNING: dmirror_do_fault: WARN_ON(*pfns & HMM_PFN_ERROR) at vpn 0x${vpn.toString(16)}`);
    if ((f & HMM_PFN_VALID) === 0) splat(k, 'warn', `WARNING: dmirror_do_fault: WARN_ON(!(*pfns & HMM_PFN_VALID)) at vpn 0x${vpn.toString(16)}`);
    let tag = 0;
    if ((f & HMM_PFN_WRITE) !== 0) tag = DPT_XA_TAG_WRITE;
    else if ((range.default_flags & HMM_PFN_REQ_WRITE) !== 0) {
      splat(k, 'warn', `WARNING: dmirror_do_fault: WARN_ON(range->default_flags & HMM_PFN_WRITE) at vpn 0x${vpn.toString(16)}`);
      return -EFAULT;
    }
    const ret = xa_store(k, d, vpn, hmm_pfn_to_pfn(pfns, j), tag);
    if (ret !== 0) return ret;
  }
  return 0;
}

/** Test-only hooks (JS side, this thread), where a test injects an interleaving. */
export interface DmirrorHooks {
  /** after hmm_range_fault returned and the mmap_lock is dropped, before the mutex */
  afterRangeFault?(d: number, ret: number): void | Promise<void>;
}
const hooks = new Map<number, DmirrorHooks>();
export function dmirror_set_hooks(d: number, h: DmirrorHooks | null): void {
  if (h) hooks.set(d, h);
  else hooks.delete(d);
}
export function dmirror_forget_hooks(d: number): void {
  hooks.delete(d);
}

/** dmirror_range_fault: the §3.4 loop for one chunk, bounded by DMIRROR_RANGE_FAULT_TIMEOUT. */
async function dmirror_range_fault(k: Kernel, d: number, range: HmmRange): Promise<number> {
  const w = k.arena.i32;
  const mm = dmirror_mm(k, d);
  const m = dmirror_mutex(k, d);
  const timeout = k.sched.now() + DMIRROR_RANGE_FAULT_TIMEOUT * 1e6;
  const h = hooks.get(d);
  for (;;) {
    if (k.sched.now() > timeout) {
      w[d + DmirrorL.timeouts]++;
      return -EBUSY;
    }
    const s = mmu_interval_read_begin(range.notifier);
    range.notifier_seq = typeof s === 'number' ? s : await s;
    const skipped = Atomics.load(w, d + DmirrorL.migrate_skipped);
    const l = mmap_read_lock(mm);
    if (l !== undefined) await l;
    let ret: number;
    try {
      ret = await hmm_range_fault(range);
    } finally {
      mmap_read_unlock(mm);
    }
    if (h?.afterRangeFault) await h.afterRangeFault(d, ret);
    if (ret !== 0) {
      if (ret === -EBUSY) {
        w[d + DmirrorL.busy]++;
        continue;
      }
      return ret;
    }
    const p = mutex_lock(m);
    if (p !== undefined) await p;
    if (mmu_interval_read_retry(range.notifier, range.notifier_seq)) {
      mutex_unlock(m);
      w[d + DmirrorL.retries]++;
      continue;
    }
    // ours: the §8.3 window (a migration by our own device ran under this fault, unseen)
    if (Atomics.load(w, d + DmirrorL.migrate_skipped) !== skipped) w[d + DmirrorL.migrate_races]++;
    try {
      return dmirror_do_fault(k, d, range);
    } finally {
      mutex_unlock(m);
    }
  }
}

/** dmirror_fault: fault [start, end) chunk by chunk. An mm already gone returns 0, nothing filled. */
export async function dmirror_fault(k: Kernel, d: number, start: number, end: number, write: boolean): Promise<number> {
  const mm = dmirror_mm(k, d);
  const ps = k.mmLayer.pageSize;
  const range = new HmmRange();
  range.notifier = d + DmirrorL.notifier;
  range.hmm_pfns = hmm_pfns_alloc(DMIRROR_CHUNK_PAGES);
  range.pfn_flags_mask = 0;
  range.default_flags = HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0);
  range.dev_private_owner = dmirror_mdevice(k, d);
  // Since the mm is for the mirrored process, get a reference first.
  if (!mmget_not_zero(mm)) return 0;
  let ret = 0;
  try {
    for (let addr = start; addr < end; addr = range.end) {
      range.start = addr;
      range.end = Math.min(addr + DMIRROR_CHUNK_PAGES * ps, end);
      ret = await dmirror_range_fault(k, d, range);
      if (ret !== 0) break;
    }
  } finally {
    const p = mmput(mm);
    if (p !== undefined) await p;
  }
  return ret;
}
