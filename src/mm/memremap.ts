// Device-private memory (mm/memremap.c, include/linux/memremap.h). A driver fills a struct
// dev_pagemap (type, owner, ops) and memremap_pages gives it page frames: ordinary zone frames
// taken out of the allocator and flagged PG_device_private, so a device page's contents are
// real arena words that the data-integrity check follows like any other frame's. The CPU can
// never map one; it reaches one only through a device-private entry, and touching that entry
// calls the pagemap's migrate_to_ram.
//
// struct page fields of a device page: owner = pgmap->owner (hmm_range_fault compares it),
// private = the pagemap, lruPrev = zone_device_data (device pages are never on an LRU), next =
// the pagemap's free-list link while free. A free device page has refcount 0; the last
// folio_put of a used one calls ops.page_free and puts it back on the pagemap's free list.
//
// Ops are JS functions but pagemaps live in the arena, so ops are defined by name at a driver
// module's top level (defineDevPagemapOps), like notifier ops (src/notifier/ops.ts): every
// worker that may fault on the driver's pages must import the driver's module.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { defineStruct } from '../shm/layout.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import { EBUSY, EINVAL, ENOMEM } from '../shm/errno.js';
import { GFP_KERNEL, __GFP_ZERO } from './gfp.js';
import { devicePageHooks, put_page } from './mm_pt.js';
import { PG_device_private, PG_locked, PageL } from './page.js';
import { __free_page, alloc_page } from './page_alloc.js';

/** enum memory_type */
export const MEMORY_DEVICE_PRIVATE = 1;
export const MEMORY_DEVICE_COHERENT = 2;

/** the most pages one pagemap holds (its pfn table is one kmalloc object); use several, as dmirror uses chunks */
export const PGMAP_MAX_PAGES = 1024;

/** struct dev_pagemap, allocated (zeroed) by the driver, which sets type, owner and ops. */
export const DevPagemapL = defineStruct('dev_pagemap', {
  type: 1,
  /** void *owner: what dev_private_owner and the MIGRATE owner are compared with; 0 = NULL */
  owner: 1,
  /** string id of the ops' name (set with pgmap_set_ops) */
  ops: 1,
  nr_pages: 1,
  /** kmalloc'd table: pfn of page i */
  pfns: 1,
  /** raw lock over the free list */
  lock: 1,
  free_head: 1,
  nr_free: 1,
});

/** struct vm_fault, as migrate_to_ram sees it. */
export interface VmFault {
  readonly mm: number;
  readonly vma: number;
  /** page aligned */
  readonly address: number;
  /** FAULT_FLAG_* */
  readonly flags: number;
  readonly orig_pte: number;
  /** the device page (pfn), locked and referenced by the fault for the call */
  readonly page: number;
}

/** struct dev_pagemap_ops */
export interface DevPagemapOps {
  /** The last reference to a device page went (it returns to the pagemap's free list right after). Must not sleep. */
  page_free(pfn: number): void;
  /** A CPU fault on a device-private entry: migrate vmf.page back to system memory. Returns vm_fault_t. */
  migrate_to_ram(vmf: VmFault): number | Promise<number>;
}

const registry = new Map<string, DevPagemapOps>();
const names = new WeakMap<object, string>();

/** Define pagemap ops under a name every worker will know. Returns `ops`. */
export function defineDevPagemapOps<T extends DevPagemapOps>(name: string, ops: T): T {
  if (typeof name !== 'string' || name === '') throw new TypeError('dev_pagemap ops need a non-empty name');
  registry.set(name, ops);
  names.set(ops, name);
  return ops;
}

/** pgmap->ops = ops (made by defineDevPagemapOps). */
export function pgmap_set_ops(pgmap: number, ops: DevPagemapOps): void {
  const name = names.get(ops);
  if (name === undefined) throw new TypeError('dev_pagemap ops must be made by defineDevPagemapOps(name, ops) so other workers can find them');
  const k = current.k;
  k.arena.i32[pgmap + DevPagemapL.ops] = k.strings.intern(name);
}

/** This thread's ops of a pagemap, or a clear error. */
export function pgmap_ops(k: Kernel, pgmap: number): DevPagemapOps {
  const id = k.arena.i32[pgmap + DevPagemapL.ops];
  const name = id === 0 ? '' : k.strings.get(id);
  const ops = registry.get(name);
  if (!ops) throw new Error(`dev_pagemap ops '${name}' not registered in this thread: import the driver's module in every worker`);
  return ops;
}

// ---- struct page of a device page ------------------------------------------------------------

