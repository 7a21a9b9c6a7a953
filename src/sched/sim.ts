// The `sim` scheduler: every task on one JS thread. At each await point a seeded PRNG
// (random walk) or PCT priorities pick the next task; time is virtual and jumps to the next
// timer when nothing can run. One task runs at a time: a switch resolves exactly one parked
// task's promise, so the same (seed, config) gives the same run, event for event.

import { EV } from '../shm/events.js';
import { defineStruct } from '../shm/layout.js';
import type { ArenaPlan } from '../shm/arena.js';
import { current, setCurrent } from './current.js';
import type { Kernel } from './kernel.js';
import { Prng } from './prng.js';
import { blockedReport } from './report.js';
import { WAIT_NOT_EQUAL, WAIT_OK, WAIT_TIMED_OUT, taskSpecError, type RunResult, type RunStatus, type Runner, type Scheduler, type TaskFn, type TaskSpec, type WaitResult } from './scheduler.js';
import { check_null_guard, check_scheduling_while_atomic, splat } from './splat.js';
import { cachedModule, loadModule, moduleFunction } from './modules.js';
import { TASK_BLOCKED, TASK_EXITED, TASK_FAILED, TASK_RUNNABLE, TaskExit, TaskL, WK, type Task } from './task.js';

export interface SimOptions {
  seed: number;
  /** random walk (default) or PCT */
  strategy?: 'random' | 'pct';
  /** PCT bug depth d: d-1 priority change points */
  pctDepth?: number;
  /** PCT: the number of scheduling steps the change points are drawn from */
  pctSteps?: number;
  /** virtual time charged per scheduling point (ns), so busy loops see time pass */
  nsPerPoint?: number;
  /** liveness bounds: the run ends with a report past either */
  maxSteps?: number;
  maxTimeNs?: number;
  /** real-time bound on a run that stops calling the scheduler (a task awaited a foreign promise) */
  stallMs?: number;
}

export const SimL = defineStruct('sim', { prng: 4, clock: 2, steps: 2, seed: 1, strategy: 1 });

interface Timer {
  at: number;
  seq: number;
  task: Task;
  word: number; // -1 for a plain sleep
  dead: boolean;
}

const NEVER: Promise<never> = new Promise(() => {});

export function planSim(plan: ArenaPlan): void {
  plan.region('sim', SimL.$size);
}

export class SimScheduler implements Scheduler, Runner {
  readonly kind = 'sim' as const;
  private readonly w: Int32Array;
  private readonly f64: Float64Array;
  private readonly hdr: number;
  private readonly prng: Prng;
  private readonly pct: boolean;
  private readonly nsPerPoint: number;
  private readonly maxSteps: number;
  private readonly maxTimeNs: number;
  private readonly runq: Task[] = [];
  private readonly waiters = new Map<number, Task[]>();
  private readonly timers: Timer[] = [];
  private readonly timerOf = new Map<Task, Timer>();
  private readonly bodies = new Map<Task, () => unknown>();
  private readonly failed: RunResult['failed'] = [];
  private readonly changePoints: number[] = [];
  private nextChange = 0;
  private timerSeq = 0;
  private alive = 0;
  private clock = 0;
  private steps = 0;
  private finished = false;
  private done: ((r: RunResult) => void) | null = null;
  private pendingImports: Promise<unknown>[] = [];

  constructor(
    private readonly k: Kernel,
    private readonly opts: SimOptions,
  ) {
    this.w = k.arena.i32;
    this.f64 = k.arena.f64;
    this.hdr = k.arena.region('sim');
    this.prng = new Prng(this.w, this.hdr + SimL.prng);
    this.prng.seed(opts.seed);
    this.w[this.hdr + SimL.seed] = opts.seed | 0;
    this.pct = opts.strategy === 'pct';
    this.w[this.hdr + SimL.strategy] = this.pct ? 1 : 0;
    this.nsPerPoint = opts.nsPerPoint ?? 100;
    this.maxSteps = opts.maxSteps ?? 50_000_000;
    this.maxTimeNs = opts.maxTimeNs ?? 3600e9;
    if (this.pct) {
      const d = opts.pctDepth ?? 2;
      const k = Math.max(1, opts.pctSteps ?? 1000);
      const set = new Set<number>();
      while (set.size < Math.min(d - 1, k)) set.add(1 + this.prng.below(k));
      this.changePoints.push(...[...set].sort((a, b) => a - b));
    }
    k.sched = this;
    k.events.clock = () => this.clock;
  }

