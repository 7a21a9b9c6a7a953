// gpusvm: a GPU SVM driver on drm_gpusvm, in the style of xe. Read:
// drivers/gpu/drm/drm_gpusvm.c, include/drm/drm_gpusvm.h and drivers/gpu/drm/xe/xe_svm.c
// (v6.15-v6.17). One device per xe_vm: its notifier lock is gpusvm->notifier_lock (rwsem),
// its shadow page table the GPU page table, its engines the GPU's.
// - GPU page fault (xe_svm_handle_pagefault), under vm->lock: run the garbage collector,
//   find or insert the notifier and range (drm_gpusvm_range_find_or_insert), get the pages
//   (hmm_range_fault, -EBUSY retried, the sequence checked under notifier_lock), bind: under
//   notifier_lock for read, drm_gpusvm_range_pages_valid, then the PTEs (else -EAGAIN, retry);
// - invalidation: drm_gpusvm_notifier_invalidate takes notifier_lock for write and calls
//   xe_svm_invalidate: zap the bound ranges, wait for the GPU (the TLB invalidation), unmap
//   their pages; on MMU_NOTIFY_UNMAP mark them unmapped and queue them for the collector;
// - the garbage collector (a worker, and the start of every fault) unbinds and removes
//   unmapped ranges, and with the last range its notifier: outside the notifier, never in it.
// Where it differs: no device memory (no migration, no drm_pagemap), one tile, no
// check_pages_threshold, no VMA attributes; the GPU VA range is [mm_start, mm_start +
// mm_range) (xe's CPU-address-mirror VMA); the fault path retries -EFAULT / -EPERM from
// get_pages a bounded number of times (xe retries them without bound when it has no device
// memory); sizes default to 8 MiB notifiers and 2 MiB / 64 KiB / 4 KiB chunks (xe: 512 MiB
// notifiers) for the emulator's small memories.

import { fileURLToPath } from 'node:url';
import {
  DEV_FAULT_WRITE,
  DevL,
  EAGAIN,
  EFAULT,
  EINVAL,
  ENOENT,
  EPERM,
  RWSEM_WORDS,
  RwSem,
  SPINLOCK_WORDS,
  SPTE_WRITE,
  Spinlock,
  current,
  defineDriver,
  defineStruct,
  device_fence_wait,
  device_lock_obj,
  device_open,
  device_priv,
  down_write,
  init_rwsem,
  lockdep_assert_held_write,
  lockdep_is_held,
  shadow_pte_install,
  shadow_pte_zap,
  spin_lock,
  spin_lock_init,
  spin_unlock,
  up_write,
  MMU_NOTIFY_UNMAP,
  type Kernel,
  type MmuNotifierRange,
  type Spawner,
  type TaskContext,
} from '../../src/device/index.js';
import type { Task } from '../../src/sched/task.js';
import { rwsem_is_write_locked } from '../../src/sync/rwsem.js';
import {
  DMA_MAPPED,
  DMA_WRITE,
  GPUSVM_PARTIAL_UNMAP,
  GPUSVM_UNMAPPED,
  GpusvmL,
  NotifierL,
  RangeL,
  defineGpusvmOps,
  drm_gpusvm_fini,
  drm_gpusvm_init,
  drm_gpusvm_notifier_lock,
  drm_gpusvm_notifier_unlock,
  drm_gpusvm_notifiers,
  drm_gpusvm_range_end,
  drm_gpusvm_range_find,
  drm_gpusvm_range_find_or_insert,
  drm_gpusvm_range_get_pages,
  drm_gpusvm_range_pages_valid,
  drm_gpusvm_range_remove,
  drm_gpusvm_range_set_unmapped,
  drm_gpusvm_range_start,
  drm_gpusvm_range_unmap_pages,
  drm_gpusvm_ranges,
  drm_gpusvm_notifier_end,
  drm_gpusvm_notifier_start,
  type DrmGpusvmCtx,
} from './drm_gpusvm.js';

export * from './drm_gpusvm.js';

/** get_pages failures (-EFAULT, -EPERM: the CPU mappings changed) a fault retries */
export const XE_SVM_FAULT_RETRIES = 4;