export function is_device_private_page(k: Kernel, pfn: number): boolean {
  return (k.arena.i32[k.zone.page(pfn) + PageL.flags] & PG_device_private) !== 0;
}

/** page_pgmap: the pagemap of a device page, 0 for a system page */
export function page_pgmap(k: Kernel, pfn: number): number {
  const p = k.zone.page(pfn);
  return (k.arena.i32[p + PageL.flags] & PG_device_private) !== 0 ? k.arena.i32[p + PageL.private] : 0;
}

export function zone_device_data(k: Kernel, pfn: number): number {
  return k.arena.i32[k.zone.page(pfn) + PageL.lruPrev];
}

export function set_zone_device_data(k: Kernel, pfn: number, v: number): void {
  k.arena.i32[k.zone.page(pfn) + PageL.lruPrev] = v;
}

/** folio_get */
export function folio_get(k: Kernel, pfn: number): void {
  Atomics.add(k.arena.i32, k.zone.page(pfn) + PageL.refcount, 1);
}

/** folio_put for any page: a device page's last reference returns it to its pagemap. */
export function folio_put(k: Kernel, pfn: number): void {
  put_page(k, pfn);
}

/** A device-private page's put (put_page routes here): the last one frees it to its pagemap. */
function device_page_put(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  const old = Atomics.sub(w, p + PageL.refcount, 1);
  if (old > 1) return;
  if (old <= 0) {
    Atomics.add(w, p + PageL.refcount, 1);
    splat(k, 'bug', `BUG: Bad page state: folio_put of device pfn ${pfn} with refcount ${old}`);
    return;
  }
  free_zone_device_folio(k, pfn);
}

/** free_zone_device_folio: the driver's page_free, then back on the pagemap's free list. */
function free_zone_device_folio(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  if (w[p + PageL.mapcount] !== 0 || w[p + PageL.mapping] !== 0 || (w[p + PageL.flags] & PG_locked) !== 0) {
    splat(k, 'bug', `BUG: Bad page state: device pfn ${pfn} freed while ${(w[p + PageL.flags] & PG_locked) !== 0 ? 'locked' : `still mapped (mapcount ${w[p + PageL.mapcount]})`}`);
    return;
  }
  const pgmap = w[p + PageL.private];
  w[p + PageL.flags] = PG_device_private; // drops PG_anon and the rest the mapping gave it
  k.arena.f64[(p + PageL.index) >> 1] = 0;
  pgmap_ops(k, pgmap).page_free(pfn);
  w[p + PageL.lruPrev] = 0;
  freeListPush(k, pgmap, pfn);
}

function freeListPush(k: Kernel, pgmap: number, pfn: number): void {
  const w = k.arena.i32;
  arch_spin_lock(w, pgmap + DevPagemapL.lock);
  w[k.zone.page(pfn) + PageL.next] = w[pgmap + DevPagemapL.free_head];
  w[pgmap + DevPagemapL.free_head] = pfn;
  w[pgmap + DevPagemapL.nr_free]++;
  arch_spin_unlock(w, pgmap + DevPagemapL.lock);
}

/**
 * zone_device_page_init: a free device page handed to its driver: refcount 1 and locked, as a
 * migration destination must be. The driver unlocks and puts it (migrate_vma_finalize does).
 */
export function zone_device_page_init(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const p = k.zone.page(pfn);
  Atomics.store(w, p + PageL.refcount, 1);
  Atomics.or(w, p + PageL.flags, PG_locked);
}

/** The driver's page allocator: a free page of the pagemap, initialised (locked, refcount 1); 0 if none. */
export function allocDevicePage(pgmap: number): number {
  const k = current.k;
  const w = k.arena.i32;
  arch_spin_lock(w, pgmap + DevPagemapL.lock);
  const pfn = w[pgmap + DevPagemapL.free_head];
  if (pfn !== 0) {
    w[pgmap + DevPagemapL.free_head] = w[k.zone.page(pfn) + PageL.next];
    w[k.zone.page(pfn) + PageL.next] = 0;
    w[pgmap + DevPagemapL.nr_free]--;
  }
  arch_spin_unlock(w, pgmap + DevPagemapL.lock);
  if (pfn !== 0) zone_device_page_init(k, pfn);
  return pfn;
}

/** Every pfn of the pagemap, in order (what migrate_device_pfns takes to evict it all). */
export function pgmapPfns(pgmap: number): number[] {
  const w = current.k.arena.i32;
  const t = w[pgmap + DevPagemapL.pfns];
  return Array.from(w.subarray(t, t + w[pgmap + DevPagemapL.nr_pages]));
}

