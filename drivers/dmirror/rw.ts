// The device's reads and writes through pt (READ, WRITE, and the read-back of MIGRATE_TO_DEV
// and EXCLUSIVE): a bounce buffer standing in for test_hmm's vmalloc'ed one, the copy loops
// under the mutex with the mirror invariant checked at each page, and the READ/WRITE retry
// loop that counts fault rounds.

import type { Kernel } from '../../src/sched/kernel.js';
import { splat } from '../../src/sched/splat.js';
import { EFAULT, ENOENT, EPERM } from '../../src/shm/errno.js';
import { mutex_lock, mutex_unlock } from '../../src/sync/mutex.js';
import { zone_device_data } from '../../src/mm/memremap.js';
import { PG_device_private, PageL } from '../../src/mm/page.js';
import { MmL } from '../../src/mm/types.js';
import { EBUSY } from '../../src/shm/errno.js';
import { device_access_begin, device_access_end, device_engine_claim, device_engine_release, shadowEntries } from '../../src/device/index.js';
import { DMIRROR_LIVELOCK_ROUNDS, DmirrorL, dmirror_check_access, dmirror_dev, dmirror_fault, dmirror_mm, dmirror_mutex, xa_load } from './dmirror.js';

// ---- device reads and writes through pt -----------------------------------------------------------

/** struct dmirror_bounce: the vmalloc'ed copy of the user buffer */
export interface DmirrorBounce {
  buf: Uint8Array;
  addr: number;
  cpages: number;
}

/** the largest bounce buffer vmalloc gives us; beyond it -ENOMEM */
export const DMIRROR_BOUNCE_MAX = 1 << 28;

export function dmirror_bounce_init(addr: number, size: number): DmirrorBounce | null {
  if (!(size <= DMIRROR_BOUNCE_MAX)) return null;
  return { buf: new Uint8Array(size), addr, cpages: 0 };
}

/**
 * The frame holding a pt entry's data. dmirror_do_fault stores a device-private page of this
 * device as itself (hmm_range_fault reports it in place), and test_hmm then memcpy's through
 * that struct page, which has no linear mapping in the kernel; we follow it to its rpage.
 */
function data_pfn(k: Kernel, pfn: number): number {
  return (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_device_private) !== 0 ? zone_device_data(k, pfn) : pfn;
}

/**
 * One device access of pages [start, end) (mutex held): an engine slot claimed for current,
 * device_access_begin / device_access_end around the per-page copies, so an invalidation's
 * fence sees it in flight.
 */
function device_burst(k: Kernel, d: number, fn: () => number): number {
  const dev = dmirror_dev(k, d);
  const eng = device_engine_claim(dev);
  if (eng < 0) return -EBUSY;
  const before = k.arena.i32[d + DmirrorL.accesses];
  device_access_begin(k, dev, eng);
  try {
    return fn();
  } finally {
    device_access_end(k, dev, eng, k.arena.i32[d + DmirrorL.accesses] - before);
    device_engine_release(dev, eng);
  }
}

/** dmirror_do_read: copy pages out through pt up to the first missing one (-ENOENT). Mutex held. */
export function dmirror_do_read(k: Kernel, d: number, start: number, end: number, b: DmirrorBounce): number {
  const ps = k.mmLayer.pageSize;
  const u8 = k.arena.u8;
  let off = Math.floor((start - b.addr) / ps) * ps;
  return device_burst(k, d, () => {
    for (let vpn = start / ps; vpn < Math.floor(end / ps); vpn++) {
      const e = xa_load(k, d, vpn);
      if (e === null) return -ENOENT;
      if (!dmirror_check_access(k, d, vpn, e, false)) return -EFAULT;
      const at = k.zone.pageData(data_pfn(k, e.pfn)) * 4;
      b.buf.set(u8.subarray(at, at + ps), off);
      off += ps;
      b.cpages++;
    }
    return 0;
  });
}

/** dmirror_do_write: the same into the pages, needing tag DPT_XA_TAG_WRITE (SPTE_WRITE). Mutex held. */
function dmirror_do_write(k: Kernel, d: number, start: number, end: number, b: DmirrorBounce): number {
  const ps = k.mmLayer.pageSize;
  const u8 = k.arena.u8;
  let off = Math.floor((start - b.addr) / ps) * ps;
  return device_burst(k, d, () => {
    for (let vpn = start / ps; vpn < Math.floor(end / ps); vpn++) {
      const e = xa_load(k, d, vpn);
      if (e === null || !e.write) return -ENOENT;
      if (!dmirror_check_access(k, d, vpn, e, true)) return -EFAULT;
      u8.set(b.buf.subarray(off, off + ps), k.zone.pageData(data_pfn(k, e.pfn)) * 4);
      off += ps;
      b.cpages++;
    }
    return 0;
  });
}

export interface DmirrorCmdState {
  addr: number;
  npages: number;
  cpages: number;
  faults: number;
  livelock: boolean;
}

/**
 * The READ/WRITE loop: copy under the mutex until a page is missing, fault the rest, count
 * the round, again. `faults` counts rounds, not pages. A bounded stand-in for test_hmm's
 * endless loop on a dead mm reports 'liveness' and returns -ENOENT with cmd.livelock set.
 */
export async function dmirror_rw_loop(k: Kernel, d: number, cmd: DmirrorCmdState, b: DmirrorBounce, write: boolean): Promise<number> {
  const ps = k.mmLayer.pageSize;
  const m = dmirror_mutex(k, d);
  const end = cmd.addr + cmd.npages * ps;
  let start = cmd.addr;
  let stuck = 0;
  let ret: number;
  for (;;) {
    const before = b.cpages;
    const p = mutex_lock(m);
    if (p !== undefined) await p;
    try {
      ret = write ? dmirror_do_write(k, d, start, end, b) : dmirror_do_read(k, d, start, end, b);
    } finally {
      mutex_unlock(m);
    }
    if (ret !== -ENOENT) break;
    stuck = b.cpages === before && cmd.faults > 0 ? stuck + 1 : 0;
    if (stuck >= DMIRROR_LIVELOCK_ROUNDS) {
      const users = Atomics.load(k.arena.i32, dmirror_mm(k, d) + MmL.mm_users);
      k.arena.i32[d + DmirrorL.livelocks]++;
      splat(
        k,
        'liveness',
        `dmirror ${write ? 'WRITE' : 'READ'} of [0x${cmd.addr.toString(16)}, 0x${end.toString(16)}): no page copied in ${stuck} fault rounds (faults ${cmd.faults})` +
          (users <= 0 ? `: the mm is gone (mm_users ${users}), so dmirror_fault returns 0 without filling and test_hmm would spin forever` : ''),
      );
      cmd.livelock = true;
      return ret;
    }
    start = cmd.addr + b.cpages * ps;
    ret = await dmirror_fault(k, d, start, end, write);
    if (ret !== 0) break;
    cmd.faults++;
  }
  return ret;
}

/**
 * dmirror_check_atomic: -EPERM if any page of [start, end) has an ATOMIC entry. The kernel
 * loads every index; we visit the entries there are, which answers the same.
 */
export function dmirror_check_atomic(k: Kernel, d: number, start: number, end: number): number {
  return shadowEntries(k, dmirror_dev(k, d), start, Math.min(end, 2 ** 48)).some((x) => x.atomic && !x.write) ? -EPERM : 0;
}
