// The drivers this thread knows, by name. A driver module calls defineDriver at its top level,
// so every worker that imports it (ThreadsRunner's `preload`) can run its callbacks for any
// device; a device stores its driver's name, and any thread resolves it back here.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import type { Driver } from './driver.js';
import { DevL } from './types.js';

const byName = new Map<string, Driver>();
const byId = new WeakMap<Kernel, Map<number, Driver>>();

export function registerDriver(d: Driver): void {
  // a module evaluated twice in one thread defines its driver again: the newest wins
  byName.set(d.name, d);
}

export function lookupDriver(name: string): Driver {
  const d = byName.get(name);
  if (!d) throw new Error(`driver '${name}' is not registered in this thread: import its module (under threads, list it in ThreadsRunner's preload)`);
  return d;
}

/** The driver of a device, resolved in this thread. */
export function driverOf(dev: number): Driver {
  const k = current.k;
  const id = k.arena.i32[dev + DevL.driver];
  let m = byId.get(k);
  if (!m) byId.set(k, (m = new Map()));
  const hit = m.get(id);
  if (hit !== undefined && byName.get(hit.name) === hit) return hit;
  if (id === 0) throw new Error(`device @${dev.toString(16)} has no driver`);
  const d = lookupDriver(k.strings.get(id));
  m.set(id, d);
  return d;
}
