// Processes: an mm and the CPU tasks that run a program in it. A process struct lives in the
// arena (pid = its pool index); each thread holds one mm_users reference and drops it when it
// ends (exit_mm -> mmput), so the last thread out tears the address space down (exit_mmap).
// - spawn_process: a new mm and N CPU tasks running one program;
// - do_fork: dup_mmap into a child process with one CPU task of its own;
// - kill_process(SIGKILL): each thread notices at its next user access or cond_resched().
// A program is a function (sim only) or a named export of a module (both schedulers), called
// with { k, task, args, pid, mm, thread }; its own accesses go through uaccess.ts.

import { fileURLToPath } from 'node:url';
import { defineStruct } from '../shm/layout.js';
import { ENOMEM, EINVAL } from '../shm/errno.js';
import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext, TaskSpec } from '../sched/scheduler.js';
import { loadModule, moduleFunction } from '../sched/modules.js';
import { TaskExit, type Task } from '../sched/task.js';
import { dup_mmap } from './fork.js';
import { SIGKILL } from './memory.js';
import { TASK_MM, TASK_SIGPENDING, TASK_WORDS } from './mm_layer.js';
import { mm_alloc, mmdrop_k, mmget, mmput } from './mm_struct.js';
import { MmL } from './types.js';
import { kthread_unuse_mm, kthread_use_mm } from './uaccess.js';

export const MAX_THREADS = 8;

/** struct task_struct's process side (signal_struct + the thread group) */
export const ProcL = defineStruct('process', {
  state: 1, // PROC_*
  mm: 1,
  parent: 1, // parent pid, 0 = none
  nr_threads: 1, // threads started
  live: 1, // threads not yet exited
  exit_code: 1,
  /** the signal that killed it (SIGKILL), 0 if it exited */
  exit_signal: 1,
  /** pending signals (bit n-1 for signal n) */
  sig: 1,
  name: 1, // string id
  tasks: MAX_THREADS, // task ids, 0 once the thread exited
  /** signal->oom_mm: the mm an OOM kill marked (mmgrab), dropped when the process is freed */
  oom_mm: 1,
  /** the memory cgroup it belongs to (memcontrol.ts), 0 = root; a child starts in its parent's */
  memcg: 1,
  /** signal->oom_score_adj, OOM_SCORE_ADJ_MIN..MAX; inherited at fork */
  oom_score_adj: 1,
});

export const PROC_FREE = 0;
export const PROC_RUNNING = 1;
/** every thread has exited and the mm is torn down; the exit status waits for waitpid */
export const PROC_ZOMBIE = 2;

export interface ProcessContext<A = unknown> {
  readonly k: Kernel;
  readonly task: Task;
  readonly args: A;
  readonly pid: number;
  readonly mm: number;
  readonly thread: number;
}
export type ProcessFn<A = unknown> = (ctx: ProcessContext<A>) => unknown;

export interface ProgramSpec<A = unknown> {
  name: string;
  /** module URL or absolute path holding `fn` (required under threads) */
  module?: string;
  /** export name in `module`, or a function (sim only) */
  fn: string | ProcessFn<A>;
  args?: A;
}

export interface ProcessSpec<A = unknown> extends ProgramSpec<A> {
  /** CPU tasks, each running the program (default 1) */
  threads?: number;
}

/** What spawns tasks: a SimScheduler or ThreadsRunner from the boot context, or k.sched in a task. */
export interface Spawner {
  spawn<A>(spec: TaskSpec<A>): Task;
}

interface ThreadArgs {
  pid: number;
  thread: number;
  entry: string;
  module: string;
  fn: string;
  args: unknown;
}

let entryPath: string | null = null;
/** this module's path, so a worker can load process_thread_main */
function thisModule(): string {
  return (entryPath ??= fileURLToPath(import.meta.url));
}

export function proc_at(k: Kernel, pid: number): number {
  return k.mmLayer.procs.at(pid);
}

function procAlloc(k: Kernel, mm: number, parent: number, name: string): number {
  const pool = k.mmLayer.procs;
  const pid = pool.alloc();
  if (pid === 0) return 0;
  const p = pool.at(pid);
  const w = k.arena.i32;
  w[p + ProcL.mm] = mm;
  w[p + ProcL.parent] = parent;
  w[p + ProcL.name] = k.strings.intern(name);
  if (parent !== 0) {
    // cgroup_fork and copy_signal: the parent's cgroup and oom_score_adj; the mm is charged to it
    const pp = pool.at(parent);
    w[p + ProcL.memcg] = w[pp + ProcL.memcg];
    w[p + ProcL.oom_score_adj] = w[pp + ProcL.oom_score_adj];
    w[mm + MmL.memcg] = w[p + ProcL.memcg];
  }
  Atomics.store(w, p + ProcL.state, PROC_RUNNING);
  return pid;
}

