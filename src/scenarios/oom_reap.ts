// oom-reap: reference §5, §9 scenarios 15, 25 and 26 with the odp driver, the way the 2018
// oom_reaper thread suggests faking an OOM: lower memory.max under driver-managed memory.
// A process in memcg "job" registers an ODP MR over its buffer; a QP (its RDMA engine) runs
// work requests against it. A driver task (an ODP page fault stalled on the HCA) holds
// umem_mutex. The admin then writes memory.max below the group's usage: memcg reclaim gets
// nowhere (no swap), MAX_RECLAIM_RETRIES rounds later the memcg OOM killer picks the process,
// and the oom_reaper's non-blockable UNMAP of its VMA meets the busy umem_mutex, retrying
// HZ/10 apart:
// - 'reaped': the fault releases umem_mutex after 3 refused attempts; the next one reaps.
//   MMF_UNSTABLE: a later device fault on the victim is -EFAULT (§9.25).
// - 'unable': umem_mutex is held past MAX_OOM_REAP_RETRIES: "unable to reap" with the held
//   locks, MMF_OOM_SKIP; memory.max returns over the limit (nobody else to kill).
// - 'no-trylock': today's mlx5/rxe refuse every non-blockable invalidation, free lock or not
//   ('reaped' and 'unable' use the v4.19-v5.4 trylock, ODP_NONBLOCK_TRYLOCK): unable to reap.
// The victim sits in an uninterruptible wait (why the reaper exists) until the outcome is
// known, then dies; the MR is closed after its exit (exit_files after exit_mm). Nothing leaks
// and the memcg's usage is back to 0.

import { defineScenario } from '../run/scenario.js';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { defineStruct } from '../shm/layout.js';
import { EFAULT } from '../shm/errno.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap } from '../mm/mmap.js';
import { mm_flags_test } from '../mm/mm_inline.js';
import { pte_lookup } from '../mm/mm_pt.js';
import { pte_present } from '../mm/pgtable.js';
import { SIGKILL } from '../mm/memory.js';
import { cond_resched, waitpid, type ProcessContext } from '../mm/process.js';
import { put_user } from '../mm/uaccess.js';
import { MMF_OOM_SKIP, MMF_UNSTABLE, MmL } from '../mm/types.js';
import { MAX_OOM_REAP_RETRIES, oomStats } from '../mm/oom_kill.js';
import { cgroup_mkdir, cgroup_procs_write, memcgStats, memory_max_write } from '../mm/memcontrol_files.js';
import { shadowEntries } from '../device/index.js';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  ODP_NONBLOCK_TRYLOCK,
  QpResL,
  ib_advise_mr,
  ib_dereg_mr,
  ib_reg_mr,
  odpStats,
  odp_lock,
  odp_unlock,
  spawnRdmaQp,
} from '../../drivers/odp/index.js';
import { settle as n, waitAtLeast, raise } from '../run/words.js';

export const OrL = defineStruct('oom_reap_ctl', {
  addr: 2, // f64: the buffer (Float64 fields first: even offsets)
  qp: QpResL.$size, // the QP's completions
  setup: 1, // 0 ok, else the failing step's errno
  mm: 1,
  mr: 1,
  ready: 1, // the app is set up and stuck
  held: 1, // the fault holds umem_mutex
  qp_stop: 1,
  free_app: 1, // the app leaves its uninterruptible wait (and dies)
  // observations
  max_ret: 1,
  usage_before: 1,
  usage_after_write: 1,
  kills: 1,
  attempts: 1,
  unable: 1,
  reaped: 1,
  first_ms: 1,
  last_ms: 1,
  refused: 1, // the MR's non-blockable invalidations refused
  unstable: 1,
  present_after: 1, // buffer pages still mapped once the reaper is done
  shadow_after: 1, // MTT entries left
  dev_fault: 1, // a device fault (prefetch) on the first page afterwards
  exit_signal: 1,
  dereg: 1,
  usage_end: 1,
  done: 1,
});

export interface OomReapArgs {
  /** pages of the buffer the MR covers */
  pages: number;
  /** memory.max written at run time, in pages (below `pages`) */
  maxPages: number;
  /** umem_mutex is released once the reaper failed this many times; 0: held until the reaper gives up */
  releaseAfterAttempts: number;
  /** ODP_* policy bits of the MR */
  odpFlags: number;
}

