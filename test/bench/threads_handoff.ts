// Hand-off latency between two `threads` workers: a contended mutex passed back and forth,
// next to a bare Atomics.wait/Atomics.notify hand-off, measured by the same two workers in
// the same run, interleaved (two mutex hand-offs, two raw ones, and so on), so both meet the
// same machine state (on a VM, a parked vCPU wakes in 3 us or in 25 us depending on the
// host's halt polling) and the same number of samples. Before each release the releaser
// holds for HOLD_US, far past the waiter's spin, so the receiver is parked in Atomics.wait:
// the mutex figure is the whole slow path (unlock, notify, wake, re-take, the task's await)
// against the bare futex floor. Release is stamped before unlock/notify, arrival after the
// receiver runs again, on a clock both workers read (performance.timeOrigin + now()).

import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { bootKernel } from '../../src/run/boot.js';
import { ThreadsRunner } from '../../src/run/threads.js';
import type { TaskContext } from '../../src/sched/scheduler.js';
import { TaskL } from '../../src/sched/task.js';
import { Mutex, mutex_init, mutex_lock, mutex_unlock } from '../../src/sync/index.js';
import { median, progress, round } from './measure.js';

const HANDOFFS = 3000; // of each kind, per run
const WARMUP = 200; // first hand-offs of each kind in a run, left out (JIT, workers settling)
const REPS = 3;
const HOLD_US = 40;

interface HandoffArgs {
  mutex: number;
  /** raw turn word: hand-off h sets it to h + 1 */
  turn: number;
  /** hand-offs received so far, -1 until side 0 holds the mutex */
  count: number;
  /** the two sides' task ids */
  ids: number;
  me: number;
  /** Float64: [release stamp, latency of hand-off h at 1 + h...] */
  samples: SharedArrayBuffer;
}

const TOTAL = 2 * HANDOFFS;

/** Hand-offs alternate in pairs: two through the mutex (one each way), two through the raw word. */
function isMutex(h: number): boolean {
  return ((h >> 1) & 1) === 0;
}

function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

function hold(): void {
  const until = wallMs() + HOLD_US / 1000;
  while (wallMs() < until);
}

/**
 * Task: one of two sides passing a baton back and forth; side 0 releases even hand-offs,
 * side 1 odd ones. The releaser waits for the receiver to be asleep, holds, stamps and
 * releases; then spins (untimed) until the receiver has it, and queues for the next one.
 */
export async function handoffSide({ k, task, args }: TaskContext<HandoffArgs>): Promise<void> {
  const w = k.arena.i32;
  const m = new Mutex(k, args.mutex);
  const f = new Float64Array(args.samples);
  let holding = false; // the mutex, between hand-offs

  const release = (h: number): void => {
    if (isMutex(h)) {
      let other = 0;
      while ((other = Atomics.load(w, args.ids + 1 - args.me)) === 0);
      const waitObj = k.tasks.get(other).base + TaskL.waitObj;
      while (Atomics.load(w, waitObj) !== m.at); // queued on the mutex
      hold();
      f[0] = wallMs();
      mutex_unlock(m);
      holding = false;
    } else {
      hold();
      f[0] = wallMs();
      Atomics.store(w, args.turn, h + 1);
      Atomics.notify(w, args.turn, 1);
    }
    while (Atomics.load(w, args.count) <= h); // the other side has it
  };

  const receive = async (h: number): Promise<void> => {
    if (isMutex(h)) {
      await mutex_lock(m);
      holding = true;
    } else {
      for (let v = Atomics.load(w, args.turn); v !== h + 1; v = Atomics.load(w, args.turn)) Atomics.wait(w, args.turn, v);
    }
    f[1 + h] = wallMs() - f[0];
    // ready to release h + 1 before the other side may queue for it
    if (h + 1 < TOTAL && isMutex(h + 1) !== holding) {
      if (holding) mutex_unlock(m);
      else await mutex_lock(m);
      holding = !holding;
    }
    Atomics.store(w, args.count, h + 1);
  };

  Atomics.store(w, args.ids + args.me, task.id);
  if (args.me === 0) {
    await mutex_lock(m);
    holding = true;
    Atomics.store(w, args.count, 0);
  } else {
    while (Atomics.load(w, args.count) < 0);
  }
  for (let h = 0; h < TOTAL; h += 2) {
    if (args.me === 0) {
      release(h);
      await receive(h + 1);
    } else {
      await receive(h);
      release(h + 1);
    }
  }
  if (holding) mutex_unlock(m);
}

/** One run of the two sides; returns [mutex, raw] hand-off latencies in us, warm-up left out. */
async function once(): Promise<[number[], number[]]> {
  const k = bootKernel({ lockdep: false, events: false, maxTasks: 4 });
  const mutex = mutex_init(k, k.kmalloc.kzalloc(4), 'bench_handoff').at;
  const turn = k.kmalloc.kzalloc(1);
  const count = k.kmalloc.kzalloc(4);
  k.arena.i32[count] = -1;
  const samples = new SharedArrayBuffer(8 * (1 + TOTAL));
  const r = new ThreadsRunner(k, { watchdogMs: 2000, timeoutMs: 60_000 });
  const module = fileURLToPath(import.meta.url);
  for (const me of [0, 1]) r.spawn({ name: `handoff${me}`, module, fn: 'handoffSide', args: { mutex, turn, count, ids: count + 1, me, samples } });
  const res = await r.run();
  if (res.status !== 'done' || res.failed.length) throw new Error(`threads hand-off bench: run ended '${res.status}'\n${res.report ?? res.failed.map((x) => x.error).join('\n')}`);
  const f = new Float64Array(samples);
  const out: [number[], number[]] = [[], []];
  for (let h = 2 * WARMUP; h < TOTAL; h++) out[isMutex(h) ? 0 : 1].push(f[1 + h] * 1000);
  return out;
}

export async function benchThreadsHandoff(): Promise<{ threads_mutex_handoff_p50_us: number; raw_atomics_handoff_p50_us: number }> {
  const mutex: number[] = [];
  const raw: number[] = [];
  for (let i = 0; i < REPS; i++) {
    progress(`threads hand-off ${i + 1}/${REPS}`);
    const [m, a] = await once();
    mutex.push(...m);
    raw.push(...a);
  }
  return { threads_mutex_handoff_p50_us: round(median(mutex), 2), raw_atomics_handoff_p50_us: round(median(raw), 2) };
}
