// drm_gpusvm (drivers/gpu/drm/drm_gpusvm.c, include/drm/drm_gpusvm.h, v6.15+): the DRM
// layer between the core mm and a GPU SVM driver. Fixed-size notifiers, inserted on the
// first fault in their interval and removed with their last range; ranges sized from
// descending chunk sizes; one notifier_lock (the device's rwsem): written by the invalidate
// callback, read when pages are mapped and when the driver checks
// drm_gpusvm_range_pages_valid before committing a binding.
// Notifiers and ranges are kmalloc'd arena objects on singly linked lists (the kernel keeps
// interval trees and lists); a notifier embeds its mmu_interval_notifier at offset 0.

import {
  DEV_STAT,
  DevL,
  EBUSY,
  EFAULT,
  EINVAL,
  ENOENT,
  ENOMEM,
  EPERM,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmRange,
  MinL,
  current,
  defineStruct,
  device_lock,
  device_lock_obj,
  device_lock_read,
  device_mm,
  device_notifier_seen,
  device_priv,
  device_stat_add,
  device_unlock,
  hmm_pfn_to_pfn,
  hmm_range_fault,
  lockdep_assert_held,
  lockdep_assert_held_write,
  might_lock,
  mmap_read_lock,
  mmap_read_unlock,
  mmget_not_zero,
  mmput,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
  type MmuNotifierRange,
} from '../../src/device/index.js';
// not in the device API (yet): VMA lookup, GFP allocations, lockdep priming
import { defineIntervalNotifierOps } from '../../src/notifier/ops.js';
import { GFP_KERNEL } from '../../src/mm/gfp.js';
import { fs_reclaim_acquire, fs_reclaim_release } from '../../src/mm/page_alloc.js';
import { kfree, kzalloc } from '../../src/mm/slab.js';
import { VM_WRITE } from '../../src/mm/types.js';
import { vma_end, vma_flags, vma_lookup, vma_start } from '../../src/mm/vma.js';

export const DRM_GPUSVM_MAX_CHUNKS = 4;
/** drm_gpusvm_range_chunk_size's failure value */
export const LONG_MAX = Number.MAX_SAFE_INTEGER;

/** struct drm_gpusvm: the device's state starts with it (the driver's own words follow) */
export const GpusvmL = defineStruct('drm_gpusvm', {
  mm_start: 2, // f64
  mm_range: 2, // f64
  notifier_size: 2, // f64
  chunk_sizes: 2 * DRM_GPUSVM_MAX_CHUNKS, // f64 each, descending, the last a page
  num_chunks: 1,
  notifier_list: 1, // first notifier
  // counters
  notifiers_inserted: 1,
  notifiers_removed: 1,
  ranges_inserted: 1,
  ranges_removed: 1,
});

/** struct drm_gpusvm_notifier */
export const NotifierL = defineStruct('drm_gpusvm_notifier', {
  notifier: MinL.$size + (MinL.$size & 1), // embedded struct mmu_interval_notifier
  start: 2, // f64: itree.start
  end: 2, // f64: itree.last + 1
  gpusvm: 1, // the device
  next: 1,
  range_list: 1,
  removed: 1, // flags.removed
});

// struct drm_gpusvm_pages_flags
export const GPUSVM_MIGRATE_DEVMEM = 1 << 0;
export const GPUSVM_UNMAPPED = 1 << 1;
export const GPUSVM_PARTIAL_UNMAP = 1 << 2;
export const GPUSVM_HAS_DEVMEM_PAGES = 1 << 3;
export const GPUSVM_HAS_DMA_MAPPING = 1 << 4;

/** struct drm_gpusvm_range (with drm_gpusvm_pages) and xe_svm_range's words */
export const RangeL = defineStruct('drm_gpusvm_range', {
  start: 2, // f64
  end: 2, // f64
  notifier: 1,
  next: 1,
  refcount: 1,
  notifier_seq: 1, // pages.notifier_seq
  flags: 1, // GPUSVM_*
  dma_addr: 1, // kmalloc'd, one word per page: DMA_ENTRY(pfn, write); 0 = none
  npages: 1,
  // xe_svm_range
  tile_present: 1,
  tile_invalidated: 1,
  gc_next: 1,
  gc_state: 1, // GC_*
});

/** a dma_addr entry: pfn << 2 | mapped | write (pfn 0, the zero page, is a valid entry) */
export const DMA_MAPPED = 2;
export const DMA_WRITE = 1;

