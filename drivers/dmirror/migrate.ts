// The ioctls that move or pin pages: MIGRATE_TO_DEV, MIGRATE_TO_SYS, EXCLUSIVE, and RELEASE's
// eviction of every chunk. MIGRATE_TO_DEV and EXCLUSIVE read the result back through pt, so a
// page that did not move (shared anonymous memory) shows as -ENOENT.

import type { Kernel } from '../../src/sched/kernel.js';
import { splat } from '../../src/sched/splat.js';
import { EFAULT, EINVAL, ENOMEM } from '../../src/shm/errno.js';
import { mutex_lock, mutex_unlock } from '../../src/sync/mutex.js';
import { spin_lock, spin_unlock, Spinlock } from '../../src/sync/spinlock.js';
import { Mutex } from '../../src/sync/mutex.js';
import { GFP_HIGHUSER_MOVABLE, __GFP_NOFAIL } from '../../src/mm/gfp.js';
import { make_device_exclusive } from '../../src/mm/device_exclusive.js';
import { folio_lock, folio_unlock } from '../../src/mm/folio_lock.js';
import { DevPagemapL, folio_put, is_device_private_page, memunmap_pages, pgmapPfns, set_zone_device_data } from '../../src/mm/memremap.js';
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migrate_device_finalize,
  migrate_device_pages,
  migrate_device_pfns,
  migrate_pfn,
  migrate_pfn_to_page,
  migrate_vma_finalize,
  migrate_vma_pages,
  migrate_vma_setup,
} from '../../src/mm/migrate_device.js';
import { mmap_read_lock, mmap_read_unlock } from '../../src/mm/mm_inline.js';
import { mmget_not_zero, mmput } from '../../src/mm/mm_struct.js';
import { alloc_page, clearPage, copyPage } from '../../src/mm/page_alloc.js';
import { VM_READ, VM_WRITE } from '../../src/mm/types.js';
import { copy_to_user } from '../../src/mm/uaccess.js';
import { V_FLAGS, vma_end, vma_lookup } from '../../src/mm/vma.js';
import {
  DMIRROR_CHUNK_PAGES,
  DPT_XA_TAG_ATOMIC,
  DPT_XA_TAG_WRITE,
  dmirror_mdevice,
  dmirror_mm,
  dmirror_mutex,
  dmirror_host_maps,
  dmirror_lock_seq,
  xa_erase,
  xa_store,
} from './dmirror.js';
import { host_pte } from '../../src/device/index.js';
import { is_migration_entry, swp_offset } from '../../src/mm/pgtable.js';
import { dmirror_bounce_init, dmirror_do_read, type DmirrorCmdState } from './rw.js';
import { BACKING_PAGE, DmirrorChunkL, DmirrorDeviceL, dmirror_devmem_alloc_page, dmirror_devmem_fault_alloc_and_copy } from './devmem.js';

type Cmd = DmirrorCmdState & { ptr: number };

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

/** dmirror_migrate_alloc_and_copy: a device page for each selected system page, data copied */
async function dmirror_migrate_alloc_and_copy(k: Kernel, args: MigrateVma, d: number): Promise<void> {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const md = dmirror_mdevice(k, d);
  for (let i = 0, addr = args.start; addr < args.end; i++, addr += ps) {
    if ((args.src[i] & MIGRATE_PFN_MIGRATE) === 0) continue;
    // spage 0: an unallocated pte_none() or the read-only zero page
    const spage = migrate_pfn_to_page(args.src[i]);
    if (spage !== 0 && is_device_private_page(k, spage)) {
      splat(k, 'warn', `WARNING: dmirror_migrate_alloc_and_copy: page already in device spage pfn: 0x${spage.toString(16)}`);
      continue;
    }
    const dpage = await dmirror_devmem_alloc_page(k, md);
    if (dpage === 0) continue;
    const rpage = BACKING_PAGE(k, dpage);
    if (spage !== 0) copyPage(k, rpage, spage);
    else clearPage(k, rpage);
    // the rpage holds the pointer to the mirror (see dmirror_devmem_fault)
    set_zone_device_data(k, rpage, d);
    args.dst[i] = migrate_pfn(dpage);
    if ((args.src[i] & MIGRATE_PFN_WRITE) !== 0 || (spage === 0 && (w[args.vma + V_FLAGS] & VM_WRITE) !== 0)) args.dst[i] |= MIGRATE_PFN_WRITE;
  }
}

/**
 * dmirror_migrate_finalize_and_map: map the migrated pages into pt. test_hmm stores the
 * backing page; here the entry names the device page itself (SPTE_DEVICE_PRIVATE), which is
 * what the host's device-private entry names, and the device's copies follow it to its rpage.
 */