// range->gc_state: xe's list_empty(&garbage_collector_link), with list_del's poison kept apart
const GC_NONE = 0;
const GC_QUEUED = 1;
const GC_TAKEN = 2;

/** struct xe_vm's SVM part; drm_gpusvm first (the core reads it at the state's offset 0) */
export const XeVmL = defineStruct('xe_vm_svm', {
  gpusvm: GpusvmL.$size + (GpusvmL.$size & 1),
  vm_lock: RWSEM_WORDS, // vm->lock: the driver_svm_lock
  gc_lock: SPINLOCK_WORDS, // garbage_collector.lock
  gc_head: 1,
  gc_tail: 1,
  gc_seq: 1, // queue_work: bumped, the worker waits on it
  gc_worker: 1, // the worker's task id
  gc_stop: 1,
  gc_worker_done: 1,
  closed: 1, // xe_vm_is_closed
  read_only: 1,
  // counters
  faults: 1,
  valid_faults: 1,
  fault_retries: 1,
  bind_eagain: 1,
  invalidations: 1,
  inval_write_locked: 1, // invalidations that found notifier_lock held for write by their task
  gc_adds: 1,
  gc_ranges: 1,
  gc_runs_worker: 1,
  gc_runs_fault: 1,
  gc_in_notifier: 1, // collections that ran with notifier_lock held: must stay 0
});

function st(dev: number): number {
  return device_priv(dev);
}

const i32 = (): Int32Array => current.k.arena.i32;
const vmLock = (dev: number): RwSem => new RwSem(current.k, st(dev) + XeVmL.vm_lock);
const gcLock = (dev: number): Spinlock => new Spinlock(current.k, st(dev) + XeVmL.gc_lock);

function ctxOf(dev: number): DrmGpusvmCtx {
  return { read_only: i32()[st(dev) + XeVmL.read_only] !== 0 };
}

// ---- invalidation (in the notifier: notifier_lock held for write) -----------------------------------

function xe_svm_garbage_collector_add_range(dev: number, range: number, mmu_range: MmuNotifierRange): void {
  const k = current.k;
  const w = k.arena.i32;
  const s = st(dev);
  drm_gpusvm_range_set_unmapped(dev, range, mmu_range);
  const l = gcLock(dev);
  spin_lock(l);
  if (w[range + RangeL.gc_state] === GC_NONE) {
    w[range + RangeL.gc_state] = GC_QUEUED;
    w[range + RangeL.gc_next] = 0;
    if (w[s + XeVmL.gc_tail] === 0) w[s + XeVmL.gc_head] = range;
    else w[w[s + XeVmL.gc_tail] + RangeL.gc_next] = range;
    w[s + XeVmL.gc_tail] = range;
    w[s + XeVmL.gc_adds]++;
  }
  spin_unlock(l);
  // queue_work(pf_wq, &garbage_collector.work)
  Atomics.add(w, s + XeVmL.gc_seq, 1);
  k.sched.wake(s + XeVmL.gc_seq, Infinity);
}

function xe_svm_invalidate(dev: number, notifier: number, mmu_range: MmuNotifierRange): Promise<void> | undefined {
  const w = i32();
  const s = st(dev);
  const l = device_lock_obj(dev);
  lockdep_assert_held_write(l); // xe_svm_assert_in_notifier
  if (rwsem_is_write_locked(l as RwSem) && lockdep_is_held(l)) w[s + XeVmL.inval_write_locked]++;
  w[s + XeVmL.invalidations]++;
  const adj_start = Math.max(drm_gpusvm_notifier_start(notifier), mmu_range.start);
  const adj_end = Math.min(drm_gpusvm_notifier_end(notifier), mmu_range.end);
  const ranges = drm_gpusvm_ranges(notifier, adj_start, adj_end);
  if (ranges.length === 0) return undefined;
  const closed = w[s + XeVmL.closed] !== 0;
  let gen = -1;
  for (const r of ranges) {
    // xe_svm_range_notifier_event_begin: skip if already unmapped or never bound
    if (closed || (w[r + RangeL.flags] & GPUSVM_UNMAPPED) !== 0 || w[r + RangeL.tile_present] === 0) continue;
    gen = shadow_pte_zap(dev, drm_gpusvm_range_start(r), drm_gpusvm_range_end(r));
    Atomics.store(w, r + RangeL.tile_invalidated, 1);
  }
  const end = (): void => {
    for (const r of ranges) {
      drm_gpusvm_range_unmap_pages(dev, r, { in_notifier: true });
      if (!closed && mmu_range.event === MMU_NOTIFY_UNMAP) xe_svm_garbage_collector_add_range(dev, r, mmu_range);
    }
  };
  // the TLB invalidation: the GPU no longer uses what was zapped
  const f = gen >= 0 ? device_fence_wait(dev, gen) : undefined;
  if (f !== undefined) return f.then(end);
  end();
  return undefined;
}

