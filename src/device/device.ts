// A device: a device struct in the arena (one address space mirroring one mm: its shadow page
// table root, TLB generation, engines and fault slots, counters) plus the tasks that run on it
// (kind 'device' engines running device programs, and optionally a 'driver' fault task).
// The device holds an mm_count reference (mmgrab), so its mm struct outlives the address
// space it mirrors for as long as the device exists.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { TASK_BLOCKED, TASK_RUNNABLE, TaskL } from '../sched/task.js';
import { EBUSY, ENOMEM } from '../shm/errno.js';
import { initObj } from '../sync/lockdep.js';
import { mmdrop, mmgrab } from '../mm/mm_inline.js';
import { spt_free } from './spt.js';
import { DEV_ENGINES, DEV_FREE, DEV_LIVE, DEV_STAT, DEV_STAT_NAMES, DevL, EngL, engine_at, type DevStatName } from './types.js';

export interface DeviceCreateOpts {
  name: string;
  mm: number;
  /** device-private pgmap owner id; default a fresh one */
  owner?: number;
  /** the driver's name (driver.ts sets it) */
  driver?: string;
  flags?: number;
}

/**
 * device_create: a device struct and an empty shadow page table for mm. The caller holds a
 * reference on mm (a thread of its process, or mmget). Returns the device's word offset or
 * -ENOMEM.
 */
export function device_create(k: Kernel, o: DeviceCreateOpts): number {
  const L = k.devices;
  const id = L.devices.alloc();
  if (id === 0) return -ENOMEM;
  const root = L.dirs.alloc();
  if (root === 0) {
    L.devices.free(id);
    return -ENOMEM;
  }
  const dev = L.devices.at(id);
  const w = k.arena.i32;
  w[dev + DevL.id] = id;
  w[dev + DevL.name] = k.strings.intern(o.name);
  w[dev + DevL.driver] = o.driver ? k.strings.intern(o.driver) : 0;
  w[dev + DevL.mm] = o.mm;
  w[dev + DevL.owner] = o.owner ?? L.nextOwner();
  w[dev + DevL.flags] = o.flags ?? 0;
  w[dev + DevL.root] = root;
  initObj(k, dev + DevL.fence, `fence:${o.name}`, 'device_fence');
  mmgrab(o.mm);
  Atomics.store(w, dev + DevL.state, DEV_LIVE);
  return dev;
}

/** device_destroy: free the tables and the struct; no engine, fault task or notifier is left. */
export function device_destroy(k: Kernel, dev: number): void {
  const w = k.arena.i32;
  spt_free(k, dev);
  const mm = w[dev + DevL.mm];
  Atomics.store(w, dev + DevL.state, DEV_FREE);
  k.devices.devices.free(w[dev + DevL.id]);
  mmdrop(mm);
}

/** the device's word offset from its id (pool index), 0 if no live device has it */
export function device_by_id(k: Kernel, id: number): number {
  const pool = k.devices.devices;
  return pool.inUse(id) ? pool.at(id) : 0;
}

/** Every live device, as word offsets. */
export function devicesOf(k: Kernel): number[] {
  const pool = k.devices.devices;
  const out: number[] = [];
  for (let i = 1; i < pool.capacity; i++) if (pool.inUse(i)) out.push(pool.at(i));
  return out;
}

export function device_name(k: Kernel, dev: number): string {
  return k.strings.get(k.arena.i32[dev + DevL.name]);
}

/** "gpu0@1a40 (kvm-mmu)": how reports name a device */
export function deviceLabel(k: Kernel, dev: number): string {
  const drv = k.arena.i32[dev + DevL.driver];
  return `${device_name(k, dev)}@${dev.toString(16)}${drv ? ` (${k.strings.get(drv)})` : ''}`;
}

/** The driver's state (kmalloc'd at open), 0 if the driver has none. */
export function device_priv(dev: number): number {
  return current.k.arena.i32[dev + DevL.priv];
}

export function device_mm(dev: number): number {
  return current.k.arena.i32[dev + DevL.mm];
}

/** the device-private pgmap owner id of the device */
export function device_owner(dev: number): number {
  return current.k.arena.i32[dev + DevL.owner];
}

/** Count an event in one of the device's statistics (atomically: any task may). */
export function device_stat_add(dev: number, stat: number, n = 1): void {
  Atomics.add(current.k.arena.i32, dev + DevL.stats + stat, n);
}

export type DeviceStats = Record<DevStatName, number>;

export function deviceStats(k: Kernel, dev: number): DeviceStats {
  const w = k.arena.i32;
  const out = {} as DeviceStats;
  DEV_STAT_NAMES.forEach((n, i) => (out[n] = Atomics.load(w, dev + DevL.stats + i)));
  let acc = 0;
  for (let e = 0; e < DEV_ENGINES; e++) acc += Atomics.load(w, engine_at(dev, e) + EngL.accesses);
  out.accesses = acc;
  return out;
}

/** The engine task of slot `eng` is current (set by a program when it starts). */
export function device_engine_attach(dev: number, eng: number): void {
  const k = current.k;
  if (!(Number.isInteger(eng) && eng >= 0 && eng < DEV_ENGINES)) throw new RangeError(`device engine ${eng}: engines are 0..${DEV_ENGINES - 1}`);
  Atomics.store(k.arena.i32, engine_at(dev, eng) + EngL.task, current.id);
}

/**
 * Claim a free engine slot for current (a CPU task accessing memory through the device, as an
 * ioctl does): a slot with no task, or whose task has ended. Returns the slot or -EBUSY.
 */
export function device_engine_claim(dev: number): number {
  const k = current.k;
  const w = k.arena.i32;
  for (let e = DEV_ENGINES - 1; e >= 0; e--) {
    const at = engine_at(dev, e) + EngL.task;
    const id = Atomics.load(w, at);
    if ((id === 0 || !task_alive(k, id)) && Atomics.compareExchange(w, at, id, current.id) === id) return e;
  }
  return -EBUSY;
}

/** Give a claimed slot back. */
export function device_engine_release(dev: number, eng: number): void {
  Atomics.compareExchange(current.k.arena.i32, engine_at(dev, eng) + EngL.task, current.id, 0);
}

/**
 * An invalidation callback of the device's notifier ran on current: count it and remember
 * the task (the other side of a mirror-invariant report). defineDriver's wrapper calls it
 * for interval and hlist drivers; a driver inserting its own notifiers calls it itself.
 */
export function device_notifier_seen(dev: number): void {
  const t = current;
  device_stat_add(dev, DEV_STAT.invalidations);
  Atomics.store(t.k.arena.i32, dev + DevL.last_inval_task, t.id);
}

/** Is task `id` still running (not exited, failed or aborted)? */
export function task_alive(k: Kernel, id: number): boolean {
  const s = Atomics.load(k.arena.i32, k.tasks.get(id).base + TaskL.state);
  return s === TASK_RUNNABLE || s === TASK_BLOCKED;
}

/** Sleep until task `id` has ended (a join, for device_close). */
export async function task_join(k: Kernel, id: number): Promise<void> {
  const w = k.arena.i32;
  const at = k.tasks.get(id).base + TaskL.state;
  for (let s = Atomics.load(w, at); s === TASK_RUNNABLE || s === TASK_BLOCKED; s = Atomics.load(w, at)) {
    const r = k.sched.wait(at, s);
    if (typeof r !== 'number') await r;
  }
}

export { DEV_STAT };
