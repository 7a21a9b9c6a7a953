// The one Scheduler interface behind which `sim` and `threads` run the same kernel code.
// Sleeping code awaits only what these methods return; a method returns `undefined`
// (nothing to await) whenever the task keeps running, so fast paths allocate nothing.

import type { Kernel } from './kernel.js';
import type { Task, TaskKind } from './task.js';

export const WAIT_OK = 0; // woken
export const WAIT_NOT_EQUAL = 1; // the word had already changed
export const WAIT_TIMED_OUT = 2;
export type WaitResult = typeof WAIT_OK | typeof WAIT_NOT_EQUAL | typeof WAIT_TIMED_OUT;

export interface TaskContext<A = unknown> {
  readonly k: Kernel;
  readonly task: Task;
  readonly args: A;
}
export type TaskFn<A = unknown> = (ctx: TaskContext<A>) => unknown;

/**
 * What to run as a task. Under `threads` the function must be an export of a module
 * (loaded in the task's worker); under `sim` it may also be a function value.
 */
export interface TaskSpec<A = unknown> {
  name: string;
  kind?: TaskKind;
  /** module URL or absolute path holding `fn` */
  module?: string;
  /** export name in `module`, or a function (sim only) */
  fn: string | TaskFn<A>;
  /** structured-cloneable under `threads` */
  args?: A;
}

export interface Scheduler {
  readonly kind: 'sim' | 'threads';
  /** nanoseconds: virtual under `sim`, real under `threads` */
  now(): number;
  /** A preemption point: under `sim` the strategy may switch tasks here. */
  point(): Promise<void> | undefined;
  /** futex wait: sleep while arena word `idx` holds `expected`, until woken or timed out */
  wait(idx: number, expected: number, timeoutNs?: number): WaitResult | Promise<WaitResult>;
  /** Wake up to `n` tasks waiting on word `idx`; returns how many were woken. */
  wake(idx: number, n: number): number;
  /** Sleep for `ns` (msleep, schedule_timeout). */
  sleep(ns: number): Promise<void> | undefined;
  /** Create a task; it starts running at the scheduler's choice. */
  spawn<A>(spec: TaskSpec<A>): Task;
}

export function taskSpecError(spec: TaskSpec, threads: boolean): string | null {
  if (!spec || typeof spec !== 'object') return 'task spec must be an object';
  if (typeof spec.name !== 'string' || spec.name === '') return 'task spec needs a non-empty name';
  if (typeof spec.fn === 'function') return threads ? `task '${spec.name}': under threads, fn must be an export name in a module, not a function` : null;
  if (typeof spec.fn !== 'string') return `task '${spec.name}': fn must be a function or an export name`;
  if (typeof spec.module !== 'string') return `task '${spec.name}': fn '${spec.fn}' names an export, so module is required`;
  return null;
}

export type RunStatus = 'done' | 'deadlock' | 'step-limit' | 'time-limit' | 'stalled' | 'aborted' | 'watchdog';

/** How a run ended, under either scheduler. */
export interface RunResult {
  status: RunStatus;
  scheduler: 'sim' | 'threads';
  seed: number | null;
  steps: number;
  timeNs: number;
  /** who waits on what, for any status but 'done' */
  report: string | null;
  failed: { task: number; name: string; error: string }[];
  events: number;
  eventHash: number;
  pctChangePoints: number[];
}


/** Both schedulers' runners: spawn tasks from the boot context, then run them to an end. */
export interface Runner {
  spawn<A>(spec: TaskSpec<A>): Task;
  run(): Promise<RunResult>;
}