/** struct drm_gpusvm_ctx */
export interface DrmGpusvmCtx {
  read_only?: boolean;
  in_notifier?: boolean;
}

/** struct drm_gpusvm_ops: the driver's invalidate, called with notifier_lock held for write */
export interface DrmGpusvmOps {
  invalidate(dev: number, notifier: number, mmu_range: MmuNotifierRange): void | Promise<void>;
}

const opsByDriver = new Map<string, DrmGpusvmOps>();

/** Register a driver's gpusvm ops under its driver name (at a module's top level). */
export function defineGpusvmOps(driver: string, ops: DrmGpusvmOps): DrmGpusvmOps {
  opsByDriver.set(driver, ops);
  return ops;
}

function opsOf(dev: number): DrmGpusvmOps {
  const k = current.k;
  const name = k.strings.get(k.arena.i32[dev + DevL.driver]);
  const ops = opsByDriver.get(name);
  if (!ops) throw new Error(`drm_gpusvm: no ops for driver '${name}' in this thread: import its module`);
  return ops;
}

const f64 = (at: number): number => current.k.arena.f64[at >> 1];
const i32 = (): Int32Array => current.k.arena.i32;

export const drm_gpusvm_notifier_start = (n: number): number => f64(n + NotifierL.start);
export const drm_gpusvm_notifier_end = (n: number): number => f64(n + NotifierL.end);
export const drm_gpusvm_range_start = (r: number): number => f64(r + RangeL.start);
export const drm_gpusvm_range_end = (r: number): number => f64(r + RangeL.end);

export function drm_gpusvm_notifier_lock(dev: number): Promise<void> | undefined {
  return device_lock_read(dev);
}

export function drm_gpusvm_notifier_unlock(dev: number): void {
  device_unlock(dev);
}

/**
 * drm_gpusvm_init: sizes in bytes; chunk_sizes descending powers of two ending with a page.
 * The notifier_lock itself is the device's, initialised at open.
 */
export function drm_gpusvm_init(dev: number, mm_start: number, mm_range: number, notifier_size: number, chunk_sizes: number[]): number {
  const k = current.k;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  const pow2 = (v: number): boolean => Number.isInteger(v) && v >= ps && (v & (v - 1)) === 0;
  if (chunk_sizes.length === 0 || chunk_sizes.length > DRM_GPUSVM_MAX_CHUNKS || chunk_sizes.at(-1) !== ps) return -EINVAL;
  if (!chunk_sizes.every((c, i) => pow2(c) && (i === 0 || c < chunk_sizes[i - 1])) || !pow2(notifier_size)) return -EINVAL;
  k.arena.f64[(st + GpusvmL.mm_start) >> 1] = mm_start;
  k.arena.f64[(st + GpusvmL.mm_range) >> 1] = mm_range;
  k.arena.f64[(st + GpusvmL.notifier_size) >> 1] = notifier_size;
  chunk_sizes.forEach((c, i) => (k.arena.f64[((st + GpusvmL.chunk_sizes) >> 1) + i] = c));
  k.arena.i32[st + GpusvmL.num_chunks] = chunk_sizes.length;
  // the invalidation runs from reclaim and takes notifier_lock
  fs_reclaim_acquire(k, GFP_KERNEL);
  might_lock(device_lock_obj(dev));
  fs_reclaim_release(k, GFP_KERNEL);
  return 0;
}

// ---- notifiers ------------------------------------------------------------------------------------

/** drm_gpusvm_notifier_find: the notifier overlapping [start, end), or 0 */
export function drm_gpusvm_notifier_find(dev: number, start: number, end: number): number {
  const w = i32();
  for (let n = w[device_priv(dev) + GpusvmL.notifier_list]; n !== 0; n = w[n + NotifierL.next]) {
    if (drm_gpusvm_notifier_start(n) < end && drm_gpusvm_notifier_end(n) > start) return n;
  }
  return 0;
}

/** drm_gpusvm_range_find: the range of a notifier overlapping [start, end), or 0 */
export function drm_gpusvm_range_find(notifier: number, start: number, end: number): number {
  const w = i32();
  for (let r = w[notifier + NotifierL.range_list]; r !== 0; r = w[r + RangeL.next]) {
    if (drm_gpusvm_range_start(r) < end && drm_gpusvm_range_end(r) > start) return r;
  }
  return 0;
}

