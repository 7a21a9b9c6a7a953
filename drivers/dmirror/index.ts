// dmirror: a model of the kernel's HMM test driver, lib/test_hmm.c with lib/test_hmm_uapi.h,
// as in mainline v6.15+ (make_device_exclusive(mm, addr, owner, &folio), page_pgmap,
// DMIRROR_NDEVICES 4) plus HMM_DMIRROR_FLAGS from the THP-migration series. Reference §4.
// Names, numbers, counters, error codes and quirks carry over (the one-page-too-far erase,
// faults counted per round, the endless READ/WRITE of a dead mm); the code is our own.
//
// Where it differs:
// - The "device files" are a table in the arena: hmm_dmirror_init() makes the module (its
//   word offset is what tasks pass around), dmirror_open(mod, minor) from a process's CPU
//   task gives an fd, dmirror_ioctl(fd, cmd, arg) and dmirror_close(fd) follow. `arg` is an
//   HmmDmirrorCmd (its out fields updated only on success) or the user address of a 40-byte
//   struct hmm_dmirror_cmd, copied in and out with copy_from_user/copy_to_user.
// - pt is a radix of host page tables standing in for the xarray (dmirror.ts).
// - Device memory: DEVMEM_CHUNK_PAGES-page chunks of zone frames, not 256 MiB (devmem.ts);
//   devices 2-3 (DEVICE_COHERENT, module parameters spm_addr_dev0/1) are left out, as the
//   kernel leaves them out without those parameters: opening them is -ENXIO.
// - HMM_DMIRROR_FLAGS stores the flags; FAIL_ALLOC only affects THP allocation, and this zone
//   has order-0 pages only, so it changes nothing.
// - The endless READ/WRITE on a dead mm stops after DMIRROR_LIVELOCK_ROUNDS rounds with a
//   'liveness' record; every device access checks the mirror invariant ('mirror_invariant').
// - Chunks of ARRAY_SIZE(pfns) = 64 pages, as the source has it (reference §4 says 32).
// - READ/WRITE through an entry that names a device-private page (dmirror_do_fault stores it
//   in place, as test_hmm does) copy through its rpage: the kernel would memcpy through a
//   struct page that has no linear mapping.
// - Not yet on src/device (defineDriver, shadow_pte_install, mirror_check): that layer landed
//   while this was written. The switch is local: xa_* in dmirror.ts become the device's shadow
//   table, dmirror_check_access its mirror check, and the fd table device_open/ioctl/close.

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { defineStruct } from '../../src/shm/layout.js';
import { EBADF, EFAULT, EINVAL, ENOMEM } from '../../src/shm/errno.js';
import { mutex_lock, mutex_unlock } from '../../src/sync/mutex.js';
import { current_mm, copy_from_user, copy_to_user } from '../../src/mm/uaccess.js';
import { DmirrorL, dmirror_create, dmirror_destroy, dmirror_forget_hooks, dmirror_log_of, dmirror_mutex, dmirror_pt_entries, dmirror_set_hooks, type DmirrorHooks, type DmirrorInvalidation, type PtEntry } from './dmirror.js';
import { dmirror_bounce_init, dmirror_check_atomic, dmirror_rw_loop, type DmirrorCmdState } from './rw.js';
import { DEVMEM_CHUNK_PAGES, DmirrorDeviceL, dmirror_allocate_chunk, dmirror_device_setup } from './devmem.js';
import { dmirror_snapshot } from './snapshot.js';
import { dmirror_device_remove_chunks, dmirror_exclusive, dmirror_migrate_to_device, dmirror_migrate_to_system } from './migrate.js';
import {
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_CMD_BYTES,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_FLAGS,
  HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
  HMM_DMIRROR_MIGRATE_TO_DEV,
  HMM_DMIRROR_MIGRATE_TO_SYS,
  HMM_DMIRROR_READ,
  HMM_DMIRROR_RELEASE,
  HMM_DMIRROR_SNAPSHOT,
  HMM_DMIRROR_WRITE,
  type DmirrorResult,
  type HmmDmirrorCmd,
} from './uapi.js';

export * from './uapi.js';
export { DMIRROR_CHUNK_PAGES, DMIRROR_LIVELOCK_ROUNDS, DMIRROR_LOG_ENTRIES, DPT_XA_TAG_ATOMIC, DPT_XA_TAG_WRITE, DmirrorL, type DmirrorHooks, type DmirrorInvalidation, type PtEntry } from './dmirror.js';
export { DEVMEM_CHUNK_PAGES, DmirrorDeviceL, dmirror_chunks } from './devmem.js';