async function dmirror_migrate_finalize_and_map(k: Kernel, args: MigrateVma, d: number): Promise<number> {
  const ps = k.mmLayer.pageSize;
  const m = dmirror_mutex(k, d);
  const seq = await dmirror_lock_seq(k, d);
  try {
    for (let i = 0, vpn = args.start / ps; vpn < args.end / ps; i++, vpn++) {
      if ((args.src[i] & MIGRATE_PFN_MIGRATE) === 0) continue;
      const dpage = migrate_pfn_to_page(args.dst[i]);
      if (dpage === 0) continue;
      // test_hmm: "Store the page that holds the data so the page table doesn't have to deal
      // with ZONE_DEVICE private pages" -- ours stores the device page, tagged device-private
      const tag = (args.dst[i] & MIGRATE_PFN_WRITE) !== 0 ? DPT_XA_TAG_WRITE : 0;
      // before migrate_vma_finalize the host holds the migration entry of the source page
      const src = migrate_pfn_to_page(args.src[i]);
      const pte = host_pte(k, dmirror_mm(k, d), vpn * ps);
      const intact = (is_migration_entry(pte) && src !== 0 && swp_offset(pte) === src) || dmirror_host_maps(k, d, vpn, dpage, tag);
      if (!intact) {
        // an invalidation ran before dmirror_lock_seq's read_begin: map nothing (the entry
        // of the source page goes too)
        xa_erase(k, d, vpn);
        continue;
      }
      const ret = xa_store(k, d, vpn, dpage, tag, seq);
      if (ret !== 0) return ret;
    }
    return 0;
  } finally {
    mutex_unlock(m);
  }
}

/** The chunk loop both directions share: ≤ DMIRROR_CHUNK_PAGES pages, clipped to the VMA. */
async function migrate_range(k: Kernel, d: number, cmd: Cmd, toDevice: boolean): Promise<number> {
  const mm = dmirror_mm(k, d);
  const ps = k.mmLayer.pageSize;
  const start = cmd.addr;
  const end = start + cmd.npages * ps;
  const args = new MigrateVma();
  args.src = new Uint32Array(DMIRROR_CHUNK_PAGES);
  args.dst = new Uint32Array(DMIRROR_CHUNK_PAGES);
  // Since the mm is for the mirrored process, get a reference first.
  if (!mmget_not_zero(mm)) return -EINVAL;
  await n(mmap_read_lock(mm));
  let ret = 0;
  try {
    for (let addr = start, next: number; addr < end; addr = next) {
      const vma = vma_lookup(k, mm, addr);
      if (vma === 0 || (k.arena.i32[vma + V_FLAGS] & VM_READ) === 0) return (ret = -EINVAL);
      next = Math.min(end, addr + DMIRROR_CHUNK_PAGES * ps, vma_end(k, vma));
      args.vma = vma;
      args.start = addr;
      args.end = next;
      args.dst.fill(0);
      args.pgmap_owner = dmirror_mdevice(k, d);
      args.flags = toDevice ? MIGRATE_VMA_SELECT_SYSTEM : MIGRATE_VMA_SELECT_DEVICE_PRIVATE;
      args.fault_page = 0;
      ret = await migrate_vma_setup(args);
      if (ret !== 0) return ret;
      if (toDevice) {
        await dmirror_migrate_alloc_and_copy(k, args, d);
        await migrate_vma_pages(args);
        await dmirror_migrate_finalize_and_map(k, args, d);
      } else {
        await dmirror_devmem_fault_alloc_and_copy(k, args, d);
        await migrate_vma_pages(args);
        // dmirror_successful_migrated_pages
        for (let i = 0; i < args.npages; i++) if ((args.src[i] & MIGRATE_PFN_VALID) !== 0 && (args.src[i] & MIGRATE_PFN_MIGRATE) !== 0) cmd.cpages++;
      }
      migrate_vma_finalize(args);
    }
    return ret;
  } finally {
    mmap_read_unlock(mm);
    await n(mmput(mm));
  }
}

/** Read [addr, addr + npages) back through pt into ptr (the migrated data, for verification). */
async function read_back(k: Kernel, d: number, cmd: Cmd): Promise<number> {
  const ps = k.mmLayer.pageSize;
  const size = cmd.npages * ps;
  const b = dmirror_bounce_init(cmd.addr, size);
  if (!b) return -ENOMEM;
  const m = dmirror_mutex(k, d);
  await n(mutex_lock(m));
  let ret: number;
  try {
    ret = dmirror_do_read(k, d, cmd.addr, cmd.addr + size, b);
  } finally {
    mutex_unlock(m);
  }
  if (ret === 0 && (await copy_to_user(cmd.ptr, b.buf, size)) !== 0) ret = -EFAULT;
  cmd.cpages = b.cpages;
  return ret;
}

/** HMM_DMIRROR_MIGRATE_TO_DEV */
export async function dmirror_migrate_to_device(k: Kernel, d: number, cmd: Cmd): Promise<number> {
  const ret = await migrate_range(k, d, cmd, true);
  if (ret !== 0) return ret;
  return read_back(k, d, cmd);
}

/** HMM_DMIRROR_MIGRATE_TO_SYS: cpages counts the pages that moved */
export async function dmirror_migrate_to_system(k: Kernel, d: number, cmd: Cmd): Promise<number> {
  cmd.cpages = 0;
  return migrate_range(k, d, cmd, false);
}

