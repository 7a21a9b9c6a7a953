// Arena words that tasks of a scenario (or a stress run) use to coordinate: one task raises a
// word and wakes its waiters, another sleeps until it reaches a value. They go through the
// scheduler's futex-style wait/wake, so the same code runs under `sim` and `threads`; a JS
// object shared between tasks would not exist in another worker.

import type { Kernel } from '../sched/kernel.js';

/** Await a value that is a promise only when the kernel call slept (the house `T | Promise<T>`). */
export async function settle<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

/** Sleep until arena word `at` holds at least `v` (or `timeoutNs` passes); true if it got there. */
export async function waitAtLeast(k: Kernel, at: number, v: number, timeoutNs?: number): Promise<boolean> {
  const w = k.arena.i32;
  const end = timeoutNs === undefined ? Infinity : k.sched.now() + timeoutNs;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const left = end - k.sched.now();
    if (left <= 0) return false;
    await settle(k.sched.wait(at, c, left === Infinity ? undefined : left));
  }
  return true;
}

/** Store `v` in arena word `at` and wake everyone waiting on it. */
export function raise(k: Kernel, at: number, v: number): void {
  Atomics.store(k.arena.i32, at, v);
  k.sched.wake(at, Infinity);
}