export const DMIRROR_NDEVICES = 4;
/** open files at once, over all devices */
export const DMIRROR_MAX_FILES = 32;
/** ENXIO (errno-base.h 6): what opening a char device without a cdev gives */
export const ENXIO = 6;

/** the module: its devices and the open files (fd = slot) */
export const HmmDmirrorL = defineStruct('hmm_dmirror', {
  devices: DMIRROR_NDEVICES, // struct dmirror_device *, 0 where the device is left out
  files: DMIRROR_MAX_FILES, // struct dmirror * of each open fd
});

export interface DmirrorInitOpts {
  /** pages per device memory chunk (default DEVMEM_CHUNK_PAGES) */
  chunkPages?: number;
}

/**
 * hmm_dmirror_init: devices 0-1 DEVICE_PRIVATE, each with its first chunk (the kernel's
 * dmirror_device_init). Call it from a task. Returns the module's word offset or -errno.
 */
export async function hmm_dmirror_init(opts: DmirrorInitOpts = {}): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const mod = k.kmalloc.kzalloc(HmmDmirrorL.$size);
  if (mod === 0) return -ENOMEM;
  for (let id = 0; id < 2; id++) {
    const md = k.kmalloc.kzalloc(DmirrorDeviceL.$size);
    if (md === 0) {
      await hmm_dmirror_exit(mod);
      return -ENOMEM;
    }
    dmirror_device_setup(k, md, id, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE, opts.chunkPages ?? DEVMEM_CHUNK_PAGES);
    w[mod + HmmDmirrorL.devices + id] = md;
    // Build a list of free ZONE_DEVICE struct pages
    const r = await dmirror_allocate_chunk(k, md, false);
    if (r < 0) {
      await hmm_dmirror_exit(mod);
      return r;
    }
  }
  return mod;
}

/** hmm_dmirror_exit: every fd must be closed; evicts and frees every chunk, then the devices. */
export async function hmm_dmirror_exit(mod: number): Promise<void> {
  const k = current.k;
  const w = k.arena.i32;
  for (let id = 0; id < DMIRROR_NDEVICES; id++) {
    const md = w[mod + HmmDmirrorL.devices + id];
    if (md === 0) continue;
    await dmirror_device_remove_chunks(k, md);
    k.kmalloc.kfree(md);
  }
  k.kmalloc.kfree(mod);
}

export function dmirror_device(mod: number, id: number): number {
  return current.k.arena.i32[mod + HmmDmirrorL.devices + id];
}

/** The struct dmirror behind an fd, 0 if the fd is not open. */
export function dmirror_of(mod: number, fd: number): number {
  if (!Number.isInteger(fd) || fd < 0 || fd >= DMIRROR_MAX_FILES) return 0;
  return Atomics.load(current.k.arena.i32, mod + HmmDmirrorL.files + fd);
}

/** open("/dev/hmm_dmirror<minor>") from a process's CPU task: mirror its mm. fd or -errno. */
export async function dmirror_open(mod: number, minor: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const md = Number.isInteger(minor) && minor >= 0 && minor < DMIRROR_NDEVICES ? w[mod + HmmDmirrorL.devices + minor] : 0;
  if (md === 0) return -ENXIO;
  const mm = current_mm();
  if (mm === 0) return -EINVAL;
  let fd = -1;
  for (let i = 0; i < DMIRROR_MAX_FILES && fd < 0; i++) if (Atomics.compareExchange(w, mod + HmmDmirrorL.files + i, 0, -1) === 0) fd = i;
  if (fd < 0) return -ENOMEM; // -EMFILE in a real fd table
  const r = dmirror_create(k, md, mm);
  const d = typeof r === 'number' ? r : await r;
  Atomics.store(w, mod + HmmDmirrorL.files + fd, d > 0 ? d : 0);
  return d > 0 ? fd : d;
}

/** close(fd): dmirror_fops_release. */
export async function dmirror_close(mod: number, fd: number): Promise<number> {
  const k = current.k;
  const d = dmirror_of(mod, fd);
  if (d <= 0) return -EBADF;
  Atomics.store(k.arena.i32, mod + HmmDmirrorL.files + fd, -1); // no new ioctl finds it
  dmirror_forget_hooks(d);
  await dmirror_destroy(k, d);
  Atomics.store(k.arena.i32, mod + HmmDmirrorL.files + fd, 0);
  return 0;
}

