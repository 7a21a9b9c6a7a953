// The `threads` scheduler, worker side: one task per Piscina worker over the shared arena.
// There is real preemption, so point() never yields; a wait spins a little on the word and
// then parks the worker in Atomics.wait. Every method returns plain values, never a promise,
// so the synchronous spinlock slow path can park here too. The main thread (src/run/threads.ts)
// only coordinates: it submits tasks, watches the task records, and never waits on a word.

import type { MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import type { ArenaPlan } from '../shm/arena.js';
import { EV } from '../shm/events.js';
import { defineStruct } from '../shm/layout.js';
import type { Kernel } from './kernel.js';
import { WAIT_NOT_EQUAL, WAIT_OK, WAIT_TIMED_OUT, taskSpecError, type Scheduler, type TaskSpec, type WaitResult } from './scheduler.js';
import { check_scheduling_while_atomic, splat } from './splat.js';
import { TASK_BLOCKED, TASK_RUNNABLE, TaskL, WK, type Task } from './task.js';

/** epoch: ms (performance.timeOrigin-based, a Float64) that now() counts from, in every thread;
 *  spawns: spawn messages posted by workers and not yet picked up by the main thread. */
export const ThreadsL = defineStruct('threads', { epoch: 2, spawns: 1 });

/**
 * Loads of the word before parking. Waking a parked worker costs 5-50 us on small VMs; a
 * short spin catches a holder that releases at once, and stays short so that on 2 cores a
 * spinner does not starve the holder it waits for (test/bench/threads_handoff.ts).
 */
export const WAIT_SPINS = 100;

/** What a worker posts to the main thread when its task spawns one: the record, and how to run it. */
export interface SpawnMsg {
  id: number;
  spec: TaskSpec;
}

export function planThreads(plan: ArenaPlan): void {
  plan.region('threads', ThreadsL.$size);
}

function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

function epochIndex(k: Kernel): number {
  return (k.arena.region('threads') + ThreadsL.epoch) >> 1;
}

/** Start the shared clock (main thread, before any worker runs); later runs keep it. */
export function startThreadsClock(k: Kernel): void {
  const f64 = k.arena.f64;
  if (f64[epochIndex(k)] === 0) f64[epochIndex(k)] = wallMs();
}

/** Real nanoseconds since the kernel epoch (ms), the same in every thread. */
export function nsSince(epochMs: number): number {
  return Math.round((wallMs() - epochMs) * 1e6);
}

export function threadsEpoch(k: Kernel): number {
  return k.arena.f64[epochIndex(k)];
}

export class ThreadsScheduler implements Scheduler {
  readonly kind = 'threads' as const;
  private readonly w: Int32Array;
  private readonly epoch: number;
  private readonly spawns: number;

  /** `task` runs on this worker; `port` carries its spawns to the main thread. */
  constructor(
    private readonly k: Kernel,
    private readonly task: Task,
    private readonly port: MessagePort | null,
  ) {
    this.w = k.arena.i32;
    this.epoch = threadsEpoch(k);
    this.spawns = k.arena.region('threads') + ThreadsL.spawns;
    k.events.clock = () => this.now();
  }

  now(): number {
    return nsSince(this.epoch);
  }

  point(): undefined {
    return undefined;
  }

  wait(idx: number, expected: number, timeoutNs?: number): WaitResult {
    const w = this.w;
    if (Atomics.load(w, idx) !== expected) return WAIT_NOT_EQUAL;
    const t = this.task;
    const b = t.base;
    // A contended spinlock parks here too; spinning on one inside another is not a sleep.
    if (w[b + TaskL.waitKind] !== WK.spinlock) check_scheduling_while_atomic(this.k, t);
    const timed = timeoutNs !== undefined && timeoutNs !== Infinity;
    this.block(t, idx, expected, timed);
    let r: WaitResult = WAIT_OK;
    let spins = WAIT_SPINS;
    while (spins > 0 && Atomics.load(w, idx) === expected) spins--;
    if (spins === 0) {
      const s = Atomics.wait(w, idx, expected, timed ? Math.max(0, timeoutNs!) / 1e6 : undefined);
      r = s === 'ok' ? WAIT_OK : s === 'timed-out' ? WAIT_TIMED_OUT : WAIT_NOT_EQUAL;
    }
    this.unblock(t, idx, r);
    return r;
  }

  wake(idx: number, n: number): number {
    return Atomics.notify(this.w, idx, n);
  }

  sleep(ns: number): undefined {
    if (!(ns > 0)) return undefined;
    const w = this.w;
    const t = this.task;
    check_scheduling_while_atomic(this.k, t);
    w[t.base + TaskL.waitKind] = WK.sleep;
    this.block(t, -1, 0, true);
    // nobody notifies the private word: this is a plain timed sleep
    Atomics.wait(w, t.base + TaskL.sleepWord, 0, ns / 1e6);
    this.unblock(t, -1, WAIT_OK);
    w[t.base + TaskL.waitKind] = WK.word;
    return undefined;
  }

  /** Create the task record at once; the main thread starts its worker. */
  spawn<A>(spec: TaskSpec<A>): Task {
    const err = taskSpecError(spec as TaskSpec, true);
    if (err) throw new TypeError(err);
    if (!this.port) throw new Error(`cannot spawn '${spec.name}': this worker has no channel to the main thread`);
    const k = this.k;
    const parent = this.task.id;
    const t = k.tasks.create(spec.name, spec.kind ?? 'test', parent);
    const msg: SpawnMsg = { id: t.id, spec: { name: spec.name, kind: spec.kind, module: spec.module, fn: spec.fn as string, args: spec.args } };
    Atomics.add(this.w, this.spawns, 1);
    try {
      this.port.postMessage(msg);
    } catch (e) {
      Atomics.sub(this.w, this.spawns, 1);
      k.tasks.pool.free(t.id);
      throw new TypeError(`task '${spec.name}': args must be structured-cloneable under threads (${(e as Error).message})`);
    }
    k.events.emit(EV.SPAWN, t.id, parent, this.w[t.base + TaskL.name], this.w[t.base + TaskL.kind]);
    return t;
  }

  // State moves by compare-and-swap: the main thread may have marked the task aborted.
  private block(t: Task, word: number, expected: number, timed: boolean): void {
    const w = this.w;
    const b = t.base;
    w[b + TaskL.waitWord] = word;
    w[b + TaskL.waitExpected] = expected;
    w[b + TaskL.waitTimed] = timed ? 1 : 0;
    Atomics.compareExchange(w, b + TaskL.state, TASK_RUNNABLE, TASK_BLOCKED);
    this.k.events.emit(EV.BLOCK, t.id, word, expected, 0);
  }

  private unblock(t: Task, word: number, r: WaitResult): void {
    const w = this.w;
    const b = t.base;
    w[b + TaskL.waitWord] = -1;
    w[b + TaskL.waitTimed] = 0;
    Atomics.compareExchange(w, b + TaskL.state, TASK_BLOCKED, TASK_RUNNABLE);
    Atomics.add(w, b + TaskL.progress, 1);
    this.k.events.emit(r === WAIT_TIMED_OUT ? EV.TIMEOUT : EV.WAKE, t.id, -1, word, 0); // the waker is unknown here
  }

}
