// userptr: GPU buffer objects backed by user memory, on an hlist mmu_notifier, in the style
// of i915's userptr before v5.13 (drivers/gpu/drm/i915/gem/i915_gem_userptr.c, one
// i915_mmu_notifier per mm with an interval tree of objects) and amdgpu's old amdgpu_mn
// (mutex_trylock in the non-blockable path).
// - USERPTR creates an object over [addr, addr + npages pages); its pages are pinned
//   (pin_user_pages_remote, faulting them in) and mapped into the GPU's page table when the
//   object is bound (GET_PAGES, or a GPU fault on it: execbuf revalidating the object);
// - invalidate_range_start: for the objects overlapping the range, bump the object's
//   sequence, zap the GPU mapping, wait for the GPU, unpin the pages. When the range is not
//   blockable it trylocks the object lock and returns -EAGAIN if that fails, or if the GPU
//   is still using the pages (it cannot wait): the "B" of the 2019 A/B thread (§1.7). It has
//   no invalidate_range_end: a notifier whose start can fail must not have one.
// Without an end it cannot know when the CPU PTEs have actually changed: an object rebound
// after its start returned and before the invalidation's zap (MADV_DONTNEED zaps under the
// mmap_lock held for read, while a later notifier's start sleeps) maps pages that are about to
// go. i915 had that race; upstream fixed it by moving to mmu_interval_notifier (v5.13). It is
// kept here, and the mirror check reports it (test/drivers_hlist.test.ts).
// Where it differs: objects live in a small fixed table (not an interval tree) under one
// object lock per open; i915 returned -EAGAIN for any overlapping object when not blockable
// (no trylock) and unbound through struct_mutex; the GPU "execbuf" is a device program whose
// faults bind the object.

import {
  DEV_FAULT_WRITE,
  DEV_STAT,
  DevL,
  EAGAIN,
  EFAULT,
  EINVAL,
  ENOMEM,
  FOLL_WRITE,
  SPTE_WRITE,
  current,
  defineDriver,
  defineStruct,
  device_fence_busy,
  device_fence_fail,
  device_fence_wait,
  device_lock,
  device_close,
  device_ioctl,
  device_mm,
  device_open,
  device_priv,
  device_stat_add,
  device_trylock,
  device_unlock,
  mmap_read_lock,
  mmap_read_unlock,
  mmget_not_zero,
  mmput,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
  pin_user_pages_remote,
  shadow_pte_install,
  shadow_pte_zap,
  unpin_user_pages,
  type Kernel,
  type MmuNotifierRange,
} from '../src/device/index.js';
import { defineStressAdapter, spawnStressEngines } from '../src/device/stress_adapter.js';

/** objects per open */
export const USERPTR_MAX_OBJS = 8;
/** pages per object: the page list is one kmalloc object */
export const USERPTR_MAX_PAGES = 512;
/** rounds of get_pages that collide with an invalidation before it gives up with -EAGAIN */
const GET_PAGES_TRIES = 64;

/** struct drm_i915_gem_object's userptr part */
export const UptrObjL = defineStruct('i915_userptr_obj', {
  start: 2, // f64
  npages: 1,
  readonly: 1,
  /** kmalloc'd pfn list, 0 if none */
  pages: 1,
  /** the pages are pinned and mapped into the GPU */
  pinned: 1,
  /** bumped by every invalidation overlapping the object (under the object lock) */
  seq: 1,
  live: 1,
  gets: 1,
  unpins: 1,
});

/** struct i915_mmu_notifier + the open's objects */
export const UserptrL = defineStruct('i915_mmu_notifier', {
  objs: USERPTR_MAX_OBJS * UptrObjL.$size,
  eagain: 1,
  invalidations: 1,
  retries: 1,
});

function w32(): Int32Array {
  return current.k.arena.i32;
}

function objAt(st: number, i: number): number {
  return st + UserptrL.objs + i * UptrObjL.$size;
}

function objRange(obj: number): [number, number] {
  const k = current.k;
  const start = k.arena.f64[(obj + UptrObjL.start) >> 1];
  return [start, start + k.arena.i32[obj + UptrObjL.npages] * k.mmLayer.pageSize];
}

/** the live object containing addr, or 0 */
function objOf(st: number, addr: number): number {
  const w = w32();
  for (let i = 0; i < USERPTR_MAX_OBJS; i++) {
    const o = objAt(st, i);
    if (w[o + UptrObjL.live] === 0) continue;
    const [s, e] = objRange(o);
    if (addr >= s && addr < e) return o;
  }
  return 0;
}