// ---- ioctl -----------------------------------------------------------------------------------

/** u64 fields of struct hmm_dmirror_cmd in user memory */
function readCmd(b: Uint8Array): HmmDmirrorCmd & { cpages: number; faults: number } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u64 = (i: number): number => v.getUint32(8 * i, true) + v.getUint32(8 * i + 4, true) * 2 ** 32;
  return { addr: u64(0), ptr: u64(1), npages: u64(2), cpages: u64(3), faults: u64(4) };
}

function writeCmd(c: { addr: number; ptr: number; npages: number; cpages: number; faults: number }): Uint8Array {
  const b = new Uint8Array(HMM_DMIRROR_CMD_BYTES);
  const v = new DataView(b.buffer);
  [c.addr, c.ptr, c.npages, c.cpages, c.faults].forEach((x, i) => {
    v.setUint32(8 * i, x % 2 ** 32, true);
    v.setUint32(8 * i + 4, Math.floor(x / 2 ** 32), true);
  });
  return b;
}

const isU64 = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/**
 * dmirror_fops_unlocked_ioctl. Returns what the caller's struct holds afterwards: the out
 * fields are copied back only when ret is 0.
 */
export async function dmirror_ioctl(mod: number, fd: number, command: number, arg: HmmDmirrorCmd | number): Promise<DmirrorResult> {
  const k = current.k;
  const d = dmirror_of(mod, fd);
  if (d === 0) return { ret: -EBADF, cpages: 0, faults: 0 };
  const user = typeof arg === 'number';
  let cmd: { addr: number; ptr: number; npages: number; cpages: number; faults: number };
  if (user) {
    const b = new Uint8Array(HMM_DMIRROR_CMD_BYTES);
    if ((await copy_from_user(b, arg)) !== 0) return { ret: -EFAULT, cpages: 0, faults: 0 };
    cmd = readCmd(b);
  } else cmd = { addr: arg.addr, ptr: arg.ptr, npages: arg.npages, cpages: arg.cpages ?? 0, faults: arg.faults ?? 0 };
  const kept = { ret: 0, cpages: cmd.cpages, faults: cmd.faults };
  if (d < 0) return { ...kept, ret: -EINVAL }; // being closed: private_data is gone
  const st: DmirrorCmdState & { ptr: number } = { addr: cmd.addr, ptr: cmd.ptr, npages: cmd.npages, cpages: 0, faults: 0, livelock: false };
  const ret = await dmirror_ioctl_cmd(k, d, command, st);
  if (st.livelock) return { ret, cpages: st.cpages, faults: st.faults, livelock: true };
  if (ret !== 0) return { ...kept, ret };
  if (user && (await copy_to_user(arg, writeCmd({ ...cmd, cpages: st.cpages, faults: st.faults }))) !== 0) return { ...kept, ret: -EFAULT };
  if (!user) {
    arg.cpages = st.cpages;
    arg.faults = st.faults;
  }
  return { ret: 0, cpages: st.cpages, faults: st.faults };
}

async function dmirror_ioctl_cmd(k: Kernel, d: number, command: number, cmd: DmirrorCmdState & { ptr: number }): Promise<number> {
  const ps = k.mmLayer.pageSize;
  // not u64 at all: no C caller can pass that
  if (!isU64(cmd.addr) || !isU64(cmd.ptr) || !isU64(cmd.npages)) return -EINVAL;
  if (cmd.addr % ps !== 0) return -EINVAL;
  // cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT), in u64 arithmetic
  const M = 1n << 64n;
  const a = BigInt(cmd.addr);
  if (a >= (a + ((BigInt(cmd.npages) << BigInt(k.mmLayer.pageShift)) % M)) % M) return -EINVAL;
  cmd.cpages = 0;
  cmd.faults = 0;
  switch (command) {
    case HMM_DMIRROR_READ:
      return dmirror_read(k, d, cmd);
    case HMM_DMIRROR_WRITE:
      return dmirror_write(k, d, cmd);
    case HMM_DMIRROR_MIGRATE_TO_DEV:
      return dmirror_migrate_to_device(k, d, cmd);
    case HMM_DMIRROR_MIGRATE_TO_SYS:
      return dmirror_migrate_to_system(k, d, cmd);
    case HMM_DMIRROR_EXCLUSIVE:
      return dmirror_exclusive(k, d, cmd);
    case HMM_DMIRROR_CHECK_EXCLUSIVE:
      return dmirror_check_atomic(k, d, cmd.addr, cmd.addr + cmd.npages * ps);
    case HMM_DMIRROR_SNAPSHOT:
      return dmirror_snapshot(k, d, cmd);
    case HMM_DMIRROR_RELEASE:
      await dmirror_device_remove_chunks(k, k.arena.i32[d + DmirrorL.mdevice]);
      return 0;
    case HMM_DMIRROR_FLAGS:
      k.arena.i32[d + DmirrorL.flags] = cmd.npages;
      return 0;
    default:
      return -EINVAL;
  }
}

