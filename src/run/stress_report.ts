// The stress summary: counters read from the run's control words after it ended (and summed
// over sim runs), latency percentiles, violations in kernel style; as text for the terminal
// and as a JSON report (StressReport, the schema of `--report` and `--json`).

import type { Kernel } from '../sched/kernel.js';
import { oomStats } from '../mm/oom_kill.js';
import { DEV_STAT_NAMES, type DevStatName } from '../device/types.js';
import type { Violation } from '../check/violation.js';
import type { KnownViolation } from './stress.js';
import { LATENCY_KINDS, type LatencyScanner, type LatencySummary, type LatencyKind } from '../check/latency.js';
import { pressureCounters } from './stress_pressure.js';
import { CPU_OPS, MAX_DRV_STATS, StressCtlL, type CpuOp, type StressDriverRef } from './stress_tasks.js';

export interface StressCounters {
  /** CPU operations + device page accesses */
  opsTotal: number;
  cpuTotal: number;
  cpu: Record<CpuOp, number>;
  opErrors: number;
  forks: { skipped: number; budgetLeft: number };
  processes: { spawned: number; exits: number; killed: number; respawnSkipped: number };
  devices: { opened: number; closed: number; errors: number; badSptes: number };
  /** device-layer counters, summed over every device */
  device: Record<DevStatName, number>;
  /** per driver (in --driver order): device-layer counters and the driver's own */
  perDriver: { device: Record<DevStatName, number>; own: Record<string, number> }[];
  oom: { rounds: number; kills: number; noVictim: number; reapedBeforeExit: number; viaMemcg: number; reapAttempts: number; reaped: number; unableToReap: number };
  /** the pressure layer's counters (reclaim, swap, memcg), flat */
  pressure: Record<string, number>;
  /** threads: ms between the processes' start and the end; sim: 0 */
  runMs: number;
}

const zeroDev = (): Record<DevStatName, number> => Object.fromEntries(DEV_STAT_NAMES.map((n) => [n, 0])) as Record<DevStatName, number>;

/** The counters of a finished run (main thread, after runner.run()). */
export function readCounters(k: Kernel, ctl: number, nDrivers: number): StressCounters {
  const w = k.arena.i32;
  const f = k.arena.f64;
  const at = (x: number): number => w[ctl + x];
  const cpu = Object.fromEntries(CPU_OPS.map((o, i) => [o, at(StressCtlL.ops + i)])) as Record<CpuOp, number>;
  const cpuTotal = CPU_OPS.reduce((s, o) => s + cpu[o], 0);
  const perDriver = Array.from({ length: nDrivers }, (_, d) => {
    const device = zeroDev();
    DEV_STAT_NAMES.forEach((n, i) => (device[n] = at(StressCtlL.dev_stats + d * DEV_STAT_NAMES.length + i)));
    return { device, own: {} as Record<string, number> };
  });
  for (let r = 0; r < MAX_DRV_STATS; r++) {
    const b = StressCtlL.drv_stats + r * 3;
    if (at(b + 1) === 0) break;
    const d = at(b);
    if (d < nDrivers) perDriver[d].own[k.strings.get(at(b + 1))] = at(b + 2);
  }
  const device = zeroDev();
  for (const p of perDriver) for (const n of DEV_STAT_NAMES) device[n] += p.device[n];
  const o = oomStats(k);
  const start = f[(ctl + StressCtlL.start_ms) >> 1];
  const end = f[(ctl + StressCtlL.end_ms) >> 1];
  return {
    opsTotal: cpuTotal + device.accesses,
    cpuTotal,
    cpu,
    opErrors: at(StressCtlL.op_errors),
    forks: { skipped: at(StressCtlL.forks_skipped), budgetLeft: at(StressCtlL.fork_budget) },
    processes: { spawned: at(StressCtlL.spawned), exits: at(StressCtlL.exits), killed: at(StressCtlL.killed), respawnSkipped: at(StressCtlL.respawn_skipped) },
    devices: { opened: at(StressCtlL.devs_opened), closed: at(StressCtlL.devs_closed), errors: at(StressCtlL.dev_errors), badSptes: at(StressCtlL.bad_sptes) },
    device,
    perDriver,
    oom: {
      rounds: at(StressCtlL.oom_rounds),
      kills: at(StressCtlL.oom_kills),
      noVictim: at(StressCtlL.oom_no_victim),
      reapedBeforeExit: at(StressCtlL.oom_reaped),
      viaMemcg: at(StressCtlL.oom_via_memcg),
      reapAttempts: o.reapAttempts,
      reaped: o.reaped,
      unableToReap: o.unableToReap,
    },
    pressure: pressureCounters(k),
    runMs: start > 0 && end > start ? end - start : 0,
  };
}

