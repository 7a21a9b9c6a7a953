// The in-flight access fence. A device access is begin -> translate -> touch the frame -> end.
// At begin an engine publishes, in its in-flight slot, 1 + the device's TLB generation; at end
// it clears the slot. An invalidation zaps shadow PTEs first, then bumps the generation
// (device_tlb_flush), then waits for every access whose slot holds a generation from before the
// bump: those may have translated through a zapped entry. An access that began later reads
// the new generation, so it began after the zap and sees it (every step is an Atomics op, so
// the zap store, the bump, the slot store and the entry load are in one total order).
//
// A non-blockable invalidation must not wait: device_fence_busy tells it to fail instead; a
// driver whose accesses cannot be interrupted but never sleep mid-access (a vCPU) spins
// (device_fence_spin). Waiters park on the slot word; the end notifies only when one is
// parked.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER } from '../sched/report.js';
import { WK } from '../sched/task.js';
import { might_sleep, sleepOn } from '../sync/context.js';
import { DEV_ENGINES, DEV_EV, DevL, EngL, engine_at } from './types.js';

const E_INFLIGHT = EngL.inflight;
const D_GEN = DevL.tlb_gen;
const D_WAITERS = DevL.fence_waiters;

/** Publish an access of engine `eng` as in flight. No allocation, no await. */
export function device_access_begin(k: Kernel, dev: number, eng: number): void {
  const w = k.arena.i32;
  const g = Atomics.load(w, dev + D_GEN);
  Atomics.store(w, engine_at(dev, eng) + E_INFLIGHT, (g + 1) | 0);
  k.events.emit(DEV_EV.ACCESS_BEGIN, current.id, dev, eng, g);
}

/** The access of engine `eng` is over; wake an invalidation waiting for it. */
export function device_access_end(k: Kernel, dev: number, eng: number, pages: number): void {
  const w = k.arena.i32;
  const at = engine_at(dev, eng) + E_INFLIGHT;
  Atomics.store(w, at, 0);
  k.events.emit(DEV_EV.ACCESS_END, current.id, dev, eng, pages);
  if (Atomics.load(w, dev + D_WAITERS) !== 0) k.sched.wake(at, Infinity);
}

/**
 * The TLB flush after a zap: bump the generation; returns the generation from before the
 * bump, which is what the fence functions wait out. Call it after the entries are cleared.
 */
export function device_tlb_flush(dev: number): number {
  return Atomics.add(current.k.arena.i32, dev + D_GEN, 1);
}

/** The engine whose access began at or before generation `gen` and is still in flight, or -1. */
export function device_fence_busy(dev: number, gen: number): number {
  const w = current.k.arena.i32;
  for (let e = 0; e < DEV_ENGINES; e++) {
    const s = Atomics.load(w, engine_at(dev, e) + E_INFLIGHT);
    if (s !== 0 && s - 1 <= gen) return e;
  }
  return -1;
}

/**
 * Wait until no access that began at or before generation `gen` is in flight (sleeps; the
 * blockable half of an invalidation). Returns a promise only if it had to wait.
 */
export function device_fence_wait(dev: number, gen: number): Promise<void> | undefined {
  might_sleep('device_fence_wait');
  if (device_fence_busy(dev, gen) < 0) return undefined;
  return fenceSlow(current.k, dev, gen);
}

async function fenceSlow(k: Kernel, dev: number, gen: number): Promise<void> {
  const t = current;
  const w = k.arena.i32;
  const obj = dev + DevL.fence;
  k.events.emit(DEV_EV.FENCE_WAIT, t.id, dev, device_fence_busy(dev, gen), gen);
  for (let e = 0; e < DEV_ENGINES; e++) {
    const at = engine_at(dev, e) + E_INFLIGHT;
    for (;;) {
      Atomics.add(w, dev + D_WAITERS, 1);
      const s = Atomics.load(w, at);
      if (s === 0 || s - 1 > gen) {
        Atomics.sub(w, dev + D_WAITERS, 1);
        break;
      }
      // hung-run reports name the engine we wait for as the fence's holder
      w[obj + OBJ_OWNER] = w[engine_at(dev, e) + EngL.task] + 1;
      const r = sleepOn(t, obj, WK.completion, at, s);
      if (typeof r !== 'number') await r;
      Atomics.sub(w, dev + D_WAITERS, 1);
    }
  }
  w[obj + OBJ_OWNER] = 0;
  k.events.emit(DEV_EV.FENCE_DONE, t.id, dev, gen, 0);
}

/**
 * Atomic context: wait for in-flight accesses without sleeping, as a TLB-shootdown IPI waits
 * for vCPUs to leave guest mode. Under `threads` it spins (engines never sleep mid-access
 * unless a program holds an access on purpose); under `sim` nothing else runs while we spin,
 * so a busy fence cannot drain: returns false and leaves the decision to the driver.
 */
export function device_fence_spin(dev: number, gen: number): boolean {
  const k = current.k;
  const w = k.arena.i32;
  let e = device_fence_busy(dev, gen);
  if (e < 0) return true;
  if (k.sched.kind === 'sim') {
    k.events.emit(DEV_EV.FENCE_FAIL, current.id, dev, e, gen);
    return false;
  }
  while (e >= 0) {
    const at = engine_at(dev, e) + E_INFLIGHT;
    const s = Atomics.load(w, at);
    if (s !== 0 && s - 1 <= gen) Atomics.wait(w, at, s, 0.05);
    e = device_fence_busy(dev, gen);
  }
  return true;
}

/** A non-blockable invalidation found an access in flight and fails: record it. */
export function device_fence_fail(dev: number, gen: number, eng: number): void {
  const k = current.k;
  k.events.emit(DEV_EV.FENCE_FAIL, current.id, dev, eng, gen);
}

/** 0 when engine `eng` has no access in flight, else 1 + the generation it began at. */
export function device_inflight(k: Kernel, dev: number, eng: number): number {
  return Atomics.load(k.arena.i32, engine_at(dev, eng) + E_INFLIGHT);
}
