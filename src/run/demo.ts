// `shadowmm demo`: a few seconds that show what the emulator does for a driver author, until
// the stress runner exists. Each part boots its own kernel (so lockdep graphs do not mix),
// runs task bodies from demo_tasks.ts, and says in one line whether it behaved as expected:
//   (a) sim: driver-lock and mmap_lock contention; the same seed gives the same event hash
//   (b) lockdep: an inversion reported from a run that did not deadlock
//   (c) lockdep: a driver lock held across GFP_KERNEL reclaim that an invalidate callback takes
//   (d) a real deadlock ends with who waits on what, and who holds it, instead of hanging
//   (e) threads: the program of (a) on Piscina workers over the same SharedArrayBuffer

import { performance } from 'node:perf_hooks';
import type { Kernel } from '../sched/kernel.js';
import type { RunResult, TaskSpec } from '../sched/scheduler.js';
import { SimScheduler } from '../sched/sim.js';
import type { TaskKind } from '../sched/task.js';
import { EV, EV_TYPE, EV_WORDS } from '../shm/events.js';
import { COMPLETION_WORDS, MUTEX_WORDS, RWSEM_WORDS, init_completion, init_rwsem, mutex_init } from '../sync/index.js';
import { bootKernel, type BootConfig } from './boot.js';
import type { AbbaArgs, ContendArgs, PairArgs, ReclaimArgs } from './demo_tasks.js';
import { ThreadsRunner } from './threads.js';

export type DemoScheduler = 'sim' | 'threads' | 'both';

export interface DemoOptions {
  scheduler: DemoScheduler;
  seed: number;
  /** where the demo's lines go (default: stdout) */
  print?: (line: string) => void;
}

export interface DemoPart {
  part: string;
  ok: boolean;
  summary: string;
}

// From dist the tasks are .js; from source (tsx, vitest) the .ts beside this file.
const TASKS = new URL(`./demo_tasks.${import.meta.url.endsWith('.ts') ? 'ts' : 'js'}`, import.meta.url).href;

/** small enough to boot in milliseconds, big enough that (a) never wraps the event ring */
const KERNEL: BootConfig = { maxTasks: 16, lockClasses: 32, lockdepEdges: 256, eventRecords: 1 << 16, klogBytes: 1 << 18 };
const SIM_ITERS = 100;
const THREADS_ITERS = 2000;
const US = 1000;

// args are typed where they are built; the spec only carries them (fn is an export name)
function task<A>(name: string, kind: TaskKind, fn: string, args: A): TaskSpec {
  return { name, kind, module: TASKS, fn, args };
}

function mutex(k: Kernel, name: string): number {
  const at = k.kmalloc.kzalloc(MUTEX_WORDS);
  mutex_init(k, at, name);
  return at;
}

function indent(text: string): string {
  return text.split('\n').map((l) => (l === '' ? '' : `    ${l}`)).join('\n');
}

function hex(h: number): string {
  return `0x${(h >>> 0).toString(16).padStart(8, '0')}`;
}

function countEvents(k: Kernel, type: number): number {
  const recs = k.events.records();
  let n = 0;
  for (let i = 0; i < recs.length; i += EV_WORDS) if (recs[i + EV_TYPE] === type) n++;
  return n;
}

/** The contention program of (a) and (e): three fault paths and an munmap on one mm. */
function contention(k: Kernel, iters: number): { specs: TaskSpec[]; counter: number; expected: number } {
  const drv = mutex(k, '&drv->lock');
  const mmap = k.kmalloc.kzalloc(RWSEM_WORDS);
  init_rwsem(k, mmap, '&mm->mmap_lock');
  const start = k.kmalloc.kzalloc(COMPLETION_WORDS);
  init_completion(k, start, 'demo_start');
  const counter = k.kmalloc.kzalloc(1);
  const arrived = k.kmalloc.kzalloc(1);
  const roles: [string, TaskKind, boolean][] = [
    ['cpu0-fault', 'cpu', false],
    ['cpu1-fault', 'cpu', false],
    ['gpu0-fault', 'device', false],
    ['munmap', 'cpu', true],
  ];
  const specs = roles.map(([name, kind, writer]) => {
    const args: ContendArgs = { drv, mmap, counter, iters, start, arrived, tasks: roles.length, writer };
    return task(name, kind, 'contend', args);
  });
  return { specs, counter, expected: specs.length * iters };
}

