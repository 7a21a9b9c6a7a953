// struct dmirror_device and its device memory: chunks of ZONE_DEVICE private pages
// (memremap_pages), the calloc/cfree counters under the device spinlock, the page allocator
// that backs each device page with a system "rpage" holding its data, and page_free.
//
// Differences from test_hmm: a chunk is DEVMEM_CHUNK_PAGES pages of the emulator's zone (not
// 256 MiB of free physical address space), since memremap_pages takes real frames here; and
// the free list is the pagemap's own (memremap.ts keeps it, clearing zone_device_data when a
// page comes back), not one the driver threads through zone_device_data.

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { splat } from '../../src/sched/splat.js';
import { defineStruct } from '../../src/shm/layout.js';
import { ENOMEM } from '../../src/shm/errno.js';
import { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_unlock } from '../../src/sync/mutex.js';
import { SPINLOCK_WORDS, Spinlock, spin_lock, spin_lock_init, spin_unlock } from '../../src/sync/spinlock.js';
import { GFP_HIGHUSER, GFP_HIGHUSER_MOVABLE } from '../../src/mm/gfp.js';
import { folio_lock } from '../../src/mm/folio_lock.js';
import { VM_FAULT_SIGBUS } from '../../src/mm/memory.js';
import { MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, MigrateVma, migrate_pfn, migrate_pfn_to_page, migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup } from '../../src/mm/migrate_device.js';
import {
  DevPagemapL,
  MEMORY_DEVICE_PRIVATE,
  allocDevicePage,
  defineDevPagemapOps,
  is_device_private_page,
  page_pgmap,
  pgmap_set_ops,
  memremap_pages,
  zone_device_data,
  set_zone_device_data,
  type VmFault,
} from '../../src/mm/memremap.js';
import { __free_page, alloc_page, copyPage } from '../../src/mm/page_alloc.js';
import { DMIRROR_MAGIC, DmirrorL, dmirror_mutex, xa_erase } from './dmirror.js';
import { HMM_DMIRROR_MEMORY_DEVICE_PRIVATE } from './uapi.js';

/** pages per chunk: DEVMEM_CHUNK_SIZE (256 MiB in the kernel) scaled to the emulator's zone */
export const DEVMEM_CHUNK_PAGES = 64;
export const DEVMEM_CHUNKS_RESERVE = 16;

/** struct dmirror_device */
export const DmirrorDeviceL = defineStruct('dmirror_device', {
  devmem_lock: MUTEX_WORDS, // protects the chunk table
  lock: SPINLOCK_WORDS, // protects calloc, cfree
  zone_device_type: 1,
  id: 1, // the minor
  chunk_pages: 1,
  devmem_capacity: 1,
  devmem_count: 1,
  devmem_chunks: 1, // kmalloc'd table of chunk offsets
  calloc: 1,
  cfree: 1,
});

/** struct dmirror_chunk */
export const DmirrorChunkL = defineStruct('dmirror_chunk', {
  pagemap: DevPagemapL.$size,
  mdevice: 1,
  remove: 1,
});

const devmemLock = (k: Kernel, md: number): Mutex => new Mutex(k, md + DmirrorDeviceL.devmem_lock);
const devLock = (k: Kernel, md: number): Spinlock => new Spinlock(k, md + DmirrorDeviceL.lock);

export function dmirror_is_private_zone(k: Kernel, md: number): boolean {
  return k.arena.i32[md + DmirrorDeviceL.zone_device_type] === HMM_DMIRROR_MEMORY_DEVICE_PRIVATE;
}

export function dmirror_device_setup(k: Kernel, md: number, id: number, type: number, chunkPages: number): void {
  const w = k.arena.i32;
  mutex_init(k, md + DmirrorDeviceL.devmem_lock, `dmirror${id}->devmem_lock`, '&mdevice->devmem_lock');
  spin_lock_init(k, md + DmirrorDeviceL.lock, `dmirror${id}->lock`, '&mdevice->lock');
  w[md + DmirrorDeviceL.zone_device_type] = type;
  w[md + DmirrorDeviceL.id] = id;
  w[md + DmirrorDeviceL.chunk_pages] = chunkPages;
}

/** container_of(page_pgmap(page), struct dmirror_chunk, pagemap): the pagemap is the chunk's first field */
export function dmirror_page_to_chunk(k: Kernel, pfn: number): number {
  return page_pgmap(k, pfn) - DmirrorChunkL.pagemap;
}

export function dmirror_page_to_device(k: Kernel, pfn: number): number {
  return k.arena.i32[dmirror_page_to_chunk(k, pfn) + DmirrorChunkL.mdevice];
}

