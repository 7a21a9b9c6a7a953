// The `threads` task bootstrap, run inside a Piscina worker: attach to the kernel's arena,
// become the task, run its function to the end, and record how it ended in the arena where
// the main thread's watchdog and any joiner can see it.

import type { MessagePort } from 'node:worker_threads';
import type { ArenaLayout } from '../shm/arena.js';
import { EV } from '../shm/events.js';
import { allowParking } from '../shm/rawlock.js';
import { setCurrent } from '../sched/current.js';
import type { KernelConfig } from '../sched/kernel.js';
import type { TaskFn, TaskSpec } from '../sched/scheduler.js';
import { loadModule, loadModulesWithRequire, moduleFunction } from '../sched/modules.js';
import { splat } from '../sched/splat.js';
import { TASK_EXITED, TASK_FAILED, TASK_RUNNABLE, TaskExit, TaskL, type Task } from '../sched/task.js';
import { ThreadsScheduler } from '../sched/threads.js';
import { attachKernel } from './boot.js';

/** What the main thread submits to the pool for one task. */
export interface TaskPayload {
  sab: SharedArrayBuffer;
  layout: ArenaLayout;
  config: KernelConfig;
  task: number;
  spec: TaskSpec;
  /** carries this task's spawns to the main thread */
  port: MessagePort;
  /** modules to import before the task's own (ThreadsOptions.preload) */
  preload?: string[];
}

// Piscina loads this entry with require() first, so from source under tsx this whole worker
// side is CommonJS: task modules must come through the same require to share `current`.
if (typeof require === 'function') loadModulesWithRequire(require);

export async function runTaskInWorker(p: TaskPayload): Promise<void> {
  const k = attachKernel(p.sab, p.layout, p.config);
  allowParking();
  const t = k.tasks.get(p.task);
  k.sched = new ThreadsScheduler(k, t, p.port);
  setCurrent(t);
  try {
    for (const m of p.preload ?? []) await loadModule(m);
    const mod = await loadModule(p.spec.module!);
    const fn = moduleFunction(mod, p.spec.module!, p.spec.fn as string, `task '${p.spec.name}'`) as TaskFn;
    await fn({ k, task: t, args: p.spec.args });
  } catch (e) {
    if (e instanceof TaskExit) {
      // do_exit(): a normal end with an exit code, as under sim
      k.arena.i32[t.base + TaskL.exitCode] = e.code;
      exit(t, TASK_EXITED);
      return;
    }
    splat(k, 'task_failed', `task ${t} failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    exit(t, TASK_FAILED);
    throw e;
  }
  exit(t, TASK_EXITED);
}

function exit(t: Task, state: number): void {
  const k = t.k;
  const w = k.arena.i32;
  const depth = w[t.base + TaskL.depth];
  if (depth > 0) splat(k, 'lock_held_at_exit', `BUG: task ${t} exited with ${depth} lock(s) held`);
  // an aborted task stays aborted
  Atomics.compareExchange(w, t.base + TaskL.state, TASK_RUNNABLE, state);
  k.events.emit(EV.EXIT, t.id, state, 0, 0);
  Atomics.notify(w, t.base + TaskL.state, Infinity); // joiners
}
