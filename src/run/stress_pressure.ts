// Memory pressure for `shadowmm stress` (and the OOM step of `shadowmm oom-test`): what the
// kernel is booted with, which kthreads run, and how the OOM of a worker is triggered.
//
// - reclaim: every worker process in its own memcg whose memory.max is below the process's
//   window, so its faults keep reclaiming inside the group (try_to_free_mem_cgroup_pages: the
//   blockable CLEAR invalidations of reclaim reach every mirror) and swapping; a zone smaller
//   than all the work wants, with reclaim on, so kswapd and direct reclaim run too; a swap area.
// - oom: every worker in its own memcg, no swap. A round's OOM alternates between the memcg
//   OOM (a `memory.max` writer kthread sets the limit below the group's usage: reclaim cannot
//   free anonymous memory without swap, so the kernel's memcg OOM killer picks the process)
//   and the fault-injection OOM of that pid (inject_oom). The oom_reaper runs at once (the
//   v4.6 policy), so each victim, frozen by the harness, meets the drivers under the reaper's
//   non-blockable invalidations rather than exiting first.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext, TaskSpec } from '../sched/scheduler.js';
import { oom_set_reaper_policy } from '../mm/oom_kill.js';
import { inject_oom } from '../mm/fault_inject.js';
import { cgroup_mkdir, cgroup_procs_write, memcgStats, memory_max_write } from '../mm/memcontrol_files.js';
import { ProcL } from '../mm/process.js';
import { kswapd_stop, vmscanModule, vmstat } from '../mm/vmscan.js';
import { swapStats } from '../mm/swapfile.js';
import type { BootConfig } from './boot.js';
import { MAX_SLOTS, SlotL, StressCtlL, bump, n, slotAt, waitAtLeast, type StressTaskArgs } from './stress_tasks.js';

type Pressure = 'none' | 'reclaim' | 'oom';

const MS = 1e6;
const thisModule = (): string => fileURLToPath(import.meta.url);

/** The boot config a pressure mode needs. `workingSet`: the pages all processes want. */
export function pressureBootConfig(cfg: BootConfig, pressure: Pressure, workingSet: number): BootConfig {
  if (pressure === 'none') return cfg;
  const out: BootConfig = { ...cfg, memcg: { groups: MAX_SLOTS + 2 } };
  if (pressure === 'reclaim') {
    const pages = Math.max(256, Math.round(workingSet * 0.75));
    out.mem = { pages, pageSize: cfg.mem?.pageSize ?? 4096, reclaim: true, min: 8, low: 16, high: 32 };
    out.swap = { slots: 4 * pages };
  }
  return out;
}

/** Kernel threads the pressure mode runs beside the oom_reaper: kswapd under reclaim. */
export function pressureServices(pressure: Pressure): TaskSpec[] {
  return pressure === 'reclaim' ? [{ name: 'kswapd0', kind: 'kthread', module: vmscanModule(), fn: 'kswapd' }] : [];
}

/** From the control kthread before the first process: the memcgs, the reaper's policy. */
export async function pressureStart(k: Kernel, a: StressTaskArgs): Promise<void> {
  if (a.pressure === 'none') return;
  if (a.pressure === 'oom') oom_set_reaper_policy(k, 'v4.6');
  const w = k.arena.i32;
  for (let s = 0; s < a.threads.length; s++) {
    const id = cgroup_mkdir(k, `w${s}`);
    if (id <= 0) throw new Error(`stress: cgroup_mkdir w${s}: ${id}`);
    w[a.ctl + StressCtlL.memcgs + s] = id;
    // reclaim: a limit below the window, so the group reclaims (and swaps) all the time
    if (a.pressure === 'reclaim') await n(memory_max_write(k, id, Math.max(8, Math.floor((a.npages * 3) / 4))));
  }
}

/** A new worker process in slot s: into its memcg. */
export function pressureSlot(k: Kernel, a: StressTaskArgs, s: number, pid: number): void {
  const memcg = k.arena.i32[a.ctl + StressCtlL.memcgs + s];
  if (memcg <= 0) return;
  const r = cgroup_procs_write(k, memcg, pid);
  if (r !== 0) throw new Error(`stress: cgroup.procs of w${s} <- ${pid}: ${r}`);
  k.arena.i32[slotAt(a, s) + SlotL.memcg] = memcg;
}