/** Unpin an object's pages; the caller zapped its mapping and waited for the GPU. Object lock held. */
function put_pages(obj: number): void {
  const w = w32();
  if (w[obj + UptrObjL.pinned] === 0) return;
  const pages = w[obj + UptrObjL.pages];
  unpin_user_pages(w.subarray(pages, pages + w[obj + UptrObjL.npages]), w[obj + UptrObjL.npages]);
  w[obj + UptrObjL.pinned] = 0;
  w[obj + UptrObjL.unpins]++;
}

/**
 * The invalidation with the object lock held: every overlapping object's sequence moves, its
 * mapping is zapped, the GPU waited for (or, when not blockable and busy, -EAGAIN), its pages
 * unpinned. Unlocks before returning.
 */
function invalidate_locked(dev: number, st: number, start: number, end: number, blockable: boolean): number | Promise<number> {
  const w = w32();
  const busy: [number, number][] = [];
  for (let i = 0; i < USERPTR_MAX_OBJS; i++) {
    const o = objAt(st, i);
    if (w[o + UptrObjL.live] === 0) continue;
    const [s, e] = objRange(o);
    if (e <= start || s >= end) continue;
    Atomics.add(w, o + UptrObjL.seq, 1);
    if (w[o + UptrObjL.pinned] === 0) continue;
    busy.push([o, shadow_pte_zap(dev, s, e)]);
  }
  w[st + UserptrL.invalidations]++;
  if (!blockable) {
    for (const [, gen] of busy) {
      const eng = device_fence_busy(dev, gen);
      if (eng >= 0) {
        // the GPU still reads these pages and we may not wait: keep them pinned, fail
        device_fence_fail(dev, gen, eng);
        w[st + UserptrL.eagain]++;
        device_stat_add(dev, DEV_STAT.eagain);
        device_unlock(dev);
        return -EAGAIN;
      }
    }
    for (const [o] of busy) put_pages(o);
    device_unlock(dev);
    return 0;
  }
  return (async () => {
    try {
      for (const [o, gen] of busy) {
        const p = device_fence_wait(dev, gen);
        if (p !== undefined) await p;
        put_pages(o);
      }
      return 0;
    } finally {
      device_unlock(dev);
    }
  })();
}

function overlaps(st: number, start: number, end: number): boolean {
  const w = w32();
  for (let i = 0; i < USERPTR_MAX_OBJS; i++) {
    const o = objAt(st, i);
    if (w[o + UptrObjL.live] === 0) continue;
    const [s, e] = objRange(o);
    if (e > start && s < end) return true;
  }
  return false;
}

const ops = {
  invalidate_range_start(sub: number, range: MmuNotifierRange): number | Promise<number> {
    const dev = mmu_notifier_priv(sub);
    const st = device_priv(dev);
    if (!overlaps(st, range.start, range.end)) return 0;
    if (!mmu_notifier_range_blockable(range)) {
      if (!device_trylock(dev)) {
        w32()[st + UserptrL.eagain]++;
        device_stat_add(dev, DEV_STAT.eagain);
        return -EAGAIN;
      }
      return invalidate_locked(dev, st, range.start, range.end, false);
    }
    const p = device_lock(dev);
    if (p === undefined) return invalidate_locked(dev, st, range.start, range.end, true);
    return p.then(() => invalidate_locked(dev, st, range.start, range.end, true));
  },

  /** the mm is going away: every object loses its pages */
  release(sub: number, _mm: number): Promise<void> {
    const dev = mmu_notifier_priv(sub);
    const st = device_priv(dev);
    return (async () => {
      const p = device_lock(dev);
      if (p !== undefined) await p;
      const r = invalidate_locked(dev, st, 0, Infinity, true);
      if (typeof r !== 'number') await r;
    })();
  },
};

/**
 * get_pages: pin the object's pages and map them into the GPU. The pin runs without the
 * object lock (it faults, and a fault may invalidate); the object's sequence, read before,
 * tells whether an invalidation passed meanwhile: then the pages go back and it tries again.
 */