type Ctx = OomReapArgs & { ctl: number; memcg: number };

const sleepMs = async (k: Kernel, ms: number): Promise<void> => void (await k.sched.sleep(ms * 1e6));

async function until(k: Kernel, cond: () => boolean): Promise<void> {
  while (!cond()) await sleepMs(k, 5);
}

const ODP_ACCESS = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ;

function presentPages(k: Kernel, mm: number, a: number, pages: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  let c = 0;
  for (let i = 0; i < pages; i++) {
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, a + i * k.mmLayer.pageSize);
    if (slot >= 0 && pte_present(k.arena.i32[slot])) c++;
  }
  return c;
}

export default defineScenario<OomReapArgs, { ctl: number; memcg: number; pid: number }>({
  name: 'oom-reap',
  description: "memory.max lowered under an ODP MR: memcg OOM, the reaper's non-blockable UNMAP meets a held umem_mutex, retries, reaps or gives up (§9.15, §9.25, §9.26)",
  config: {
    maxTasks: 24,
    lockClasses: 128,
    lockdepEdges: 2048,
    eventRecords: 1 << 15,
    klogBytes: 1 << 18,
    strings: 512,
    stringBytes: 16384,
    kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 16 },
    mem: { pages: 256, pageSize: 4096 },
    mm: { pgtables: 64, vmas: 64, procs: 8 },
    memcg: { groups: 2 },
    device: { devices: 4, sptDirs: 16, sptLeaves: 16 },
  },
  drivers: ['odp'],
  args: { pages: 16, maxPages: 4, releaseAfterAttempts: 3, odpFlags: ODP_NONBLOCK_TRYLOCK },
  variants: {
    reaped: {
      description: 'umem_mutex released after 3 refused attempts: the 4th reaps; a device fault afterwards is -EFAULT (MMF_UNSTABLE)',
      args: { releaseAfterAttempts: 3 },
    },
    unable: {
      description: `umem_mutex held past ${MAX_OOM_REAP_RETRIES} attempts: "unable to reap" with the held locks; the victim frees its memory when it exits`,
      args: { releaseAfterAttempts: 0 },
      expect: { violations: ['oom_unable_to_reap'] },
    },
    'no-trylock': {
      description: "today's mlx5/rxe: every non-blockable invalidation refused, even with umem_mutex free after 3 attempts: unable to reap",
      args: { releaseAfterAttempts: 3, odpFlags: 0 },
      expect: { violations: ['oom_unable_to_reap'] },
    },
  },
  services: ['oom_reaper'],
  limits: { threadsTimeMs: 30_000 },
  start(ctx) {
    const ctl = ctx.alloc(OrL.$size);
    const memcg = cgroup_mkdir(ctx.k, 'job');
    if (memcg < 0) throw new Error(`mkdir /job: ${memcg}`);
    const args: Ctx = { ...ctx.args, ctl, memcg };
    const pid = ctx.process({ name: 'app', fn: 'orApp', args });
    const r = cgroup_procs_write(ctx.k, memcg, pid); // echo $pid > /job/cgroup.procs, before it runs
    if (r !== 0) throw new Error(`cgroup.procs: ${r}`);
    ctx.spawn({ name: 'odp-pf', fn: 'orFault', args });
    ctx.spawn({ name: 'admin', fn: 'orAdmin', args: { ...args, pid } });
    return { ctl, memcg, pid };
  },
  check(end) {
    const g = (f: keyof typeof OrL.$fields): number => end.word(end.state.ctl + OrL[f]);
    const { args, state } = end;
    if (g('setup') !== 0) return [`setup failed with ${g('setup')}`];
    if (g('done') !== 1) return ['the admin did not finish'];
    const out: string[] = [];
    const reaped = end.variant === 'reaped';
    if (g('max_ret') !== 0) out.push(`memory.max write returned ${g('max_ret')}`);
    if (g('usage_before') !== args.pages) out.push(`memory.current before the write is ${g('usage_before')}, expected ${args.pages}`);
    if (g('kills') !== 1) out.push(`${g('kills')} OOM kills, expected 1`);
    const kill = end.log.find((x) => x.kind === 'oom_kill' && x.text.includes('Killed process'));
    if (!kill || !kill.text.includes(`oom_memcg=/job,task_memcg=/job,task=app,pid=${state.pid}`) || !kill.text.includes(`Memory cgroup out of memory: Killed process ${state.pid} (app)`)) out.push(`no memcg OOM kill of app (pid ${state.pid}) in the log`);
    // the reaper retried HZ/10 apart (schedule_timeout_idle: never shorter)
    const attempts = g('attempts');
    const gap = attempts > 1 ? (g('last_ms') - g('first_ms')) / (attempts - 1) : 0;
    if (attempts < 2 || gap < 99 || (end.scheduler === 'sim' && gap > 101)) out.push(`the reaper made ${attempts} attempt(s) ${gap.toFixed(1)} ms apart; expected retries HZ/10 (100 ms) apart`);
    if (g('unstable') !== 1) out.push('MMF_UNSTABLE is not set on the victim');
    if (reaped) {
      if (attempts < args.releaseAfterAttempts + 1 || attempts >= MAX_OOM_REAP_RETRIES || g('reaped') !== 1 || g('unable') !== 0) out.push(`reaped: ${attempts} attempts, reaped ${g('reaped')}, unable ${g('unable')}; expected success after the lock was released`);
      if (g('refused') !== attempts - 1) out.push(`reaped: the MR refused ${g('refused')} non-blockable invalidations over ${attempts} attempts; expected one per failed attempt`);
      if (g('usage_after_write') > args.maxPages) out.push(`reaped: memory.current is ${g('usage_after_write')} when memory.max returned, above ${args.maxPages}`);
      if (g('present_after') !== 0 || g('shadow_after') !== 0) out.push(`reaped: ${g('present_after')} pages still mapped and ${g('shadow_after')} MTT entries left after reaping`);
      if (g('dev_fault') !== -EFAULT) out.push(`§9.25: a device fault on the reaped victim returned ${g('dev_fault')}, expected -EFAULT`);
      if (end.log.some((x) => x.kind === 'oom_reaper' && x.text.startsWith(`oom_reaper: reaped process ${state.pid} (app), now anon-rss:0kB`)) === false) out.push('no "oom_reaper: reaped process" line');
    } else {
      if (attempts !== MAX_OOM_REAP_RETRIES || g('unable') !== 1 || g('reaped') !== 0) out.push(`${end.variant}: ${attempts} attempts, unable ${g('unable')}, reaped ${g('reaped')}; expected ${MAX_OOM_REAP_RETRIES} failed attempts and "unable to reap"`);
      if (g('refused') !== MAX_OOM_REAP_RETRIES) out.push(`${end.variant}: the MR refused ${g('refused')} non-blockable invalidations, expected ${MAX_OOM_REAP_RETRIES}`);
      if (g('present_after') !== args.pages || g('shadow_after') !== args.pages) out.push(`${end.variant}: the skipped VMA should keep its PTEs and MTT entries: ${g('present_after')} mapped, ${g('shadow_after')} MTT entries`);
      if (g('dev_fault') !== 0) out.push(`${end.variant}: a device fault served by the MTT the reaper had to leave returned ${g('dev_fault')}`);
      const rep = end.log.find((x) => x.kind === 'oom_unable_to_reap');
      if (!rep || !rep.text.startsWith(`oom_reaper: unable to reap pid:${state.pid} (app)`)) out.push('no "oom_reaper: unable to reap" report for app');
      else if (end.variant === 'unable' && !/umem_mutex[\s\S]*held by odp-pf|held by odp-pf[\s\S]*umem_mutex/.test(rep.text)) out.push('the "unable to reap" report does not show umem_mutex held by odp-pf');
    }
    if (g('exit_signal') !== SIGKILL) out.push(`the app exited with signal ${g('exit_signal')}, expected SIGKILL`);
    if (g('dereg') !== 0) out.push(`ib_dereg_mr after the exit returned ${g('dereg')}`);
    const st = memcgStats(end.k, state.memcg);
    if (g('usage_end') !== 0 || !st || st.current !== 0) out.push(`the memcg's usage is ${st?.current} at the end (${g('usage_end')} after the exit), expected 0`);
    if (st && (st.events.oom_kill !== 1 || st.events.oom < 1)) out.push(`memory.events: oom ${st.events.oom}, oom_kill ${st.events.oom_kill}; expected an OOM and one kill`);
    return out;
  },
});

