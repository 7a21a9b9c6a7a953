// What every stress task and the harness share: the limits, the control words of a run
// (StressCtlL) and of each worker process (SlotL), the task arguments, small helpers, and
// the loading of a driver's stress adapter in the calling thread.

import type { Kernel } from '../sched/kernel.js';
import { loadModule } from '../sched/modules.js';
import { splat } from '../sched/splat.js';
import { defineStruct } from '../shm/layout.js';
import { DEV_STAT_NAMES } from '../device/types.js';
import { STRESS_PRIV_WORDS, stressAdapterError, type StressAdapter } from '../device/stress_adapter.js';

export const MAX_SLOTS = 4;
export const MAX_SLOT_DEVS = 16;
export const MAX_DRIVERS = 8;
/** rows of the drivers' own counters (adapter.stats), summed per (driver, name) */
export const MAX_DRV_STATS = 64;
/** most pages a CPU operation spans */
export const OP_MAX_PAGES = 4;

export const CPU_OPS = ['read', 'write', 'munmap', 'mprotect', 'fork', 'dontneed', 'migrate'] as const;
export type CpuOp = (typeof CPU_OPS)[number];
export const OP: { readonly [K in CpuOp]: number } = Object.fromEntries(CPU_OPS.map((o, i) => [o, i])) as never;

/** the run's shared words */
export const StressCtlL = defineStruct('stress_ctl', {
  start_ms: 2, // f64: Date.now() once every first process was set up (threads)
  end_ms: 2,
  deadline_ms: 2, // f64: start_ms + the duration; 0 until then (threads)
  stop: 1, // every task winds down
  handles: MAX_DRIVERS, // what each adapter's init returned
  ops: CPU_OPS.length, // CPU operations done, per kind
  op_errors: 1, // results no race explains (each of the first few is a klog record)
  fork_budget: 1, // forks left (task records are not recycled)
  forks_budget0: 1, // the budget at the start
  forks_done: 1,
  forks_skipped: 1,
  spawned: 1, // worker processes started, respawns included
  respawn_skipped: 1, // no task records left for a respawn
  exits: 1, // worker processes reaped
  killed: 1, // ... of which by SIGKILL
  devs_opened: 1,
  devs_closed: 1,
  dev_errors: 1, // opens and closes that failed
  bad_sptes: 1, // shadow PTEs the end-of-life check found wrong
  dev_stats: MAX_DRIVERS * DEV_STAT_NAMES.length, // device counters per driver, summed at close
  drv_stats: MAX_DRV_STATS * 3, // (driver, string id of the name, value)
  oom_rounds: 1,
  oom_kills: 1, // rounds that killed the victim
  oom_no_victim: 1,
  oom_reaped: 1, // victims whose reap ended before their exit (MMF_OOM_SKIP seen while frozen)
  oom_via_memcg: 1,
  warm: 1, // idle tasks that ran
  memcgs: MAX_SLOTS, // each slot's memcg id (0: none)
  max_done: 1, // the round's memory.max writer returned
  done: 1, // the controller finished
});

/** one worker process */
export const SlotL = defineStruct('stress_slot', {
  pid: 1,
  mm: 1,
  gen: 1, // respawns of this slot
  live: 1, // threads not yet out
  ready: 1, // thread 0 opened the devices (1) or failed (-1)
  stop: 1, // the engines' stop word
  freeze: 1, // the controller wants the threads asleep
  frozen: 1, // threads asleep
  ndev: 1,
  devs: MAX_SLOT_DEVS,
  drv: MAX_SLOT_DEVS, // driver index of each device
  priv: MAX_SLOT_DEVS * STRESS_PRIV_WORDS, // each device's adapter words
  memcg: 1, // the slot's memcg id, 0 if none
});

export interface StressDriverRef {
  /** a built-in name, or the driver name a file's adapter gives */
  name: string;
  /** what the user named: the built-in name or the path as given */
  ref: string;
  /** absolute path of the module exporting `stress` */
  module: string;
  /** the adapter's `driver` and `known` (violations the driver commits on purpose) */
  driver?: string;
  known?: readonly { kind: string; why: string }[];
}

export interface StressTaskArgs {
  ctl: number;
  /** word offset of the slot table (MAX_SLOTS records) */
  slots: number;
  drivers: StressDriverRef[];
  /** worker processes, and CPU threads of each */
  threads: number[];
  devices: number;
  engines: number;
  npages: number;
  base: number;
  pageSize: number;
  duty: number;
  seed: number;
  scheduler: 'sim' | 'threads';
  /** threads: the run's wall time once the first processes are set up, ms; sim: 0 */
  durationMs: number;
  /** sim: CPU operations per thread (respawns get half); threads: 0 */
  opsPerThread: number;
  pressure: 'none' | 'reclaim' | 'oom';
  /** between OOM rounds, ms of scheduler time */
  oomPeriodMs: number;
  /** task records a respawned process needs, at most */
  slotTasks: number;
  /** threads: idle workers to warm up before the clock starts */
  idleWorkers: number;
}

export interface WorkerArgs extends StressTaskArgs {
  slot: number;
  gen: number;
  ops: number;
}


export const slotAt = (a: StressTaskArgs, s: number): number => a.slots + s * SlotL.$size;

// ---- helpers every stress task uses ----------------------------------------------------------------

export { settle as n, waitAtLeast } from './words.js';

export function bump(k: Kernel, at: number, by = 1): void {
  Atomics.add(k.arena.i32, at, by);
  k.sched.wake(at, Infinity);
}

export function stressError(k: Kernel, ctl: number, what: string): void {
  if (Atomics.add(k.arena.i32, ctl + StressCtlL.op_errors, 1) < 8) splat(k, 'stress_error', `stress: ${what}`);
}

/** xorshift32 */
export function rng(seed: number): (n: number) => number {
  let s = seed | 0 || 0x9e3779b9;
  return (m) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % m;
  };
}

const adapters = new Map<string, StressAdapter>();

/** The stress adapter a driver module exports, loaded in this thread. */
export async function adapterOf(d: StressDriverRef): Promise<StressAdapter> {
  let a = adapters.get(d.module);
  if (a) return a;
  const mod = await loadModule(d.module);
  const err = stressAdapterError(mod.stress);
  if (err) throw new TypeError(`${d.module}: ${err}`);
  a = mod.stress as StressAdapter;
  adapters.set(d.module, a);
  return a;
}

/** threads: the run's time is up (the deadline is 0 until the controller started the clock) */
export function pastDeadline(k: Kernel, a: StressTaskArgs): boolean {
  const d = k.arena.f64[(a.ctl + StressCtlL.deadline_ms) >> 1];
  return d > 0 && Date.now() >= d;
}
