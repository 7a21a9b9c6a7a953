// A task is a kernel thread: a process's CPU, kswapd, the OOM reaper, a device engine.
// Its kernel-visible state (context depths, held locks, what it waits on) lives in the arena
// so that reports written from any thread can read it.

import { IndexPool } from '../shm/pool.js';
import { defineStruct } from '../shm/layout.js';
import type { Arena, ArenaPlan } from '../shm/arena.js';
import type { StringTable } from '../shm/strings.js';
import type { Kernel } from './kernel.js';

/** held-lock entries kept per task (the kernel's MAX_LOCK_DEPTH is 48) */
export const MAX_LOCK_DEPTH = 48;
/** words per held-lock entry: lock word offset, class, flags */
export const HELD_WORDS = 3;
export const HELD_LOCK = 0;
export const HELD_CLASS = 1;
export const HELD_FLAGS = 2;

export const TaskL = defineStruct('task', {
  state: 1,
  kind: 1,
  name: 1, // string id
  preempt: 1, // preempt_count: spinlocks held, preempt_disable, atomic sections
  nonBlock: 1, // non_block_count: inside non_block_start()
  flags: 1, // PF_* flags
  depth: 1, // held-lock entries in use
  held: MAX_LOCK_DEPTH * HELD_WORDS,
  waitWord: 1, // arena word waited on, -1 for a timed sleep
  waitExpected: 1,
  waitObj: 1, // lock/wait-queue struct being waited on (0 if none)
  waitKind: 1, // WAIT_KIND_*
  waitTimed: 1, // 1 if the wait has a timeout
  exitCode: 1,
  parent: 1,
  switches: 1,
  sleepWord: 1, // private futex word for timed sleeps under threads
  progress: 1, // bumped at every wait return: the watchdog's sign of life
});

export const TASK_FREE = 0;
export const TASK_RUNNABLE = 1;
export const TASK_BLOCKED = 2;
export const TASK_EXITED = 3;
export const TASK_ABORTED = 4;
export const TASK_FAILED = 5;
export const TASK_STATE_NAMES = ['free', 'runnable', 'blocked', 'exited', 'aborted', 'failed'];

/** PF_MEMALLOC: the task is reclaiming memory (set around direct reclaim). */
export const PF_MEMALLOC = 0x800;
export const PF_KTHREAD = 0x200000;

/** memalloc_noreclaim_save: mark current as reclaiming (PF_MEMALLOC); returns the old flags to restore. */
export function memalloc_noreclaim_save(t: Task): number {
  const w = t.k.arena.i32;
  const old = w[t.base + TaskL.flags] & PF_MEMALLOC;
  w[t.base + TaskL.flags] |= PF_MEMALLOC;
  return old;
}

export function memalloc_noreclaim_restore(t: Task, old: number): void {
  const w = t.k.arena.i32;
  w[t.base + TaskL.flags] = (w[t.base + TaskL.flags] & ~PF_MEMALLOC) | old;
}

/** do_exit: end the current task now, with an exit code (both schedulers treat it as a normal exit). */
export class TaskExit extends Error {
  constructor(readonly code: number) {
    super(`do_exit(${code})`);
  }
}

export function do_exit(code = 0): never {
  throw new TaskExit(code);
}

export const TASK_KINDS = ['boot', 'cpu', 'kthread', 'device', 'driver', 'test'] as const;
export type TaskKind = (typeof TASK_KINDS)[number];

export const WAIT_KINDS = ['word', 'sleep', 'spinlock', 'mutex', 'rwsem-read', 'rwsem-write', 'waitqueue', 'completion', 'srcu', 'task', 'folio'] as const;
export type WaitKind = (typeof WAIT_KINDS)[number];
export const WK: { readonly [K in WaitKind]: number } = Object.fromEntries(WAIT_KINDS.map((k, i) => [k, i])) as never;

export class Task {
  /** sim: the resolver of this task's pending switch, and its PCT priority */
  resume: ((r: number) => void) | null = null;
  wakeResult = 0;
  prio = 0;
  started = false;

  constructor(
    readonly k: Kernel,
    readonly id: number,
    readonly base: number,
  ) {}

  get name(): string {
    return this.k.strings.get(this.k.arena.i32[this.base + TaskL.name]);
  }

  get state(): number {
    return Atomics.load(this.k.arena.i32, this.base + TaskL.state);
  }

  get kind(): TaskKind {
    return TASK_KINDS[this.k.arena.i32[this.base + TaskL.kind]] ?? 'test';
  }

  toString(): string {
    return `${this.name}/${this.id}`;
  }
}

/** Task records in the arena; index 0 is the boot context ("swapper"). */
export class TaskTable {
  readonly pool: IndexPool;
  private readonly w: Int32Array;
  private readonly objs = new Map<number, Task>();

  constructor(
    private readonly k: Kernel,
    arena: Arena,
    private readonly strings: StringTable,
  ) {
    this.pool = new IndexPool(arena, 'tasks', TaskL.$size);
    this.w = arena.i32;
  }

  static plan(plan: ArenaPlan, maxTasks: number): void {
    IndexPool.plan(plan, 'tasks', TaskL.$size, maxTasks);
  }

  static init(arena: Arena, maxTasks: number): void {
    IndexPool.init(arena, 'tasks', maxTasks);
  }

  /** The boot context: the thread that builds the kernel before any task runs. */
  boot(): Task {
    const t = this.get(0);
    this.w[t.base + TaskL.state] = TASK_RUNNABLE;
    this.w[t.base + TaskL.name] = this.strings.intern('swapper');
    return t;
  }

  create(name: string, kind: TaskKind, parent: number): Task {
    const id = this.pool.alloc();
    if (id === 0) throw new Error(`cannot create task '${name}': all ${this.pool.capacity - 1} task slots in use (raise config.maxTasks)`);
    const b = this.pool.at(id);
    const w = this.w;
    w[b + TaskL.name] = this.strings.intern(name);
    w[b + TaskL.kind] = Math.max(0, TASK_KINDS.indexOf(kind));
    w[b + TaskL.parent] = parent;
    w[b + TaskL.waitWord] = -1;
    if (kind === 'kthread') w[b + TaskL.flags] |= PF_KTHREAD;
    Atomics.store(w, b + TaskL.state, TASK_RUNNABLE);
    return this.get(id);
  }

  /** The JS handle of task `id` (created on first use in this thread). */
  get(id: number): Task {
    let t = this.objs.get(id);
    if (!t) {
      t = new Task(this.k, id, this.pool.at(id));
      this.objs.set(id, t);
    }
    return t;
  }

  /** Every task whose record is live (not free), boot excluded. */
  live(): Task[] {
    const out: Task[] = [];
    for (let i = 1; i < this.pool.capacity; i++) {
      if (this.pool.inUse(i)) out.push(this.get(i));
    }
    return out;
  }
}
