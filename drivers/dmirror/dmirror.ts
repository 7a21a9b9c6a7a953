// struct dmirror (one open device file, the device's driver state) and its mirror: the
// device's shadow page table standing in for test_hmm's `pt` xarray, the interval notifier
// over the whole address space (the device's own, registered by device_open),
// dmirror_interval_invalidate, the fault path (dmirror_fault / dmirror_range_fault, the §3.4
// loop) and the device's reads and writes, each page a device access the layer checks.
//
// pt is the device's shadow page table (src/device): indexed by virtual pfn, holding a frame
// and no reference. The xarray pointer tags map to shadow bits: DPT_XA_TAG_WRITE ↔ SPTE_WRITE,
// DPT_XA_TAG_ATOMIC ↔ SPTE_ATOMIC (read-only otherwise); an entry naming a device-private page
// carries SPTE_DEVICE_PRIVATE. Entries go in only through shadow_pte_install, under the
// dmirror mutex (the device's notifier lock) with the sequence from mmu_interval_read_begin.

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { splat } from '../../src/sched/splat.js';
import { defineStruct } from '../../src/shm/layout.js';
import { EBUSY, EFAULT } from '../../src/shm/errno.js';
import { Mutex, mutex_lock, mutex_trylock, mutex_unlock } from '../../src/sync/mutex.js';
import {
  MMU_NOTIFY_MIGRATE,
  defineIntervalNotifierOps,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
} from '../../src/notifier/index.js';
import { is_device_private_page } from '../../src/mm/memremap.js';
import { mmap_read_lock, mmap_read_unlock } from '../../src/mm/mm_inline.js';
import { mmget_not_zero, mmput } from '../../src/mm/mm_struct.js';
import { PG_device_private, PageL } from '../../src/mm/page.js';
import { is_migration_entry, pte_pfn, pte_present, pte_write, swp_offset } from '../../src/mm/pgtable.js';
import { pte_protnone } from '../../src/mm/mm_pt.js';
import { heldLocksText } from '../../src/sched/report.js';
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
import {
  DEV_CLOSING,
  DEV_STAT,
  DevL,
  SPTE_ATOMIC,
  SPTE_DEVICE_PRIVATE,
  SPTE_PFN_SHIFT,
  SPTE_VALID,
  SPTE_WRITE,
  device_priv,
  device_fence_busy,
  device_fence_fail,
  device_fence_wait,
  deviceLabel,
  device_stat_add,
  host_pte,
  mirror_allows,
  shadowEntries,
  shadow_pte_install,
  shadow_pte_zap,
  type ShadowPte,
} from '../../src/device/index.js';

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

/** struct dmirror: the device's driver state (the mutex, notifier and pt are the device's) */
export const DmirrorL = defineStruct('dmirror', {
  log: DMIRROR_LOG_ENTRIES * LOG_WORDS, // at offset 0 (even: f64 fields)
  dev: 1, // the device (src/device) this state belongs to
  magic: 1, // DMIRROR_MAGIC while open: a device page's rpage may outlive its dmirror
  mdevice: 1, // struct dmirror_device *
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
  livelocks: 1,
  migrate_skipped: 1, // MIGRATE invalidations of our own device, ignored without set_seq
  migrate_races: 1, // faults stored while such a migration ran under them (§8.3: read_retry cannot see it)
});

export const DMIRROR_MAGIC = 0x444d4952;

/** the device of a dmirror state */
export const dmirror_dev = (k: Kernel, d: number): number => k.arena.i32[d + DmirrorL.dev];
/** dmirror->mutex: the device's notifier lock */
export const dmirror_mutex = (k: Kernel, d: number): Mutex => new Mutex(k, dmirror_dev(k, d) + DevL.lock);
export const dmirror_mm = (k: Kernel, d: number): number => k.arena.i32[dmirror_dev(k, d) + DevL.mm];
export const dmirror_mdevice = (k: Kernel, d: number): number => k.arena.i32[d + DmirrorL.mdevice];
/** the device's interval notifier (struct mmu_interval_notifier) */
export const dmirror_notifier = (k: Kernel, d: number): number => dmirror_dev(k, d) + DevL.notifier;

// ---- pt: the device's shadow page table ---------------------------------------------------------

/** the xarray tag of a shadow entry */
export const spte_tag = (x: ShadowPte): number => (x.write ? DPT_XA_TAG_WRITE : x.atomic ? DPT_XA_TAG_ATOMIC : 0);
/** the shadow bits of a tag */
export const tag_flags = (tag: number): number => (tag === DPT_XA_TAG_WRITE ? SPTE_WRITE : tag === DPT_XA_TAG_ATOMIC ? SPTE_ATOMIC : 0);