defineGpusvmOps('gpusvm', { invalidate: xe_svm_invalidate });

// ---- the garbage collector (vm->lock held for write, never in the notifier) ----------------------------

async function __xe_svm_garbage_collector(dev: number, range: number): Promise<void> {
  const w = i32();
  // xe_vm_range_unbind
  const p = drm_gpusvm_notifier_lock(dev);
  if (p !== undefined) await p;
  let gen = -1;
  try {
    if (w[range + RangeL.tile_present] !== 0) gen = shadow_pte_zap(dev, drm_gpusvm_range_start(range), drm_gpusvm_range_end(range));
    w[range + RangeL.tile_present] = 0;
  } finally {
    drm_gpusvm_notifier_unlock(dev);
  }
  if (gen >= 0) {
    const f = device_fence_wait(dev, gen);
    if (f !== undefined) await f;
  }
  await drm_gpusvm_range_remove(dev, range);
}

async function xe_svm_garbage_collector(dev: number, inWorker: boolean): Promise<number> {
  const w = i32();
  const s = st(dev);
  lockdep_assert_held_write(vmLock(dev));
  if (w[s + XeVmL.closed] !== 0) return -ENOENT;
  const l = gcLock(dev);
  let n = 0;
  for (;;) {
    spin_lock(l);
    const range = w[s + XeVmL.gc_head];
    if (range !== 0) {
      w[s + XeVmL.gc_head] = w[range + RangeL.gc_next];
      if (w[s + XeVmL.gc_head] === 0) w[s + XeVmL.gc_tail] = 0;
      w[range + RangeL.gc_state] = GC_TAKEN;
    }
    spin_unlock(l);
    if (range === 0) break;
    if (lockdep_is_held(device_lock_obj(dev))) w[s + XeVmL.gc_in_notifier]++;
    await __xe_svm_garbage_collector(dev, range);
    w[s + XeVmL.gc_ranges]++;
    n++;
  }
  if (n > 0) w[s + (inWorker ? XeVmL.gc_runs_worker : XeVmL.gc_runs_fault)]++;
  return 0;
}

/** The collector's work item as a task (a named export): runs whenever ranges are queued. */
export async function xe_svm_garbage_collector_work(ctx: TaskContext<{ dev: number }>): Promise<void> {
  const { k } = ctx;
  const dev = ctx.args.dev;
  const w = k.arena.i32;
  const s = st(dev);
  try {
    for (;;) {
      const seq = Atomics.load(w, s + XeVmL.gc_seq);
      if (Atomics.load(w, s + XeVmL.gc_stop) !== 0) break;
      if (Atomics.load(w, s + XeVmL.gc_head) !== 0) {
        const p = down_write(vmLock(dev));
        if (p !== undefined) await p;
        try {
          await xe_svm_garbage_collector(dev, true);
        } finally {
          up_write(vmLock(dev));
        }
        continue;
      }
      const r = k.sched.wait(s + XeVmL.gc_seq, seq);
      if (typeof r !== 'number') await r;
    }
  } finally {
    Atomics.store(w, s + XeVmL.gc_worker_done, 1);
    k.sched.wake(s + XeVmL.gc_worker_done, Infinity);
  }
}