  now(): number {
    return this.clock;
  }

  // ---- the Scheduler interface -------------------------------------------------------

  point(): Promise<void> | undefined {
    if (this.finished) return NEVER;
    const cur = current;
    if (cur.id === 0) return undefined; // the boot context (setup before or after run) never switches
    this.tick();
    if (this.finished) return NEVER;
    if (this.changePoints.length > this.nextChange && this.steps >= this.changePoints[this.nextChange]) {
      // PCT: the running task drops below every initial priority
      cur.prio = this.changePoints.length - this.nextChange;
      this.k.events.emit(EV.PCT_CHANGE, cur.id, this.steps, cur.id, 0);
      this.nextChange++;
    }
    if (this.runq.length < 2) return undefined;
    // preemption is disabled: spinlock held or preempt_disable()
    if (this.w[cur.base + TaskL.preempt] > 0) return undefined;
    const next = this.pick();
    if (next === cur) return undefined;
    const p = this.park(cur);
    this.switchTo(next);
    return p as unknown as Promise<void>;
  }

  wait(idx: number, expected: number, timeoutNs?: number): WaitResult | Promise<WaitResult> {
    if (this.finished) return NEVER;
    if (Atomics.load(this.w, idx) !== expected) return WAIT_NOT_EQUAL;
    const cur = current;
    if (cur.id === 0) throw new Error('cannot sleep in the boot context: only a task of the run can wait (this lock or word is taken)');
    check_scheduling_while_atomic(this.k, cur);
    this.block(cur, idx, expected);
    let list = this.waiters.get(idx);
    if (!list) this.waiters.set(idx, (list = []));
    list.push(cur);
    if (timeoutNs !== undefined && timeoutNs !== Infinity) {
      this.w[cur.base + TaskL.waitTimed] = 1;
      this.addTimer(cur, this.clock + Math.max(0, timeoutNs), idx);
    }
    return this.switchAway(cur) as Promise<WaitResult>;
  }

  wake(idx: number, n: number): number {
    const list = this.waiters.get(idx);
    if (!list) return 0;
    let c = 0;
    while (c < n && list.length > 0) {
      this.makeRunnable(list.shift()!, WAIT_OK);
      c++;
    }
    if (list.length === 0) this.waiters.delete(idx);
    return c;
  }

  sleep(ns: number): Promise<void> | undefined {
    if (!(ns > 0)) return this.point();
    if (this.finished) return NEVER;
    const cur = current;
    if (cur.id === 0) throw new Error('cannot sleep in the boot context: only a task of the run can sleep');
    check_scheduling_while_atomic(this.k, cur);
    this.block(cur, -1, 0);
    this.w[cur.base + TaskL.waitKind] = WK.sleep;
    this.w[cur.base + TaskL.waitTimed] = 1;
    this.addTimer(cur, this.clock + ns, -1);
    return this.switchAway(cur) as unknown as Promise<void>;
  }

  spawn<A>(spec: TaskSpec<A>): Task {
    const err = taskSpecError(spec as TaskSpec, false);
    if (err) throw new TypeError(err);
    const parent = current && current.k === this.k ? current.id : 0;
    const t = this.k.tasks.create(spec.name, spec.kind ?? 'test', parent);
    const ctx = { k: this.k, task: t, args: spec.args as A };
    if (typeof spec.fn === 'function') {
      const fn = spec.fn as TaskFn<A>;
      this.bodies.set(t, () => fn(ctx));
    } else {
      const m = spec.module!;
      const name = spec.fn;
      if (!cachedModule(m)) this.pendingImports.push(loadModule(m));
      this.bodies.set(t, async () => {
        const mod = cachedModule(m) ?? (await loadModule(m));
        return (moduleFunction(mod, m, name, `task '${spec.name}'`) as TaskFn<A>)(ctx);
      });
    }
    t.prio = this.changePoints.length + 1 + this.prng.next();
    this.alive++;
    this.runq.push(t);
    this.k.events.emit(EV.SPAWN, t.id, parent, this.k.arena.i32[t.base + TaskL.name], this.k.arena.i32[t.base + TaskL.kind]);
    return t;
  }