function threadSpec<A>(pid: number, thread: number, prog: ProgramSpec<A>, entry: string): TaskSpec<unknown> {
  const name = `${prog.name}:${pid}.${thread}`;
  if (typeof prog.fn === 'function') {
    const fn = prog.fn;
    return { name, kind: 'cpu', fn: (ctx: TaskContext<unknown>) => process_thread_run(ctx.k, ctx.task, pid, thread, fn as ProcessFn, prog.args) };
  }
  if (typeof prog.module !== 'string') throw new TypeError(`process '${prog.name}': fn '${prog.fn}' names an export, so module is required`);
  const args: ThreadArgs = { pid, thread, entry, module: prog.module, fn: prog.fn, args: prog.args };
  return { name, kind: 'cpu', module: entry, fn: 'process_thread_main', args };
}

/**
 * Start a process: a new mm and `threads` CPU tasks running the program. Returns the pid, or
 * -ENOMEM (no mm or process slot) / -EINVAL (bad thread count).
 */
export function spawn_process<A>(k: Kernel, spawner: Spawner, spec: ProcessSpec<A>): number {
  const n = spec.threads ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS) return -EINVAL;
  const mm = mm_alloc();
  if (mm === 0) return -ENOMEM;
  const pid = procAlloc(k, mm, 0, spec.name);
  if (pid === 0) {
    const p = mmput(mm);
    if (p !== undefined) void p;
    return -ENOMEM;
  }
  for (let i = 1; i < n; i++) mmget(mm); // one user per thread; mm_alloc gave the first
  startThreads(k, spawner, pid, n, spec, thisModule());
  return pid;
}

function startThreads<A>(k: Kernel, spawner: Spawner, pid: number, n: number, prog: ProgramSpec<A>, entry: string): void {
  const w = k.arena.i32;
  const p = proc_at(k, pid);
  w[p + ProcL.nr_threads] = n;
  Atomics.store(w, p + ProcL.live, n);
  for (let i = 0; i < n; i++) {
    const t = spawner.spawn(threadSpec(pid, i, prog, entry));
    w[p + ProcL.tasks + i] = t.id;
    // the mm is the task's from its first instruction (a kill before it runs must reach it too)
    const tb = k.mmLayer.taskBase + t.id * TASK_WORDS;
    Atomics.store(w, tb + TASK_MM, w[p + ProcL.mm]);
    Atomics.store(w, tb + TASK_SIGPENDING, 0);
  }
}

/** Piscina/sim entry of a process thread named by module export (the threads form). */
export async function process_thread_main(ctx: TaskContext<ThreadArgs>): Promise<void> {
  const a = ctx.args;
  entryPath ??= a.entry;
  const mod = await loadModule(a.module);
  const fn = moduleFunction(mod, a.module, a.fn, 'process program') as ProcessFn;
  await process_thread_run(ctx.k, ctx.task, a.pid, a.thread, fn, a.args);
}

/** Run one thread's program, then exit_mm; the last thread makes the process a zombie. */
async function process_thread_run(k: Kernel, task: Task, pid: number, thread: number, fn: ProcessFn, args: unknown): Promise<void> {
  const w = k.arena.i32;
  const p = proc_at(k, pid);
  const mm = w[p + ProcL.mm];
  kthread_use_mm(mm);
  let code = 0;
  let killed = 0;
  let failure: unknown = null;
  try {
    await fn({ k, task, args, pid, mm, thread });
  } catch (e) {
    if (e instanceof TaskExit) {
      code = e.code;
      if (e.code === SIGKILL && (Atomics.load(w, p + ProcL.sig) & (1 << (SIGKILL - 1))) !== 0) killed = SIGKILL;
    } else failure = e;
  }
  // exit_mm: this thread stops using the mm, and drops its user reference
  kthread_unuse_mm(mm);
  const tb = k.mmLayer.taskBase + task.id * TASK_WORDS;
  Atomics.store(w, tb + TASK_SIGPENDING, 0);
  w[p + ProcL.tasks + thread] = 0;
  if (thread === 0 || killed !== 0) {
    w[p + ProcL.exit_code] = code;
    if (killed !== 0) w[p + ProcL.exit_signal] = killed;
  }
  const put = mmput(mm);
  if (put !== undefined) await put;
  // counted out only after mmput returned: the thread whose mmput was the last one may finish
  // exit_mmap after a sibling's; the process is a zombie (waitpid returns) once both are done
  const left = Atomics.sub(w, p + ProcL.live, 1) - 1;
  if (left === 0) {
    Atomics.store(w, p + ProcL.state, PROC_ZOMBIE);
    k.sched.wake(p + ProcL.state, Infinity);
  }
  if (failure !== null) throw failure;
}