// ---- the GPU page fault ----------------------------------------------------------------------------------

/** xe_svm_range_is_valid: bound on the tile and not invalidated since */
function xe_svm_range_is_valid(range: number): boolean {
  const w = i32();
  return Atomics.load(w, range + RangeL.tile_present) !== 0 && Atomics.load(w, range + RangeL.tile_invalidated) === 0;
}

/** The bind's pre-commit: under notifier_lock for read, the pages must still be valid. */
async function xe_svm_range_bind(dev: number, range: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const p = drm_gpusvm_notifier_lock(dev);
  if (p !== undefined) await p;
  try {
    if (!drm_gpusvm_range_pages_valid(dev, range)) return -EAGAIN;
    const dma = w[range + RangeL.dma_addr];
    const start = drm_gpusvm_range_start(range);
    const seq = w[range + RangeL.notifier_seq];
    for (let i = 0; i < w[range + RangeL.npages]; i++) {
      const e = w[dma + i];
      if ((e & DMA_MAPPED) === 0) continue;
      const r = shadow_pte_install(dev, start + i * ps, e >>> 2, (e & DMA_WRITE) !== 0 ? SPTE_WRITE : 0, seq, 0);
      if (r !== 0) {
        // no half-bound range: the notifier only zaps ranges marked present
        shadow_pte_zap(dev, start, drm_gpusvm_range_end(range));
        return r;
      }
    }
    Atomics.store(w, range + RangeL.tile_invalidated, 0);
    Atomics.store(w, range + RangeL.tile_present, 1);
    return 0;
  } finally {
    drm_gpusvm_notifier_unlock(dev);
  }
}

/** xe_svm_handle_pagefault: 0 when the range holding addr is bound, or -errno. */
export async function xe_svm_handle_pagefault(dev: number, addr: number, _npages: number, flags: number): Promise<number> {
  const w = i32();
  const s = st(dev);
  const ctx = ctxOf(dev);
  if (ctx.read_only && (flags & DEV_FAULT_WRITE) !== 0) return -EPERM;
  const gpuva_start = current.k.arena.f64[(s + GpusvmL.mm_start) >> 1];
  const gpuva_end = gpuva_start + current.k.arena.f64[(s + GpusvmL.mm_range) >> 1];
  const l = vmLock(dev);
  const p = down_write(l);
  if (p !== undefined) await p;
  try {
    for (let tries = 0; ; tries++) {
      // always process UNMAPs first so the view of the ranges is current
      const gc = await xe_svm_garbage_collector(dev, false);
      if (gc !== 0) return gc;
      const range = await drm_gpusvm_range_find_or_insert(dev, Math.max(addr, gpuva_start), gpuva_start, gpuva_end, ctx);
      if (range < 0) return range;
      w[s + XeVmL.faults]++;
      if (xe_svm_range_is_valid(range)) {
        w[s + XeVmL.valid_faults]++;
        return 0;
      }
      let err = await drm_gpusvm_range_get_pages(dev, range, ctx);
      if ((err === -EFAULT || err === -EPERM) && tries < XE_SVM_FAULT_RETRIES) {
        w[s + XeVmL.fault_retries]++; // the CPU mappings changed
        continue;
      }
      if (err !== 0) return err;
      err = await xe_svm_range_bind(dev, range);
      if (err === -EAGAIN && tries < XE_SVM_FAULT_RETRIES) {
        w[s + XeVmL.bind_eagain]++;
        continue;
      }
      return err;
    }
  } finally {
    up_write(l);
  }
}

// ---- the driver ------------------------------------------------------------------------------------------

export interface GpusvmOpenOpts {
  /** the GPU VA range mirroring the CPU's (default: the whole user address space) */
  mmStart?: number;
  mmRange?: number;
  /** bytes; defaults scaled down from xe's (see the top comment) */
  notifierSize?: number;
  chunkSizes?: number[];
  readOnly?: boolean;
  name?: string;
  mm?: number;
}

export const DEFAULT_NOTIFIER_PAGES = 2048;
export const DEFAULT_CHUNK_PAGES = [512, 16, 1];