/** The process: its buffer, the MR, a QP on it; then it is stuck uninterruptibly until let go. */
export async function orApp({ k, mm, args }: ProcessContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const N = args.pages;
  const a = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (a < 0) return raise(k, c + OrL.setup, a);
  for (let i = 0; i < N; i++) await n(put_user(i + 1, a + i * ps));
  const mr = await ib_reg_mr({ addr: a, length: N * ps, access: ODP_ACCESS, odpFlags: args.odpFlags });
  if (mr < 0) return raise(k, c + OrL.setup, mr);
  spawnRdmaQp(k, k.sched, { dev: mr, start: a, npages: N, wrs: 1 << 30, wrPages: 2, duty: 0.5, pageNs: 1_000_000, resultAt: c + OrL.qp, stopWord: c + OrL.qp_stop, seed: 7 });
  // the QP is running on the MR
  while (Atomics.load(w, c + OrL.qp + QpResL.wr_ok) < 4) await sleepMs(k, 1);
  k.arena.f64[(c + OrL.addr) >> 1] = a;
  w[c + OrL.mm] = mm;
  w[c + OrL.mr] = mr;
  raise(k, c + OrL.ready, 1);
  await waitAtLeast(k, c + OrL.free_app, 1); // D state: SIGKILL is not noticed here
  for (;;) await cond_resched(); // dies here
}