/** Sum counters of several runs (sim). */
export function sumCounters(cs: StressCounters[]): StressCounters {
  const add = (a: unknown, b: unknown): unknown => {
    if (typeof a === 'number' && typeof b === 'number') return a + b;
    if (Array.isArray(a) && Array.isArray(b)) return a.map((x, i) => add(x, b[i]));
    if (a && b && typeof a === 'object') {
      const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
      for (const [key, v] of Object.entries(b as Record<string, unknown>)) out[key] = key in out ? add(out[key], v) : v;
      return out;
    }
    return a ?? b;
  };
  return cs.reduce((x, c) => add(x, c) as StressCounters);
}

/** `--report` / `--json`: one stress run (or series of sim runs) as JSON. */
export interface StressReport {
  command: 'stress';
  scheduler: 'threads' | 'sim';
  drivers: { name: string; module: string }[];
  processes: number;
  cpus: number;
  devicesPerDriver: number;
  pressure: 'none' | 'reclaim' | 'oom';
  seed: number;
  /** sim: seeded runs done (the seeds are seed, seed + 1, ...) */
  runs: number;
  wallSeconds: number;
  /** 'clean' or 'violations' */
  verdict: 'clean' | 'violations';
  ops: { total: number; perSecond: number; cpu: Record<CpuOp, number> & { total: number }; deviceAccesses: number };
  counters: StressCounters;
  /** p50/p99 in µs, sampled from the event log; lostEvents: records the ring overwrote unread */
  latency: Record<LatencyKind, LatencySummary> & { lostEvents: number };
  violations: { kind: string; message: string; seed: number | null; tasks: { id: number; name: string }[] }[];
  /** kernel reports that are not broken rules but worth a look ("unable to reap") */
  warnings: { kind: string; message: string }[];
  /** violations a reference driver commits on purpose (its adapter's `known`): listed, not failed on */
  known: KnownViolation[];
  /** sim: the seed of the run that failed */
  failedSeed: number | null;
  /** the command that reruns this (sim: the failing run alone) */
  replay: string;
  trace: string | null;
}

export interface ReportInput {
  o: { scheduler: 'threads' | 'sim'; seed: number; devices: number; cpus: number; pressure: 'none' | 'reclaim' | 'oom' };
  drivers: StressDriverRef[];
  shape: { threads: number[] };
  counters: StressCounters[];
  runs: number;
  wallMs: number;
  latency: LatencyScanner | null;
  violations: Violation[];
  warnings: Violation[];
  known: KnownViolation[];
  failedSeed: number | null;
  trace: string | null;
  replay: string;
}