/** the GPU's view of a range for the seq_retry check: the range holding addr, or 0 */
function rangeAt(dev: number, addr: number): number {
  for (const n of drm_gpusvm_notifiers(dev)) {
    if (addr < drm_gpusvm_notifier_start(n) || addr >= drm_gpusvm_notifier_end(n)) continue;
    return drm_gpusvm_range_find(n, addr, addr + 1);
  }
  return 0;
}

export const gpusvmDriver = defineDriver({
  name: 'gpusvm',
  state: XeVmL,
  lock: { kind: 'rwsem', name: 'gpusvm->notifier_lock', class: '&gpusvm->notifier_lock' },
  // drm_gpusvm inserts a notifier per notifier_size interval on first fault
  notifier: { kind: 'none' },
  fault: xe_svm_handle_pagefault,
  /** drm_gpusvm's check before a binding: the range's pages are still valid (notifier_lock held) */
  seq_retry(dev, seq, addr) {
    const r = rangeAt(dev, addr);
    return r === 0 || !drm_gpusvm_range_pages_valid(dev, r) || (i32()[r + RangeL.flags] & GPUSVM_UNMAPPED) !== 0 || i32()[r + RangeL.notifier_seq] !== seq;
  },
  open(dev, opts) {
    const k = current.k;
    const o = opts as GpusvmOpenOpts;
    const s = st(dev);
    const ps = k.mmLayer.pageSize;
    init_rwsem(k, s + XeVmL.vm_lock, 'vm->lock', '&vm->lock');
    spin_lock_init(k, s + XeVmL.gc_lock, 'garbage_collector.lock', '&vm->svm.garbage_collector.lock');
    k.arena.i32[s + XeVmL.read_only] = o.readOnly ? 1 : 0;
    const mmStart = o.mmStart ?? 0;
    const mmRange = o.mmRange ?? k.mmLayer.taskSize;
    if (!(mmRange > 0)) return -EINVAL;
    return drm_gpusvm_init(dev, mmStart, mmRange, o.notifierSize ?? DEFAULT_NOTIFIER_PAGES * ps, o.chunkSizes ?? DEFAULT_CHUNK_PAGES.map((c) => c * ps));
  },
  /** xe_svm_close + xe_svm_fini: stop the collector, then tear everything down under vm->lock */
  async release(dev) {
    const k = current.k;
    const w = k.arena.i32;
    const s = st(dev);
    Atomics.store(w, s + XeVmL.gc_stop, 1);
    Atomics.add(w, s + XeVmL.gc_seq, 1);
    k.sched.wake(s + XeVmL.gc_seq, Infinity);
    if (w[s + XeVmL.gc_worker] !== 0) {
      for (let d = Atomics.load(w, s + XeVmL.gc_worker_done); d === 0; d = Atomics.load(w, s + XeVmL.gc_worker_done)) {
        const r = k.sched.wait(s + XeVmL.gc_worker_done, 0);
        if (typeof r !== 'number') await r;
      }
    }
    const p = down_write(vmLock(dev));
    if (p !== undefined) await p;
    try {
      w[s + XeVmL.closed] = 1;
      // queued ranges go with their notifiers below
      for (let r = w[s + XeVmL.gc_head]; r !== 0; r = w[r + RangeL.gc_next]) w[r + RangeL.gc_state] = GC_TAKEN;
      w[s + XeVmL.gc_head] = w[s + XeVmL.gc_tail] = 0;
      await drm_gpusvm_fini(dev);
    } finally {
      up_write(vmLock(dev));
    }
  },
  commands: {
    /** a GPU fault at { addr, write? }, as the GuC would report it */
    FAULT(dev: number, arg: { addr: number; write?: boolean }): Promise<number> | number {
      if (!arg || !Number.isFinite(arg.addr)) return -EINVAL;
      return xe_svm_handle_pagefault(dev, arg.addr, 1, arg.write ? DEV_FAULT_WRITE : 0);
    },
  },
  diagnose(dev) {
    const s = gpusvmStats(current.k, dev);
    return `gpusvm: ${s.faults} faults (${s.valid_faults} on valid ranges, ${s.fault_retries} retried, ${s.bind_eagain} bind -EAGAIN), ${s.invalidations} invalidations, ${s.ranges} ranges in ${s.notifiers} notifiers, ${s.gc_ranges} collected`;
  },
});