/** The ranges of a notifier overlapping [start, end), as a snapshot (drm_gpusvm_for_each_range). */
export function drm_gpusvm_ranges(notifier: number, start: number, end: number): number[] {
  const w = i32();
  const out: number[] = [];
  for (let r = w[notifier + NotifierL.range_list]; r !== 0; r = w[r + RangeL.next]) {
    if (drm_gpusvm_range_start(r) < end && drm_gpusvm_range_end(r) > start) out.push(r);
  }
  return out;
}

export function drm_gpusvm_notifiers(dev: number): number[] {
  const w = i32();
  const out: number[] = [];
  for (let n = w[device_priv(dev) + GpusvmL.notifier_list]; n !== 0; n = w[n + NotifierL.next]) out.push(n);
  return out;
}

function unlink(headAt: number, obj: number, nextOff: number): void {
  const w = i32();
  for (let at = headAt; w[at] !== 0; at = w[at] + nextOff) {
    if (w[at] === obj) {
      w[at] = w[obj + nextOff];
      w[obj + nextOff] = 0;
      return;
    }
  }
}

// ---- the notifier callback --------------------------------------------------------------------------

/** drm_gpusvm_notifier_invalidate: set the sequence and call the driver, notifier_lock written. */
export const drm_gpusvm_notifier_ops = defineIntervalNotifierOps('drm_gpusvm', {
  invalidate(sub: number, mmu_range: MmuNotifierRange, cur_seq: number): boolean | Promise<boolean> {
    const notifier = mmu_notifier_priv(sub);
    const dev = i32()[notifier + NotifierL.gpusvm];
    device_notifier_seen(dev); // what defineDriver does for the notifiers it registers
    if (!mmu_notifier_range_blockable(mmu_range)) {
      device_stat_add(dev, DEV_STAT.eagain);
      return false;
    }
    const body = (): boolean | Promise<boolean> => {
      let r: void | Promise<void>;
      try {
        mmu_interval_set_seq(sub, cur_seq);
        r = opsOf(dev).invalidate(dev, notifier, mmu_range);
      } catch (e) {
        device_unlock(dev);
        throw e;
      }
      if (r === undefined) {
        device_unlock(dev);
        return true;
      }
      return r.then(
        () => (device_unlock(dev), true),
        (e) => (device_unlock(dev), Promise.reject(e)),
      );
    };
    const p = device_lock(dev); // down_write(&gpusvm->notifier_lock)
    return p === undefined ? body() : p.then(body);
  },
});

// ---- ranges -----------------------------------------------------------------------------------------

/** drm_gpusvm_range_chunk_size: the largest chunk around fault_addr inside everything, or LONG_MAX */
export function drm_gpusvm_range_chunk_size(dev: number, notifier: number, vas: number, fault_addr: number, gpuva_start: number, gpuva_end: number): number {
  const k = current.k;
  const st = device_priv(dev);
  const n = k.arena.i32[st + GpusvmL.num_chunks];
  for (let i = 0; i < n; i++) {
    const c = f64(st + GpusvmL.chunk_sizes + 2 * i);
    const start = Math.floor(fault_addr / c) * c;
    const end = Math.ceil((fault_addr + 1) / c) * c;
    if (start < vma_start(k, vas) || end > vma_end(k, vas)) continue;
    if (start < drm_gpusvm_notifier_start(notifier) || end > drm_gpusvm_notifier_end(notifier)) continue;
    if (start < gpuva_start || end > gpuva_end) continue;
    // bigger than a page: must not overlap an existing range
    if (end - start !== k.mmLayer.pageSize && drm_gpusvm_range_find(notifier, start, end) !== 0) continue;
    return end - start;
  }
  return LONG_MAX;
}

/**
 * drm_gpusvm_range_find_or_insert: the range holding fault_addr, inserting its notifier and
 * itself as needed. The caller holds the driver's lock. The range, or -errno.
 */
