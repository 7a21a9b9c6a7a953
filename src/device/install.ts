// Shadow PTEs change only through this file. shadow_pte_install checks DESIGN check 5: the
// driver's notifier lock is held by current (lockdep's held list, or the owner word when
// lockdep is off), and the sequence the entry comes from has not moved (mmu_interval_read_retry
// on the subscription, or the driver's own seq_retry). A broken rule is a 'retry_protocol'
// record, and the entry still goes in, as the buggy driver would have it. shadow_pte_zap
// clears a range and bumps the TLB generation the fence waits on; it asserts the notifier lock
// is held too (a 'lockdep_assert' record when not).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { heldLocksText, objLabel } from '../sched/report.js';
import { splat } from '../sched/splat.js';
import { EINVAL, ENOMEM } from '../shm/errno.js';
import { MinL } from '../notifier/subscriptions.js';
import { mmu_interval_read_retry } from '../notifier/interval.js';
import { PG_device_private, PageL } from '../mm/page.js';
import { HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE, hmm_pfn_to_pfn, type HmmRange } from '../hmm/hmm.js';
import { recentEventsText, MAX_VIOLATION_RECORDS } from './check.js';
import { deviceLabel, device_stat_add } from './device.js';
import { device_lock_obj, lockHeld } from './driver.js';
import { device_tlb_flush } from './fence.js';
import { driverOf } from './registry.js';
import { spt_clear, spt_slot_alloc } from './spt.js';
import { DEV_EV, DEV_STAT, DevL, SPTE_DEVICE_PRIVATE, SPTE_PFN_MAX, SPTE_PFN_SHIFT, SPTE_VALID, SPTE_WRITE } from './types.js';

function retryViolation(k: Kernel, dev: number, what: string): void {
  device_stat_add(dev, DEV_STAT.violations);
  if (Atomics.add(k.arena.i32, dev + DevL.violation_records, 1) >= MAX_VIOLATION_RECORDS) return;
  const t = current;
  splat(k, 'retry_protocol', [`WARNING: shadow_pte_install on ${deviceLabel(k, dev)}: ${what}`, heldLocksText(k, t), recentEventsText(k, t.id)].join('\n'));
}

function zapUnlocked(k: Kernel, dev: number, start: number, end: number): void {
  device_stat_add(dev, DEV_STAT.violations);
  if (Atomics.add(k.arena.i32, dev + DevL.violation_records, 1) >= MAX_VIOLATION_RECORDS) return;
  const t = current;
  const l = device_lock_obj(dev);
  splat(
    k,
    'lockdep_assert',
    [
      `WARNING: lockdep_assert_held(${objLabel(k, l.at)}) failed in shadow_pte_zap on ${deviceLabel(k, dev)} [0x${start.toString(16)}, 0x${end === Infinity ? 'end' : end.toString(16)}) by ${t.name}/${t.id}: ` +
        'shadow PTEs may only be zapped with the notifier lock held (otherwise a fault can check mmu_interval_read_retry and install between the sequence update and the zap)',
      heldLocksText(k, t),
      recentEventsText(k, t.id),
    ].join('\n'),
  );
}

/** Check 5 for an install from `seq` at addr; false (with a record) when broken. */
function checkInstall(k: Kernel, dev: number, addr: number, seq: number, sub: number): boolean {
  let ok = true;
  if (!lockHeld(k, dev)) {
    const l = device_lock_obj(dev);
    retryViolation(
      k,
      dev,
      `lockdep_assert_held(${objLabel(k, l.at)}) failed at 0x${addr.toString(16)}: shadow PTEs may only be installed with the notifier lock held, ` +
        'the lock the invalidation takes before it zaps (otherwise an invalidation can pass between the retry check and the install)',
    );
    ok = false;
  }
  const drv = driverOf(dev);
  let stale: boolean;
  let now = '';
  if (sub !== 0 || !drv.seq_retry) {
    const s = sub !== 0 ? sub : dev + DevL.notifier;
    stale = mmu_interval_read_retry(s, seq);
    now = ` (the subscription's sequence is now ${k.arena.i32[s + MinL.invalidate_seq]})`;
  } else stale = drv.seq_retry(dev, seq, addr);
  if (stale) {
    retryViolation(
      k,
      dev,
      `install at 0x${addr.toString(16)} from sequence ${seq}, which has moved${now}: mmu_interval_read_retry() (or the driver's own retry check) is true, ` +
        'so the pfns may be stale: the driver must drop them and go back to mmu_interval_read_begin',
    );
    ok = false;
  }
  return ok;
}

