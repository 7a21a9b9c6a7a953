// `shadowmm oom-test --driver NAME|FILE`: the answer to "how can a driver developer test the
// OOM path?". A process maps memory and a device of the driver faults it in through the
// driver; the process is then stuck where SIGKILL is not noticed; its memcg's memory.max is
// lowered below its usage, so the kernel's memcg OOM killer picks it (or, if that kills
// nobody, the OOM of that pid); the oom_reaper (the kernel's default v5.18 timing: after
// OOM_REAPER_DELAY, then up to MAX_OOM_REAP_RETRIES attempts HZ/10 apart) unmaps its memory
// under non-blockable UNMAP invalidations, which is where a driver's notifier meets the OOM
// path; then the process dies, its device is closed (exit_files), and the teardown is checked.
// Every step is printed with its numbers; exit 0 when nothing broke a rule and nothing leaked.

import { performance } from 'node:perf_hooks';
import type { Runner } from '../sched/scheduler.js';
import { SimScheduler } from '../sched/sim.js';
import { oomKillModule, MAX_OOM_REAP_RETRIES } from '../mm/oom_kill.js';
import { reap_zombies } from '../mm/process.js';
import { SIGKILL } from '../mm/memory.js';
import { collectViolations, type Violation } from '../check/violation.js';
import { kernelUsage, teardownLeaks } from '../check/teardown.js';
import { bootKernel } from './boot.js';
import { ThreadsRunner } from './threads.js';
import { writeTrace } from './trace.js';
import { WARN_KINDS, StressUsageError, resolveStressDrivers, shellWord } from './stress.js';
import { violationText } from './stress_report.js';
import { OOM_TEST_TASKS, OomTestL, type OomTestArgs } from './oom_test_tasks.js';

export interface OomTestOptions {
  driver: string;
  scheduler?: 'sim' | 'threads';
  seed?: number;
  trace?: string;
  cwd?: string;
}

export interface OomTestOutcome {
  /** the step-by-step story */
  steps: string[];
  violations: Violation[];
  warnings: Violation[];
  /** the numbers behind the steps (OomTestL) */
  words: Record<string, number>;
  exitCode: number;
  replay: string;
}

const MS = 1e6;
const NPAGES = 32;

export async function runOomTest(o: OomTestOptions): Promise<OomTestOutcome> {
  const scheduler = o.scheduler ?? 'sim';
  const seed = o.seed ?? 1;
  if (scheduler !== 'sim' && scheduler !== 'threads') throw new StressUsageError(`--scheduler must be sim or threads, got '${String(scheduler)}'`);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new StressUsageError(`--seed must be a whole number from 0 to 4294967295, got ${String(seed)}`);
  if (typeof o.driver !== 'string' || o.driver === '') throw new StressUsageError('--driver is required: a reference driver (dmirror, odp, gpusvm, kvm-mmu, userptr) or a driver file');
  const [driver] = await resolveStressDrivers([o.driver], o.cwd);
  const k = bootKernel({
    maxTasks: 48,
    lockClasses: 256,
    lockdepEdges: 8192,
    eventRecords: 1 << 17,
    klogBytes: 1 << 20,
    strings: 2048,
    stringBytes: 1 << 16,
    kmalloc: { 8: 2048, 16: 1024, 32: 1024, 64: 512, 256: 128, 1024: 32 },
    mem: { pages: 2048, pageSize: 4096 },
    memcg: { groups: 2 },
    device: { devices: 8, sptDirs: 64, sptLeaves: 32 },
  });
  const before = kernelUsage(k);
  const ctl = k.kmalloc.kzalloc(OomTestL.$size);
  const args: OomTestArgs = { ctl, driver, base: 0x40000000, npages: NPAGES, engines: 1, duty: scheduler === 'sim' ? 0.05 : 0.5, seed };
  const runner: Runner =
    scheduler === 'sim'
      ? new SimScheduler(k, { seed, stallMs: 10_000, maxTimeNs: 120_000 * MS, maxSteps: 100_000_000 })
      : new ThreadsRunner(k, { watchdogMs: 5000, timeoutMs: 60_000, preload: [driver.module] });
  runner.spawn({ name: 'oom_reaper', kind: 'kthread', module: oomKillModule(), fn: 'oom_reaper' });
  runner.spawn({ name: 'oom-test', kind: 'kthread', module: OOM_TEST_TASKS, fn: 'oomTestCtl', args });
  const t0 = performance.now();
  const result = await runner.run();
  const wallMs = performance.now() - t0;
  if (result.status === 'done') reap_zombies(k);
  const w = k.arena.i32;
  const words = Object.fromEntries(Object.keys(OomTestL.$fields).map((f) => [f, w[ctl + (OomTestL as unknown as Record<string, number>)[f]]]));
  k.kmalloc.kfree(ctl);
  const log = k.klog.read();
  const leaks = result.status === 'done' ? teardownLeaks(k, before) : [];
  const replay = `shadowmm oom-test --driver ${shellWord(o.driver)} --scheduler ${scheduler}${scheduler === 'sim' ? ` --seed ${seed}` : ''}`;
  const all = collectViolations({ k, result, log, leaks, checkFailures: [], replay: scheduler === 'sim' ? replay : null });
  const violations = all.filter((v) => !WARN_KINDS.has(v.kind));
  const warnings = all.filter((v) => WARN_KINDS.has(v.kind));
  // what the test itself expects of the kernel's side (a driver cannot change these)
  const x = words;
  if (result.status === 'done' && x.ready === 1) {
    const want = (ok: boolean, text: string): void => {
      if (!ok) violations.push({ kind: 'oom_test', message: `oom-test: ${text}`, timeNs: null, klogIndex: null, tasks: [], seed: scheduler === 'sim' ? seed : null, replay });
    };
    want(x.how !== 0, `the OOM killed nobody (memcg OOM and the OOM of pid ${x.pid} both failed: inject_oom ${x.inject_ret})`);
    want(x.how === 0 || x.exit_signal === SIGKILL, `the victim did not die by SIGKILL (exit code ${x.exit_code}, signal ${x.exit_signal})`);
    want(x.how === 0 || x.skip === 1, 'the oom_reaper never set MMF_OOM_SKIP on the victim (neither reaped nor "unable to reap")');
    want(x.close_ret === 0, `closing the device after the exit returned ${x.close_ret}`);
  }
  if (o.trace) writeTrace(k, result, o.trace, { scenario: 'oom-test', seed: scheduler === 'sim' ? seed : null, scheduler, command: replay });
  const steps = story(x, driver.name, log, scheduler, seed, wallMs, result.status);
  return { steps, violations, warnings, words, exitCode: violations.length > 0 ? 1 : 0, replay };
}