export async function drm_gpusvm_range_find_or_insert(dev: number, fault_addr: number, gpuva_start: number, gpuva_end: number, ctx: DrmGpusvmCtx): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const mm = device_mm(dev);
  const ns = f64(st + GpusvmL.notifier_size);
  if (fault_addr < f64(st + GpusvmL.mm_start) || fault_addr > f64(st + GpusvmL.mm_start) + f64(st + GpusvmL.mm_range)) return -EINVAL;
  if (!mmget_not_zero(mm)) return -EFAULT;
  let notifier = drm_gpusvm_notifier_find(dev, fault_addr, fault_addr + 1);
  let notifier_alloc = false;
  let err = 0;
  try {
    if (notifier === 0) {
      notifier = kzalloc(k, NotifierL.$size, GFP_KERNEL); // drm_gpusvm_notifier_alloc
      if (notifier === 0) return -ENOMEM;
      notifier_alloc = true;
      w[notifier + NotifierL.gpusvm] = dev;
      k.arena.f64[(notifier + NotifierL.start) >> 1] = Math.floor(fault_addr / ns) * ns;
      k.arena.f64[(notifier + NotifierL.end) >> 1] = Math.ceil((fault_addr + 1) / ns) * ns;
      const r = mmu_interval_notifier_insert(notifier, mm, drm_gpusvm_notifier_start(notifier), ns, drm_gpusvm_notifier_ops, notifier);
      err = typeof r === 'number' ? r : await r;
      if (err !== 0) {
        kfree(k, notifier);
        return err;
      }
    }
    const l = mmap_read_lock(mm);
    if (l !== undefined) await l;
    let range = 0;
    try {
      const vas = vma_lookup(k, mm, fault_addr);
      if (vas === 0) err = -ENOENT;
      else if (!ctx.read_only && (vma_flags(k, vas) & VM_WRITE) === 0) err = -EPERM;
      else if ((range = drm_gpusvm_range_find(notifier, fault_addr, fault_addr + 1)) === 0) {
        const chunk = drm_gpusvm_range_chunk_size(dev, notifier, vas, fault_addr, gpuva_start, gpuva_end);
        if (chunk === LONG_MAX) err = -EINVAL;
        else if ((range = drm_gpusvm_range_alloc(notifier, fault_addr, chunk)) === 0) err = -ENOMEM;
        else {
          await drm_gpusvm_range_insert(dev, notifier, range);
          w[st + GpusvmL.ranges_inserted]++;
          if (notifier_alloc) {
            w[notifier + NotifierL.next] = w[st + GpusvmL.notifier_list];
            w[st + GpusvmL.notifier_list] = notifier;
            w[st + GpusvmL.notifiers_inserted]++;
          }
        }
      }
    } finally {
      mmap_read_unlock(mm);
    }
    if (err === 0) return range;
    if (notifier_alloc) {
      const r = mmu_interval_notifier_remove(notifier);
      if (typeof r !== 'number') await r;
      kfree(k, notifier);
    }
    return err;
  } finally {
    const p = mmput(mm);
    if (p !== undefined) await p;
  }
}

function drm_gpusvm_range_alloc(notifier: number, fault_addr: number, chunk: number): number {
  const k = current.k;
  const r = kzalloc(k, RangeL.$size, GFP_KERNEL);
  if (r === 0) return 0;
  const w = k.arena.i32;
  k.arena.f64[(r + RangeL.start) >> 1] = Math.floor(fault_addr / chunk) * chunk;
  k.arena.f64[(r + RangeL.end) >> 1] = Math.ceil((fault_addr + 1) / chunk) * chunk;
  w[r + RangeL.notifier] = notifier;
  w[r + RangeL.refcount] = 1;
  w[r + RangeL.npages] = chunk / k.mmLayer.pageSize;
  w[r + RangeL.notifier_seq] = 0x7fffffff; // LONG_MAX: no pages yet
  return r;
}

async function drm_gpusvm_range_insert(dev: number, notifier: number, range: number): Promise<void> {
  const w = i32();
  const p = drm_gpusvm_notifier_lock(dev);
  if (p !== undefined) await p;
  w[range + RangeL.next] = w[notifier + NotifierL.range_list];
  w[notifier + NotifierL.range_list] = range;
  drm_gpusvm_notifier_unlock(dev);
}

/** __drm_gpusvm_unmap_pages + __drm_gpusvm_free_pages' first half: notifier_lock held. */
function __drm_gpusvm_unmap_pages(dev: number, range: number): void {
  const w = i32();
  lockdep_assert_held(device_lock_obj(dev));
  const flags = w[range + RangeL.flags];
  if ((flags & GPUSVM_HAS_DMA_MAPPING) === 0) return;
  const dma = w[range + RangeL.dma_addr];
  w.fill(0, dma, dma + w[range + RangeL.npages]); // dma_unmap_page
  Atomics.store(w, range + RangeL.flags, flags & ~(GPUSVM_HAS_DMA_MAPPING | GPUSVM_HAS_DEVMEM_PAGES));
}