  // ---- running -----------------------------------------------------------------------

  /** Run every spawned task to the end, to a deadlock, or to a liveness bound. */
  async run(): Promise<RunResult> {
    const boot = current;
    while (this.pendingImports.length) await Promise.all(this.pendingImports.splice(0));
    let lastSteps = -1;
    let stall: NodeJS.Timeout | null = null;
    const result = await new Promise<RunResult>((resolve) => {
      this.done = resolve;
      const stallMs = this.opts.stallMs ?? 10_000;
      stall = setInterval(() => {
        if (this.steps === lastSteps && !this.finished) {
          this.finish('stalled', `task ${current} awaited something that is not the scheduler for ${stallMs} ms`);
        }
        lastSteps = this.steps;
      }, stallMs);
      this.dispatch();
    });
    if (stall) clearInterval(stall);
    setCurrent(boot);
    return result;
  }

  get stepCount(): number {
    return this.steps;
  }

  // ---- internals ---------------------------------------------------------------------

  private tick(): void {
    this.steps++;
    this.clock += this.nsPerPoint;
    this.f64[(this.hdr + SimL.steps) >> 1] = this.steps;
    this.f64[(this.hdr + SimL.clock) >> 1] = this.clock;
    if (this.timers.length > 0 && this.timers[0].at <= this.clock) this.fireDue();
    if (this.steps >= this.maxSteps) this.finish('step-limit', `no end after ${this.steps} scheduling steps`);
    else if (this.clock >= this.maxTimeNs) this.finish('time-limit', `no end after ${this.clock / 1e9} s of virtual time`);
  }

  private pick(): Task {
    const q = this.runq;
    if (!this.pct) return q[this.prng.below(q.length)];
    let best = q[0];
    for (let i = 1; i < q.length; i++) {
      const t = q[i];
      if (t.prio > best.prio || (t.prio === best.prio && t.id < best.id)) best = t;
    }
    return best;
  }

  private park(cur: Task): Promise<number> {
    return new Promise<number>((r) => {
      cur.resume = r;
    });
  }

  private switchAway(cur: Task): Promise<number> {
    const p = this.park(cur);
    this.dispatch();
    return p;
  }

  private switchTo(next: Task): void {
    const prev = current;
    setCurrent(next);
    this.w[next.base + TaskL.switches]++;
    this.k.events.emit(EV.SWITCH, next.id, prev ? prev.id : 0, next.id, 0);
    if (!next.started) {
      next.started = true;
      const body = this.bodies.get(next)!;
      this.bodies.delete(next);
      Promise.resolve()
        .then(body)
        .then(
          () => this.exit(next, TASK_EXITED),
          (e: unknown) => {
            if (e instanceof TaskExit) {
              this.w[next.base + TaskL.exitCode] = e.code;
              return this.exit(next, TASK_EXITED);
            }
            const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
            this.failed.push({ task: next.id, name: next.name, error: msg });
            splat(this.k, 'task_failed', `task ${next.name}/${next.id} failed: ${msg}`);
            this.exit(next, TASK_FAILED);
          },
        );
    } else {
      const r = next.resume!;
      next.resume = null;
      r(next.wakeResult);
    }
  }