/** HMM_DMIRROR_EXCLUSIVE: make each page device-exclusive, map it ATOMIC, read it all back */
export async function dmirror_exclusive(k: Kernel, d: number, cmd: Cmd): Promise<number> {
  const mm = dmirror_mm(k, d);
  const ps = k.mmLayer.pageSize;
  const end = cmd.addr + cmd.npages * ps;
  // Since the mm is for the mirrored process, get a reference first.
  if (!mmget_not_zero(mm)) return -EINVAL;
  await n(mmap_read_lock(mm));
  let ret = 0;
  try {
    for (let addr = cmd.addr; ret === 0 && addr < end; addr += ps) {
      const page = await make_device_exclusive(mm, addr, 0);
      if (page < 0) {
        ret = page;
        break;
      }
      // dmirror_atomic_map
      const m = dmirror_mutex(k, d);
      const seq = await dmirror_lock_seq(k, d);
      if (dmirror_host_maps(k, d, addr / ps, page, DPT_XA_TAG_ATOMIC)) ret = xa_store(k, d, addr / ps, page, DPT_XA_TAG_ATOMIC, seq);
      mutex_unlock(m);
      folio_unlock(k, page);
      folio_put(k, page);
    }
  } finally {
    mmap_read_unlock(mm);
    await n(mmput(mm));
  }
  if (ret !== 0) return ret;
  return read_back(k, d, cmd);
}

// ---- RELEASE: evict and free every chunk -----------------------------------------------------------

/** dmirror_device_evict_chunk: every used page of the chunk back to system memory */
async function dmirror_device_evict_chunk(k: Kernel, chunk: number): Promise<void> {
  const pfns = pgmapPfns(chunk + DmirrorChunkL.pagemap);
  const npages = pfns.length;
  const src = Uint32Array.from(pfns);
  const dst = new Uint32Array(npages);
  await migrate_device_pfns(src, npages);
  for (let i = 0; i < npages; i++) {
    let spage = migrate_pfn_to_page(src[i]);
    if (spage === 0 || (src[i] & MIGRATE_PFN_MIGRATE) === 0) continue;
    if (!is_device_private_page(k, spage)) {
      splat(k, 'warn', `WARNING: dmirror_device_evict_chunk: WARN_ON(!is_device_private_page(spage)) pfn ${spage}`);
      continue;
    }
    spage = BACKING_PAGE(k, spage);
    const r = alloc_page(k, GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
    const dpage = typeof r === 'number' ? r : await r;
    if (dpage === 0) continue; // __GFP_NOFAIL would retry forever; the page stays on the device
    await n(folio_lock(k, dpage));
    copyPage(k, dpage, spage);
    dst[i] = migrate_pfn(dpage) | (src[i] & MIGRATE_PFN_WRITE);
  }
  await migrate_device_pages(src, dst, npages);
  migrate_device_finalize(src, dst, npages);
}

/** dmirror_device_remove_chunks (HMM_DMIRROR_RELEASE, module exit) */
export async function dmirror_device_remove_chunks(k: Kernel, md: number): Promise<void> {
  const w = k.arena.i32;
  const devmem_lock = new Mutex(k, md + DmirrorDeviceL.devmem_lock);
  const lock = new Spinlock(k, md + DmirrorDeviceL.lock);
  await n(mutex_lock(devmem_lock));
  try {
    const table = w[md + DmirrorDeviceL.devmem_chunks];
    if (table === 0) return;
    for (let i = 0; i < w[md + DmirrorDeviceL.devmem_count]; i++) {
      const devmem = w[table + i];
      spin_lock(lock);
      // no page of it is handed out again (dmirror_remove_free_pages)
      w[devmem + DmirrorChunkL.remove] = 1;
      spin_unlock(lock);
      await dmirror_device_evict_chunk(k, devmem);
      if (memunmap_pages(devmem + DmirrorChunkL.pagemap) === 0) k.kmalloc.kfree(devmem);
      else splat(k, 'warn', `WARNING: dmirror: chunk @${devmem.toString(16)} (${w[devmem + DmirrorChunkL.pagemap + DevPagemapL.nr_pages]} pages) kept: pages still in use`);
    }
    w[md + DmirrorDeviceL.devmem_count] = 0;
    w[md + DmirrorDeviceL.devmem_capacity] = 0;
    k.kmalloc.kfree(table);
    w[md + DmirrorDeviceL.devmem_chunks] = 0;
  } finally {
    mutex_unlock(devmem_lock);
  }
}



/** MIGRATE_TO_DEV / MIGRATE_TO_SYS without the read-back through pt (shadowmm stress: stress.ts). */
export function dmirror_migrate_range(k: Kernel, d: number, addr: number, npages: number, toDevice: boolean): Promise<number> {
  return migrate_range(k, d, { addr, ptr: 0, npages, cpages: 0, faults: 0, livelock: false }, toDevice);
}