function __drm_gpusvm_free_pages(dev: number, range: number): void {
  const k = current.k;
  lockdep_assert_held(device_lock_obj(dev));
  kfree(k, k.arena.i32[range + RangeL.dma_addr]);
  k.arena.i32[range + RangeL.dma_addr] = 0;
}

/** drm_gpusvm_range_unmap_pages: in the notifier notifier_lock is held for write, else taken for read. */
export function drm_gpusvm_range_unmap_pages(dev: number, range: number, ctx: DrmGpusvmCtx): Promise<void> | undefined {
  if (ctx.in_notifier) {
    lockdep_assert_held_write(device_lock_obj(dev));
    __drm_gpusvm_unmap_pages(dev, range);
    return undefined;
  }
  const p = drm_gpusvm_notifier_lock(dev);
  const body = (): void => {
    __drm_gpusvm_unmap_pages(dev, range);
    drm_gpusvm_notifier_unlock(dev);
  };
  if (p !== undefined) return p.then(body);
  body();
  return undefined;
}

/**
 * drm_gpusvm_range_remove: unmap and unlink the range, and remove its notifier with its last
 * range. The caller holds the driver's lock; never called from the notifier (remove waits
 * for the notifier's invalidations to end).
 */
export async function drm_gpusvm_range_remove(dev: number, range: number): Promise<void> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const notifier = w[range + RangeL.notifier];
  const p = drm_gpusvm_notifier_lock(dev);
  if (p !== undefined) await p;
  __drm_gpusvm_unmap_pages(dev, range);
  __drm_gpusvm_free_pages(dev, range);
  unlink(notifier + NotifierL.range_list, range, RangeL.next);
  drm_gpusvm_notifier_unlock(dev);
  drm_gpusvm_range_put(range);
  w[st + GpusvmL.ranges_removed]++;
  if (w[notifier + NotifierL.range_list] !== 0) return;
  if (w[notifier + NotifierL.removed] === 0) {
    const r = mmu_interval_notifier_remove(notifier);
    if (typeof r !== 'number') await r;
  }
  unlink(st + GpusvmL.notifier_list, notifier, NotifierL.next);
  kfree(k, notifier);
  w[st + GpusvmL.notifiers_removed]++;
}

export function drm_gpusvm_range_get(range: number): number {
  Atomics.add(i32(), range + RangeL.refcount, 1);
  return range;
}

export function drm_gpusvm_range_put(range: number): void {
  if (Atomics.sub(i32(), range + RangeL.refcount, 1) === 1) kfree(current.k, range);
}

// ---- pages ------------------------------------------------------------------------------------------

/** drm_gpusvm_range_pages_valid: notifier_lock held, the last check before a binding is committed */
export function drm_gpusvm_range_pages_valid(dev: number, range: number): boolean {
  lockdep_assert_held(device_lock_obj(dev));
  return (Atomics.load(i32(), range + RangeL.flags) & (GPUSVM_HAS_DEVMEM_PAGES | GPUSVM_HAS_DMA_MAPPING)) !== 0;
}

async function drm_gpusvm_pages_valid_unlocked(dev: number, range: number): Promise<boolean> {
  if (i32()[range + RangeL.dma_addr] === 0) return false;
  const p = drm_gpusvm_notifier_lock(dev);
  if (p !== undefined) await p;
  const valid = drm_gpusvm_range_pages_valid(dev, range);
  if (!valid) __drm_gpusvm_free_pages(dev, range);
  drm_gpusvm_notifier_unlock(dev);
  return valid;
}

/**
 * drm_gpusvm_range_get_pages: hmm_range_fault the range (retrying -EBUSY with a fresh
 * sequence, bounded by HMM_RANGE_DEFAULT_TIMEOUT), then "DMA map" the pages under
 * notifier_lock after mmu_interval_read_retry. 0, -EFAULT (unmapped meanwhile, or the walk
 * failed), -EPERM, -EBUSY (timeout), -ENOMEM.
 */
