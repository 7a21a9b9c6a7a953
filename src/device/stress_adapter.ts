// The stress adapter: what a driver module exports, as `export const stress = defineStressAdapter({...})`,
// so `shadowmm stress` and `shadowmm oom-test` can drive it without knowing it. The module is
// loaded in every thread (under `threads`, every worker preloads it), so its top level must
// also define the driver itself (defineDriver); the adapter's functions run in whichever task
// the stress harness is in when it calls them:
//
//   init   once per run, from the harness's control kthread, before any process exists
//          (a module load: dmirror's hmm_dmirror_init). Returns a number handed to every
//          other call (0 if the driver needs none).
//   open   from a CPU task of the process that owns the device (current's mm is `mm`):
//          open one device mirroring at least [base, base + npages pages). Returns the device
//          (its word offset, as device_open returns it) or -errno. `priv` is
//          STRESS_PRIV_WORDS zeroed arena words of its own that every later call gets back (a
//          second device it opened, an object handle).
//   start  right after open, same task: start the device's engines (spawnDeviceProgram or the
//          driver's own device programs, on engine slots 0..engines-1, plus any fault task or
//          worker the driver wants). Every task it starts must end by itself once `stopWord`
//          is non-zero or the device is stopped (device_stop), and be recorded in the device
//          (spawnDeviceProgram and spawnDeviceFaultTask do that) so device_stop joins it.
//   migrate (optional) from a CPU task of the owning process: move [addr, addr + npages) to
//          the device's memory and back as the driver does it (device-private migration).
//          Failures a racing munmap/mprotect explains (-EFAULT, -EBUSY, -ENOENT, -EINVAL,
//          -EPERM, -ENOMEM) are expected; anything else is reported.
//   close  (optional, default device_close) from the harness's control kthread after the
//          owning process has exited and its engines were stopped: the last close of the fd.
//          0 or -errno.
//   exit   (optional) once per run after every device of the driver is closed.
//   stats  (optional) the driver's own counters of a device, for the summary.
//
// Everything crosses threads as numbers: an adapter keeps its state in the arena (the driver's
// device state, kmalloc), never in module variables.

import type { Kernel } from '../sched/kernel.js';
import { device_open } from './file.js';
import { spawnDeviceProgram, type Spawner } from './programs.js';

/** arena words each device gets for its adapter (StressOpenArgs.priv) */
export const STRESS_PRIV_WORDS = 4;

export interface StressOpenArgs {
  readonly k: Kernel;
  /** STRESS_PRIV_WORDS zeroed arena words for this device, the adapter's */
  readonly priv: number;
  /** the owning process's mm (current is one of its CPU tasks) */
  readonly mm: number;
  /** the window the process works in: page aligned */
  readonly base: number;
  readonly npages: number;
  /** a name for the device in reports, unique in the run */
  readonly name: string;
  /** what init returned */
  readonly handle: number;
}

export interface StressStartArgs {
  readonly k: Kernel;
  readonly dev: number;
  readonly priv: number;
  readonly base: number;
  readonly npages: number;
  /** engine slots to use: 0..engines-1 */
  readonly engines: number;
  readonly seed: number;
  /** arena word: every task the adapter starts ends once it is non-zero */
  readonly stopWord: number;
  /** the busy fraction the harness suggests for the engines, (0, 1] (sim: < 1, so CPU tasks run too) */
  readonly duty: number;
  /** where to spawn (k.sched of the calling task) */
  readonly spawner: Spawner;
  readonly handle: number;
}

export interface StressMigrateArgs {
  readonly dev: number;
  readonly priv: number;
  readonly handle: number;
  /** page aligned, inside the window */
  readonly addr: number;
  readonly npages: number;
  /** a user buffer of at least npages pages that nothing unmaps (for drivers that copy back) */
  readonly scratch: number;
}

