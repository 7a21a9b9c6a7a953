// dmirror: a model of the kernel's HMM test driver, lib/test_hmm.c with lib/test_hmm_uapi.h,
// as in mainline v6.15+ (make_device_exclusive(mm, addr, owner, &folio), page_pgmap,
// DMIRROR_NDEVICES 4) plus HMM_DMIRROR_FLAGS from the THP-migration series. Reference §4.
// Names, numbers, counters, error codes and quirks carry over (the one-page-too-far erase,
// faults counted per round, the endless READ/WRITE of a dead mm); the code is our own.
//
// Where it differs:
// - A driver of the device layer (src/device, defineDriver 'dmirror'): each open file is a
//   device with struct dmirror as its state, the device's notifier lock as dmirror->mutex and
//   its interval notifier as dmirror->notifier. hmm_dmirror_init() makes the module (its word
//   offset is what tasks pass around); dmirror_open(mod, minor) from a process's CPU task is
//   device_open and gives the device as the fd; dmirror_ioctl(mod, fd, cmd, arg) goes
//   through device_ioctl (one command per HMM_DMIRROR_* name) and dmirror_close(mod, fd)
//   through device_close. `arg` is an HmmDmirrorCmd (its out fields updated only on success)
//   or the user address of a 40-byte struct hmm_dmirror_cmd, copied in and out with
//   copy_from_user/copy_to_user.
// - pt is the device's shadow page table standing in for the xarray (dmirror.ts): entries go
//   in through shadow_pte_install (the retry protocol checked), the invalidation zaps with
//   shadow_pte_zap, and each page the device reads or writes is a device access the layer's
//   mirror-invariant check (mirror_allows; the record is in dmirror's words, the count in
//   the device's violations) sees. MIGRATE_TO_DEV maps the device page itself (tagged
//   device-private) where test_hmm stores its backing page; copies go through the rpage.
// - MIGRATE_TO_DEV's and EXCLUSIVE's installs, which test_hmm makes with no sequence, take one
//   (read_begin, then the mutex, until read_retry is false) and leave out a page whose host
//   entry an earlier invalidation already changed; migrate_to_ram's erase takes the mutex
//   (test_hmm's xa_erase takes only the xarray's lock).
// - Device memory: DEVMEM_CHUNK_PAGES-page chunks of zone frames, not 256 MiB (devmem.ts);
//   devices 2-3 (DEVICE_COHERENT, module parameters spm_addr_dev0/1) are left out, as the
//   kernel leaves them out without those parameters: opening them is -ENXIO.
// - HMM_DMIRROR_FLAGS stores the flags; FAIL_ALLOC only affects THP allocation, and this zone
//   has order-0 pages only, so it changes nothing.
// - The endless READ/WRITE on a dead mm stops after DMIRROR_LIVELOCK_ROUNDS rounds with a
//   'liveness' record; every device access checks the mirror invariant ('mirror_invariant').
// - Device faults raised through the layer (the driver's fault handler) run dmirror_fault.
// - Chunks of ARRAY_SIZE(pfns) = 64 pages, as the source has it (reference §4 says 32).
// - READ/WRITE through an entry that names a device-private page (dmirror_do_fault stores it
//   in place, as test_hmm does) copy through its rpage: the kernel would memcpy through a
//   struct page that has no linear mapping.