async function runSim(k: Kernel, seed: number, specs: TaskSpec[]): Promise<RunResult> {
  const sim = new SimScheduler(k, { seed });
  for (const s of specs) sim.spawn(s);
  return sim.run();
}

function klogOf(k: Kernel, kind: string): string[] {
  return k.klog.read().filter((r) => r.kind === kind).map((r) => r.text);
}

/** A run meant to be clean logged something: show it, it is the reason the part failed. */
function showKlog(k: Kernel, say: (s: string) => void): void {
  for (const r of k.klog.read()) say(indent(`[${r.kind}] ${r.text}`));
}

async function partA(seed: number, say: (s: string) => void): Promise<DemoPart> {
  say(`(a) sim, seed ${seed}: 3 fault paths and an munmap contend on &drv->lock (mutex) and &mm->mmap_lock (rwsem)`);
  const once = async (s: number) => {
    const k = bootKernel(KERNEL);
    const p = contention(k, SIM_ITERS);
    const r = await runSim(k, s, p.specs);
    const counter = k.arena.i32[p.counter];
    const line = `${r.status}, ${r.steps} scheduling steps, ${(r.timeNs / US).toFixed(1)} us virtual, ${countEvents(k, EV.CONTENDED)} contended acquisitions, counter ${counter}/${p.expected}, event hash ${hex(r.eventHash)}`;
    return { k, r, ok: r.status === 'done' && counter === p.expected && k.klog.count === 0, line };
  };
  const one = await once(seed);
  const two = await once(seed);
  const next = (seed + 1) >>> 0;
  const other = await once(next);
  const label = (s: string) => `    ${s.padEnd(12)}`;
  say(`${label('run 1:')}${one.line}`);
  say(`${label('run 2:')}${two.line}`);
  say(`${label(`seed ${next}:`)}event hash ${hex(other.r.eventHash)} (another seed, another interleaving)`);
  if (!one.ok) showKlog(one.k, say);
  const same = one.r.eventHash === two.r.eventHash && one.r.steps === two.r.steps;
  const summary = !same
    ? `seed ${seed} gave two different schedules`
    : !(one.ok && two.ok)
      ? `the contention run did not end cleanly: ${one.line}`
      : `sim is deterministic: seed ${seed} gave event hash ${hex(one.r.eventHash)} twice`;
  return { part: 'a', ok: one.ok && two.ok && same, summary };
}

async function partB(seed: number, say: (s: string) => void): Promise<DemoPart> {
  say('(b) lockdep: the fault path takes &svm->lock then &svm->notifier_lock; eviction takes them the other way, later');
  const k = bootKernel(KERNEL);
  const args: PairArgs = { outer: mutex(k, '&svm->lock'), inner: mutex(k, '&svm->notifier_lock'), delayNs: 1000 * US };
  const r = await runSim(k, seed, [task('svm-fault', 'driver', 'svmFault', args), task('svm-evict', 'driver', 'svmEvict', args)]);
  const reports = klogOf(k, 'lockdep_circular');
  say(`    run: ${r.status}${r.status === 'done' ? ' (no deadlock this time)' : ''}; lockdep reported:`);
  for (const text of reports) say(indent(text));
  const ok = r.status === 'done' && reports.length === 1;
  return { part: 'b', ok, summary: ok ? 'lockdep reported the &svm->lock / &svm->notifier_lock inversion from a run that did not deadlock' : `expected one circular-dependency report from a finished run, got ${reports.length} (run ${r.status})` };
}

async function partC(seed: number, say: (s: string) => void): Promise<DemoPart> {
  say('(c) lockdep: an ioctl allocates with GFP_KERNEL under &drv->lock; the invalidate callback takes &drv->lock');
  const k = bootKernel(KERNEL);
  const args: ReclaimArgs = { drv: mutex(k, '&drv->lock'), delayNs: 1000 * US };
  const r = await runSim(k, seed, [task('drv-ioctl', 'driver', 'allocUnderDriverLock', args), task('kswapd0', 'kthread', 'invalidateRangeStart', args)]);
  const reports = klogOf(k, 'lockdep_circular');
  say(`    run: ${r.status}; lockdep reported:`);
  for (const text of reports) say(indent(text));
  const ok = r.status === 'done' && reports.length === 1 && reports[0].includes('fs_reclaim') && reports[0].includes('&drv->lock');
  return { part: 'c', ok, summary: ok ? 'lockdep reported &drv->lock -> fs_reclaim -> mmu_notifier_invalidate_range_start -> &drv->lock' : `expected a cycle through fs_reclaim, got ${reports.length} report(s) (run ${r.status})` };
}

