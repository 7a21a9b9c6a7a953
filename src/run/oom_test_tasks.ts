// The tasks of `shadowmm oom-test` (a module, so `threads` workers load them): the victim
// process and the control kthread. The victim maps and writes memory, opens a device of the
// driver under test on its mm (the driver's stress adapter) and lets the device fault the
// pages in through the driver; then it sits where SIGKILL is not noticed, as a task stuck in
// the kernel would, so the oom_reaper, not the exit, has to take its memory. The control
// kthread puts the victim in a memcg, forces the memcg OOM (memory.max below its usage; if that
// kills nothing, the OOM of that pid), waits for the reaper to finish with the mm (reaped, or
// "unable to reap"), lets the victim die, reaps it and closes its device (exit_files), and
// records each step's numbers in OomTestL for the summary.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { defineStruct } from '../shm/layout.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap } from '../mm/mmap.js';
import { mm_flags_test } from '../mm/mm_inline.js';
import { inject_oom } from '../mm/fault_inject.js';
import { cgroup_mkdir, cgroup_procs_write, memcgStats } from '../mm/memcontrol_files.js';
import { oom_reaper_stop, oomStats } from '../mm/oom_kill.js';
import { ProcL, cond_resched, spawn_process, waitpid, type ProcessContext } from '../mm/process.js';
import { put_user } from '../mm/uaccess.js';
import { MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MmL } from '../mm/types.js';
import { device_close, device_stop } from '../device/file.js';
import { deviceStats } from '../device/device.js';
import { shadowEntries } from '../device/spt.js';
import { device_check_all } from '../device/check.js';
import { STRESS_PRIV_WORDS } from '../device/stress_adapter.js';
import { splat } from '../sched/splat.js';
import { adapterOf, bump, n, waitAtLeast, type StressDriverRef } from './stress_tasks.js';

export const OOM_TEST_TASKS = fileURLToPath(import.meta.url);
const MS = 1e6;

/** every number the summary prints */
export const OomTestL = defineStruct('oom_test', {
  priv: STRESS_PRIV_WORDS,
  handle: 1,
  memcg: 1,
  pid: 1,
  mm: 1,
  dev: 1,
  ready: 1, // 1: set up; -1: setup failed
  go: 1, // the victim may die
  mapped: 1, // pages written
  rss_before: 1,
  usage_before: 1, // memory.current, pages
  spte_before: 1, // shadow PTEs of the device before the OOM
  dev_accesses: 1,
  dev_faults: 1,
  dev_installs: 1,
  max_set: 1, // the memory.max written, pages (-1: none)
  max_done: 1,
  how: 1, // 1 memcg OOM, 2 out_of_memory of the pid (fault injection), 0 nobody killed
  inject_ret: 1,
  skip: 1, // MMF_OOM_SKIP seen before the victim could exit
  unstable: 1, // MMF_UNSTABLE
  rss_after: 1, // the victim's anon rss after the reaper
  spte_after: 1,
  dev_invalidations: 1, // of the device, up to the reaper's end
  dev_eagain: 1,
  reap_attempts: 1,
  reaped: 1,
  unable: 1,
  exit_signal: 1,
  exit_code: 1,
  bad_sptes: 1, // device_check_all after the exit
  close_ret: 1,
  done: 1,
});

export interface OomTestArgs {
  ctl: number;
  driver: StressDriverRef;
  base: number;
  npages: number;
  engines: number;
  duty: number;
  seed: number;
}

