// The device file: device_open (a device, the driver's state, its notifier registered: an
// open() of the device file from a process's CPU task), device_ioctl (the driver's commands),
// device_stop and device_close (engines and fault task joined, notifier removed, everything
// freed).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { EINVAL, ENOMEM } from '../shm/errno.js';
import { mutex_init } from '../sync/mutex.js';
import { init_rwsem } from '../sync/rwsem.js';
import { spin_lock_init } from '../sync/spinlock.js';
import { mmu_interval_notifier_insert, mmu_interval_notifier_remove } from '../notifier/interval.js';
import { mmu_notifier_init, mmu_notifier_register, mmu_notifier_unregister } from '../notifier/mmu_notifier.js';
import { PAGE_ALIGN_DOWN, ULONG_MAX } from '../mm/types.js';
import { current_mm } from '../mm/uaccess.js';
import { device_create, device_destroy, task_alive, task_join } from './device.js';
import { forgetLock, type DriverLockSpec, type DriverOpenOpts } from './driver.js';
import { driverOf, lookupDriver } from './registry.js';
import { DEV_CLOSING, DEV_ENGINES, DevL, EngL, engine_at } from './types.js';

function initLock(k: Kernel, dev: number, l: DriverLockSpec): void {
  const at = dev + DevL.lock;
  if (l.kind === 'mutex') mutex_init(k, at, l.name, l.class);
  else if (l.kind === 'rwsem') init_rwsem(k, at, l.name, l.class);
  else spin_lock_init(k, at, l.name, l.class);
}

async function settle<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

/**
 * device_open: open `driver` on an mm (default current's, as an open() of the device file
 * from a process's CPU task): a device, the driver's state, its notifier registered.
 * Returns the device (its word offset: the "fd") or a negative errno.
 */
export async function device_open(driver: string, opts: DriverOpenOpts = {}): Promise<number> {
  const k = current.k;
  const drv = lookupDriver(driver);
  const mm = opts.mm ?? current_mm();
  if (!(mm > 0)) return -EINVAL;
  const dev = device_create(k, { name: opts.name ?? drv.name, mm, owner: opts.owner, driver: drv.name, flags: opts.flags });
  if (dev < 0) return dev;
  const w = k.arena.i32;
  initLock(k, dev, drv.lock);
  if (drv.state) {
    const priv = k.kmalloc.kzalloc(drv.state.$size);
    if (priv === 0) {
      device_destroy(k, dev);
      return -ENOMEM;
    }
    w[dev + DevL.priv] = priv;
  }
  let r = drv.open ? await settle(drv.open(dev, opts)) : 0;
  let registered = false;
  if (r === 0) {
    const n = drv.notifier;
    const sub = dev + DevL.notifier;
    if (n.kind === 'interval') {
      r = await settle(mmu_interval_notifier_insert(sub, mm, n.start ?? 0, n.length ?? PAGE_ALIGN_DOWN(ULONG_MAX), n.ops, dev));
    } else if (n.kind === 'hlist') {
      r = mmu_notifier_init(sub, n.ops, dev);
      if (r === 0) r = await settle(mmu_notifier_register(sub, mm));
    }
    registered = r === 0;
    if (!registered && drv.release) await settle(drv.release(dev));
  }
  if (r !== 0) {
    if (w[dev + DevL.priv] !== 0) k.kmalloc.kfree(w[dev + DevL.priv]);
    device_destroy(k, dev);
    return r;
  }
  return dev;
}

/** device_ioctl: run one of the driver's commands; -EINVAL for a command it does not have. */
export async function device_ioctl<T = number>(dev: number, cmd: string, arg?: unknown): Promise<T | number> {
  const fn = driverOf(dev).commands?.[cmd];
  if (!fn) return -EINVAL;
  return (await settle(fn(dev, arg))) as T | number;
}

/** Stop the device's engines and fault task and wait until each has ended. */
export async function device_stop(dev: number): Promise<void> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  Atomics.store(w, dev + DevL.stop, 1);
  Atomics.add(w, dev + DevL.fq_seq, 1);
  k.sched.wake(dev + DevL.fq_seq, Infinity);
  const tasks = [w[dev + DevL.fault_task]];
  for (let e = 0; e < DEV_ENGINES; e++) tasks.push(w[engine_at(dev, e) + EngL.task]);
  for (const id of tasks) if (id > 0 && id !== t.id && task_alive(k, id)) await task_join(k, id);
}

/**
 * device_close: stop the device's engines and fault task (each ends at its next look at the
 * stop word) and wait for them, remove the notifier (no callback runs after this), release
 * the driver's state, free the shadow page table and the device. 0 or a negative errno.
 */
export async function device_close(dev: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const drv = driverOf(dev);
  Atomics.store(w, dev + DevL.state, DEV_CLOSING);
  await device_stop(dev);
  const sub = dev + DevL.notifier;
  let r = 0;
  if (drv.notifier.kind === 'interval') r = await settle(mmu_interval_notifier_remove(sub));
  else if (drv.notifier.kind === 'hlist') r = await mmu_notifier_unregister(sub, w[dev + DevL.mm]);
  if (r !== 0) return r;
  if (drv.release) await settle(drv.release(dev));
  if (w[dev + DevL.priv] !== 0) k.kmalloc.kfree(w[dev + DevL.priv]);
  forgetLock(k, dev);
  device_destroy(k, dev);
  return 0;
}