import { current } from '../../src/sched/current.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { defineStruct } from '../../src/shm/layout.js';
import { EBADF, EFAULT, EINVAL, ENOMEM } from '../../src/shm/errno.js';
import { mutex_lock, mutex_unlock } from '../../src/sync/mutex.js';
import { current_mm, copy_from_user, copy_to_user } from '../../src/mm/uaccess.js';
import { DEV_FAULT_WRITE, DEV_LIVE, DevL, defineDriver, devicesOf, device_close, device_ioctl, device_open, device_priv, driverOf } from '../../src/device/index.js';
import {
  DMIRROR_MAGIC,
  DmirrorL,
  dmirror_closing,
  dmirror_fault,
  dmirror_forget_hooks,
  dmirror_log_of,
  dmirror_min_ops,
  dmirror_mutex,
  dmirror_pt_entries,
  dmirror_set_hooks,
  dmirror_violations,
  type DmirrorHooks,
  type DmirrorInvalidation,
  type PtEntry,
} from './dmirror.js';
import { dmirror_bounce_init, dmirror_check_atomic, dmirror_rw_loop, type DmirrorCmdState } from './rw.js';
import { DEVMEM_CHUNK_PAGES, DmirrorDeviceL, dmirror_allocate_chunk, dmirror_device_setup } from './devmem.js';
import { dmirror_snapshot } from './snapshot.js';
import { dmirror_device_remove_chunks, dmirror_exclusive, dmirror_migrate_to_device, dmirror_migrate_to_system } from './migrate.js';
import {
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_CMD_BYTES,
  HMM_DMIRROR_CMD_NAMES,
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
/** ENXIO (errno-base.h 6): what opening a char device without a cdev gives */
export const ENXIO = 6;

/** the module: its devices (the open files are devices of the device layer) */
export const HmmDmirrorL = defineStruct('hmm_dmirror', {
  devices: DMIRROR_NDEVICES, // struct dmirror_device *, 0 where the device is left out
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

/**
 * The device behind an fd of this module: the fd itself when it is a live (or closing)
 * dmirror device whose mirror belongs to one of mod's devices, else 0.
 */
function dmirror_dev_of(mod: number, fd: number): number {
  const k = current.k;
  const w = k.arena.i32;
  if (!Number.isInteger(fd) || fd <= 0 || !devicesOf(k).includes(fd)) return 0;
  if (driverOf(fd).name !== DMIRROR_DRIVER.name) return 0;
  const d = device_priv(fd);
  if (d === 0) return 0;
  const md = w[d + DmirrorL.mdevice];
  for (let id = 0; id < DMIRROR_NDEVICES; id++) if (md !== 0 && w[mod + HmmDmirrorL.devices + id] === md) return fd;
  return 0;
}

/** The struct dmirror behind an fd: 0 if the fd is not open, -1 while it is being closed. */
export function dmirror_of(mod: number, fd: number): number {
  const dev = dmirror_dev_of(mod, fd);
  if (dev === 0) return 0;
  if (Atomics.load(current.k.arena.i32, dev + DevL.state) !== DEV_LIVE || dmirror_closing(current.k, dev)) return -1;
  return device_priv(dev);
}

/** open("/dev/hmm_dmirror<minor>") from a process's CPU task: mirror its mm. fd or -errno. */
export async function dmirror_open(mod: number, minor: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const md = Number.isInteger(minor) && minor >= 0 && minor < DMIRROR_NDEVICES ? w[mod + HmmDmirrorL.devices + minor] : 0;
  if (md === 0) return -ENXIO;
  const mm = current_mm();
  if (mm === 0) return -EINVAL;
  // the device's pgmap owner is the dmirror_device, as test_hmm's pgmap owner is
  return device_open(DMIRROR_DRIVER.name, { mm, name: `hmm_dmirror${minor}`, owner: md, mdevice: md });
}

/** close(fd): dmirror_fops_release (device_close: notifier removed, shadow table freed). */
export async function dmirror_close(mod: number, fd: number): Promise<number> {
  const d = dmirror_of(mod, fd);
  if (d <= 0) return -EBADF;
  return device_close(fd);
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
  const ret = await dmirror_ioctl_cmd(k, fd, command, st);
  if (st.livelock) return { ret, cpages: st.cpages, faults: st.faults, livelock: true };
  if (ret !== 0) return { ...kept, ret };
  if (user && (await copy_to_user(arg, writeCmd({ ...cmd, cpages: st.cpages, faults: st.faults }))) !== 0) return { ...kept, ret: -EFAULT };
  if (!user) {
    arg.cpages = st.cpages;
    arg.faults = st.faults;
  }
  return { ret: 0, cpages: st.cpages, faults: st.faults };
}

type Cmd = DmirrorCmdState & { ptr: number };

/** dmirror_fops_unlocked_ioctl's checks, then the command through device_ioctl */
async function dmirror_ioctl_cmd(k: Kernel, dev: number, command: number, cmd: Cmd): Promise<number> {
  // not u64 at all: no C caller can pass that
  if (!isU64(cmd.addr) || !isU64(cmd.ptr) || !isU64(cmd.npages)) return -EINVAL;
  if (cmd.addr % k.mmLayer.pageSize !== 0) return -EINVAL;
  // cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT), in u64 arithmetic
  const M = 1n << 64n;
  const a = BigInt(cmd.addr);
  if (a >= (a + ((BigInt(cmd.npages) << BigInt(k.mmLayer.pageShift)) % M)) % M) return -EINVAL;
  cmd.cpages = 0;
  cmd.faults = 0;
  const name = Object.hasOwn(HMM_DMIRROR_CMD_NAMES, command) ? HMM_DMIRROR_CMD_NAMES[command] : '';
  if (name === '') return -EINVAL;
  return (await device_ioctl<number>(dev, name, cmd)) as number;
}

/** a command of the driver: the device's struct dmirror and the copied-in command */
function command(fn: (k: Kernel, d: number, cmd: Cmd) => number | Promise<number>): (dev: number, cmd: Cmd) => number | Promise<number> {
  return (dev, cmd) => fn(current.k, device_priv(dev), cmd);
}

/** The driver: one device per open file of /dev/hmm_dmirror<minor>. */
export const DMIRROR_DRIVER = defineDriver({
  name: 'dmirror',
  state: DmirrorL,
  lock: { kind: 'mutex', name: 'dmirror->mutex', class: '&dmirror->mutex' },
  // Mirror this process address space
  notifier: { kind: 'interval', ops: dmirror_min_ops },
  open(dev, opts) {
    const k = current.k;
    const w = k.arena.i32;
    const d = device_priv(dev);
    const md = typeof opts.mdevice === 'number' ? opts.mdevice : 0;
    if (md === 0) return -EINVAL;
    w[d + DmirrorL.dev] = dev;
    w[d + DmirrorL.mdevice] = md;
    w[d + DmirrorL.magic] = DMIRROR_MAGIC;
    return 0;
  },
  release(dev) {
    const d = device_priv(dev);
    dmirror_forget_hooks(d);
    current.k.arena.i32[d + DmirrorL.magic] = 0;
  },
  fault(dev, addr, npages, flags) {
    const k = current.k;
    return dmirror_fault(k, device_priv(dev), addr, addr + npages * k.mmLayer.pageSize, (flags & DEV_FAULT_WRITE) !== 0);
  },
  // one command per ioctl, under its uapi name (dmirror_ioctl maps the number to it)
  commands: {
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_READ]]: command(dmirror_read),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_WRITE]]: command(dmirror_write),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_MIGRATE_TO_DEV]]: command(dmirror_migrate_to_device),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_MIGRATE_TO_SYS]]: command(dmirror_migrate_to_system),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_EXCLUSIVE]]: command(dmirror_exclusive),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_CHECK_EXCLUSIVE]]: command((k, d, cmd) => dmirror_check_atomic(k, d, cmd.addr, cmd.addr + cmd.npages * k.mmLayer.pageSize)),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_SNAPSHOT]]: command(dmirror_snapshot),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_RELEASE]]: command(async (k, d) => {
      await dmirror_device_remove_chunks(k, k.arena.i32[d + DmirrorL.mdevice]);
      return 0;
    }),
    [HMM_DMIRROR_CMD_NAMES[HMM_DMIRROR_FLAGS]]: command((k, d, cmd) => {
      k.arena.i32[d + DmirrorL.flags] = cmd.npages;
      return 0;
    }),
  },
});

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
    violations: d > 0 ? dmirror_violations(current.k, d) : 0,
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

/** Hold an open file's mutex (the device's notifier lock; a test standing in for a driver thread that holds it). */
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

export { stress } from './stress.js';
