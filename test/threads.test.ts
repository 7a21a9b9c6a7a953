// The `threads` scheduler: every task in its own worker over one arena. What a user relies on:
// locks exclude under real contention, no wake-up is lost, and a run that hangs (a deadlock,
// a lock whose owner was unplugged, a task that never ends) ends with a report instead.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ThreadsRunner, type ThreadsOptions } from '../src/run/threads.js';
import { SimScheduler } from '../src/sched/sim.js';
import { current } from '../src/sched/current.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { TASK_ABORTED, TASK_BLOCKED, TASK_EXITED, TASK_FAILED, TaskL, type Task } from '../src/sched/task.js';
import { OBJ_OWNER } from '../src/sched/report.js';
import type { Barrier, Counter } from './fixtures/threads_tasks.js';
import { alloc, boot, dump, kinds, mkCompletion, mkMutex, mkRwsem, mkSpin, mkWq, ofKind } from './helpers.js';

const MOD = fileURLToPath(new URL('./fixtures/threads_tasks.ts', import.meta.url));
// the watchdog bound is short so hung runs end quickly; runs that should end are long bounded
const OPTS: ThreadsOptions = { watchdogMs: 300, timeoutMs: 20_000 };
const WORKERS = 4;
const ITERS = 5000;

function counter(k: Kernel): Counter {
  const at = alloc(k, 4);
  return { value: at, inside: at + 1, overlaps: at + 2 };
}

function barrier(k: Kernel, name: string, n: number): Barrier {
  return { wq: mkWq(k, name).at, word: alloc(k, 1), n };
}

function state(t: Task): number {
  return t.state;
}

/** Run `fn` in WORKERS tasks over a fresh counter; the counter must end exact, klog empty. */
async function countUnder(k: Kernel, lock: number, fn: string, writesPerTask: number, extra: object = {}): Promise<void> {
  const c = counter(k);
  const start = barrier(k, 'start', WORKERS);
  const r = new ThreadsRunner(k, OPTS);
  const tasks = Array.from({ length: WORKERS }, (_, me) => r.spawn({ name: `${fn}${me}`, module: MOD, fn, args: { lock, c, iters: ITERS, start, me, ...extra } }));
  const res = await r.run();
  const w = k.arena.i32;
  expect(res.status, res.report ?? dump(k.klog.read())).toBe('done');
  expect(res.failed).toEqual([]);
  expect(w[c.overlaps], 'tasks inside the critical section together').toBe(0);
  expect(w[c.value]).toBe(WORKERS * writesPerTask);
  expect(tasks.map(state)).toEqual(tasks.map(() => TASK_EXITED));
  expect(kinds(k.klog.read())).toEqual([]);
}

describe('threads: mutual exclusion with 4 workers', () => {
  it('mutex keeps a non-atomic read-modify-write exact', async () => {
    const k = boot();
    await countUnder(k, mkMutex(k, 'count_mutex').at, 'countMutex', ITERS);
    expect(current).toBe(k.tasks.get(0)); // the boot context is back
  });

  it('spinlock keeps it exact, and waiting on it inside another spinlock is not sleeping', async () => {
    const k = boot();
    // each task holds a spinlock of its own while it waits for the shared one
    const outer = Array.from({ length: WORKERS }, (_, i) => mkSpin(k, `outer${i}`, `outer_lock`).at);
    await countUnder(k, mkSpin(k, 'count_lock').at, 'countSpin', ITERS, { outer });
  });

  it('rwsem: writers exclude each other and readers', async () => {
    const k = boot();
    await countUnder(k, mkRwsem(k, 'count_rwsem').at, 'countRwsem', ITERS / 4);
  });
});