/** Has `pid` been chosen by the OOM killer (marked as a victim, SIGKILL sent)? */
function oomVictim(k: Kernel, pid: number): boolean {
  const pool = k.mmLayer.procs;
  return pool.inUse(pid) && k.arena.i32[pool.at(pid) + ProcL.oom_mm] !== 0;
}

/**
 * Make `pid` (the process of slot s, frozen) an OOM victim: by memory.max (even rounds, when
 * the slot has a memcg) or by the OOM of that pid. The pid the OOM killed (0 if none), and how.
 */
export async function oomVictimOf(k: Kernel, a: StressTaskArgs, s: number, pid: number): Promise<{ victim: number; how: 'memcg' | 'inject' }> {
  const w = k.arena.i32;
  const c = a.ctl;
  const memcg = w[slotAt(a, s) + SlotL.memcg];
  const round = w[c + StressCtlL.oom_rounds];
  if (memcg > 0 && (round + a.seed) % 2 === 1) {
    const st = memcgStats(k, memcg);
    const max = Math.max(0, Math.floor((st?.current ?? 0) / 2));
    w[c + StressCtlL.max_done] = 0;
    k.sched.spawn({ name: `memory.max:w${s}`, kind: 'kthread', module: thisModule(), fn: 'stressMemoryMax', args: { memcg, max, done: c + StressCtlL.max_done } });
    // the writer reclaims first (MAX_RECLAIM_RETRIES rounds), then the memcg OOM killer picks
    for (let t = 0; t < 400 && !oomVictim(k, pid) && Atomics.load(w, c + StressCtlL.max_done) === 0; t++) await n(k.sched.sleep(5 * MS));
    return { victim: oomVictim(k, pid) ? pid : 0, how: 'memcg' };
  }
  const r = inject_oom(k, pid);
  return { victim: r === 0 ? pid : 0, how: 'inject' };
}

/** After the round's victim was reaped: wait for the memory.max writer, lift the limit. */
export async function oomRoundEnd(k: Kernel, a: StressTaskArgs, s: number, how: 'memcg' | 'inject'): Promise<void> {
  if (how !== 'memcg') return;
  const w = k.arena.i32;
  await waitAtLeast(k, a.ctl + StressCtlL.max_done, 1, 10_000 * MS);
  const memcg = w[slotAt(a, s) + SlotL.memcg];
  await n(memory_max_write(k, memcg, 'max'));
}

/** The `echo N > memory.max` of an OOM round, in its own kthread: it may loop until the victim is gone. */
export async function stressMemoryMax({ k, args }: TaskContext<{ memcg: number; max: number; done: number }>): Promise<void> {
  try {
    await n(memory_max_write(k, args.memcg, args.max));
  } finally {
    bump(k, args.done);
  }
}

/** From the control kthread after the last process: stop what pressureStart started. */
export async function pressureEnd(k: Kernel, a: StressTaskArgs): Promise<void> {
  if (a.pressure === 'reclaim') kswapd_stop(k);
}

/** Counters of the pressure layers for the summary: reclaim, swap, memcg events. */
export function pressureCounters(k: Kernel): Record<string, number> {
  const out: Record<string, number> = {};
  if (k.config.mem?.reclaim) {
    const v = vmstat(k);
    Object.assign(out, { pgscan_kswapd: v.pgscan_kswapd, pgscan_direct: v.pgscan_direct, pgsteal_kswapd: v.pgsteal_kswapd, pgsteal_direct: v.pgsteal_direct, allocstall: v.allocstall, kswapd_runs: v.pageoutrun, pinned_kept: v.pinned_kept });
  }
  if ((k.config.swap?.slots ?? 0) > 0) {
    const s = swapStats(k);
    Object.assign(out, { pswpout: s.pswpout, pswpin: s.pswpin, swap_full: s.allocFail, lost_writes: s.lostWrites });
  }
  const groups = k.config.memcg?.groups ?? 0;
  let max = 0;
  let oom = 0;
  let kill = 0;
  for (let id = 1; id <= groups; id++) {
    const st = memcgStats(k, id);
    if (!st) continue;
    max += st.events.max;
    oom += st.events.oom;
    kill += st.events.oom_kill;
  }
  if (groups > 0) Object.assign(out, { memcg_max_events: max, memcg_oom: oom, memcg_oom_kill: kill });
  return out;
}
