// Shared helpers for the foundation suites under the `sim` scheduler: boot a kernel, allocate
// locks in its arena, run tasks to an end, and filter the kernel log by kind.

import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult, TaskFn } from '../src/sched/scheduler.js';
import { SimScheduler, type SimOptions } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import {
  COMPLETION_WORDS,
  MUTEX_WORDS,
  RWSEM_WORDS,
  SEQCOUNT_WORDS,
  SPINLOCK_WORDS,
  SRCU_WORDS,
  WAITQUEUE_WORDS,
  init_completion,
  init_rwsem,
  init_srcu_struct,
  init_waitqueue_head,
  mutex_init,
  seqcount_init,
  spin_lock_init,
  type Completion,
  type Mutex,
  type RwSem,
  type SeqCount,
  type Spinlock,
  type SrcuStruct,
  type WaitQueueHead,
} from '../src/sync/index.js';

/** A small kernel: quick to boot, big enough for every foundation test. */
export const SMALL: BootConfig = {
  maxTasks: 16,
  lockClasses: 32,
  lockdepEdges: 256,
  eventRecords: 1 << 14,
  klogBytes: 1 << 16,
  strings: 128,
  stringBytes: 4096,
  kmalloc: { 8: 256, 32: 64 },
};

export function boot(cfg: BootConfig = {}): Kernel {
  return bootKernel({ ...SMALL, ...cfg });
}

/** `count` seeds starting at `from` (default 1..count). */
export function seeds(count: number, from = 1): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

/** Word offset of a fresh zeroed arena object of at least `words` words. */
export function alloc(k: Kernel, words: number): number {
  const at = k.kmalloc.kzalloc(words);
  if (at === 0) throw new Error(`test kmalloc(${words}) out of memory`);
  return at;
}

export const mkMutex = (k: Kernel, name: string, cls?: string): Mutex => mutex_init(k, alloc(k, MUTEX_WORDS), name, cls);
export const mkSpin = (k: Kernel, name: string, cls?: string): Spinlock => spin_lock_init(k, alloc(k, SPINLOCK_WORDS), name, cls);
export const mkRwsem = (k: Kernel, name: string, cls?: string): RwSem => init_rwsem(k, alloc(k, RWSEM_WORDS), name, cls);
export const mkWq = (k: Kernel, name: string): WaitQueueHead => init_waitqueue_head(k, alloc(k, WAITQUEUE_WORDS), name);
export const mkCompletion = (k: Kernel, name: string): Completion => init_completion(k, alloc(k, COMPLETION_WORDS), name);
export const mkSrcu = (k: Kernel, name: string): SrcuStruct => init_srcu_struct(k, alloc(k, SRCU_WORDS), name);
export const mkSeq = (k: Kernel, name: string): SeqCount => seqcount_init(k, alloc(k, SEQCOUNT_WORDS), name);

export interface SimRun {
  r: RunResult;
  s: SimScheduler;
  log: KlogRecord[];
}

/**
 * Spawn one task per entry (in insertion order) on a new SimScheduler over `k` and run them
 * to an end. `stallMs` defaults low so a test that awaits a foreign promise fails fast.
 */
export async function runSim(k: Kernel, opts: SimOptions, tasks: Record<string, TaskFn>): Promise<SimRun> {
  const s = new SimScheduler(k, { stallMs: 5_000, ...opts });
  for (const [name, fn] of Object.entries(tasks)) s.spawn({ name, fn });
  const r = await s.run();
  return { r, s, log: k.klog.read() };
}

/** Boot a fresh kernel, let `setup` build objects and tasks, run it under `sim`. */
export async function simProgram(
  opts: SimOptions,
  setup: (k: Kernel) => Record<string, TaskFn>,
  cfg: BootConfig = {},
): Promise<SimRun & { k: Kernel }> {
  const k = boot(cfg);
  const tasks = setup(k);
  return { k, ...(await runSim(k, opts, tasks)) };
}

export function ofKind(log: KlogRecord[], kind: string): KlogRecord[] {
  return log.filter((r) => r.kind === kind);
}

export function kinds(log: KlogRecord[]): string[] {
  return log.map((r) => r.kind);
}

/** A readable dump of klog for assertion messages. */
export function dump(log: KlogRecord[]): string {
  return log.map((r) => `[${r.kind}] ${r.text}`).join('\n---\n');
}

/** A task's name as klog and reports show it. */
export function taskName(k: Kernel, id: number): string {
  return `${k.tasks.get(id).name}/${id}`;
}
