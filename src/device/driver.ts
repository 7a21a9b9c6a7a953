// defineDriver: what a driver is to the device layer: its per-open state (a struct layout,
// kmalloc'd at open), its notifier lock (mutex, rwsem or spinlock, with a lockdep class), its
// notifier (interval or hlist ops, registered at open over the device's embedded
// subscription), its fault handler, and its commands (ioctl-like, file.ts). Also the lock
// helpers every driver uses for its notifier lock.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER, OBJ_STATE } from '../sched/report.js';
import type { LockObj } from '../sync/context.js';
import { Mutex, mutex_lock, mutex_trylock, mutex_unlock } from '../sync/mutex.js';
import { RwSem, down_read, down_write, down_write_trylock, up_read, up_write } from '../sync/rwsem.js';
import { Spinlock, spin_lock, spin_trylock, spin_unlock } from '../sync/spinlock.js';
import { defineIntervalNotifierOps, defineNotifierOps, type MmuIntervalNotifierOps, type MmuNotifierOps } from '../notifier/ops.js';
import { mmu_notifier_priv } from '../notifier/subscriptions.js';
import { device_notifier_seen } from './device.js';
import { driverOf, registerDriver } from './registry.js';
import { DevL } from './types.js';

export type NotifierLockKind = 'mutex' | 'rwsem' | 'spinlock';

export interface DriverLockSpec {
  kind: NotifierLockKind;
  /** instance name, e.g. 'kvm->mmu_lock' */
  name: string;
  /** lockdep class, e.g. '&kvm->mmu_lock' (default: the name) */
  class?: string;
}

export type DriverNotifierSpec =
  /** one interval notifier over [start, start + length) (default: the whole address space) */
  | { kind: 'interval'; ops: MmuIntervalNotifierOps; start?: number; length?: number }
  | { kind: 'hlist'; ops: MmuNotifierOps }
  /** the driver inserts its own notifiers (several intervals, say) */
  | { kind: 'none' };