let modPath: string | null = null;
/** this module: workers load it to find the driver and the collector's task */
export function gpusvmModule(): string {
  return (modPath ??= fileURLToPath(import.meta.url));
}

/** Open a GPU VM mirroring the mm of current (a process's CPU task). */
export function gpusvm_open(o: GpusvmOpenOpts = {}): Promise<number> {
  return device_open('gpusvm', { ...o, name: o.name ?? 'xe0' });
}

/** Start the garbage collector's worker for a device. */
export function spawnGpusvmGcWorker(k: Kernel, spawner: Spawner, dev: number): Task {
  const t = spawner.spawn({ name: `xe_svm_gc@${dev.toString(16)}`, kind: 'driver', module: gpusvmModule(), fn: 'xe_svm_garbage_collector_work', args: { dev } });
  k.arena.i32[k.arena.i32[dev + DevL.priv] + XeVmL.gc_worker] = t.id;
  return t;
}

// ---- inspection ------------------------------------------------------------------------------------------

export interface GpusvmRangeInfo {
  start: number;
  end: number;
  unmapped: boolean;
  partial: boolean;
  bound: boolean;
  queued: boolean;
}

/** Every range, in address order (tests run this outside any lock, between steps). */
export function gpusvmRanges(k: Kernel, dev: number): GpusvmRangeInfo[] {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const out: GpusvmRangeInfo[] = [];
  for (let n = w[w[dev + DevL.priv] + GpusvmL.notifier_list]; n !== 0; n = w[n + NotifierL.next]) {
    for (let r = w[n + NotifierL.range_list]; r !== 0; r = w[r + RangeL.next]) {
      const fl = w[r + RangeL.flags];
      out.push({
        start: f[(r + RangeL.start) >> 1],
        end: f[(r + RangeL.end) >> 1],
        unmapped: (fl & GPUSVM_UNMAPPED) !== 0,
        partial: (fl & GPUSVM_PARTIAL_UNMAP) !== 0,
        bound: w[r + RangeL.tile_present] !== 0 && w[r + RangeL.tile_invalidated] === 0,
        queued: w[r + RangeL.gc_state] === GC_QUEUED,
      });
    }
  }
  return out.sort((a, b) => a.start - b.start);
}

export function gpusvmNotifiers(k: Kernel, dev: number): { start: number; end: number }[] {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const out: { start: number; end: number }[] = [];
  for (let n = w[w[dev + DevL.priv] + GpusvmL.notifier_list]; n !== 0; n = w[n + NotifierL.next]) out.push({ start: f[(n + NotifierL.start) >> 1], end: f[(n + NotifierL.end) >> 1] });
  return out.sort((a, b) => a.start - b.start);
}

const STAT_FIELDS = ['faults', 'valid_faults', 'fault_retries', 'bind_eagain', 'invalidations', 'inval_write_locked', 'gc_adds', 'gc_ranges', 'gc_runs_worker', 'gc_runs_fault', 'gc_in_notifier'] as const;
const CORE_FIELDS = ['notifiers_inserted', 'notifiers_removed', 'ranges_inserted', 'ranges_removed'] as const;

export type GpusvmStats = Record<(typeof STAT_FIELDS)[number] | (typeof CORE_FIELDS)[number] | 'ranges' | 'notifiers', number>;

export function gpusvmStats(k: Kernel, dev: number): GpusvmStats {
  const w = k.arena.i32;
  const s = w[dev + DevL.priv];
  const out = {} as GpusvmStats;
  for (const f of STAT_FIELDS) out[f] = w[s + XeVmL[f]];
  for (const f of CORE_FIELDS) out[f] = w[s + GpusvmL[f]];
  out.notifiers = gpusvmNotifiers(k, dev).length;
  out.ranges = gpusvmRanges(k, dev).length;
  return out;
}



export { stress } from './stress.js';
