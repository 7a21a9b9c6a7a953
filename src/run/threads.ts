// The `threads` runner, main side: every task in its own Piscina worker over the kernel's
// arena. The main thread only coordinates: it submits tasks, starts the ones tasks spawn, and
// watches the task records in the arena. It never takes a kernel lock and never parks
// (Atomics.wait here would freeze Piscina's result delivery), so a hung run is always seen:
// - every live task blocked without a timeout and no progress for watchdogMs: a deadlock (or,
//   if a task's word moved and it never woke, a lost wake-up, after a longer bound);
// - a task blocked on an object whose owner has aborted, failed or exited: reported at once;
// - past timeoutMs: a time limit.
// Each report is a blockedReport (who waits on what, who holds it) written to klog.

import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { EV } from '../shm/events.js';
import { check_null_guard } from '../sched/splat.js';
import { RawLockDeadError } from '../shm/rawlock.js';
import { setCurrent } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_OWNER, blockedReport, objLabel, taskLabel } from '../sched/report.js';
import { taskSpecError, type RunResult, type RunStatus, type Runner, type TaskSpec } from '../sched/scheduler.js';
import { TASK_ABORTED, TASK_BLOCKED, TASK_EXITED, TASK_FAILED, TASK_RUNNABLE, TASK_STATE_NAMES, TaskL, type Task } from '../sched/task.js';
import { ThreadsL, nsSince, startThreadsClock, threadsEpoch, type SpawnMsg } from '../sched/threads.js';
import type { TaskPayload } from './worker.js';

export interface ThreadsOptions {
  /** ms with every task blocked and none making progress before the run is a deadlock (default 2000) */
  watchdogMs?: number;
  /** overall wall-clock bound on the run, ms (default none) */
  timeoutMs?: number;
  /** most workers at once, tasks spawned during the run included (default config.maxTasks) */
  maxThreads?: number;
  /**
   * modules every worker imports before its task's module: driver modules, whose top level
   * registers their notifier ops and driver by name, so that any task (a CPU task that
   * munmaps, a device engine) can run their callbacks
   */
  preload?: string[];
}

/** how many watchdog bounds a task blocked on a changed word gets before it counts as lost */
const LOST_WAKEUP_FACTOR = 4;

interface Job {
  task: Task;
  spec: TaskSpec;
  ctl: AbortController;
  submitted: boolean;
  ended: boolean;
  aborted: boolean;
  /** the task's progress word when the watchdog last looked */
  progress: number;
}

// Run from source (vitest, tsx): workers load the .ts entry through tsx; from dist: the .js.
const fromSource = import.meta.url.endsWith('.ts');
const workerFile = fileURLToPath(new URL(`../../workers/task.${fromSource ? 'ts' : 'js'}`, import.meta.url));
/**
 * Every Piscina pool's worker options. From source: tsx. From dist: no require(esm) — Piscina
 * require()s its entry before import()ing it, and with require(esm) on (Node 20.19+) a module
 * required and then imported again intermittently fails Node's ERR_INTERNAL_ASSERTION.
 */
export const WORKER_EXEC_ARGV = fromSource ? ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href] : ['--no-experimental-require-module'];
const workerExecArgv = WORKER_EXEC_ARGV;

export class ThreadsRunner implements Runner {
  private readonly w: Int32Array;
  private readonly epoch: number;
  private readonly spawns: number;
  private readonly watchdogMs: number;
  private readonly timeoutMs: number;
  private readonly jobs = new Map<number, Job>();
  private readonly ports: MessagePort[] = [];
  private readonly failed: RunResult['failed'] = [];
  private pool: Piscina | null = null;
  private timer: NodeJS.Timeout | null = null;
  private resolve: ((r: RunResult) => void) | null = null;
  private started = false;
  private finished = false;
  private live = 0;
  private startMs = 0;
  private stillSince = 0;

  constructor(
    private readonly k: Kernel,
    private readonly opts: ThreadsOptions = {},
  ) {
    this.w = k.arena.i32;
    startThreadsClock(k);
    this.epoch = threadsEpoch(k);
    this.spawns = k.arena.region('threads') + ThreadsL.spawns;
    this.watchdogMs = opts.watchdogMs ?? 2000;
    this.timeoutMs = opts.timeoutMs ?? Infinity;
    k.events.clock = () => nsSince(this.epoch);
  }

  /** Create a task from the boot context; it starts when run() does. */
  spawn<A>(spec: TaskSpec<A>): Task {
    const err = taskSpecError(spec as TaskSpec, true);
    if (err) throw new TypeError(err);
    if (this.started) throw new Error(`cannot spawn '${spec.name}' from the main thread once the run started: spawn it from a task`);
    try {
      structuredClone(spec.args);
    } catch (e) {
      throw new TypeError(`task '${spec.name}': args must be structured-cloneable under threads (${(e as Error).message})`);
    }
    const t = this.k.tasks.create(spec.name, spec.kind ?? 'test', 0);
    this.k.events.emit(EV.SPAWN, t.id, 0, this.w[t.base + TaskL.name], this.w[t.base + TaskL.kind]);
    this.addJob(t, { name: spec.name, kind: spec.kind, module: spec.module, fn: spec.fn as string, args: spec.args });
    return t;
  }