async function userptr_get_pages(dev: number, obj: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const mm = device_mm(dev);
  const npages = w[obj + UptrObjL.npages];
  const start = k.arena.f64[(obj + UptrObjL.start) >> 1];
  const ro = w[obj + UptrObjL.readonly] !== 0;
  const got = new Int32Array(npages);
  for (let tries = 0; tries < GET_PAGES_TRIES; tries++) {
    device_stat_add(dev, DEV_STAT.fault_rounds);
    const seq = Atomics.load(w, obj + UptrObjL.seq);
    if (w[obj + UptrObjL.pinned] !== 0) {
      // still pinned (a non-blockable invalidation zapped the mapping and failed): map again
      const p = device_lock(dev);
      if (p !== undefined) await p;
      const ret = w[obj + UptrObjL.pinned] !== 0 ? map_pages(dev, obj, Atomics.load(w, obj + UptrObjL.seq)) : 1;
      device_unlock(dev);
      if (ret <= 0) return ret;
      continue;
    }
    if (!mmget_not_zero(mm)) return -EFAULT;
    let n: number;
    try {
      const l = mmap_read_lock(mm);
      if (l !== undefined) await l;
      try {
        n = await pin_user_pages_remote(mm, start, npages, ro ? 0 : FOLL_WRITE, got);
      } finally {
        mmap_read_unlock(mm);
      }
    } finally {
      const p = mmput(mm);
      if (p !== undefined) await p;
    }
    if (n !== npages) {
      if (n > 0) unpin_user_pages(got, n);
      return n < 0 ? n : -EFAULT;
    }
    const p = device_lock(dev);
    if (p !== undefined) await p;
    if (Atomics.load(w, obj + UptrObjL.seq) !== seq || w[obj + UptrObjL.pinned] !== 0) {
      // an invalidation passed while we pinned (or another binder won): ours go back
      device_unlock(dev);
      unpin_user_pages(got, npages);
      w[st + UserptrL.retries]++;
      device_stat_add(dev, DEV_STAT.retries);
      continue;
    }
    w.set(got, w[obj + UptrObjL.pages]);
    w[obj + UptrObjL.pinned] = 1;
    w[obj + UptrObjL.gets]++;
    const ret = map_pages(dev, obj, seq);
    device_unlock(dev);
    return ret;
  }
  return -EAGAIN;
}

/** Map the object's pinned pages into the GPU from sequence `seq`. Object lock held. */
function map_pages(dev: number, obj: number, seq: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const start = k.arena.f64[(obj + UptrObjL.start) >> 1];
  const pages = w[obj + UptrObjL.pages];
  const flags = w[obj + UptrObjL.readonly] !== 0 ? 0 : SPTE_WRITE;
  for (let i = 0; i < w[obj + UptrObjL.npages]; i++) {
    const r = shadow_pte_install(dev, start + i * ps, w[pages + i], flags, seq);
    if (r !== 0) return r;
  }
  return 0;
}

/** The GPU faulted on addr: bind the object holding it (execbuf's userptr revalidation). */
function userptr_fault(dev: number, addr: number, _npages: number, flags: number): number | Promise<number> {
  const w = w32();
  const obj = objOf(device_priv(dev), addr);
  if (obj === 0) return -EFAULT;
  if ((flags & DEV_FAULT_WRITE) !== 0 && w[obj + UptrObjL.readonly] !== 0) return -EFAULT;
  return userptr_get_pages(dev, obj);
}

/** USERPTR { addr, npages, readonly? }: a new object; returns its handle (1..) or -errno. */
function cmd_userptr(dev: number, arg: { addr: number; npages: number; readonly?: boolean }): number {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  if (!arg || !Number.isInteger(arg.addr) || arg.addr % ps !== 0 || !Number.isInteger(arg.npages) || arg.npages < 1 || arg.npages > USERPTR_MAX_PAGES) return -EINVAL;
  for (let i = 0; i < USERPTR_MAX_OBJS; i++) {
    const o = objAt(st, i);
    if (w[o + UptrObjL.live] !== 0) continue;
    const pages = k.kmalloc.kzalloc(arg.npages);
    if (pages === 0) return -ENOMEM;
    w.fill(0, o, o + UptrObjL.$size);
    k.arena.f64[(o + UptrObjL.start) >> 1] = arg.addr;
    w[o + UptrObjL.npages] = arg.npages;
    w[o + UptrObjL.readonly] = arg.readonly ? 1 : 0;
    w[o + UptrObjL.pages] = pages;
    Atomics.store(w, o + UptrObjL.live, 1);
    return i + 1;
  }
  return -ENOMEM;
}

function handleObj(dev: number, handle: number): number {
  if (!(Number.isInteger(handle) && handle >= 1 && handle <= USERPTR_MAX_OBJS)) return 0;
  const o = objAt(device_priv(dev), handle - 1);
  return w32()[o + UptrObjL.live] !== 0 ? o : 0;
}

/** Unbind and free an object: zap, wait for the GPU, unpin. */
async function free_obj(dev: number, obj: number): Promise<void> {
  const k = current.k;
  const w = k.arena.i32;
  const p = device_lock(dev);
  if (p !== undefined) await p;
  try {
    if (w[obj + UptrObjL.pinned] !== 0) {
      const [s, e] = objRange(obj);
      const f = device_fence_wait(dev, shadow_pte_zap(dev, s, e));
      if (f !== undefined) await f;
      put_pages(obj);
    }
    Atomics.store(w, obj + UptrObjL.live, 0);
    k.kmalloc.kfree(w[obj + UptrObjL.pages]);
    w[obj + UptrObjL.pages] = 0;
  } finally {
    device_unlock(dev);
  }
}