/** Pages of the pagemap in use (not on its free list). */
export function pgmapPagesInUse(pgmap: number): number {
  const w = current.k.arena.i32;
  return w[pgmap + DevPagemapL.nr_pages] - w[pgmap + DevPagemapL.nr_free];
}

// ---- memremap_pages / memunmap_pages ---------------------------------------------------------

/**
 * memremap_pages: give the pagemap `nr_pages` device-private pages (zeroed, all free). 0, or
 * -EINVAL (not MEMORY_DEVICE_PRIVATE, ops without migrate_to_ram/page_free, no owner, a bad
 * count), -ENOMEM (no frames or no table).
 */
export async function memremap_pages(pgmap: number, nr_pages: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  if (w[pgmap + DevPagemapL.type] !== MEMORY_DEVICE_PRIVATE) {
    splat(k, 'warn', `WARNING: memremap_pages: unsupported pagemap type ${w[pgmap + DevPagemapL.type]} (only MEMORY_DEVICE_PRIVATE)`);
    return -EINVAL;
  }
  const id = w[pgmap + DevPagemapL.ops];
  const ops = id === 0 ? undefined : registry.get(k.strings.get(id));
  if (!ops || typeof ops.migrate_to_ram !== 'function') {
    splat(k, 'warn', 'WARNING: memremap_pages: Missing migrate_to_ram method');
    return -EINVAL;
  }
  if (typeof ops.page_free !== 'function') {
    splat(k, 'warn', 'WARNING: memremap_pages: Missing page_free method');
    return -EINVAL;
  }
  if (w[pgmap + DevPagemapL.owner] === 0) {
    splat(k, 'warn', 'WARNING: memremap_pages: Missing owner');
    return -EINVAL;
  }
  if (!Number.isInteger(nr_pages) || nr_pages < 1 || nr_pages > PGMAP_MAX_PAGES || w[pgmap + DevPagemapL.nr_pages] !== 0) return -EINVAL;
  const table = k.kmalloc.kzalloc(nr_pages);
  if (table === 0) return -ENOMEM;
  for (let i = 0; i < nr_pages; i++) {
    const r = alloc_page(k, GFP_KERNEL | __GFP_ZERO);
    const pfn = typeof r === 'number' ? r : await r;
    if (pfn === 0) {
      for (let j = 0; j < i; j++) __free_page(k, w[table + j]);
      k.kmalloc.kfree(table);
      return -ENOMEM;
    }
    w[table + i] = pfn;
  }
  w[pgmap + DevPagemapL.pfns] = table;
  w[pgmap + DevPagemapL.nr_pages] = nr_pages;
  const owner = w[pgmap + DevPagemapL.owner];
  // pushed in reverse so allocation hands them out in table order
  for (let i = nr_pages - 1; i >= 0; i--) {
    const pfn = w[table + i];
    const p = k.zone.page(pfn);
    w[p + PageL.flags] = PG_device_private;
    Atomics.store(w, p + PageL.refcount, 0);
    w[p + PageL.owner] = owner;
    w[p + PageL.private] = pgmap;
    w[p + PageL.lruPrev] = 0;
    freeListPush(k, pgmap, pfn);
  }
  return 0;
}

/**
 * memunmap_pages: return the pagemap's frames to the allocator. Every page must be free (the
 * driver evicts first); otherwise a splat and -EBUSY, and nothing changes (the kernel would
 * wait forever for the references).
 */
export function memunmap_pages(pgmap: number): number {
  const k = current.k;
  const w = k.arena.i32;
  const n = w[pgmap + DevPagemapL.nr_pages];
  const busy = n - w[pgmap + DevPagemapL.nr_free];
  if (busy !== 0) {
    splat(k, 'bug', `BUG: memunmap_pages: ${busy} of ${n} device pages of pagemap @${pgmap.toString(16)} are still in use`);
    return -EBUSY;
  }
  const table = w[pgmap + DevPagemapL.pfns];
  for (let i = 0; i < n; i++) {
    const pfn = w[table + i];
    const p = k.zone.page(pfn);
    w[p + PageL.flags] = 0;
    w[p + PageL.owner] = 0;
    w[p + PageL.private] = 0;
    w[p + PageL.next] = 0;
    Atomics.store(w, p + PageL.refcount, 1);
    __free_page(k, pfn);
  }
  if (table !== 0) k.kmalloc.kfree(table);
  w[pgmap + DevPagemapL.pfns] = 0;
  w[pgmap + DevPagemapL.nr_pages] = 0;
  w[pgmap + DevPagemapL.free_head] = 0;
  w[pgmap + DevPagemapL.nr_free] = 0;
  return 0;
}

devicePageHooks.put = device_page_put;