/** An ODP page fault stalled with umem_mutex held, across the OOM. */
export async function orFault({ k, args }: TaskContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  await waitAtLeast(k, c + OrL.ready, 1);
  const mr = w[c + OrL.mr];
  const mm = w[c + OrL.mm];
  await n(odp_lock(mr));
  raise(k, c + OrL.held, 1);
  if (args.releaseAfterAttempts > 0) await until(k, () => oomStats(k).reapAttempts >= args.releaseAfterAttempts);
  else await until(k, () => mm_flags_test(MMF_OOM_SKIP, mm));
  odp_unlock(mr);
}

/** echo 16K > /job/memory.max, then watch the outcome, let the victim die, close its MR. */
export async function orAdmin({ k, args }: TaskContext<Ctx & { pid: number }>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  await waitAtLeast(k, c + OrL.held, 1);
  const mm = w[c + OrL.mm];
  const mr = w[c + OrL.mr];
  const a = k.arena.f64[(c + OrL.addr) >> 1];
  w[c + OrL.usage_before] = memcgStats(k, args.memcg)!.current;
  w[c + OrL.max_ret] = await n(memory_max_write(k, args.memcg, args.maxPages));
  w[c + OrL.usage_after_write] = memcgStats(k, args.memcg)!.current;
  await until(k, () => mm_flags_test(MMF_OOM_SKIP, mm)); // the reaper is done with it
  const st = oomStats(k);
  w[c + OrL.kills] = st.kills;
  w[c + OrL.attempts] = st.reapAttempts;
  w[c + OrL.unable] = st.unableToReap;
  w[c + OrL.reaped] = st.reaped;
  w[c + OrL.first_ms] = st.firstAttemptMs;
  w[c + OrL.last_ms] = st.lastAttemptMs;
  w[c + OrL.refused] = odpStats(k, mr).nonblock_refused;
  w[c + OrL.unstable] = mm_flags_test(MMF_UNSTABLE, mm) ? 1 : 0;
  w[c + OrL.present_after] = presentPages(k, mm, a, args.pages);
  w[c + OrL.shadow_after] = shadowEntries(k, mr).length;
  // §9.25: a device fault on the victim
  w[c + OrL.dev_fault] = await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [{ addr: a, length: ps }]);
  raise(k, c + OrL.qp_stop, 1);
  await waitAtLeast(k, c + OrL.qp + QpResL.done, 1);
  raise(k, c + OrL.free_app, 1);
  const r = await waitpid(args.pid);
  w[c + OrL.exit_signal] = typeof r === 'number' ? r : r.signal;
  // exit_files after exit_mm: the uverbs file's release deregisters the MR
  w[c + OrL.dereg] = await ib_dereg_mr(mr);
  w[c + OrL.usage_end] = memcgStats(k, args.memcg)!.current;
  raise(k, c + OrL.done, 1);
}