/** dmirror_read: fault and copy through pt, then copy_to_user of the whole bounce buffer */
async function dmirror_read(k: Kernel, d: number, cmd: DmirrorCmdState & { ptr: number }): Promise<number> {
  const size = cmd.npages * k.mmLayer.pageSize;
  const b = dmirror_bounce_init(cmd.addr, size);
  if (!b) return -ENOMEM;
  let ret = await dmirror_rw_loop(k, d, cmd, b, false);
  if (ret === 0 && (await copy_to_user(cmd.ptr, b.buf, size)) !== 0) ret = -EFAULT;
  cmd.cpages = b.cpages;
  return ret;
}

/** dmirror_write: copy_from_user first, then fault and copy through pt */
async function dmirror_write(k: Kernel, d: number, cmd: DmirrorCmdState & { ptr: number }): Promise<number> {
  const size = cmd.npages * k.mmLayer.pageSize;
  const b = dmirror_bounce_init(cmd.addr, size);
  if (!b) return -ENOMEM;
  let ret: number;
  if ((await copy_from_user(b.buf, cmd.ptr, size)) !== 0) ret = -EFAULT;
  else ret = await dmirror_rw_loop(k, d, cmd, b, true);
  cmd.cpages = b.cpages;
  return ret;
}

/** The counters of an open file (tests and reports). */
export function dmirror_stats(
  mod: number,
  fd: number,
): Record<'invalidations' | 'eagain' | 'busy' | 'retries' | 'programs' | 'timeouts' | 'accesses' | 'violations' | 'livelocks' | 'migrate_skipped' | 'migrate_races', number> {
  const w = current.k.arena.i32;
  const d = dmirror_of(mod, fd);
  const f = (x: number): number => (d > 0 ? w[d + x] : 0);
  return {
    invalidations: f(DmirrorL.log_head),
    eagain: f(DmirrorL.eagain),
    busy: f(DmirrorL.busy),
    retries: f(DmirrorL.retries),
    programs: f(DmirrorL.programs),
    timeouts: f(DmirrorL.timeouts),
    accesses: f(DmirrorL.accesses),
    violations: f(DmirrorL.violations),
    livelocks: f(DmirrorL.livelocks),
    migrate_skipped: f(DmirrorL.migrate_skipped),
    migrate_races: f(DmirrorL.migrate_races),
  };
}

/** The invalidations that reached an open file's erase, oldest first. */
export function dmirror_log(mod: number, fd: number): DmirrorInvalidation[] {
  const d = dmirror_of(mod, fd);
  return d > 0 ? dmirror_log_of(current.k, d) : [];
}

/** calloc / cfree of a device */
export function dmirror_device_counters(mod: number, id: number): { calloc: number; cfree: number } {
  const w = current.k.arena.i32;
  const md = w[mod + HmmDmirrorL.devices + id];
  return { calloc: w[md + DmirrorDeviceL.calloc], cfree: w[md + DmirrorDeviceL.cfree] };
}

/** Hold an open file's mutex (a test standing in for a driver thread that holds it). */
export function dmirror_lock(mod: number, fd: number): Promise<void> | undefined {
  return mutex_lock(dmirror_mutex(current.k, dmirror_of(mod, fd)));
}

export function dmirror_unlock(mod: number, fd: number): void {
  mutex_unlock(dmirror_mutex(current.k, dmirror_of(mod, fd)));
}

/** pt's entries of an open file in [start, end), in address order */
export function dmirror_entries(mod: number, fd: number, start = 0, end = 2 ** 48): PtEntry[] {
  const d = dmirror_of(mod, fd);
  return d > 0 ? dmirror_pt_entries(current.k, d, start, end) : [];
}

/** Test hooks of an open file (this thread only). */
export function dmirror_set_hooks_fd(mod: number, fd: number, h: DmirrorHooks | null): void {
  dmirror_set_hooks(dmirror_of(mod, fd), h);
}