  /** Run every task to its end, or until the watchdog ends the run. */
  async run(): Promise<RunResult> {
    if (this.started) throw new Error('ThreadsRunner.run: a runner runs once; create another for the next run');
    this.started = true;
    const n = Math.max(1, this.jobs.size);
    this.pool = new Piscina({
      filename: workerFile,
      execArgv: workerExecArgv,
      minThreads: n,
      maxThreads: Math.max(n, this.opts.maxThreads ?? this.k.config.maxTasks),
      concurrentTasksPerWorker: 1,
      idleTimeout: Infinity,
    });
    // a worker lost between jobs: its job, if any, is rejected and reported there
    this.pool.on('error', () => {});
    this.startMs = this.stillSince = performance.now();
    const tickMs = Math.max(10, Math.min(100, this.watchdogMs / 4));
    const result = await new Promise<RunResult>((resolve) => {
      this.resolve = resolve;
      this.timer = setInterval(() => this.watch(), tickMs);
      for (const j of this.jobs.values()) if (!j.ended) this.submit(j);
      this.maybeDone();
    });
    setCurrent(this.k.tasks.get(0));
    return result;
  }

  /** Unplug a task: terminate its worker mid-flight. Locks it holds stay held. */
  abort(task: Task): void {
    const j = this.jobs.get(task.id);
    if (!j) throw new Error(`abort: ${task} is not a task of this run`);
    if (j.ended || j.aborted) return;
    j.aborted = true;
    if (this.endTask(task, TASK_ABORTED)) this.k.events.emit(EV.ABORT, task.id, 0, 0, 0);
    j.ctl.abort();
    if (!j.submitted) j.ended = true;
  }

  private addJob(task: Task, spec: TaskSpec): Job {
    const j: Job = { task, spec, ctl: new AbortController(), submitted: false, ended: false, aborted: false, progress: 0 };
    this.jobs.set(task.id, j);
    return j;
  }

  private submit(j: Job): void {
    const { port1, port2 } = new MessageChannel();
    port1.on('message', (m: SpawnMsg) => this.onSpawn(m));
    this.ports.push(port1);
    const a = this.k.arena;
    const payload: TaskPayload = { sab: a.sab, layout: a.layout, config: this.k.config, task: j.task.id, spec: j.spec, port: port2, preload: this.opts.preload };
    j.submitted = true;
    this.live++;
    this.pool!.run(payload, { signal: j.ctl.signal, transferList: [port2] }).then(
      () => this.ended(j, null),
      (e: unknown) => this.ended(j, e),
    );
  }

  /** A task spawned a task: its record exists already; start its worker. */
  private onSpawn(m: SpawnMsg): void {
    Atomics.sub(this.w, this.spawns, 1);
    const j = this.addJob(this.k.tasks.get(m.id), m.spec);
    if (this.finished) {
      j.ended = true;
      this.markAborted(j.task);
    } else this.submit(j);
  }

  private ended(j: Job, err: unknown): void {
    if (j.ended) return;
    j.ended = true;
    this.live--;
    if (this.finished) return;
    if (err !== null && !j.aborted) {
      const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
      this.failed.push({ task: j.task.id, name: j.task.name, error: text });
      // The worker records its own failure; one that died some other way (killed, exit()) did not.
      if (this.endTask(j.task, TASK_FAILED)) this.log('task_failed', j.task.id, `task ${j.task} failed: ${text}`);
    }
    this.maybeDone();
  }

  private maybeDone(): void {
    if (!this.finished && this.live === 0 && Atomics.load(this.w, this.spawns) === 0) void this.finish('done', null, null);
  }

  // ---- the watchdog ------------------------------------------------------------------

