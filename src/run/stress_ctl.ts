// The control kthread of `shadowmm stress` (a task export): it loads each driver's module
// state (the adapters' init), starts the worker processes, runs the OOM rounds under
// `--pressure oom`, and at the end reaps every process and closes its devices, as exit_files
// would: after the process's exit tore its address space down, so the check of every shadow
// PTE against the (now empty) host page table finds any entry a release or UNMAP did not zap.
//
// An OOM round: freeze the victim's CPU threads where SIGKILL is not noticed (so the reaper,
// not the exit, frees the memory), trigger the OOM (stress_pressure.ts: memory.max lowered
// under the victim's usage, or the OOM of that pid), wait until the oom_reaper is done with the
// mm (MMF_OOM_SKIP: reaped, or "unable to reap"), let the threads go and die, reap the process,
// close its devices, and start a new process in its slot.

import type { TaskContext } from '../sched/scheduler.js';
import type { Kernel } from '../sched/kernel.js';
import { mm_flags_test } from '../mm/mm_inline.js';
import { oom_reaper_stop } from '../mm/oom_kill.js';
import { ProcL, spawn_process, waitpid } from '../mm/process.js';
import { MMF_OOM_SKIP } from '../mm/types.js';
import { device_close } from '../device/file.js';
import { deviceStats } from '../device/device.js';
import { device_check_all } from '../device/check.js';
import { DEV_STAT_NAMES } from '../device/types.js';
import { STRESS_PRIV_WORDS } from '../device/stress_adapter.js';
import { oomRoundEnd, oomVictimOf, pressureEnd, pressureSlot, pressureStart } from './stress_pressure.js';
import { scanLatency } from '../check/latency.js';
import { MAX_DRV_STATS, STRESS_TASKS, SlotL, StressCtlL, adapterOf, bump, n, slotAt, stressError, waitAtLeast, type StressTaskArgs, type WorkerArgs } from './stress_tasks.js';

const MS = 1e6;

async function sleepMs(k: Kernel, ms: number): Promise<void> {
  await n(k.sched.sleep(ms * MS));
}

/** Start a worker process in slot s (gen: how many ran there before); false if it could not. */
function spawnSlot(k: Kernel, a: StressTaskArgs, s: number, gen: number, ops: number): boolean {
  const w = k.arena.i32;
  const sw = slotAt(a, s);
  w.fill(0, sw, sw + SlotL.$size);
  w[sw + SlotL.gen] = gen;
  w[sw + SlotL.live] = a.threads[s];
  const args: WorkerArgs = { ...a, slot: s, gen, ops };
  const pid = spawn_process(k, k.sched, { name: `w${s}`, module: STRESS_TASKS, fn: 'stressWorker', args, threads: a.threads[s] });
  if (pid <= 0) {
    stressError(k, a.ctl, `spawn_process of worker ${s}: ${pid}`);
    return false;
  }
  w[sw + SlotL.pid] = pid;
  w[sw + SlotL.mm] = w[k.mmLayer.procs.at(pid) + ProcL.mm];
  bump(k, a.ctl + StressCtlL.spawned);
  pressureSlot(k, a, s, pid);
  return true;
}

/** Add one device's counters (and its driver's own) to the run's. */
function gather(k: Kernel, a: StressTaskArgs, d: number, dev: number, own: Record<string, number> | undefined): void {
  const w = k.arena.i32;
  const c = a.ctl;
  const ds = deviceStats(k, dev);
  DEV_STAT_NAMES.forEach((name, i) => (w[c + StressCtlL.dev_stats + d * DEV_STAT_NAMES.length + i] += ds[name]));
  for (const [name, v] of Object.entries(own ?? {})) {
    if (typeof v !== 'number' || !Number.isFinite(v)) continue;
    const id = k.strings.intern(name);
    for (let r = 0; r < MAX_DRV_STATS; r++) {
      const at = c + StressCtlL.drv_stats + r * 3;
      if (w[at + 1] === 0) {
        w[at] = d;
        w[at + 1] = id;
      }
      if (w[at] === d && w[at + 1] === id) {
        w[at + 2] += v;
        break;
      }
    }
  }
}