/** The pid of the process current belongs to, 0 if none. */
export function current_pid(): number {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const pool = k.mmLayer.procs;
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (!pool.inUse(pid)) continue;
    const p = pool.at(pid);
    if (w[p + ProcL.state] !== PROC_RUNNING) continue;
    for (let i = 0; i < MAX_THREADS; i++) if (w[p + ProcL.tasks + i] === t.id) return pid;
  }
  return 0;
}

/**
 * fork from a process thread: the child gets a copy of the address space (dup_mmap) and one
 * CPU task running `child`. Returns the child's pid or a negative errno.
 */
export async function do_fork<A>(child: ProgramSpec<A>): Promise<number> {
  const t = current;
  const k = t.k;
  const parent = current_pid();
  const oldmm = k.arena.i32[k.mmLayer.taskBase + t.id * TASK_WORDS + TASK_MM];
  if (oldmm === 0) return -EINVAL;
  const mm = mm_alloc();
  if (mm === 0) return -ENOMEM;
  const r = dup_mmap(mm, oldmm);
  const ret = typeof r === 'number' ? r : await r;
  if (ret < 0) {
    await mmput(mm);
    return ret;
  }
  const pid = procAlloc(k, mm, parent, child.name);
  if (pid === 0) {
    await mmput(mm);
    return -ENOMEM;
  }
  startThreads(k, k.sched, pid, 1, child, entryPath ?? thisModule());
  return pid;
}

/** kill(pid, SIGKILL): every thread exits at its next user access or cond_resched(). */
export function kill_process(k: Kernel, pid: number, sig = SIGKILL): number {
  const pool = k.mmLayer.procs;
  if (!(pid > 0 && pid < pool.capacity) || !pool.inUse(pid)) return -3; // -ESRCH
  if (sig !== SIGKILL) return -EINVAL;
  const w = k.arena.i32;
  const p = pool.at(pid);
  if (w[p + ProcL.state] !== PROC_RUNNING) return 0;
  Atomics.or(w, p + ProcL.sig, 1 << (sig - 1));
  for (let i = 0; i < MAX_THREADS; i++) {
    const id = w[p + ProcL.tasks + i];
    if (id !== 0) Atomics.or(w, k.mmLayer.taskBase + id * TASK_WORDS + TASK_SIGPENDING, 1);
  }
  return 0;
}

/** cond_resched for a process thread: a scheduling point where a pending SIGKILL is noticed. */
export async function cond_resched(): Promise<void> {
  const t = current;
  const k = t.k;
  const p = k.sched.point();
  if (p !== undefined) await p;
  if ((k.arena.i32[k.mmLayer.taskBase + t.id * TASK_WORDS + TASK_SIGPENDING] & 1) !== 0) throw new TaskExit(SIGKILL);
}

/** waitpid from a task: sleep until pid is a zombie, reap it, return { code, signal }. */
export async function waitpid(pid: number): Promise<{ code: number; signal: number } | number> {
  const k = current.k;
  const pool = k.mmLayer.procs;
  if (!(pid > 0 && pid < pool.capacity) || !pool.inUse(pid)) return -10; // -ECHILD
  const w = k.arena.i32;
  const p = pool.at(pid);
  while (Atomics.load(w, p + ProcL.state) === PROC_RUNNING) {
    const r = k.sched.wait(p + ProcL.state, PROC_RUNNING);
    if (typeof r !== 'number') await r;
  }
  const out = { code: w[p + ProcL.exit_code], signal: w[p + ProcL.exit_signal] };
  release_process(k, pid);
  return out;
}

/** A process's state as tests and reports see it. */
export function process_info(k: Kernel, pid: number): { state: number; mm: number; live: number; code: number; signal: number; name: string } {
  const w = k.arena.i32;
  const p = proc_at(k, pid);
  return { state: w[p + ProcL.state], mm: w[p + ProcL.mm], live: w[p + ProcL.live], code: w[p + ProcL.exit_code], signal: w[p + ProcL.exit_signal], name: k.strings.get(w[p + ProcL.name]) };
}

/** release_task: free a zombie's process struct. */
export function release_process(k: Kernel, pid: number): void {
  const w = k.arena.i32;
  const p = proc_at(k, pid);
  if (w[p + ProcL.state] !== PROC_ZOMBIE) throw new Error(`release_process: pid ${pid} is not a zombie`);
  if (w[p + ProcL.oom_mm] !== 0) mmdrop_k(k, w[p + ProcL.oom_mm]); // free_signal_struct
  Atomics.store(w, p + ProcL.state, PROC_FREE);
  k.mmLayer.procs.free(pid);
}

/** Reap every zombie (the boot context plays init). Returns the pids reaped. */
export function reap_zombies(k: Kernel): number[] {
  const pool = k.mmLayer.procs;
  const out: number[] = [];
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (pool.inUse(pid) && k.arena.i32[pool.at(pid) + ProcL.state] === PROC_ZOMBIE) {
      release_process(k, pid);
      out.push(pid);
    }
  }
  return out;
}