/** BACKING_PAGE: a device-private page's data lives in its rpage */
export function BACKING_PAGE(k: Kernel, pfn: number): number {
  return page_pgmap(k, pfn) !== 0 ? zone_device_data(k, pfn) : pfn;
}

/**
 * dmirror_allocate_chunk: one more chunk of device pages; with `take`, hand one of them out
 * (calloc++). Returns the page (or 1 without take), or -ENOMEM.
 */
export async function dmirror_allocate_chunk(k: Kernel, md: number, take: boolean): Promise<number> {
  const w = k.arena.i32;
  const devmem = k.kmalloc.kzalloc(DmirrorChunkL.$size);
  if (devmem === 0) return -ENOMEM;
  const pgmap = devmem + DmirrorChunkL.pagemap;
  w[pgmap + DevPagemapL.type] = MEMORY_DEVICE_PRIVATE;
  w[pgmap + DevPagemapL.owner] = md;
  pgmap_set_ops(pgmap, dmirror_devmem_ops);
  w[devmem + DmirrorChunkL.mdevice] = md;

  const l = mutex_lock(devmemLock(k, md));
  if (l !== undefined) await l;
  let ret = 0;
  try {
    if (w[md + DmirrorDeviceL.devmem_count] === w[md + DmirrorDeviceL.devmem_capacity]) {
      const cap = w[md + DmirrorDeviceL.devmem_capacity] + DEVMEM_CHUNKS_RESERVE;
      const table = k.kmalloc.kzalloc(cap); // krealloc
      if (table === 0) ret = -ENOMEM;
      else {
        const old = w[md + DmirrorDeviceL.devmem_chunks];
        if (old !== 0) {
          w.copyWithin(table, old, old + w[md + DmirrorDeviceL.devmem_count]);
          k.kmalloc.kfree(old);
        }
        w[md + DmirrorDeviceL.devmem_capacity] = cap;
        w[md + DmirrorDeviceL.devmem_chunks] = table;
      }
    }
    if (ret === 0) ret = await memremap_pages(pgmap, w[md + DmirrorDeviceL.chunk_pages]);
    if (ret === 0) w[w[md + DmirrorDeviceL.devmem_chunks] + w[md + DmirrorDeviceL.devmem_count]++] = devmem;
  } finally {
    mutex_unlock(devmemLock(k, md));
  }
  if (ret !== 0) {
    k.kmalloc.kfree(devmem);
    return ret;
  }
  if (!take) return 1;
  const lk = devLock(k, md);
  spin_lock(lk);
  const dpage = allocDevicePage(pgmap);
  if (dpage !== 0) w[md + DmirrorDeviceL.calloc]++;
  spin_unlock(lk);
  return dpage === 0 ? -ENOMEM : dpage;
}

/** a free page of any live chunk (locked, refcount 1), calloc++; 0 if none */
function take_free_page(k: Kernel, md: number): number {
  const w = k.arena.i32;
  const lk = devLock(k, md);
  spin_lock(lk);
  let dpage = 0;
  const table = w[md + DmirrorDeviceL.devmem_chunks];
  for (let i = 0; dpage === 0 && i < w[md + DmirrorDeviceL.devmem_count]; i++) {
    const c = w[table + i];
    if (w[c + DmirrorChunkL.remove] === 0) dpage = allocDevicePage(c + DmirrorChunkL.pagemap);
  }
  if (dpage !== 0) w[md + DmirrorDeviceL.calloc]++;
  spin_unlock(lk);
  return dpage;
}

/**
 * dmirror_devmem_alloc_page: a device page backed by a fresh rpage (its zone_device_data), as
 * zone_device_page_init leaves it (locked, refcount 1). 0 if out of memory.
 */
export async function dmirror_devmem_alloc_page(k: Kernel, md: number): Promise<number> {
  // this is a fake device so we alloc real system memory to store our device memory
  const r = alloc_page(k, GFP_HIGHUSER);
  const rpage = typeof r === 'number' ? r : await r;
  if (rpage === 0) return 0;
  let dpage = take_free_page(k, md);
  if (dpage === 0) {
    const got = await dmirror_allocate_chunk(k, md, true);
    if (got < 0) {
      __free_page(k, rpage);
      return 0;
    }
    dpage = got;
  }
  set_zone_device_data(k, dpage, rpage);
  return dpage;
}