/** xa_load: the shadow entry at vpn, null if none */
export function xa_load(k: Kernel, d: number, vpn: number): ShadowPte | null {
  const ps = k.mmLayer.pageSize;
  return shadowEntries(k, dmirror_dev(k, d), vpn * ps, (vpn + 1) * ps)[0] ?? null;
}

/**
 * xa_store: install through shadow_pte_install (the mutex held, `seq` from
 * mmu_interval_read_begin): 0 or -ENOMEM. A device-private page is tagged SPTE_DEVICE_PRIVATE.
 */
export function xa_store(k: Kernel, d: number, vpn: number, pfn: number, tag: number, seq: number): number {
  let flags = tag_flags(tag);
  if (is_device_private_page(k, pfn)) flags |= SPTE_DEVICE_PRIVATE;
  return shadow_pte_install(dmirror_dev(k, d), vpn * k.mmLayer.pageSize, pfn, flags, seq);
}

export function xa_erase(k: Kernel, d: number, vpn: number): void {
  const ps = k.mmLayer.pageSize;
  shadow_pte_zap(dmirror_dev(k, d), vpn * ps, (vpn + 1) * ps);
}

/**
 * For an install that does not come from an hmm_range_fault result (a migration's or
 * make_device_exclusive's pages): mmu_interval_read_begin, then the mutex, again until
 * mmu_interval_read_retry is false under it. Returns the sequence, the mutex held: no
 * invalidation callback has run since, and any later one zaps what goes in.
 */
export async function dmirror_lock_seq(k: Kernel, d: number): Promise<number> {
  const m = dmirror_mutex(k, d);
  const sub = dmirror_notifier(k, d);
  for (;;) {
    const s = mmu_interval_read_begin(sub);
    const seq = typeof s === 'number' ? s : await s;
    const p = mutex_lock(m);
    if (p !== undefined) await p;
    if (!mmu_interval_read_retry(sub, seq)) return seq;
    mutex_unlock(m);
    k.arena.i32[d + DmirrorL.retries]++;
  }
}

/**
 * Does the host still map vpn to pfn (tagged `tag`)? An invalidation that ran before
 * dmirror_lock_seq's read_begin changed the host PTE without a callback left to zap it, so
 * such a page is not installed (it reads back as missing).
 */
export function dmirror_host_maps(k: Kernel, d: number, vpn: number, pfn: number, tag: number): boolean {
  const dev = dmirror_dev(k, d);
  let flags = SPTE_VALID | tag_flags(tag);
  if (is_device_private_page(k, pfn)) flags |= SPTE_DEVICE_PRIVATE;
  return mirror_allows(host_pte(k, k.arena.i32[dev + DevL.mm], vpn * k.mmLayer.pageSize), (pfn << SPTE_PFN_SHIFT) | flags, tag === DPT_XA_TAG_WRITE);
}

export interface PtEntry {
  vpn: number;
  pfn: number;
  tag: number;
}