describe('threads: no lost wake-ups', () => {
  const ROUNDS = 2000;

  it('a completion ping-pong between two workers finishes every round', async () => {
    const k = boot();
    const args = { ping: mkCompletion(k, 'ping').at, pong: mkCompletion(k, 'pong').at, rounds: ROUNDS, done: alloc(k, 1) };
    const r = new ThreadsRunner(k, OPTS);
    r.spawn({ name: 'ping', module: MOD, fn: 'completionPing', args });
    r.spawn({ name: 'pong', module: MOD, fn: 'completionPong', args });
    const res = await r.run();
    expect(res.status, res.report ?? '').toBe('done');
    expect(k.arena.i32[args.done]).toBe(ROUNDS);
    expect(res.steps).toBeGreaterThan(0);
  });

  it('a wait-queue turn passed between two workers makes every round', async () => {
    const k = boot();
    const wq = mkWq(k, 'turns').at;
    const turn = alloc(k, 1);
    const r = new ThreadsRunner(k, OPTS);
    for (const me of [0, 1]) r.spawn({ name: `turn${me}`, module: MOD, fn: 'waitqueueTurns', args: { wq, turn, me, rounds: ROUNDS } });
    const res = await r.run();
    expect(res.status, res.report ?? '').toBe('done');
    expect(k.arena.i32[turn]).toBe(2 * ROUNDS);
  });
});

describe('threads: hung runs end with a report', () => {
  it('an ABBA deadlock is reported with both tasks, what each waits on and who holds it', async () => {
    const k = boot();
    const a = mkMutex(k, 'lock_a').at;
    const b = mkMutex(k, 'lock_b').at;
    const met = barrier(k, 'met', 2);
    const r = new ThreadsRunner(k, OPTS);
    const ab = r.spawn({ name: 'task_ab', module: MOD, fn: 'lockPair', args: { first: a, second: b, met } });
    const ba = r.spawn({ name: 'task_ba', module: MOD, fn: 'lockPair', args: { first: b, second: a, met } });
    const res = await r.run();
    expect(res.status).toBe('deadlock');
    const rep = res.report!;
    expect(rep).toMatch(/^INFO: deadlock: every task is blocked and none made progress for 300 ms/);
    expect(rep).toMatch(new RegExp(`task task_ab/${ab.id} blocked in mutex on lock_b@[0-9a-f]+, held by task_ba/${ba.id} \\(blocked\\)`));
    expect(rep).toMatch(new RegExp(`task task_ba/${ba.id} blocked in mutex on lock_a@[0-9a-f]+, held by task_ab/${ab.id} \\(blocked\\)`));
    expect(rep).toContain('wait-for cycle');
    const log = k.klog.read();
    expect(ofKind(log, 'deadlock').map((x) => x.text)).toEqual([rep]);
    expect(kinds(log)).toContain('lockdep_circular');
    // the run's end unplugged both workers
    expect([ab.state, ba.state]).toEqual([TASK_ABORTED, TASK_ABORTED]);
  });

  it('aborting the worker that holds a mutex reports the waiter, the mutex and its aborted owner', async () => {
    const k = boot();
    const lock = mkMutex(k, 'unplugged_mutex').at;
    const held = mkCompletion(k, 'held').at;
    const r = new ThreadsRunner(k, OPTS);
    const holder = r.spawn({ name: 'holder', module: MOD, fn: 'holdForever', args: { lock, held } });
    const waiter = r.spawn({ name: 'waiter', module: MOD, fn: 'lockAfter', args: { lock, held } });
    let ended = false;
    const run = r.run().finally(() => (ended = true));
    const w = k.arena.i32;
    const waiting = () => waiter.state === TASK_BLOCKED && w[waiter.base + TaskL.waitObj] === lock && w[lock + OBJ_OWNER] === holder.id + 1;
    while (!ended && !waiting()) await new Promise((res) => setTimeout(res, 5));
    expect(ended, 'the run ended before the waiter blocked on the mutex').toBe(false);
    r.abort(holder);
    expect(holder.state).toBe(TASK_ABORTED);
    const res: RunResult = await run;
    expect(res.status).toBe('deadlock');
    expect(res.report).toContain(`task waiter/${waiter.id} is blocked on unplugged_mutex@`);
    expect(res.report).toMatch(new RegExp(`task waiter/${waiter.id} blocked in mutex on unplugged_mutex@[0-9a-f]+, held by holder/${holder.id} \\(aborted\\)`));
    expect(ofKind(k.klog.read(), 'owner_died').map((x) => x.text)).toEqual([res.report]);
    expect(res.failed).toEqual([]);
  });

  it('a run past timeoutMs ends with time-limit and says who is still there', async () => {
    const k = boot();
    const r = new ThreadsRunner(k, { ...OPTS, timeoutMs: 400 });
    const t = r.spawn({ name: 'sleeper', module: MOD, fn: 'holdForever', args: { lock: mkMutex(k, 'm').at, held: mkCompletion(k, 'c').at } });
    const res = await r.run();
    expect(res.status).toBe('time-limit');
    expect(res.report).toMatch(/^INFO: task hung: the run did not end within 400 ms/);
    expect(t.state).toBe(TASK_ABORTED);
  });
});