async function partD(seed: number, say: (s: string) => void): Promise<DemoPart> {
  say('(d) a real deadlock: submit holds &gpu->vm_lock and wants &gpu->ring_lock; reset holds ring_lock and wants vm_lock');
  const k = bootKernel(KERNEL);
  const vm = mutex(k, '&gpu->vm_lock');
  const ring = mutex(k, '&gpu->ring_lock');
  const submit: AbbaArgs = { first: vm, second: ring, holdNs: 10 * US };
  const reset: AbbaArgs = { first: ring, second: vm, holdNs: 10 * US };
  const r = await runSim(k, seed, [task('gpu-submit', 'driver', 'lockPairSlowly', submit), task('gpu-reset', 'driver', 'lockPairSlowly', reset)]);
  const warned = klogOf(k, 'lockdep_circular').length;
  say(`    run: ${r.status} after ${r.steps} steps; lockdep had warned ${warned} time(s) on the way in; instead of hanging, the scheduler reports:`);
  if (r.report) say(indent(r.report));
  const ok = r.status === 'deadlock' && (r.report ?? '').includes('wait-for cycle');
  return { part: 'd', ok, summary: ok ? 'the ABBA deadlock ended with who waits on what and who holds it' : `expected a deadlock with a wait-for cycle, run ended '${r.status}'` };
}

async function partE(say: (s: string) => void): Promise<DemoPart> {
  say(`(e) threads: the program of (a), ${THREADS_ITERS} rounds per task, each task in its own Piscina worker over the same SharedArrayBuffer`);
  const k = bootKernel(KERNEL);
  const p = contention(k, THREADS_ITERS);
  const runner = new ThreadsRunner(k, { watchdogMs: 2000, timeoutMs: 30_000 });
  for (const s of p.specs) runner.spawn(s);
  const t0 = performance.now();
  const r = await runner.run();
  const ms = performance.now() - t0;
  const counter = k.arena.i32[p.counter];
  say(`    run: ${r.status} in ${ms.toFixed(0)} ms wall (worker start-up included), counter ${counter}/${p.expected}, ${countEvents(k, EV.CONTENDED)} contended acquisitions`);
  if (r.report) say(indent(r.report));
  else if (k.klog.count > 0) showKlog(k, say);
  const ok = r.status === 'done' && counter === p.expected && r.failed.length === 0 && k.klog.count === 0;
  return { part: 'e', ok, summary: ok ? `threads: counter ${counter}/${p.expected} over ${p.specs.length} workers in ${ms.toFixed(0)} ms wall` : `threads run ended '${r.status}' with counter ${counter}/${p.expected}` };
}

/** Run the demo's parts for the chosen scheduler(s); prints as it goes, returns one line per part. */
export async function runDemo(opts: DemoOptions): Promise<DemoPart[]> {
  const say = opts.print ?? ((s: string) => process.stdout.write(s + '\n'));
  const parts: [string, () => Promise<DemoPart>][] = [];
  if (opts.scheduler !== 'threads') {
    parts.push(['a', () => partA(opts.seed, say)], ['b', () => partB(opts.seed, say)], ['c', () => partC(opts.seed, say)], ['d', () => partD(opts.seed, say)]);
  }
  if (opts.scheduler !== 'sim') parts.push(['e', () => partE(say)]);
  const out: DemoPart[] = [];
  for (const [part, run] of parts) {
    try {
      out.push(await run());
    } catch (e) {
      // a part that throws is a demo failure to show, not a reason to skip the others
      out.push({ part, ok: false, summary: `threw: ${e instanceof Error ? e.message : String(e)}` });
    }
    say('');
  }
  say(`summary (${opts.scheduler === 'threads' ? 'threads' : `seed ${opts.seed}`}):`);
  for (const p of out) say(`  ${p.ok ? 'ok    ' : 'FAILED'} (${p.part}) ${p.summary}`);
  const bad = out.filter((p) => !p.ok).length;
  const partsText = `${out.length} part${out.length === 1 ? '' : 's'}`;
  say(bad === 0 ? `demo: all ${partsText} behaved as expected` : `demo: ${bad} of ${partsText} did not behave as expected`);
  if (opts.scheduler !== 'threads') say(`replay: shadowmm demo --scheduler sim --seed ${opts.seed}`);
  return out;
}