function story(x: Record<string, number>, name: string, log: { kind: string; text: string }[], scheduler: string, seed: number, wallMs: number, status: string): string[] {
  const s: string[] = [];
  const line = (kind: string, has = ''): string | undefined => log.find((r) => r.kind === kind && r.text.includes(has))?.text.split('\n')[0];
  const plural = (v: number, one: string): string => `${v} ${one}${v === 1 ? '' : 's'}`;
  s.push(`shadowmm oom-test: driver ${name}, ${scheduler}${scheduler === 'sim' ? ` seed ${seed}` : ''} (${(wallMs / 1000).toFixed(1)} s)`);
  if (x.ready !== 1) {
    s.push(`  1. setup failed: the victim could not map its memory or open the device (see the violations); run ${status}`);
    return s;
  }
  s.push(`  1. process 'victim' (pid ${x.pid}) mapped ${NPAGES} pages and wrote ${x.mapped}; anon rss ${x.rss_before} pages${x.memcg ? `, in memcg 'oom-test' (memory.current ${x.usage_before} pages)` : ''}`);
  s.push(`  2. opened a device of driver ${name} on its mm; the device accessed ${x.dev_accesses} pages, raised ${plural(x.dev_faults, 'device fault')} the driver serviced, installed ${plural(x.dev_installs, 'shadow PTE')} (${x.spte_before} mapped now)`);
  s.push('     the victim then sleeps where SIGKILL is not noticed (a task stuck in the kernel): only the oom_reaper can free its memory');
  const kill = line('oom_kill', 'Killed process') ?? line('oom_kill');
  if (x.how === 1) s.push(`  3. memory.max lowered to ${x.max_set} pages: reclaim cannot free anonymous memory without swap, so the memcg OOM killer ran: "${kill ?? 'Killed'}"`);
  else if (x.how === 2) s.push(`  3. ${x.max_set >= 0 ? `memory.max lowered to ${x.max_set} pages killed nobody; ` : ''}the OOM of pid ${x.pid} (fault injection, inject_oom): "${kill ?? 'Killed'}"`);
  else s.push(`  3. the OOM killed nobody (inject_oom returned ${x.inject_ret})`);
  if (x.how !== 0) {
    const reaper = x.reaped > 0 ? `reaped the victim after ${x.reap_attempts} attempt${x.reap_attempts === 1 ? '' : 's'}: "${line('oom_reaper') ?? 'reaped'}"` : x.unable > 0 ? `could not reap it in ${x.reap_attempts} attempts (${MAX_OOM_REAP_RETRIES} max, HZ/10 apart): "${line('oom_unable_to_reap') ?? 'unable to reap'}"` : `made ${x.reap_attempts} attempts; the victim's own exit set MMF_OOM_SKIP first`;
    s.push(`  4. the oom_reaper (after OOM_REAPER_DELAY) ${reaper}`);
    s.push(`     its non-blockable UNMAP invalidations reached the driver: ${plural(x.dev_invalidations, 'invalidation callback')} on the device, ${x.dev_eagain} refused (-EAGAIN / false)`);
    s.push(`     after the reaper: anon rss ${x.rss_after} pages, ${x.spte_after} shadow PTEs left${x.unstable ? ', MMF_UNSTABLE set (a device fault on the victim now fails)' : ''}`);
  }
  s.push(`  5. the victim exited by ${x.exit_signal === SIGKILL ? 'SIGKILL' : `code ${x.exit_code} signal ${x.exit_signal}`}; exit_mmap tore its address space down; its device was closed (exit_files): ${x.close_ret === 0 ? 'ok' : `returned ${x.close_ret}`}, ${x.bad_sptes} stale shadow PTEs at the close`);
  return s;
}

/** The text the command prints: the steps, warnings, violations, verdict. */
export function formatOomTest(r: OomTestOutcome, leakChecked = true): string {
  const out = [...r.steps];
  const leaks = r.violations.filter((v) => v.kind === 'teardown_leak');
  out.push(`  6. teardown: ${leaks.length === 0 && leakChecked ? 'no frame, page table, VMA, process, subscription, device or kmalloc object left behind' : `${leaks.length} leak report(s) below`}`);
  for (const w of r.warnings) out.push(`  warning: [${w.kind}] ${w.message.split('\n')[0]} (the driver refused every non-blockable invalidation of a VMA; reported, not a failure)`);
  if (r.violations.length === 0) out.push('', 'verdict: clean: the driver took the OOM path without breaking a rule');
  else {
    out.push('', `verdict: ${r.violations.length} violation${r.violations.length === 1 ? '' : 's'}`);
    r.violations.slice(0, 8).forEach((v, i) => out.push('', violationText(v, i + 1, r.violations.length)));
  }
  out.push('', `rerun: ${r.replay}`);
  return out.join('\n');
}