describe('threads: task lifecycle', () => {
  it('a throwing task is failed, logged with its stack, and the others finish', async () => {
    const k = boot();
    const r = new ThreadsRunner(k, OPTS);
    const bad = r.spawn({ name: 'thrower', module: MOD, fn: 'throws' });
    const ok = r.spawn({ name: 'quiet', module: MOD, fn: 'nothing' });
    const res = await r.run();
    expect(res.status).toBe('done');
    expect(res.failed).toHaveLength(1);
    expect(res.failed[0]).toMatchObject({ task: bad.id, name: 'thrower' });
    expect(res.failed[0].error).toContain('boom from a task');
    expect(bad.state).toBe(TASK_FAILED);
    expect(ok.state).toBe(TASK_EXITED);
    const failed = ofKind(k.klog.read(), 'task_failed');
    expect(failed).toHaveLength(1);
    expect(failed[0].task).toBe(bad.id);
    expect(failed[0].text).toMatch(/thrower.*boom from a task[\s\S]*threads_tasks\.ts/);
  });

  it('do_exit() ends a task normally with its exit code, under threads as under sim', async () => {
    for (const scheduler of ['threads', 'sim'] as const) {
      const k = boot();
      const word = alloc(k, 2);
      const r = scheduler === 'threads' ? new ThreadsRunner(k, OPTS) : new SimScheduler(k, { seed: 1 });
      const t = r.spawn({ name: 'exiter', module: MOD, fn: 'exitsEarly', args: { word } });
      const res = await r.run();
      expect(res.status, scheduler).toBe('done');
      expect(res.failed, scheduler).toHaveLength(0);
      expect(t.state, scheduler).toBe(TASK_EXITED);
      expect(k.arena.i32[t.base + TaskL.exitCode], scheduler).toBe(7);
      expect(k.arena.i32[word], scheduler).toBe(1);
    }
  });

  it('a task spawns a task from inside its worker', async () => {
    const k = boot();
    const done = mkCompletion(k, 'child_done').at;
    const result = alloc(k, 2);
    const r = new ThreadsRunner(k, OPTS);
    const p = r.spawn({ name: 'parent', module: MOD, fn: 'parent', args: { module: MOD, done, result } });
    const res = await r.run();
    expect(res.status, res.report ?? dump(k.klog.read())).toBe('done');
    expect(res.failed).toEqual([]);
    const w = k.arena.i32;
    const childId = w[result + 1];
    expect(childId).toBeGreaterThan(p.id);
    expect(w[result]).toBe(1000 * p.id + childId); // the child ran, with its own task record
    const child = k.tasks.get(childId);
    expect(child.name).toBe('child');
    expect(w[child.base + TaskL.parent]).toBe(p.id);
    expect(child.state).toBe(TASK_EXITED);
  });

  it('sleeping with a spinlock held is reported as scheduling while atomic', async () => {
    const k = boot();
    const r = new ThreadsRunner(k, OPTS);
    const t = r.spawn({ name: 'atomic_sleeper', module: MOD, fn: 'sleepUnderSpinlock', args: { lock: mkSpin(k, 'held_spin').at } });
    const res = await r.run();
    expect(res.status).toBe('done');
    const bugs = ofKind(k.klog.read(), 'scheduling_while_atomic');
    expect(bugs.map((x) => x.text)).toEqual([`BUG: scheduling while atomic: atomic_sleeper/${t.id}/0x00000001 non_block: 0`]);
  });

  it('spawn needs an export name in a module', () => {
    const r = new ThreadsRunner(boot(), OPTS);
    expect(() => r.spawn({ name: 'fnval', fn: () => {} })).toThrow(/under threads, fn must be an export name/);
    expect(() => r.spawn({ name: 'nomod', fn: 'x' })).toThrow(/module is required/);
    expect(() => r.spawn({ name: 'clone', module: MOD, fn: 'nothing', args: { f: () => 1 } })).toThrow(/structured-cloneable/);
  });
});