function install(k: Kernel, dev: number, addr: number, pfn: number, flags: number, seq: number): number {
  if (!(Number.isInteger(pfn) && pfn >= 0 && pfn <= SPTE_PFN_MAX)) return -EINVAL;
  const w = k.arena.i32;
  const slot = spt_slot_alloc(k, w[dev + DevL.root], Math.floor(addr / k.mmLayer.pageSize));
  if (slot === -2) return -ENOMEM;
  w[slot + 1] = seq;
  Atomics.store(w, slot, (pfn << SPTE_PFN_SHIFT) | (flags & ((1 << SPTE_PFN_SHIFT) - 1)) | SPTE_VALID);
  return 0;
}

/**
 * shadow_pte_install: map addr to pfn (SPTE_WRITE / SPTE_ATOMIC / SPTE_DEVICE_PRIVATE in
 * flags) from a result read under sequence `seq` of interval subscription `sub` (default the
 * device's own; drivers without one pass 0 and their seq_retry decides). The ONE way a driver
 * installs: check 5 is asserted here; a broken rule is recorded and the entry still goes in,
 * as the driver's bug would have it. 0, -ENOMEM (no table left) or -EINVAL (bad pfn).
 */
export function shadow_pte_install(dev: number, addr: number, pfn: number, flags: number, seq: number, sub = 0): number {
  const t = current;
  const k = t.k;
  checkInstall(k, dev, addr, seq, sub);
  const r = install(k, dev, addr, pfn, flags, seq);
  if (r === 0) {
    device_stat_add(dev, DEV_STAT.installs);
    k.events.emit(DEV_EV.INSTALL, t.id, dev, Math.floor(addr / k.mmLayer.pageSize) | 0, 1);
  }
  return r;
}

/**
 * shadow_pte_install_range: install every valid page of an hmm_range_fault result (the WRITE
 * bit follows HMM_PFN_WRITE), checked once against range.notifier / range.notifier_seq.
 * Pages without HMM_PFN_VALID, or with HMM_PFN_ERROR, are left alone.
 */
export function shadow_pte_install_range(dev: number, range: HmmRange): number {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const pfns = range.hmm_pfns;
  checkInstall(k, dev, range.start, range.notifier_seq, range.notifier);
  let n = 0;
  for (let j = 0, addr = range.start; addr < range.end; j++, addr += ps) {
    const f = pfns[2 * j + 1];
    if ((f & HMM_PFN_VALID) === 0 || (f & HMM_PFN_ERROR) !== 0) continue;
    const pfn = hmm_pfn_to_pfn(pfns, j);
    let flags = (f & HMM_PFN_WRITE) !== 0 ? SPTE_WRITE : 0;
    if (pfn < k.zone.nrPages && (w[k.zone.page(pfn) + PageL.flags] & PG_device_private) !== 0) flags |= SPTE_DEVICE_PRIVATE;
    const r = install(k, dev, addr, pfn, flags, range.notifier_seq);
    if (r !== 0) return r;
    n++;
  }
  device_stat_add(dev, DEV_STAT.installs, n);
  k.events.emit(DEV_EV.INSTALL, t.id, dev, Math.floor(range.start / ps) | 0, n);
  return 0;
}

/**
 * shadow_pte_zap: clear the device's entries in [start, end) and flush its TLB (bump the
 * generation). Returns the generation to hand to device_fence_wait / device_fence_busy: the
 * accesses that may still use a zapped entry are those that began at or before it.
 */
export function shadow_pte_zap(dev: number, start: number, end: number): number {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  // lockdep_assert_held on the notifier lock, as drm_gpusvm and amdgpu assert it: a zap
  // outside the lock races the fault path's retry check and install
  if (!lockHeld(k, dev)) zapUnlocked(k, dev, start, end);
  const n = spt_clear(k, w[dev + DevL.root], start, end);
  const gen = device_tlb_flush(dev);
  if (n !== 0) device_stat_add(dev, DEV_STAT.zapped, n);
  k.events.emit(DEV_EV.ZAP, t.id, dev, (gen + 1) | 0, n);
  return gen;
}