  /** Pick the next task; when nothing can run, advance virtual time to the next timer. */
  private dispatch(): void {
    while (!this.finished) {
      if (this.runq.length > 0) {
        this.switchTo(this.pick());
        return;
      }
      if (this.timers.length > 0) {
        const at = this.timers[0].at;
        if (at >= this.maxTimeNs) {
          this.finish('time-limit', `no end after ${this.maxTimeNs / 1e9} s of virtual time`);
          return;
        }
        this.clock = Math.max(this.clock, at);
        this.fireDue();
        continue;
      }
      if (this.alive > 0) this.finish('deadlock', 'INFO: deadlock: no task can run and no timer is pending');
      else this.finish('done', null);
      return;
    }
  }

  private exit(t: Task, state: number): void {
    const w = this.w;
    if (w[t.base + TaskL.depth] > 0) {
      splat(this.k, 'lock_held_at_exit', `BUG: task ${t.name}/${t.id} exited with ${w[t.base + TaskL.depth]} lock(s) held`);
    }
    Atomics.store(w, t.base + TaskL.state, state);
    this.k.events.emit(EV.EXIT, t.id, state, 0, 0);
    this.alive--;
    const i = this.runq.indexOf(t);
    if (i >= 0) this.runq.splice(i, 1);
    this.wake(t.base + TaskL.state, Infinity); // joiners
    if (this.finished) return;
    if (current === t) this.dispatch();
  }

  private block(cur: Task, word: number, expected: number): void {
    const w = this.w;
    const b = cur.base;
    Atomics.store(w, b + TaskL.state, TASK_BLOCKED);
    w[b + TaskL.waitWord] = word;
    w[b + TaskL.waitExpected] = expected;
    const i = this.runq.indexOf(cur);
    if (i >= 0) this.runq.splice(i, 1);
    this.k.events.emit(EV.BLOCK, cur.id, word, expected, 0);
  }

  private makeRunnable(t: Task, result: WaitResult): void {
    const w = this.w;
    const timer = this.timerOf.get(t);
    if (timer) {
      timer.dead = true;
      this.timerOf.delete(t);
    }
    Atomics.store(w, t.base + TaskL.state, TASK_RUNNABLE);
    const word = w[t.base + TaskL.waitWord];
    w[t.base + TaskL.waitWord] = -1;
    w[t.base + TaskL.waitTimed] = 0;
    w[t.base + TaskL.progress]++;
    t.wakeResult = result;
    this.runq.push(t);
    this.k.events.emit(result === WAIT_TIMED_OUT ? EV.TIMEOUT : EV.WAKE, t.id, current ? current.id : 0, word, 0);
  }

  private addTimer(t: Task, at: number, word: number): void {
    const timer: Timer = { at, seq: this.timerSeq++, task: t, word, dead: false };
    const ts = this.timers;
    let lo = 0;
    let hi = ts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ts[mid].at <= at) lo = mid + 1;
      else hi = mid;
    }
    ts.splice(lo, 0, timer);
    this.timerOf.set(t, timer);
  }

  private fireDue(): void {
    const ts = this.timers;
    while (ts.length > 0 && ts[0].at <= this.clock) {
      const tm = ts.shift()!;
      if (tm.dead) continue;
      this.timerOf.delete(tm.task);
      if (tm.word >= 0) {
        const list = this.waiters.get(tm.word);
        const i = list ? list.indexOf(tm.task) : -1;
        if (i >= 0) list!.splice(i, 1);
        if (list && list.length === 0) this.waiters.delete(tm.word);
        this.makeRunnable(tm.task, WAIT_TIMED_OUT);
      } else {
        this.makeRunnable(tm.task, WAIT_OK);
      }
    }
  }


  private finish(status: RunStatus, headline: string | null): void {
    if (this.finished) return;
    this.finished = true;
    const report = headline === null ? null : blockedReport(this.k, headline);
    if (report && status !== 'done') splat(this.k, status === 'deadlock' ? 'deadlock' : 'liveness', report);
    check_null_guard(this.k);
    this.done?.({
      status,
      scheduler: 'sim',
      seed: this.opts.seed,
      steps: this.steps,
      timeNs: this.clock,
      report,
      failed: this.failed,
      events: this.k.events.count,
      eventHash: this.k.events.hash,
      pctChangePoints: [...this.changePoints],
    });
  }
}