export const userptrDriver = defineDriver({
  name: 'userptr',
  state: UserptrL,
  lock: { kind: 'mutex', name: 'userptr->lock', class: '&i915_mmu_notifier->lock' },
  notifier: { kind: 'hlist', ops },
  fault: userptr_fault,
  seq_retry(dev, seq, addr) {
    const obj = objOf(device_priv(dev), addr);
    return obj === 0 || Atomics.load(w32(), obj + UptrObjL.seq) !== seq;
  },
  async release(dev) {
    const w = w32();
    const st = device_priv(dev);
    for (let i = 0; i < USERPTR_MAX_OBJS; i++) if (w[objAt(st, i) + UptrObjL.live] !== 0) await free_obj(dev, objAt(st, i));
  },
  commands: {
    USERPTR: cmd_userptr,
    /** bind the object now: { handle } */
    GET_PAGES(dev: number, arg: { handle: number }): number | Promise<number> {
      const obj = handleObj(dev, arg?.handle);
      return obj === 0 ? -EINVAL : userptr_get_pages(dev, obj);
    },
    /** { handle } */
    CLOSE(dev: number, arg: { handle: number }): number | Promise<number> {
      const obj = handleObj(dev, arg?.handle);
      return obj === 0 ? -EINVAL : free_obj(dev, obj).then(() => 0);
    },
  },
  diagnose(dev) {
    const w = w32();
    const st = device_priv(dev);
    return `userptr: ${w[st + UserptrL.invalidations]} invalidations, ${w[st + UserptrL.eagain]} refused with -EAGAIN, ${w[st + UserptrL.retries]} get_pages collisions`;
  },
});

/** Hold / drop the object lock (a test standing in for an object path that holds it). */
export function userptr_lock(dev: number): Promise<void> | undefined {
  return device_lock(dev);
}

export function userptr_unlock(dev: number): void {
  device_unlock(dev);
}

/** An object's state, as tests read it. */
export function userptrObj(k: Kernel, dev: number, handle: number): { pinned: boolean; seq: number; gets: number; unpins: number; pages: number[] } {
  const w = k.arena.i32;
  const o = w[dev + DevL.priv] + UserptrL.objs + (handle - 1) * UptrObjL.$size;
  const n = w[o + UptrObjL.npages];
  const pages = w[o + UptrObjL.pinned] !== 0 ? Array.from(w.subarray(w[o + UptrObjL.pages], w[o + UptrObjL.pages] + n)) : [];
  return { pinned: w[o + UptrObjL.pinned] !== 0, seq: w[o + UptrObjL.seq], gets: w[o + UptrObjL.gets], unpins: w[o + UptrObjL.unpins], pages };
}

/** The open's counters. */
export function userptrStats(k: Kernel, dev: number): { eagain: number; invalidations: number; retries: number } {
  const w = k.arena.i32;
  const st = w[dev + DevL.priv];
  return { eagain: w[st + UserptrL.eagain], invalidations: w[st + UserptrL.invalidations], retries: w[st + UserptrL.retries] };
}

/**
 * Under `shadowmm stress`: up to USERPTR_MAX_OBJS objects tiling the first half of the window
 * (pinned pages cannot be reclaimed: the other half is left to reclaim); GPU faults bind them.
 */
const stressObjPages = (npages: number): number => Math.min(Math.ceil(npages / 2), USERPTR_MAX_OBJS * USERPTR_MAX_PAGES);

export const stress = defineStressAdapter({
  driver: 'userptr',
  // the race this file models on purpose (see the top of the file); the mirror check finds it
  known: [{ kind: 'mirror_invariant', why: "i915's pre-v5.13 userptr race, modelled on purpose: an object rebound between its hlist start and the zap maps pages about to go" }],
  description: 'GPU buffer objects over the window, pinned and bound on a GPU fault',
  async open({ mm, name, base, npages, k }) {
    const dev = await device_open('userptr', { mm, name });
    if (dev < 0) return dev;
    const half = stressObjPages(npages);
    const per = Math.ceil(half / USERPTR_MAX_OBJS);
    for (let p = 0; p < half; p += per) {
      const h = await device_ioctl(dev, 'USERPTR', { addr: base + p * k.mmLayer.pageSize, npages: Math.min(per, half - p) });
      if (typeof h !== 'number' || h < 0) {
        await device_close(dev);
        return typeof h === 'number' ? h : -EINVAL;
      }
    }
    return dev;
  },
  start: (a) => spawnStressEngines({ ...a, npages: stressObjPages(a.npages) }),
  stats: (k, dev) => userptrStats(k, dev),
});