/** The victim process: memory, a device faulting it in, then stuck until told to go. */
export async function oomTestVictim({ k, mm, args: a }: ProcessContext<OomTestArgs>): Promise<void> {
  const w = k.arena.i32;
  const c = a.ctl;
  const ps = k.mmLayer.pageSize;
  let dev = 0;
  try {
    const m = await n(vm_mmap(mm, a.base, a.npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
    if (m !== a.base) throw new Error(`mmap ${m}`);
    for (let i = 0; i < a.npages; i++) if ((await n(put_user(i + 1, a.base + i * ps))) === 0) w[c + OomTestL.mapped]++;
    const ad = await adapterOf(a.driver);
    dev = await n(ad.open({ k, mm, base: a.base, npages: a.npages, name: `${a.driver.name}.victim`, handle: w[c + OomTestL.handle], priv: c + OomTestL.priv }));
    if (!(dev > 0)) throw new Error(`${ad.driver}: open ${dev}`);
    w[c + OomTestL.dev] = dev;
    w[c + OomTestL.mm] = mm;
    await n(ad.start({ k, dev, priv: c + OomTestL.priv, base: a.base, npages: a.npages, engines: a.engines, seed: a.seed, stopWord: c + OomTestL.go, duty: a.duty, spawner: k.sched, handle: w[c + OomTestL.handle] }));
    // the device faults the pages in through the driver (bounded: a driver may refuse)
    for (let t = 0; t < 2000 && deviceStats(k, dev).accesses < 2 * a.npages; t++) await n(k.sched.sleep(MS));
    w[c + OomTestL.rss_before] = w[mm + MmL.rss_stat + MM_ANONPAGES];
    Atomics.store(w, c + OomTestL.ready, 1);
    k.sched.wake(c + OomTestL.ready, Infinity);
  } catch (e) {
    splat(k, 'stress_error', `oom-test: victim: ${e instanceof Error ? e.message : String(e)}`);
    Atomics.store(w, c + OomTestL.ready, -1);
    k.sched.wake(c + OomTestL.ready, Infinity);
    if (dev > 0) await device_stop(dev);
    return;
  }
  // stuck where SIGKILL is not noticed: the reaper must do the freeing
  await waitAtLeast(k, c + OomTestL.go, 1);
  try {
    await cond_resched(); // SIGKILL noticed here
  } finally {
    await device_stop(dev); // the engines end before the exit tears the mm down
  }
}

function victimMarked(k: Kernel, pid: number): boolean {
  const pool = k.mmLayer.procs;
  return pool.inUse(pid) && k.arena.i32[pool.at(pid) + ProcL.oom_mm] !== 0;
}

/** The control kthread: memcg, OOM, reaper, release, teardown. */
export async function oomTestCtl({ k, args: a }: TaskContext<OomTestArgs>): Promise<void> {
  const w = k.arena.i32;
  const c = a.ctl;
  const ad = await adapterOf(a.driver);
  try {
    const h = ad.init ? await n(ad.init(k)) : 0;
    if (h < 0) throw new Error(`${ad.driver}: init ${h}`);
    w[c + OomTestL.handle] = h;
    const memcg = cgroup_mkdir(k, 'oom-test');
    w[c + OomTestL.memcg] = memcg > 0 ? memcg : 0;
    const pid = spawn_process(k, k.sched, { name: 'victim', module: OOM_TEST_TASKS, fn: 'oomTestVictim', args: a });
    if (pid <= 0) throw new Error(`spawn_process ${pid}`);
    w[c + OomTestL.pid] = pid;
    if (memcg > 0) cgroup_procs_write(k, memcg, pid);
    while (Atomics.load(w, c + OomTestL.ready) === 0) await n(k.sched.wait(c + OomTestL.ready, 0));
    if (w[c + OomTestL.ready] < 0) {
      bump(k, c + OomTestL.go);
      await waitpid(pid);
      return;
    }
    const dev = w[c + OomTestL.dev];
    const mm = w[c + OomTestL.mm];
    const ds = deviceStats(k, dev);
    w[c + OomTestL.spte_before] = shadowEntries(k, dev).length;
    w[c + OomTestL.dev_accesses] = ds.accesses;
    w[c + OomTestL.dev_faults] = ds.faults;
    w[c + OomTestL.dev_installs] = ds.installs;
    w[c + OomTestL.max_set] = -1;
    // the memcg OOM: memory.max below the usage, written by its own kthread (it loops until
    // the usage fits, i.e. until the victim is gone)
    if (memcg > 0) {
      const usage = memcgStats(k, memcg)?.current ?? 0;
      w[c + OomTestL.usage_before] = usage;
      const max = Math.floor(usage / 2);
      w[c + OomTestL.max_set] = max;
      k.sched.spawn({ name: 'memory.max', kind: 'kthread', module: OOM_TEST_TASKS, fn: 'oomTestMemoryMax', args: { memcg, max, done: c + OomTestL.max_done } });
      for (let t = 0; t < 1000 && !victimMarked(k, pid) && Atomics.load(w, c + OomTestL.max_done) === 0; t++) await n(k.sched.sleep(5 * MS));
      if (victimMarked(k, pid)) w[c + OomTestL.how] = 1;
    }
    if (w[c + OomTestL.how] === 0) {
      // no memcg kill: the OOM of that pid
      const r = inject_oom(k, pid);
      w[c + OomTestL.inject_ret] = r;
      if (r === 0) w[c + OomTestL.how] = 2;
    }
    // the oom_reaper: OOM_REAPER_DELAY, then up to MAX_OOM_REAP_RETRIES attempts HZ/10 apart
    for (let t = 0; t < 2000 && !mm_flags_test(MMF_OOM_SKIP, mm); t++) await n(k.sched.sleep(5 * MS));
    w[c + OomTestL.skip] = mm_flags_test(MMF_OOM_SKIP, mm) ? 1 : 0;
    w[c + OomTestL.unstable] = mm_flags_test(MMF_UNSTABLE, mm) ? 1 : 0;
    w[c + OomTestL.rss_after] = w[mm + MmL.rss_stat + MM_ANONPAGES];
    w[c + OomTestL.spte_after] = shadowEntries(k, dev).length;
    const ds2 = deviceStats(k, dev);
    w[c + OomTestL.dev_invalidations] = ds2.invalidations;
    w[c + OomTestL.dev_eagain] = ds2.eagain;
    const os = oomStats(k);
    w[c + OomTestL.reap_attempts] = os.reapAttempts;
    w[c + OomTestL.reaped] = os.reaped;
    w[c + OomTestL.unable] = os.unableToReap;
    // let it die; exit_mm, then exit_files: the last close of the device
    bump(k, c + OomTestL.go);
    const st = await waitpid(pid);
    if (typeof st !== 'number') {
      w[c + OomTestL.exit_signal] = st.signal;
      w[c + OomTestL.exit_code] = st.code;
    }
    w[c + OomTestL.bad_sptes] = device_check_all(k, dev);
    w[c + OomTestL.close_ret] = await n(ad.close ? ad.close(dev, w[c + OomTestL.handle], c + OomTestL.priv) : device_close(dev));
    if (memcg > 0) await waitAtLeast(k, c + OomTestL.max_done, 1, 10_000 * MS);
  } catch (e) {
    splat(k, 'stress_error', `oom-test: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    if (ad.exit && w[c + OomTestL.handle] > 0) await n(ad.exit(k, w[c + OomTestL.handle]));
    oom_reaper_stop(k);
    bump(k, c + OomTestL.done);
  }
}

/** `echo N > memory.max` in its own kthread. */
export { stressMemoryMax as oomTestMemoryMax } from './stress_pressure.js';
