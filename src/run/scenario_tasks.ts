// The scenario runner's own tasks, loadable in every worker (they are named exports, run by
// module path under both schedulers):
// - scenario_task_main: runs a scenario's kthread program, then counts it done in an arena word,
//   so the services supervisor can wait for it without watching task-state words;
// - scenario_services_main: the supervisor that stops the runner's services (oom_reaper,
//   kswapd) once every kthread start() spawned has returned and no process is running. A
//   service must outlive the processes: an OOM victim is reaped, memory reclaimed, until the end.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext, TaskFn } from '../sched/scheduler.js';
import { loadModule, moduleFunction } from '../sched/modules.js';
import { PROC_RUNNING, ProcL } from '../mm/process.js';
import { settle, waitAtLeast } from './words.js';

export interface ScenarioTaskArgs {
  module: string;
  fn: string;
  args: unknown;
  /** arena word counting the kthreads that returned */
  done: number;
}

export interface ServiceStop {
  name: string;
  module: string;
  /** export called as stop(k) */
  stop: string;
}

export interface ServicesArgs {
  done: number;
  kthreads: number;
  services: ServiceStop[];
}

/** A kthread of the scenario: its program, then done++ (also when it throws). */
export async function scenario_task_main(ctx: TaskContext<ScenarioTaskArgs>): Promise<void> {
  const a = ctx.args;
  const k = ctx.k;
  try {
    const mod = await loadModule(a.module);
    const fn = moduleFunction(mod, a.module, a.fn, `task '${ctx.task.name}'`) as TaskFn;
    await fn({ k, task: ctx.task, args: a.args });
  } finally {
    Atomics.add(k.arena.i32, a.done, 1);
    k.sched.wake(a.done, Infinity);
  }
}

/** A running process, 0 if none. */
function runningProcess(k: Kernel): number {
  const pool = k.mmLayer.procs;
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (pool.inUse(pid) && Atomics.load(k.arena.i32, pool.at(pid) + ProcL.state) === PROC_RUNNING) return pid;
  }
  return 0;
}

/** Wait for the scenario's kthreads and processes, then stop every service. */
export async function scenario_services_main(ctx: TaskContext<ServicesArgs>): Promise<void> {
  const { k, args: a } = ctx;
  await waitAtLeast(k, a.done, a.kthreads);
  // a process becomes a zombie with a wake-up on its state word (what waitpid sleeps on)
  for (let pid = runningProcess(k); pid !== 0; pid = runningProcess(k)) {
    const at = k.mmLayer.procs.at(pid) + ProcL.state;
    while (Atomics.load(k.arena.i32, at) === PROC_RUNNING) await settle(k.sched.wait(at, PROC_RUNNING));
  }
  for (const s of a.services) {
    const mod = await loadModule(s.module);
    (moduleFunction(mod, s.module, s.stop, `service '${s.name}'`) as (k: Kernel) => unknown)(k);
  }
}

let self: string | null = null;
/** This module's path, for spawning its tasks. */
export function scenarioTasksModule(): string {
  return (self ??= fileURLToPath(import.meta.url));
}