export function stressReport(x: ReportInput): StressReport {
  const c = x.counters.length > 0 ? sumCounters(x.counters) : readEmpty(x.drivers.length);
  const secs = (x.o.scheduler === 'threads' && c.runMs > 0 ? c.runMs : x.wallMs) / 1000;
  const lat = x.latency?.summary() ?? (Object.fromEntries(LATENCY_KINDS.map((kd) => [kd, { samples: 0, p50_us: 0, p99_us: 0, max_us: 0 }])) as Record<LatencyKind, LatencySummary>);
  return {
    command: 'stress',
    scheduler: x.o.scheduler,
    drivers: x.drivers.map((d) => ({ name: d.name, module: d.module })),
    processes: x.shape.threads.length,
    cpus: x.o.cpus,
    devicesPerDriver: x.o.devices,
    pressure: x.o.pressure,
    seed: x.o.seed,
    runs: x.runs,
    wallSeconds: Math.round(x.wallMs) / 1000,
    verdict: x.violations.length > 0 ? 'violations' : 'clean',
    ops: { total: c.opsTotal, perSecond: secs > 0 ? Math.round(c.opsTotal / secs) : 0, cpu: { ...c.cpu, total: c.cpuTotal }, deviceAccesses: c.device.accesses },
    counters: c,
    latency: { ...lat, lostEvents: x.latency?.lost ?? 0 },
    violations: x.violations.map((v) => ({ kind: v.kind, message: v.message, seed: v.seed, tasks: v.tasks.map((t) => ({ id: t.id, name: t.name })) })),
    warnings: x.warnings.map((v) => ({ kind: v.kind, message: v.message })),
    known: x.known,
    failedSeed: x.failedSeed,
    replay: x.replay,
    trace: x.trace,
  };
}

function readEmpty(n: number): StressCounters {
  const device = zeroDev();
  return {
    opsTotal: 0,
    cpuTotal: 0,
    cpu: Object.fromEntries(CPU_OPS.map((o) => [o, 0])) as Record<CpuOp, number>,
    opErrors: 0,
    forks: { skipped: 0, budgetLeft: 0 },
    processes: { spawned: 0, exits: 0, killed: 0, respawnSkipped: 0 },
    devices: { opened: 0, closed: 0, errors: 0, badSptes: 0 },
    device,
    perDriver: Array.from({ length: n }, () => ({ device: zeroDev(), own: {} })),
    oom: { rounds: 0, kills: 0, noVictim: 0, reapedBeforeExit: 0, viaMemcg: 0, reapAttempts: 0, reaped: 0, unableToReap: 0 },
    pressure: {},
    runMs: 0,
  };
}

// ---- text --------------------------------------------------------------------------------------------

const num = (v: number): string => Math.round(v).toLocaleString('en-US');
const us = (v: number): string => (v >= 1000 ? `${(v / 1000).toFixed(2)} ms` : `${v.toFixed(v >= 100 ? 0 : 1)} us`);

function list(o: Record<string, number>, skipZero = true): string {
  return Object.entries(o)
    .filter(([, v]) => !skipZero || v !== 0)
    .map(([key, v]) => `${key} ${num(v)}`)
    .join(', ');
}

/** A violation as the kernel prints it, with the recent events of the tasks it names. */
export function violationText(v: Violation, i = 1, of = 1): string {
  const lines = [`------------[ ${v.kind} ${i}/${of}${v.seed !== null ? ` seed ${v.seed}` : ''} ]------------`, v.message.trimEnd()];
  for (const t of v.tasks) {
    // records that already carry a task's recent events (mirror invariant, liveness) need no second copy
    if (t.recent.length === 0 || v.message.includes(`ns ${t.name}/${t.id} `)) continue;
    lines.push(`  recent events of ${t.name}/${t.id}:`);
    for (const e of t.recent.slice(-6)) lines.push(`    ${e.timeNs}ns #${e.seq} ${e.type} ${e.a} ${e.b} ${e.c}`);
  }
  if (v.replay) lines.push(`  replay: ${v.replay}`);
  return lines.join('\n');
}