/** dmirror_devmem_free (page_free): the rpage goes; cfree++ unless the chunk is being removed */
function dmirror_devmem_free(pfn: number): void {
  const k = current.k;
  const w = k.arena.i32;
  const rpage = BACKING_PAGE(k, pfn);
  if (rpage !== pfn && rpage !== 0) {
    set_zone_device_data(k, rpage, 0);
    __free_page(k, rpage);
  }
  const md = dmirror_page_to_device(k, pfn);
  const lk = devLock(k, md);
  spin_lock(lk);
  // Return page to our allocator if not freeing the chunk
  if (w[dmirror_page_to_chunk(k, pfn) + DmirrorChunkL.remove] === 0) w[md + DmirrorDeviceL.cfree]++;
  spin_unlock(lk);
}

/**
 * dmirror_devmem_fault_alloc_and_copy: a system page for each selected device page, its data
 * copied from the rpage, and the page's pt entry in `d` erased (test_hmm's xa_erase takes only
 * the xarray's lock; the shadow table's lock is the mutex, taken around the zap). `d` 0: the
 * dmirror is gone, nothing to erase.
 */
export async function dmirror_devmem_fault_alloc_and_copy(k: Kernel, args: MigrateVma, d: number): Promise<number> {
  const ps = k.mmLayer.pageSize;
  for (let i = 0, addr = args.start; addr < args.end; i++, addr += ps) {
    let spage = migrate_pfn_to_page(args.src[i]);
    if (spage === 0 || (args.src[i] & MIGRATE_PFN_MIGRATE) === 0) continue;
    if (!is_device_private_page(k, spage)) {
      splat(k, 'warn', `WARNING: dmirror_devmem_fault_alloc_and_copy: WARN_ON(!is_device_private_page(spage)) pfn ${spage}`);
      continue;
    }
    spage = BACKING_PAGE(k, spage);
    const r = alloc_page(k, GFP_HIGHUSER_MOVABLE);
    const dpage = typeof r === 'number' ? r : await r;
    if (dpage === 0) continue;
    const l = folio_lock(k, dpage);
    if (l !== undefined) await l;
    if (d !== 0) {
      // test_hmm's xa_erase takes the xarray's own lock; the shadow table's is the mutex
      const m = dmirror_mutex(k, d);
      const ml = mutex_lock(m);
      if (ml !== undefined) await ml;
      xa_erase(k, d, addr / ps);
      mutex_unlock(m);
    }
    copyPage(k, dpage, spage);
    args.dst[i] = migrate_pfn(dpage) | (args.src[i] & MIGRATE_PFN_WRITE);
  }
  return 0;
}

/** the dmirror an rpage names (rpage->zone_device_data), 0 once that file is closed */
function dmirror_of_rpage(k: Kernel, rpage: number): number {
  const d = rpage === 0 ? 0 : zone_device_data(k, rpage);
  return d > 0 && k.arena.i32[d + DmirrorL.magic] === DMIRROR_MAGIC ? d : 0;
}

/** dmirror_devmem_fault (migrate_to_ram): move the faulting page back to system memory */
async function dmirror_devmem_fault(vmf: VmFault): Promise<number> {
  const k = current.k;
  // Normally, a device would use the page->zone_device_data to point to the mirror but here we
  // use it to hold the page for the simulated device memory and that page holds the pointer to
  // the mirror. test_hmm dereferences it even after the file is closed; we check it is open.
  const d = dmirror_of_rpage(k, zone_device_data(k, vmf.page));
  const args = new MigrateVma();
  args.vma = vmf.vma;
  args.start = vmf.address;
  args.end = vmf.address + k.mmLayer.pageSize;
  args.src = new Uint32Array(1);
  args.dst = new Uint32Array(1);
  args.pgmap_owner = dmirror_page_to_device(k, vmf.page);
  args.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE;
  args.fault_page = vmf.page;
  if ((await migrate_vma_setup(args)) !== 0) return VM_FAULT_SIGBUS;
  const ret = await dmirror_devmem_fault_alloc_and_copy(k, args, d);
  if (ret !== 0) return ret;
  await migrate_vma_pages(args);
  // No device finalize step is needed since dmirror_devmem_fault_alloc_and_copy() will have
  // already invalidated the device page table.
  migrate_vma_finalize(args);
  return 0;
}

export const dmirror_devmem_ops = defineDevPagemapOps('dmirror_devmem_ops', {
  page_free: dmirror_devmem_free,
  migrate_to_ram: dmirror_devmem_fault,
});

export function dmirror_chunks(k: Kernel, md: number): number[] {
  const w = k.arena.i32;
  const t = w[md + DmirrorDeviceL.devmem_chunks];
  return Array.from({ length: w[md + DmirrorDeviceL.devmem_count] }, (_, i) => w[t + i]);
}