export interface DriverOpenOpts {
  /** the mm to mirror; default the mm of current (a process's CPU task) */
  mm?: number;
  /** the device's name in reports; default the driver's */
  name?: string;
  /** device-private pgmap owner id; default a fresh one */
  owner?: number;
  /** DEVF_* */
  flags?: number;
  [key: string]: unknown;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type DriverCommand = (dev: number, arg: any) => unknown;

export interface DriverSpec {
  name: string;
  /** per-open driver state: a defineStruct layout, kmalloc'd (zeroed) at open */
  state?: { readonly $size: number; readonly $name: string };
  lock: DriverLockSpec;
  notifier: DriverNotifierSpec;
  /** service a device fault at [addr, addr + npages pages): 0 = retry the access, or -errno */
  fault(dev: number, addr: number, npages: number, flags: number): number | Promise<number>;
  /**
   * The retry check shadow_pte_install runs for a driver without an interval notifier (or
   * with several): true when `seq` is stale for addr. Default: mmu_interval_read_retry on the
   * device's notifier.
   */
  seq_retry?(dev: number, seq: number, addr: number): boolean;
  /** after the device and state exist, before the notifier is registered; 0 or -errno */
  open?(dev: number, opts: DriverOpenOpts): number | Promise<number>;
  /** after the notifier is gone, before the state is freed */
  release?(dev: number): void | Promise<void>;
  commands?: Record<string, DriverCommand>;
  /** a line for livelock reports: the driver's view of why faults keep retrying */
  diagnose?(dev: number): string;
}

export type Driver = Readonly<DriverSpec>;

/** Define a driver under its name, in this thread. Call it at a module's top level. */
export function defineDriver(spec: DriverSpec): Driver {
  if (typeof spec?.name !== 'string' || spec.name === '') throw new TypeError('defineDriver: a driver needs a non-empty name');
  const where = `defineDriver(${spec.name})`;
  if (!['mutex', 'rwsem', 'spinlock'].includes(spec.lock?.kind)) throw new TypeError(`${where}: lock.kind must be 'mutex', 'rwsem' or 'spinlock'`);
  if (typeof spec.lock.name !== 'string' || spec.lock.name === '') throw new TypeError(`${where}: lock.name is required`);
  if (typeof spec.fault !== 'function') throw new TypeError(`${where}: a fault handler is required`);
  const n = spec.notifier;
  let notifier: DriverNotifierSpec;
  if (n?.kind === 'interval') {
    const inv = n.ops.invalidate;
    notifier = { ...n, ops: defineIntervalNotifierOps(spec.name, { ...n.ops, invalidate: (sub, range, seq) => (seen(sub), inv.call(n.ops, sub, range, seq)) }) };
  } else if (n?.kind === 'hlist') {
    if (!spec.seq_retry) throw new TypeError(`${where}: a driver on an hlist notifier must define seq_retry (its own sequence, checked at every install)`);
    const start = n.ops.invalidate_range_start;
    const ops: MmuNotifierOps = { ...n.ops };
    if (start) ops.invalidate_range_start = (sub, range) => (seen(sub), start.call(n.ops, sub, range));
    notifier = { kind: 'hlist', ops: defineNotifierOps(spec.name, ops) };
  } else if (n?.kind === 'none') {
    if (!spec.seq_retry) throw new TypeError(`${where}: a driver that inserts its own notifiers must define seq_retry`);
    notifier = n;
  } else throw new TypeError(`${where}: notifier.kind must be 'interval', 'hlist' or 'none'`);
  const d = Object.freeze({ ...spec, notifier });
  registerDriver(d);
  return d;
}

/** Every invalidation callback of a driver's device notifier passes here first. */
function seen(sub: number): void {
  device_notifier_seen(mmu_notifier_priv(sub));
}

// ---- the notifier lock -------------------------------------------------------------------------

const locks = new WeakMap<Kernel, Map<number, LockObj>>();

/** The device's notifier lock as a handle (Mutex, RwSem or Spinlock by the driver's kind). */
export function device_lock_obj(dev: number): LockObj {
  const k = current.k;
  let m = locks.get(k);
  if (!m) locks.set(k, (m = new Map()));
  let l = m.get(dev);
  const kind = driverOf(dev).lock.kind;
  const cls = kind === 'mutex' ? Mutex : kind === 'rwsem' ? RwSem : Spinlock;
  if (!l || !(l instanceof cls)) m.set(dev, (l = new cls(k, dev + DevL.lock)));
  return l;
}

/** Take the notifier lock (exclusive): mutex_lock / down_write / spin_lock. */
export function device_lock(dev: number): Promise<void> | undefined {
  const l = device_lock_obj(dev);
  if (l instanceof Mutex) return mutex_lock(l);
  if (l instanceof RwSem) return down_write(l);
  spin_lock(l as Spinlock);
  return undefined;
}

/** Take it shared where the lock allows (an rwsem's read side), else exclusive. */
export function device_lock_read(dev: number): Promise<void> | undefined {
  const l = device_lock_obj(dev);
  return l instanceof RwSem ? down_read(l) : device_lock(dev);
}

/** The non-blockable path's attempt: mutex_trylock / down_write_trylock / spin_trylock. */
export function device_trylock(dev: number): boolean {
  const l = device_lock_obj(dev);
  if (l instanceof Mutex) return mutex_trylock(l);
  if (l instanceof RwSem) return down_write_trylock(l);
  return spin_trylock(l as Spinlock);
}

/** Release it (an rwsem held for write by current is up_write, else up_read). */
export function device_unlock(dev: number): void {
  const l = device_lock_obj(dev);
  if (l instanceof Mutex) return mutex_unlock(l);
  if (l instanceof RwSem) {
    const w = l.w;
    if (w[l.at + OBJ_STATE] === -1 && w[l.at + OBJ_OWNER] === current.id + 1) up_write(l);
    else up_read(l);
    return;
  }
  spin_unlock(l as Spinlock);
}

/** Does current hold the notifier lock? lockdep's held list, or the owner word when lockdep is off. */
export function lockHeld(k: Kernel, dev: number): boolean {
  const l = device_lock_obj(dev);
  const t = current;
  if (k.lockdep.enabled) return k.lockdep.held(t, l.at, true);
  const w = k.arena.i32;
  if (l instanceof RwSem) return Atomics.load(w, l.at + OBJ_STATE) > 0 || w[l.at + OBJ_OWNER] === t.id + 1;
  return Atomics.load(w, l.at + OBJ_STATE) !== 0 && w[l.at + OBJ_OWNER] === t.id + 1;
}

/** The device is gone: drop this thread's handle of its lock. */
export function forgetLock(k: Kernel, dev: number): void {
  locks.get(k)?.delete(dev);
}