export async function drm_gpusvm_range_get_pages(dev: number, range: number, ctx: DrmGpusvmCtx): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const mm = device_mm(dev);
  const notifier = w[range + RangeL.notifier];
  const npages = w[range + RangeL.npages];
  const hr = new HmmRange();
  hr.notifier = notifier;
  hr.start = drm_gpusvm_range_start(range);
  hr.end = drm_gpusvm_range_end(range);
  hr.default_flags = HMM_PFN_REQ_FAULT | (ctx.read_only ? 0 : HMM_PFN_REQ_WRITE);
  const timeout = k.sched.now() + HMM_RANGE_DEFAULT_TIMEOUT * 1e6;
  for (;;) {
    if (k.sched.now() > timeout) return -EBUSY;
    const s0 = mmu_interval_read_begin(notifier);
    hr.notifier_seq = typeof s0 === 'number' ? s0 : await s0;
    if (await drm_gpusvm_pages_valid_unlocked(dev, range)) break; // set_seqno
    hr.hmm_pfns = new Uint32Array(2 * npages);
    if (!mmget_not_zero(mm)) return -EFAULT;
    let err: number;
    try {
      for (;;) {
        device_stat_add(dev, DEV_STAT.fault_rounds);
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        try {
          err = await hmm_range_fault(hr);
        } finally {
          mmap_read_unlock(mm);
        }
        if (err !== -EBUSY) break;
        device_stat_add(dev, DEV_STAT.ebusy);
        if (k.sched.now() > timeout) break;
        const s = mmu_interval_read_begin(notifier);
        hr.notifier_seq = typeof s === 'number' ? s : await s;
      }
    } finally {
      const p = mmput(mm);
      if (p !== undefined) await p;
    }
    if (err !== 0) return err;
    const ret = await map_pages(dev, range, hr);
    if (ret === 1) continue; // the sequence moved: retry
    if (ret !== 0) return ret;
    break;
  }
  w[range + RangeL.notifier_seq] = hr.notifier_seq;
  return 0;
}

/** The map_pages step: 0, 1 (retry) or -errno. Takes and drops notifier_lock. */
async function map_pages(dev: number, range: number, hr: HmmRange): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const npages = w[range + RangeL.npages];
  for (;;) {
    const p = drm_gpusvm_notifier_lock(dev);
    if (p !== undefined) await p;
    if ((w[range + RangeL.flags] & GPUSVM_UNMAPPED) !== 0) {
      drm_gpusvm_notifier_unlock(dev);
      return -EFAULT;
    }
    if (mmu_interval_read_retry(hr.notifier, hr.notifier_seq)) {
      drm_gpusvm_notifier_unlock(dev);
      device_stat_add(dev, DEV_STAT.retries);
      return 1;
    }
    if (w[range + RangeL.dma_addr] === 0) {
      // unlock and restart mapping to allocate memory
      drm_gpusvm_notifier_unlock(dev);
      const dma = kzalloc(k, npages, GFP_KERNEL);
      if (dma === 0) return -ENOMEM;
      w[range + RangeL.dma_addr] = dma;
      continue;
    }
    const dma = w[range + RangeL.dma_addr];
    for (let i = 0; i < npages; i++) {
      const f = hr.hmm_pfns[2 * i + 1];
      if ((f & HMM_PFN_VALID) === 0) continue; // hmm_range_fault filled every page it was asked for
      w[dma + i] = (hmm_pfn_to_pfn(hr.hmm_pfns, i) << 2) | DMA_MAPPED | ((f & HMM_PFN_WRITE) !== 0 ? DMA_WRITE : 0); // dma_map_page
    }
    Atomics.store(w, range + RangeL.flags, w[range + RangeL.flags] | GPUSVM_HAS_DMA_MAPPING);
    drm_gpusvm_notifier_unlock(dev);
    return 0;
  }
}

/** drm_gpusvm_range_set_unmapped: in the notifier (notifier_lock held for write) */
export function drm_gpusvm_range_set_unmapped(dev: number, range: number, mmu_range: MmuNotifierRange): void {
  const w = i32();
  lockdep_assert_held_write(device_lock_obj(dev));
  let f = w[range + RangeL.flags] | GPUSVM_UNMAPPED;
  if (drm_gpusvm_range_start(range) < mmu_range.start || drm_gpusvm_range_end(range) > mmu_range.end) f |= GPUSVM_PARTIAL_UNMAP;
  Atomics.store(w, range + RangeL.flags, f);
}

/**
 * drm_gpusvm_fini: remove each notifier first (no invalidation races the teardown), then its
 * ranges. The caller holds the driver's lock.
 */
export async function drm_gpusvm_fini(dev: number): Promise<void> {
  const w = i32();
  for (const n of drm_gpusvm_notifiers(dev)) {
    const r = mmu_interval_notifier_remove(n);
    if (typeof r !== 'number') await r;
    w[n + NotifierL.removed] = 1;
    for (const range of drm_gpusvm_ranges(n, 0, Infinity)) await drm_gpusvm_range_remove(dev, range);
  }
}