/** Every entry of pt in [start, end), in address order (tests, reports). */
export function dmirror_pt_entries(k: Kernel, d: number, start = 0, end = 2 ** 48): PtEntry[] {
  const ps = k.mmLayer.pageSize;
  return shadowEntries(k, dmirror_dev(k, d), start, end).map((x) => ({ vpn: x.addr / ps, pfn: x.pfn, tag: spte_tag(x) }));
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

/**
 * dmirror_do_update: erase [start >> PAGE_SHIFT, end >> PAGE_SHIFT], one page past the range
 * (§4 quirk): shadow_pte_zap of [start, end + PAGE_SIZE). Returns the TLB generation to fence on.
 */
function dmirror_do_update(k: Kernel, d: number, start: number, end: number): number {
  const ps = k.mmLayer.pageSize;
  return shadow_pte_zap(dmirror_dev(k, d), Math.floor(start / ps) * ps, (Math.floor(end / ps) + 1) * ps);
}

export const dmirror_min_ops = defineIntervalNotifierOps('dmirror_min_ops', {
  invalidate(mni, range, cur_seq) {
    const k = current.k;
    const dev = mmu_notifier_priv(mni);
    const d = device_priv(dev);
    // Ignore invalidation callbacks for device private pages since the invalidation is
    // handled as part of the migration process.
    if (range.event === MMU_NOTIFY_MIGRATE && range.owner === dmirror_mdevice(k, d)) {
      Atomics.add(k.arena.i32, d + DmirrorL.migrate_skipped, 1);
      return true;
    }
    const m = dmirror_mutex(k, d);
    const blockable = mmu_notifier_range_blockable(range);
    const update = (): number => {
      mmu_interval_set_seq(mni, cur_seq);
      const gen = dmirror_do_update(k, d, range.start, range.end);
      log_invalidation(k, d, range.event, range.start, range.end, blockable);
      return gen;
    };
    if (!blockable) {
      if (!mutex_trylock(m)) {
        k.arena.i32[d + DmirrorL.eagain]++;
        device_stat_add(dev, DEV_STAT.eagain);
        return false;
      }
      // dmirror's own accesses run under the mutex, so none is in flight past the zap; an
      // access that still is (a device program on this device) cannot be waited for here
      const gen = update();
      const eng = device_fence_busy(dev, gen);
      mutex_unlock(m);
      if (eng < 0) return true;
      device_fence_fail(dev, gen, eng);
      device_stat_add(dev, DEV_STAT.eagain);
      return false;
    }
    const body = (): boolean | Promise<boolean> => {
      const f = device_fence_wait(dev, update());
      if (f === undefined) {
        mutex_unlock(m);
        return true;
      }
      return f.then(() => {
        mutex_unlock(m);
        return true;
      });
    };
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
 * DESIGN "The checks" 1 at one device access of the page at `vpn` through entry `e`: the
 * layer's check (mirror_allows against the host PTE now); a failure counts in the device's
 * violations statistic and is a 'mirror_invariant' record in dmirror's words (tag, and the
 * §8.3 note when our own migration is in flight). The caller brackets the accesses with
 * device_access_begin/end.
 */
export function dmirror_check_access(k: Kernel, d: number, vpn: number, e: ShadowPte, write: boolean): boolean {
  const w = k.arena.i32;
  const dev = dmirror_dev(k, d);
  const addr = vpn * k.mmLayer.pageSize;
  w[d + DmirrorL.accesses]++;
  const raw = (e.pfn << SPTE_PFN_SHIFT) | SPTE_VALID | (e.write ? SPTE_WRITE : 0) | (e.atomic ? SPTE_ATOMIC : 0) | (e.devicePrivate ? SPTE_DEVICE_PRIVATE : 0);
  const pte = host_pte(k, w[dev + DevL.mm], addr);
  if (mirror_allows(pte, raw, write)) return true;
  device_stat_add(dev, DEV_STAT.violations);
  // §8.3's other face: our own device's page is migrating; its MIGRATE was ignored and the
  // entry goes only in dmirror_devmem_fault_alloc_and_copy, so it is still here meanwhile
  const dp = is_migration_entry(pte) ? swp_offset(pte) : 0;
  const ownMigration = dp !== 0 && (w[k.zone.page(dp) + PageL.flags] & PG_device_private) !== 0 && w[k.zone.page(dp) + PageL.owner] === dmirror_mdevice(k, d);
  if (ownMigration) w[d + DmirrorL.migrate_races]++;
  splat(
    k,
    'mirror_invariant',
    `mirror invariant: dmirror ${deviceLabel(k, dev)} ${write ? 'writes' : 'reads'} 0x${addr.toString(16)} through pt (pfn ${e.pfn}, tag ${spte_tag(e)}), ` +
      `but the host PTE is 0x${(pte >>> 0).toString(16)}${pte_present(pte) ? ` (pfn ${pte_pfn(pte)}${pte_write(pte) ? ', write' : ', read-only'}${pte_protnone(pte) ? ', PROT_NONE' : ''})` : pte === 0 ? ' (none)' : ' (not present)'}: an invalidation was lost` +
      (ownMigration ? ' (test_hmm ignores MIGRATE of its own device: the migration of this page is in flight)' : '') +
      ` (installed from seq ${e.seq})\n${heldLocksText(k, current)}`,
  );
  return false;
}

/** the device's violations (mirror invariant and retry protocol) */
export function dmirror_violations(k: Kernel, d: number): number {
  return k.arena.i32[dmirror_dev(k, d) + DevL.stats + DEV_STAT.violations];
}

/** Is the device being closed (device_close has begun)? */
export function dmirror_closing(k: Kernel, dev: number): boolean {
  return Atomics.load(k.arena.i32, dev + DevL.state) === DEV_CLOSING;
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
    const ret = xa_store(k, d, vpn, hmm_pfn_to_pfn(pfns, j), tag, range.notifier_seq);
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
  range.notifier = dmirror_notifier(k, d);
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