  private watch(): void {
    if (this.finished) return;
    const now = performance.now();
    if (now - this.startMs >= this.timeoutMs) {
      void this.finish('time-limit', 'liveness', blockedReport(this.k, `INFO: task hung: the run did not end within ${this.timeoutMs} ms`));
      return;
    }
    const w = this.w;
    let moved = false;
    let running = 0;
    let blocked = 0;
    const woken: Task[] = []; // blocked on a word that has moved: a wake-up is on its way
    for (const j of this.jobs.values()) {
      if (j.ended) continue;
      const b = j.task.base;
      const p = Atomics.load(w, b + TaskL.progress);
      if (p !== j.progress) {
        j.progress = p;
        moved = true;
      }
      const st = Atomics.load(w, b + TaskL.state);
      if (st === TASK_RUNNABLE) running++;
      else if (st === TASK_BLOCKED) {
        const word = w[b + TaskL.waitWord];
        if (w[b + TaskL.waitTimed] !== 0) running++; // ends by itself
        else if (word >= 0 && Atomics.load(w, word) !== w[b + TaskL.waitExpected]) woken.push(j.task);
        else blocked++;
        const dead = this.deadOwner(j);
        if (dead) {
          void this.finish('deadlock', 'owner_died', dead);
          return;
        }
      }
    }
    if (moved || running > 0 || blocked + woken.length === 0 || Atomics.load(w, this.spawns) > 0) {
      this.stillSince = now;
      return;
    }
    // A woken task may just be waiting for a CPU: give it far longer before calling it lost.
    const still = now - this.stillSince;
    if (woken.length === 0 && still >= this.watchdogMs) {
      void this.finish('deadlock', 'deadlock', blockedReport(this.k, `INFO: deadlock: every task is blocked and none made progress for ${this.watchdogMs} ms`));
    } else if (woken.length > 0 && still >= LOST_WAKEUP_FACTOR * this.watchdogMs) {
      const who = woken.map((t) => `${t} (on word @${w[t.base + TaskL.waitWord].toString(16)})`).join(', ');
      const headline = `INFO: lost wake-up: no task made progress for ${Math.round(still)} ms; the word changed under ${who}, but ${woken.length > 1 ? 'they were' : 'it was'} never woken`;
      void this.finish('deadlock', 'deadlock', blockedReport(this.k, headline));
    }
  }

  /** A report if j waits on an object whose owner aborted, failed or exited without releasing it. */
  private deadOwner(j: Job): string | null {
    const k = this.k;
    const w = this.w;
    const b = j.task.base;
    const obj = w[b + TaskL.waitObj];
    if (obj <= 0) return null;
    const owner = w[obj + OBJ_OWNER] - 1;
    if (owner <= 0) return null;
    const os = k.tasks.get(owner).state;
    if (os !== TASK_ABORTED && os !== TASK_FAILED && os !== TASK_EXITED) return null;
    // The same wait still, and the owner word read after the owner's end: no release was missed.
    if (Atomics.load(w, b + TaskL.state) !== TASK_BLOCKED || w[b + TaskL.progress] !== j.progress || w[b + TaskL.waitObj] !== obj || w[obj + OBJ_OWNER] - 1 !== owner) return null;
    const holder = `${taskLabel(k, owner)} (${TASK_STATE_NAMES[os]})`;
    return blockedReport(k, `INFO: task ${j.task} is blocked on ${objLabel(k, obj)} held by ${holder}, which will never release it`);
  }

  // ---- the end -----------------------------------------------------------------------

  private async finish(status: RunStatus, kind: string | null, report: string | null): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    // write while every worker still runs: none can be holding the log's raw lock for good
    if (kind && report) this.log(kind, 0, report);
    check_null_guard(this.k);
    const killed = [...this.jobs.values()].filter((j) => !j.ended);
    await this.pool!.destroy();
    for (const p of this.ports) p.close();
    for (const j of killed) this.markAborted(j.task);
    const w = this.w;
    let steps = 0;
    for (const j of this.jobs.values()) steps += w[j.task.base + TaskL.progress];
    this.resolve!({
      status,
      scheduler: 'threads',
      seed: null,
      steps,
      timeNs: Math.round((performance.now() - this.startMs) * 1e6),
      report,
      failed: this.failed,
      events: this.k.events.count,
      eventHash: this.k.events.hash,
      pctChangePoints: [],
    });
  }

  /** A task whose worker the run's end terminated. */
  private markAborted(t: Task): void {
    if (this.endTask(t, TASK_ABORTED)) this.k.events.emit(EV.ABORT, t.id, 0, 0, 0);
  }

  /** Move a live task to an end state and wake its joiners; false if it had ended already. */
  private endTask(t: Task, state: number): boolean {
    const w = this.w;
    const st = t.base + TaskL.state;
    for (;;) {
      const s = Atomics.load(w, st);
      if (s !== TASK_RUNNABLE && s !== TASK_BLOCKED) return false;
      if (Atomics.compareExchange(w, st, s, state) === s) break; // else the worker moved it: look again
    }
    Atomics.notify(w, st, Infinity);
    return true;
  }

  private log(kind: string, task: number, text: string): void {
    try {
      const idx = this.k.klog.write(kind, task, nsSince(this.epoch), text);
      this.k.events.emit(EV.VIOLATION, task, idx, 0, 0);
    } catch (e) {
      // an unplugged worker died holding klog's raw lock: the report still reaches RunResult
      if (!(e instanceof RawLockDeadError)) throw e;
    }
  }
}