/** exit_files for a reaped worker: check each device against the torn-down mm, count, close. */
async function closeSlot(k: Kernel, a: StressTaskArgs, s: number): Promise<void> {
  const w = k.arena.i32;
  const c = a.ctl;
  const sw = slotAt(a, s);
  for (let i = 0; i < w[sw + SlotL.ndev]; i++) {
    const dev = w[sw + SlotL.devs + i];
    const d = w[sw + SlotL.drv + i];
    const ad = await adapterOf(a.drivers[d]);
    const handle = w[c + StressCtlL.handles + d];
    const priv = sw + SlotL.priv + i * STRESS_PRIV_WORDS;
    w[c + StressCtlL.bad_sptes] += device_check_all(k, dev);
    gather(k, a, d, dev, ad.stats?.(k, dev, handle, priv));
    const r = await n(ad.close ? ad.close(dev, handle, priv) : device_close(dev));
    if (r === 0) bump(k, c + StressCtlL.devs_closed);
    else {
      Atomics.add(w, c + StressCtlL.dev_errors, 1);
      stressError(k, c, `${ad.driver}: close of ${dev}: ${r}`);
    }
  }
  w[sw + SlotL.ndev] = 0;
}

/** waitpid the slot's process, then close its devices. */
async function retire(k: Kernel, a: StressTaskArgs, s: number): Promise<void> {
  const w = k.arena.i32;
  const sw = slotAt(a, s);
  const pid = w[sw + SlotL.pid];
  if (pid === 0) return;
  const st = await waitpid(pid);
  w[sw + SlotL.pid] = 0;
  bump(k, a.ctl + StressCtlL.exits);
  if (typeof st === 'number') stressError(k, a.ctl, `waitpid of worker ${s}: ${st}`);
  else if (st.signal !== 0) bump(k, a.ctl + StressCtlL.killed);
  else if (st.code !== 0) stressError(k, a.ctl, `worker ${s} exited with ${st.code}`);
  await closeSlot(k, a, s);
}

function taskRecordsFree(k: Kernel): number {
  const p = k.tasks.pool;
  return p.capacity - 1 - p.used;
}

/** Freeze, OOM, reap, release, respawn. */
async function oomRound(k: Kernel, a: StressTaskArgs, s: number, respawnOps: number): Promise<void> {
  const w = k.arena.i32;
  const c = a.ctl;
  const sw = slotAt(a, s);
  const pid = w[sw + SlotL.pid];
  if (pid === 0 || Atomics.load(w, sw + SlotL.ready) !== 1) return;
  bump(k, c + StressCtlL.oom_rounds);
  const mm = w[sw + SlotL.mm];
  Atomics.store(w, sw + SlotL.freeze, 1);
  // every thread asleep at the top of its loop (bounded: one may be in a long fork/waitpid)
  for (let t = 0; t < 200 && Atomics.load(w, sw + SlotL.frozen) < Atomics.load(w, sw + SlotL.live); t++) await sleepMs(k, 1);
  const { victim, how } = await oomVictimOf(k, a, s, pid);
  if (victim !== pid) {
    bump(k, c + StressCtlL.oom_no_victim);
    Atomics.store(w, sw + SlotL.freeze, 0);
    k.sched.wake(sw + SlotL.freeze, Infinity);
    await oomRoundEnd(k, a, s, how);
    return;
  }
  bump(k, c + StressCtlL.oom_kills);
  if (how === 'memcg') bump(k, c + StressCtlL.oom_via_memcg);
  // the reaper's pass: MMF_OOM_SKIP once it reaped the mm or gave up (at most ~1 s of retries)
  for (let t = 0; t < 400 && !mm_flags_test(MMF_OOM_SKIP, mm); t++) await sleepMs(k, 5);
  if (mm_flags_test(MMF_OOM_SKIP, mm)) bump(k, c + StressCtlL.oom_reaped);
  Atomics.store(w, sw + SlotL.freeze, 0);
  k.sched.wake(sw + SlotL.freeze, Infinity);
  await retire(k, a, s);
  await oomRoundEnd(k, a, s, how);
  const more = a.scheduler === 'sim' ? Atomics.load(w, c + StressCtlL.stop) === 0 : Date.now() < k.arena.f64[(c + StressCtlL.deadline_ms) >> 1] - 500;
  if (!more) return;
  if (taskRecordsFree(k) < a.slotTasks) {
    bump(k, c + StressCtlL.respawn_skipped);
    return;
  }
  spawnSlot(k, a, s, w[sw + SlotL.gen] + 1, respawnOps);
}

function opsDone(k: Kernel, a: StressTaskArgs): number {
  const w = k.arena.i32;
  let t = 0;
  for (let i = 0; i < 7; i++) t += Atomics.load(w, a.ctl + StressCtlL.ops + i);
  return t;
}

/** The run's end: every task winds down; the engines stop at their next look. */
function stopAll(k: Kernel, a: StressTaskArgs): void {
  bump(k, a.ctl + StressCtlL.stop);
  for (let s = 0; s < a.threads.length; s++) bump(k, slotAt(a, s) + SlotL.stop);
}