/** The summary the command prints. */
export function formatStressSummary(r: StressReport, violations: Violation[]): string {
  const c = r.counters;
  const out: string[] = [];
  const runs = r.scheduler === 'sim' ? `, ${r.runs} seeded run${r.runs === 1 ? '' : 's'} from seed ${r.seed}` : '';
  out.push(`shadowmm stress: ${r.drivers.map((d) => d.name).join(', ')}; ${r.processes} process${r.processes === 1 ? '' : 'es'}, ${r.cpus} CPU task${r.cpus === 1 ? '' : 's'}, ${r.devicesPerDriver} device${r.devicesPerDriver === 1 ? '' : 's'} per driver per process; ${r.scheduler}${runs}; pressure ${r.pressure}; ${r.wallSeconds.toFixed(1)} s`);
  out.push(`  ops: ${num(r.ops.total)} (${num(r.ops.perSecond)}/s): ${num(r.ops.cpu.total)} CPU operations and ${num(r.ops.deviceAccesses)} device page accesses`);
  out.push(`  cpu: ${list(c.cpu, false)}${c.forks.skipped ? ` (${num(c.forks.skipped)} forks skipped: the fork budget bounds task records, which are not recycled)` : ''}`);
  out.push(`  device: ${list(c.device) || '-'}`);
  r.drivers.forEach((d, i) => {
    const p = c.perDriver[i];
    if (!p) return;
    const own = list(p.own);
    out.push(`    ${d.name.padEnd(10)} accesses ${num(p.device.accesses)}, faults ${num(p.device.faults)}, invalidations ${num(p.device.invalidations)}, retries ${num(p.device.retries)}, -EAGAIN ${num(p.device.eagain)}${own ? `; driver: ${own}` : ''}`);
  });
  out.push(`  processes: ${num(c.processes.spawned)} started, ${num(c.processes.exits)} reaped (${num(c.processes.killed)} by SIGKILL); devices ${num(c.devices.opened)} opened, ${num(c.devices.closed)} closed${c.devices.errors ? `, ${num(c.devices.errors)} failed` : ''}`);
  if (r.pressure === 'oom' || c.oom.kills > 0) {
    out.push(`  oom: ${num(c.oom.rounds)} rounds, ${num(c.oom.kills)} victims killed${c.oom.viaMemcg ? ` (${num(c.oom.viaMemcg)} by memory.max)` : ''}, reaper: ${num(c.oom.reapAttempts)} attempts, ${num(c.oom.reaped)} reaped, ${num(c.oom.unableToReap)} unable to reap${c.processes.respawnSkipped ? `; ${num(c.processes.respawnSkipped)} respawns skipped (no task records left)` : ''}`);
  }
  const pr = list(c.pressure);
  if (pr) out.push(`  memory: ${pr}`);
  const lat = LATENCY_KINDS.map((kd) => {
    const l = r.latency[kd];
    const name = kd.replace('_', ' ');
    return l.samples === 0 ? `${name} -` : `${name} p50 ${us(l.p50_us)} p99 ${us(l.p99_us)} (${num(l.samples)})`;
  });
  out.push(`  latency: ${lat.join('; ')}${r.latency.lostEvents > 0 ? ` [sampled: ${num(r.latency.lostEvents)} events overwritten before they were read]` : ''}`);
  for (const wv of r.warnings) out.push(`  warning: [${wv.kind}] ${wv.message.split('\n')[0]}`);
  for (const kv of r.known) out.push(`  known: ${kv.driver} ${kv.kind} x${kv.count}, not counted: ${kv.why}`);
  if (violations.length === 0) {
    out.push('  violations: none');
  } else {
    const kinds: Record<string, number> = {};
    for (const v of violations) kinds[v.kind] = (kinds[v.kind] ?? 0) + 1;
    out.push(`  violations: ${violations.length} (${list(kinds)})`);
    const shown = violations.slice(0, 8);
    shown.forEach((v, i) => out.push('', violationText(v, i + 1, violations.length)));
    if (violations.length > shown.length) out.push('', `  ... and ${violations.length - shown.length} more (--report for all)`);
  }
  out.push('', `rerun: ${r.replay}`);
  if (r.trace) out.push(`trace: ${r.trace} (open in ui.perfetto.dev)`);
  return out.join('\n');
}