export interface StressAdapter {
  /** the name the module's defineDriver registered */
  readonly driver: string;
  /** one line: what the device does under stress */
  readonly description?: string;
  init?(k: Kernel): number | Promise<number>;
  open(a: StressOpenArgs): number | Promise<number>;
  start(a: StressStartArgs): void | Promise<void>;
  migrate?(a: StressMigrateArgs): number | Promise<number>;
  close?(dev: number, handle: number, priv: number): number | Promise<number>;
  exit?(k: Kernel, handle: number): void | Promise<void>;
  stats?(k: Kernel, dev: number, handle: number, priv: number): Record<string, number>;
  /**
   * Violations this driver commits on purpose because it models a kernel driver's known bug
   * (userptr: i915's pre-5.13 race). Stress lists them apart and does not fail on them; a
   * record counts as this driver's when its text names the driver as `(name)`.
   */
  readonly known?: readonly { kind: string; why: string }[];
}

const FIELDS = ['driver', 'description', 'init', 'open', 'start', 'migrate', 'close', 'exit', 'stats', 'known'];
const FNS = ['init', 'open', 'start', 'migrate', 'close', 'exit', 'stats'];

/** What is wrong with `a` as a stress adapter (null if nothing): names the field. */
export function stressAdapterError(a: unknown): string | null {
  if (typeof a !== 'object' || a === null) return `the 'stress' export must be an object (defineStressAdapter({...})), got ${a === null ? 'null' : typeof a}`;
  const o = a as Record<string, unknown>;
  for (const key of Object.keys(o)) if (!FIELDS.includes(key)) return `stress.${key}: unknown field (expected one of: ${FIELDS.join(', ')})`;
  if (typeof o.driver !== 'string' || o.driver === '') return `stress.driver: must be the driver's name (a non-empty string), got ${typeof o.driver}`;
  if (o.description !== undefined && typeof o.description !== 'string') return 'stress.description: must be a string';
  for (const f of ['open', 'start']) if (typeof o[f] !== 'function') return `stress.${f}: required, must be a function`;
  for (const f of FNS) if (o[f] !== undefined && typeof o[f] !== 'function') return `stress.${f}: must be a function`;
  if (o.known !== undefined) {
    if (!Array.isArray(o.known)) return 'stress.known: must be an array of { kind, why }';
    for (const [i, x] of (o.known as unknown[]).entries()) {
      const e = x as Record<string, unknown> | null;
      if (typeof e !== 'object' || e === null || typeof e.kind !== 'string' || typeof e.why !== 'string') return `stress.known[${i}]: must be { kind: string, why: string }`;
    }
  }
  return null;
}

/** Check an adapter (a .js driver has no compiler) and return it. */
export function defineStressAdapter(a: StressAdapter): StressAdapter {
  const err = stressAdapterError(a);
  if (err) throw new TypeError(`defineStressAdapter: ${err}`);
  return Object.freeze({ ...a });
}

const MIX = [
  { fn: 'dev_random', op: 'write' },
  { fn: 'dev_stream', op: 'read' },
  { fn: 'dev_random', op: 'atomic' },
  { fn: 'dev_stream', op: 'write' },
] as const;

/**
 * The layer's own device programs on engines 0..engines-1 (random writes, streaming reads,
 * random atomics, streaming writes, in turn; or only `only` accesses), each until the stop
 * word: what a driver whose device has no programs of its own runs under stress.
 */
export function spawnStressEngines(a: StressStartArgs, only?: 'read' | 'write' | 'atomic'): void {
  for (let e = 0; e < a.engines; e++) {
    const m = only ? { fn: e % 2 === 0 ? 'dev_random' : 'dev_stream', op: only } : MIX[e % MIX.length];
    spawnDeviceProgram(a.k, a.spawner, m.fn, {
      dev: a.dev,
      engine: e,
      start: a.base,
      npages: a.npages,
      iters: 1 << 30, // bounded by the stop word
      op: m.op,
      burst: 4,
      duty: a.duty,
      word: 1 + e,
      seed: a.seed * 7 + e,
      stopWord: a.stopWord,
    });
  }
}

/**
 * The adapter of a driver that needs nothing special: open = device_open(driver) on the
 * process's mm, engines = spawnStressEngines, close = device_close. A driver file's one line:
 * `export const stress = simpleStressAdapter('my-driver');`
 */
export function simpleStressAdapter(driver: string, description?: string): StressAdapter {
  return defineStressAdapter({
    driver,
    description: description ?? `${driver}: device_open on the window's mm, the layer's device programs`,
    open: ({ mm, name }) => device_open(driver, { mm, name }),
    start: (a) => spawnStressEngines(a),
  });
}