/** virtual ms without a CPU operation done before a sim run counts as hung */
const SIM_HUNG_MS = 2000;

/**
 * sim: wait for the processes; if no CPU operation completes for SIM_HUNG_MS of virtual time,
 * stop everything so the engines' timers end and the scheduler reports who waits on what.
 */
async function simWatch(k: Kernel, a: StressTaskArgs): Promise<void> {
  const w = k.arena.i32;
  let last = opsDone(k, a);
  let since = k.sched.now();
  for (;;) {
    let live = 0;
    for (let s = 0; s < a.threads.length; s++) if (w[slotAt(a, s) + SlotL.pid] !== 0) live += Atomics.load(w, slotAt(a, s) + SlotL.live);
    if (live === 0) return;
    await sleepMs(k, 1);
    scanLatency();
    const d = opsDone(k, a);
    if (d !== last) {
      last = d;
      since = k.sched.now();
    } else if (k.sched.now() - since > SIM_HUNG_MS * MS) {
      stressError(k, a.ctl, `no CPU operation completed in ${SIM_HUNG_MS} ms of virtual time: stopping the engines (the scheduler reports what everything waits on)`);
      stopAll(k, a);
      return;
    }
  }
}

export async function stressCtl(ctx: TaskContext<StressTaskArgs>): Promise<void> {
  const { k, args: a } = ctx;
  const w = k.arena.i32;
  const c = a.ctl;
  const nslots = a.threads.length;
  try {
    for (let d = 0; d < a.drivers.length; d++) {
      const ad = await adapterOf(a.drivers[d]);
      const h = ad.init ? await n(ad.init(k)) : 0;
      if (h < 0) {
        stressError(k, c, `${ad.driver}: init ${h}`);
        return;
      }
      w[c + StressCtlL.handles + d] = h;
    }
    await pressureStart(k, a);
    for (let s = 0; s < nslots; s++) spawnSlot(k, a, s, 0, a.opsPerThread);
    if (a.scheduler === 'threads') {
      // the clock starts once every process has its devices (workers start slowly on small machines)
      for (let s = 0; s < nslots; s++) {
        const sw = slotAt(a, s);
        while (Atomics.load(w, sw + SlotL.ready) === 0 && w[sw + SlotL.pid] !== 0) await sleepMs(k, 5);
      }
      for (let i = 0; i < a.idleWorkers; i++) k.sched.spawn({ name: `idle${i}`, kind: 'kthread', module: STRESS_TASKS, fn: 'stressIdle', args: { at: c + StressCtlL.warm } });
      await waitAtLeast(k, c + StressCtlL.warm, a.idleWorkers, 30_000 * MS);
      const f = k.arena.f64;
      f[(c + StressCtlL.start_ms) >> 1] = Date.now();
      const deadline = Date.now() + a.durationMs;
      f[(c + StressCtlL.deadline_ms) >> 1] = deadline;
      let next = Date.now() + a.oomPeriodMs;
      for (let round = 0; Date.now() < deadline; ) {
        await sleepMs(k, Math.max(1, Math.min(50, deadline - Date.now())));
        if (a.pressure === 'oom' && Date.now() >= next && Date.now() < deadline - 1000) {
          await oomRound(k, a, round++ % nslots, 0);
          next = Date.now() + a.oomPeriodMs;
        }
      }
      stopAll(k, a);
    } else if (a.pressure === 'oom') {
      // sim: one round once a third of the operations are done; the new process gets half as many
      const third = Math.floor((a.opsPerThread * a.threads.reduce((x, y) => x + y, 0)) / 3);
      while (opsDone(k, a) < third && Atomics.load(w, slotAt(a, 0) + SlotL.live) > 0) {
        await sleepMs(k, 0.05);
        scanLatency();
      }
      await oomRound(k, a, 0, Math.max(1, a.opsPerThread >> 1));
    }
    if (a.scheduler === 'sim') await simWatch(k, a);
    for (let s = 0; s < nslots; s++) await retire(k, a, s);
  } finally {
    bump(k, c + StressCtlL.stop);
    for (let s = 0; s < nslots; s++) if (w[slotAt(a, s) + SlotL.pid] !== 0) await retire(k, a, s);
    for (let d = 0; d < a.drivers.length; d++) {
      const ad = await adapterOf(a.drivers[d]);
      if (ad.exit && w[c + StressCtlL.handles + d] > 0) await n(ad.exit(k, w[c + StressCtlL.handles + d]));
    }
    await pressureEnd(k, a);
    oom_reaper_stop(k);
    k.arena.f64[(c + StressCtlL.end_ms) >> 1] = Date.now();
    bump(k, c + StressCtlL.done);
  }
}
