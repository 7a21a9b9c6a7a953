// OOM latency in virtual time under `sim`: from the OOM decision until the victim's memory is
// free, median over seeds. The figures are the kernel's own delays as modelled (reclaim rounds,
// the victim noticing SIGKILL, exit_mmap, OOM_REAPER_DELAY, HZ/10 reap retries, one-jiffy waits
// for an exiting victim), not host speed, and the same for the same seed.
// - oom_to_free_ms: memory.max lowered below a killable member's usage (swap off: reclaim gets
//   nowhere), until memory_max_write returns with usage within the limit;
// - oom_reap_to_free_ms: a global out_of_memory whose victim is stuck where SIGKILL is not
//   noticed, until the oom_reaper ('v5.18' delay) has set MMF_OOM_SKIP and its rss is 0.

import { bootKernel } from '../../src/run/boot.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap } from '../../src/mm/mmap.js';
import { mm_flags_test } from '../../src/mm/mm_inline.js';
import { cond_resched, reap_zombies, spawn_process, waitpid, type ProcessFn } from '../../src/mm/process.js';
import { put_user } from '../../src/mm/uaccess.js';
import { MMF_OOM_SKIP, MM_ANONPAGES, MmL } from '../../src/mm/types.js';
import { oom_reaper, oom_reaper_stop, oom_set_reaper_policy, out_of_memory } from '../../src/mm/oom_kill.js';
import { cgroup_mkdir, cgroup_procs_write, memcgStats, memory_max_write } from '../../src/mm/memcontrol_files.js';
import { median } from './measure.js';

const PAGE = 4096;
const PAGES = 256;
const SEEDS = [1, 2, 3, 4, 5];

export interface OomBench {
  oom_to_free_ms: number;
  oom_reap_to_free_ms: number;
}

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

async function sleepMs(k: Kernel, ms: number): Promise<void> {
  const p = k.sched.sleep(ms * 1e6);
  if (p !== undefined) await p;
}

/** A victim that maps and touches PAGES pages, sets `ready`, then runs `idle`. */
function victimFn(k: Kernel, state: { mm: number; ready: boolean }, idle: () => Promise<void>): ProcessFn {
  return async ({ mm }) => {
    const a = await n(vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
    if (a < 0) throw new Error(`mmap: ${a}`);
    for (let i = 0; i < PAGES; i++) if ((await n(put_user(i + 1, a + i * PAGE))) !== 0) throw new Error('put_user');
    state.mm = mm;
    state.ready = true;
    await idle();
  };
}

async function run(k: Kernel, sim: SimScheduler): Promise<void> {
  const r = await sim.run();
  if (r.status !== 'done' || r.failed.length > 0) throw new Error(`oom bench run: ${r.status} ${JSON.stringify(r.failed)} ${r.report ?? ''}`);
  reap_zombies(k);
}

/** memory.max lowered under a killable member: ms until the write returns. */
async function onceMemcg(seed: number): Promise<number> {
  const k = bootKernel({ lockdep: false, events: false, mem: { pages: PAGES + 256, pageSize: PAGE }, memcg: { groups: 1 } });
  const sim = new SimScheduler(k, { seed });
  sim.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
  const cg = cgroup_mkdir(k, 'bench');
  const st = { mm: 0, ready: false };
  const pid = spawn_process(k, sim, {
    name: 'victim',
    fn: victimFn(k, st, async () => {
      for (;;) {
        await cond_resched();
        await sleepMs(k, 1);
      }
    }),
  });
  cgroup_procs_write(k, cg, pid);
  let ms = -1;
  sim.spawn({
    name: 'ctl',
    kind: 'kthread',
    fn: async () => {
      while (!st.ready) await sleepMs(k, 1);
      const t0 = k.sched.now();
      if ((await n(memory_max_write(k, cg, 1))) !== 0) throw new Error('memory_max_write');
      if (memcgStats(k, cg)!.current > 1) throw new Error('usage still over the limit');
      ms = (k.sched.now() - t0) / 1e6;
      await waitpid(pid);
      oom_reaper_stop(k);
    },
  });
  await run(k, sim);
  return ms;
}

/** A global OOM of a victim stuck where SIGKILL is not noticed: ms until reaped. */
async function onceReap(seed: number): Promise<number> {
  const k = bootKernel({ lockdep: false, events: false, mem: { pages: PAGES + 256, pageSize: PAGE } });
  oom_set_reaper_policy(k, 'v5.18');
  const sim = new SimScheduler(k, { seed });
  sim.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
  const st = { mm: 0, ready: false };
  let go = false;
  const pid = spawn_process(k, sim, {
    name: 'victim',
    fn: victimFn(k, st, async () => {
      while (!go) await sleepMs(k, 1); // not killable here
      await cond_resched();
    }),
  });
  let ms = -1;
  sim.spawn({
    name: 'ctl',
    kind: 'kthread',
    fn: async () => {
      while (!st.ready) await sleepMs(k, 1);
      const t0 = k.sched.now();
      if (out_of_memory(k) !== pid) throw new Error('out_of_memory chose another victim');
      const w = k.arena.i32;
      while (!mm_flags_test(MMF_OOM_SKIP, st.mm) || w[st.mm + MmL.rss_stat + MM_ANONPAGES] !== 0) await sleepMs(k, 1);
      ms = (k.sched.now() - t0) / 1e6;
      go = true;
      await waitpid(pid);
      oom_reaper_stop(k);
    },
  });
  await run(k, sim);
  return ms;
}

export async function benchOom(): Promise<OomBench> {
  const memcg: number[] = [];
  const reap: number[] = [];
  for (const seed of SEEDS) {
    memcg.push(await onceMemcg(seed));
    reap.push(await onceReap(seed));
  }
  return { oom_to_free_ms: Math.round(median(memcg) * 1000) / 1000, oom_reap_to_free_ms: Math.round(median(reap) * 10) / 10 };
}
