// Memory cgroups (mm/memcontrol.c, cgroup v2; reference §5 "memcg OOM", §9 scenarios 15, 25, 26)
// under `sim` over several seeds: charges and uncharges balancing to 0, fork inheriting the
// memcg, a charge past memory.max reclaiming (blockable CLEAR on a mirroring driver) and then
// OOM-killing only inside the group, the reaper's non-blockable UNMAP and MMF_UNSTABLE on the
// victim (§9.15 / §9.25), memory.max lowered under a dmirror mirror, oom_score_adj and
// memory.oom.group, VM_FAULT_OOM through pagefault_out_of_memory, bad cgroupfs input; and a
// `threads` run of both OOM paths. Every run ends with nothing leaked (frames, tables, VMAs,
// processes, kmalloc objects, devices, memcg usage).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EEXIST, EFAULT, EINVAL, ENOENT } from '../src/shm/errno.js';
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_UNMAP } from '../src/notifier/index.js';
import { EV_A, EV_B, EV_THI, EV_TLO, EV_TYPE } from '../src/shm/events.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { mm_flags_test } from '../src/mm/mm_inline.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap } from '../src/mm/mmap.js';
import { SIGKILL } from '../src/mm/memory.js';
import { MM_EV, INV_BLOCKABLE } from '../src/mm/events.js';
import { cond_resched, do_fork, kill_process, reap_zombies, spawn_process, waitpid, type ProcessFn } from '../src/mm/process.js';
import { get_user, put_user, uaccess_signal } from '../src/mm/uaccess.js';
import { MMF_OOM_SKIP, MMF_UNSTABLE, MmL } from '../src/mm/types.js';
import { OOM_SCORE_ADJ_MIN, oomKillModule, oomStats, oom_reaper, oom_reaper_stop, oom_score_adj_write, oom_set_reaper_policy } from '../src/mm/oom_kill.js';
import { MAX_RECLAIM_RETRIES, folio_memcg, mem_cgroup_set_oom_policy } from '../src/mm/memcontrol.js';
import { ___ratelimit } from '../src/sched/ratelimit.js';
import { cgroup_mkdir, cgroup_procs_read, cgroup_procs_write, mem_cgroup_from_name, memcgStats, memory_max_write, memory_oom_group_read, memory_oom_group_write } from '../src/mm/memcontrol_files.js';
import { swapUsage } from '../src/mm/swapfile.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { pte_pfn, pte_present } from '../src/mm/pgtable.js';
import { deviceUsage, shadowEntries } from '../src/device/index.js';
import { IB_ACCESS_LOCAL_WRITE, IB_ACCESS_ON_DEMAND, IB_ACCESS_REMOTE_READ, IB_ACCESS_REMOTE_WRITE, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, ODP_NONBLOCK_TRYLOCK, ib_advise_mr, ib_dereg_mr, ib_reg_mr, odp_lock, odp_unlock } from '../drivers/odp/index.js';
import { HMM_DMIRROR_READ, dmirror_close, dmirror_ioctl, dmirror_open, hmm_dmirror_exit, hmm_dmirror_init } from '../drivers/dmirror/index.js';
import { MemcgCtlL } from './fixtures/memcg_tasks.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const MS = 1e6;
const BASE = 0x40000000;
const ODP_ACCESS = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ;
const FIXTURE = fileURLToPath(new URL('./fixtures/memcg_tasks.ts', import.meta.url));

const CFG: BootConfig = {
  maxTasks: 32,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 16,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 32 },
  mem: { pages: 1024, pageSize: P },
  memcg: { groups: 4 },
  device: { devices: 8, sptDirs: 64, sptLeaves: 32 },
};

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

// ---- harness ----------------------------------------------------------------------------------------

interface World {
  k: Kernel;
  s: SimScheduler;
  step: number;
  before: ReturnType<typeof usage>;
}

function usage(k: Kernel): { mm: ReturnType<typeof mmUsage>; kmalloc: Record<string, number>; dev: ReturnType<typeof deviceUsage>; swap: ReturnType<typeof swapUsage> } {
  return { mm: mmUsage(k), kmalloc: k.kmalloc.usage(), dev: deviceUsage(k), swap: swapUsage(k) };
}

function world(seed: number, cfg: BootConfig = {}, reaper = true): World {
  const k = bootKernel({ ...CFG, ...cfg });
  const before = usage(k);
  const step = k.kmalloc.kzalloc(8);
  const s = new SimScheduler(k, { seed, stallMs: 10_000 });
  if (reaper) s.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
  return { k, s, step, before };
}

const dumpLog = (log: KlogRecord[]): string => log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');

/** Run to the end; reap; klog only `allow`; every memcg back to 0; nothing leaked. */
async function finish(wd: World, allow: string[]): Promise<KlogRecord[]> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  for (let id = 1; id <= k.memcg.capacity; id++) expect(memcgStats(k, id)?.current ?? 0, `memcg ${id} usage at the end`).toBe(0);
  k.kmalloc.kfree(wd.step);
  expect(usage(k)).toEqual(wd.before);
  return log;
}

async function waitFor(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

function raise(k: Kernel, at: number, v: number): void {
  Atomics.store(k.arena.i32, at, v);
  k.sched.wake(at, Infinity);
}

async function sleepMs(k: Kernel, ms: number): Promise<void> {
  const p = k.sched.sleep(ms * MS);
  if (p !== undefined) await p;
}

async function until(k: Kernel, cond: () => boolean): Promise<void> {
  while (!cond()) await sleepMs(k, 5);
}

async function mapAt(mm: number, at: number, pages: number, flags = MAP_PRIVATE): Promise<number> {
  const a = await n(vm_mmap(mm, at, pages * P, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS | MAP_FIXED));
  expect(a).toBe(at);
  return a;
}

async function touch(a: number, pages: number, v = 1): Promise<void> {
  for (let i = 0; i < pages; i++) expect(await n(put_user(v + i, a + i * P))).toBe(0);
}

/** Spawn a process (in memcg `cg`, 0 = root) that runs body, then idles killably until `loop` says stop. */
function proc(wd: World, name: string, cg: number, body: (mm: number) => Promise<void>, loop: () => boolean = () => false): number {
  const fn: ProcessFn = async ({ mm }) => {
    await body(mm);
    while (loop()) {
      await cond_resched();
      await sleepMs(wd.k, 1);
    }
  };
  const pid = spawn_process(wd.k, wd.s, { name, fn });
  expect(pid).toBeGreaterThan(0);
  expect(cgroup_procs_write(wd.k, cg, pid)).toBe(0); // echo $pid > cgroup.procs, before it runs
  return pid;
}

const current = (k: Kernel, cg: number): number => memcgStats(k, cg)!.current;

function presentPages(k: Kernel, mm: number, a: number, pages: number): number {
  let c = 0;
  const pgd = k.arena.i32[mm + MmL.pgd];
  for (let i = 0; i < pages; i++) {
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, a + i * P);
    if (slot >= 0 && pte_present(k.arena.i32[slot])) c++;
  }
  return c;
}

/** INV_STARTED events on mm: [blockable CLEAR, non-blockable UNMAP] counts, events after `since` ns */
function invCounts(k: Kernel, mm: number, since = 0): { clear: number; nonblockUnmap: number } {
  const rec = k.events.records();
  let clear = 0;
  let nonblockUnmap = 0;
  for (let o = 0; o < rec.length; o += 8) {
    const t = (rec[o + EV_TLO] >>> 0) + rec[o + EV_THI] * 4294967296;
    if (rec[o + EV_TYPE] !== MM_EV.INV_STARTED || rec[o + EV_A] !== mm || t < since) continue;
    const b = rec[o + EV_B];
    if (b === (MMU_NOTIFY_CLEAR | INV_BLOCKABLE)) clear++;
    if (b === MMU_NOTIFY_UNMAP) nonblockUnmap++;
  }
  return { clear, nonblockUnmap };
}

// ---- charging -----------------------------------------------------------------------------------------

describe('charge and uncharge balance; fork inherits the memcg; cgroup.procs moves later charges (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: anon, COW and shmem pages are charged to the faulting mm's group, freed pages uncharged, usage back to 0`, async () => {
      const wd = world(seed, {}, false);
      const { k } = wd;
      const app = cgroup_mkdir(k, 'app');
      const other = cgroup_mkdir(k, 'other');
      expect([app, other]).toEqual([1, 2]);
      const out: Record<string, unknown> = {};
      let parent = 0;
      parent = proc(wd, 'parent', app, async (mm) => {
        const a = await mapAt(mm, BASE, 8);
        await touch(a, 8);
        out.afterAnon = current(k, app);
        const slot = pte_lookup(k, k.arena.i32[mm + MmL.pgd], a);
        out.pageMemcg = folio_memcg(k, pte_pfn(k.arena.i32[slot]));
        const sh = await mapAt(mm, BASE + 64 * P, 4, MAP_SHARED);
        await touch(sh, 4);
        out.afterShmem = current(k, app);
        const child = await do_fork({
          name: 'child',
          fn: async ({ mm: cmm, pid }) => {
            out.childIn = cgroup_procs_read(k, app).map((x) => (x === pid ? 'child' : x));
            for (let i = 0; i < 8; i++) expect(await n(get_user(a + i * P))).toBe(1 + i); // no charge
            out.afterRead = current(k, app);
            await touch(a, 3, 100); // COW breaks: 3 new pages
            await touch(sh, 1, 100); // shared: no new page
            const b = await mapAt(cmm, BASE + 128 * P, 2);
            await touch(b, 2);
            out.afterChild = current(k, app);
          },
        });
        expect(child).toBeGreaterThan(0);
        out.childSignal = ((await waitpid(child)) as { signal: number }).signal;
        out.afterChildExit = current(k, app);
        // the parent moves itself: later faults charge `other`, earlier charges stay
        expect(cgroup_procs_write(k, other, parent)).toBe(0);
        const c = await mapAt(mm, BASE + 256 * P, 2);
        await touch(c, 2);
        out.moved = [current(k, app), current(k, other), cgroup_procs_read(k, app), cgroup_procs_read(k, other)];
      });
      wd.s.spawn({
        name: 'ctl',
        fn: async () => {
          out.exit = ((await waitpid(parent)) as { signal: number }).signal;
          out.end = [current(k, app), current(k, other), memcgStats(k, app)!.peak];
        },
      });
      await finish(wd, []);
      expect(out).toEqual({
        afterAnon: 8,
        pageMemcg: app,
        afterShmem: 12,
        childIn: [parent, 'child'],
        afterRead: 12,
        afterChild: 17,
        childSignal: 0,
        afterChildExit: 12,
        moved: [12, 2, [], [parent]],
        exit: 0,
        end: [0, 0, 17],
      });
    });
  }
});

describe('cgroupfs input', () => {
  it('bad names, unknown groups and pids, negative or malformed memory.max, out-of-range oom_score_adj and oom.group give clear errors and change nothing', async () => {
    const wd = world(1, {}, false);
    const { k } = wd;
    const ESRCH = -3;
    const ENOSPC = -28;
    expect(cgroup_mkdir(k, '')).toBe(-EINVAL);
    expect(cgroup_mkdir(k, 'a/b')).toBe(-EINVAL);
    expect(cgroup_mkdir(k, '..')).toBe(-EINVAL);
    const job = cgroup_mkdir(k, 'job');
    expect(job).toBe(1);
    expect(cgroup_mkdir(k, 'job')).toBe(-EEXIST);
    expect([cgroup_mkdir(k, 'b'), cgroup_mkdir(k, 'c'), cgroup_mkdir(k, 'd')]).toEqual([2, 3, 4]);
    expect(cgroup_mkdir(k, 'e')).toBe(ENOSPC); // memcg.groups: 4
    expect(mem_cgroup_from_name(k, 'job')).toBe(job);
    expect(mem_cgroup_from_name(k, '/')).toBe(0);
    expect(mem_cgroup_from_name(k, 'nope')).toBe(-ENOENT);
    // memory.max: the root has none, unknown ids have none; a sign, a fraction or junk is -EINVAL
    expect(memory_max_write(k, 0, '1M')).toBe(-ENOENT);
    expect(memory_max_write(k, 99, '1M')).toBe(-ENOENT);
    for (const bad of ['-1', '-4096', '1.5M', '12Q', '', 'MAX', '4096 4096']) expect(memory_max_write(k, job, bad), bad).toBe(-EINVAL);
    expect(memory_max_write(k, job, -5)).toBe(-EINVAL);
    expect(memory_max_write(k, job, 2.5)).toBe(-EINVAL);
    expect(memcgStats(k, job)!.max).toBe('max'); // nothing changed
    expect(memory_max_write(k, job, ' 64K\n')).toBe(0);
    expect(memcgStats(k, job)!.max).toBe(16);
    expect(memory_max_write(k, job, '1g')).toBe(0);
    expect(memcgStats(k, job)!.max).toBe(262144);
    expect(memory_max_write(k, job, 'max')).toBe(0);
    expect(memcgStats(k, job)!.max).toBe('max');
    expect(memory_max_write(k, job, 3)).toBe(0);
    expect(memcgStats(k, job)!.max).toBe(3);
    expect(memcgStats(k, 99)).toBeNull();
    expect(memory_oom_group_write(k, job, 2)).toBe(-EINVAL);
    expect(memory_oom_group_write(k, 99, 1)).toBe(-ENOENT);
    expect(memory_oom_group_read(k, job)).toBe(0);
    const pid = proc(wd, 'p', 0, async () => {});
    expect(cgroup_procs_write(k, 99, pid)).toBe(-ENOENT);
    expect(cgroup_procs_write(k, job, 12345)).toBe(ESRCH);
    expect(cgroup_procs_write(k, job, 0)).toBe(ESRCH);
    expect(oom_score_adj_write(k, pid, -1001)).toBe(-EINVAL);
    expect(oom_score_adj_write(k, pid, 1.5)).toBe(-EINVAL);
    expect(oom_score_adj_write(k, 12345, 0)).toBe(ESRCH);
    expect(cgroup_procs_read(k, job)).toEqual([]);
    expect(cgroup_procs_read(k, 0)).toEqual([pid]);
    await finish(wd, []);
  });
});

// ---- the charge path's memcg OOM ------------------------------------------------------------------

describe('a lone member faults past memory.max with nothing reclaimable (swap off) (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: 1 + 1 (drain) + MAX_RECLAIM_RETRIES reclaim rounds, then a memcg OOM kills it; the dying charger gets -ENOMEM after ${MAX_RECLAIM_RETRIES} + 1 more rounds, never a charge past the limit`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const solo = cgroup_mkdir(k, 'solo');
      expect(memory_max_write(k, solo, '40K')).toBe(0); // 10 pages
      const out: Record<string, unknown> = {};
      let peakOver = 0;
      const pid = proc(wd, 'solo', solo, async (mm) => {
        const a = await mapAt(mm, BASE, 16);
        for (let i = 0; i < 16; i++) {
          expect(await n(put_user(i, a + i * P))).toBe(0);
          out.wrote = i + 1;
        }
      });
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          out.wait = ((await waitpid(pid)) as { signal: number }).signal;
          const st = memcgStats(k, solo)!;
          out.events = st.events;
          out.peak = st.peak;
          out.current = st.current;
          oom_reaper_stop(k);
        },
      });
      // the limit holds at every scheduling step: sample it from a task that runs between steps
      wd.s.spawn({
        name: 'sampler',
        kind: 'kthread',
        fn: async () => {
          while (out.wait === undefined) {
            peakOver = Math.max(peakOver, current(k, solo) - 10);
            await sleepMs(k, 1);
          }
        },
      });
      const log = await finish(wd, ['oom_kill']);
      expect(out.wrote).toBe(10);
      expect(out.wait).toBe(SIGKILL);
      expect(out.events).toEqual({ low: 0, high: 0, max: 2 * MAX_RECLAIM_RETRIES + 3, oom: 1, oom_kill: 1, oom_group_kill: 0 });
      expect([out.peak, out.current, peakOver]).toEqual([10, 0, 0]);
      expect(log.length).toBe(1);
      expect(log[0].text).toContain(`oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/solo,task_memcg=/solo,task=solo,pid=${pid}`);
      expect(log[0].text).toMatch(new RegExp(`Memory cgroup out of memory: Killed process ${pid} \\(solo\\) total-vm:64kB, anon-rss:40kB`));
      expect(oomStats(k).kills).toBe(1);
    });
  }
  it("'v5.15' policy: the dying charger's charge is forced past memory.max instead", async () => {
    const wd = world(1);
    const { k } = wd;
    mem_cgroup_set_oom_policy(k, 'v5.15');
    const solo = cgroup_mkdir(k, 'solo');
    expect(memory_max_write(k, solo, 10)).toBe(0);
    const out: Record<string, unknown> = {};
    const pid = proc(wd, 'solo', solo, async (mm) => {
      const a = await mapAt(mm, BASE, 16);
      for (let i = 0; i < 16; i++) {
        expect(await n(put_user(i, a + i * P))).toBe(0);
        out.wrote = i + 1;
      }
    });
    wd.s.spawn({
      name: 'ctl',
      kind: 'kthread',
      fn: async () => {
        out.wait = ((await waitpid(pid)) as { signal: number }).signal;
        out.peak = memcgStats(k, solo)!.peak;
        oom_reaper_stop(k);
      },
    });
    await finish(wd, ['oom_kill']);
    // the 11th page was forced in past the limit (peak 11); the retried write then met SIGKILL
    expect(out).toEqual({ wrote: 10, wait: SIGKILL, peak: 11 });
  });
});

describe('§9 scenario 26: memcg limit with an odp MR mirroring a member (sim, v5.18 reaper delay)', () => {
  const NV = 24; // the victim's mirrored pages
  const NG = 24; // the grower's
  const SLOTS = 8;
  for (const seed of SEEDS) {
    for (const mode of ['released', 'held'] as const) {
      it(`seed ${seed} (${mode}): reclaim swaps mirrored pages out under blockable CLEAR, then with swap full ${MAX_RECLAIM_RETRIES} more rounds fail and a memcg OOM kills the biggest member only; §9.15 the reaper's non-blockable UNMAP meets umem_mutex ${mode === 'released' ? 'until released: reaped, §9.25 device fault -EFAULT, the charge goes through' : 'throughout: "unable to reap", then the grower is the next victim'}`, async () => {
        const wd = world(seed, { swap: { slots: SLOTS } });
        const { k, step } = wd;
        oom_set_reaper_policy(k, 'v5.18');
        const job = cgroup_mkdir(k, 'job');
        expect(memory_max_write(k, job, 32)).toBe(0);
        const sh = { mm: 0, mr: 0, a: 0, gmm: 0 };
        const out: Record<string, unknown> = {};
        const victim = proc(wd, 'victim', job, async (mm) => {
          const a = await mapAt(mm, BASE, NV);
          await touch(a, NV);
          const mr = await ib_reg_mr({ addr: a, length: NV * P, access: ODP_ACCESS, odpFlags: ODP_NONBLOCK_TRYLOCK });
          expect(mr).toBeGreaterThan(0);
          expect(await ib_advise_mr(mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [{ addr: a, length: NV * P }])).toBe(0);
          Object.assign(sh, { mm, mr, a });
          out.shadow = shadowEntries(k, mr).length;
          raise(k, step, 1);
          await waitFor(k, step, 9); // stuck where SIGKILL is not noticed: why the reaper exists
        }, () => true);
        const grower = proc(wd, 'grower', job, async (mm) => {
          await waitFor(k, step, 1);
          sh.gmm = mm;
          const a = await mapAt(mm, BASE, NG);
          out.t0 = k.sched.now();
          await touch(a, NG);
          out.grown = k.sched.now();
        }, () => Atomics.load(k.arena.i32, step) < 9);
        const outsider = proc(wd, 'outsider', 0, async (mm) => {
          await touch(await mapAt(mm, BASE, 48), 48); // the biggest process, outside the group
        }, () => Atomics.load(k.arena.i32, step) < 9);
        wd.s.spawn({
          name: 'holder',
          fn: async () => {
            await waitFor(k, step, 1);
            await until(k, () => oomStats(k).kills >= 1);
            out.killAt = k.sched.now();
            out.clearBefore = invCounts(k, sh.mm).clear; // reclaim's CLEARs, all before the kill
            const p = odp_lock(sh.mr); // a driver fault holding umem_mutex when the reaper comes
            if (p !== undefined) await p;
            if (mode === 'released') await until(k, () => oomStats(k).reapAttempts >= 3);
            else await until(k, () => mm_flags_test(MMF_OOM_SKIP, sh.mm));
            odp_unlock(sh.mr);
          },
        });
        wd.s.spawn({
          name: 'ctl',
          kind: 'kthread',
          fn: async () => {
            await waitFor(k, step, 1);
            await until(k, () => sh.mm !== 0 && mm_flags_test(MMF_OOM_SKIP, sh.mm));
            const st = oomStats(k);
            out.reap = { attempts: st.reapAttempts, unable: st.unableToReap, reaped: st.reaped };
            out.unstable = mm_flags_test(MMF_UNSTABLE, sh.mm);
            out.nonblockUnmap = invCounts(k, sh.mm).nonblockUnmap;
            if (mode === 'released') {
              await until(k, () => out.grown !== undefined);
              out.victimPages = presentPages(k, sh.mm, sh.a, NV);
              // §9.25: a device fault on the reaped victim needs a fault-in: -EFAULT
              out.dev = await ib_advise_mr(sh.mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [{ addr: sh.a, length: P }]);
            } else {
              await until(k, () => oomStats(k).kills >= 2);
            }
            out.stats = memcgStats(k, job);
            expect(await ib_dereg_mr(sh.mr)).toBe(0); // exit_files' close of the MR, done for the victim
            raise(k, step, 9);
            out.waits = [victim, grower, outsider].map(() => 0);
            out.waits = [((await waitpid(victim)) as { signal: number }).signal, ((await waitpid(grower)) as { signal: number }).signal, ((await waitpid(outsider)) as { signal: number }).signal];
            oom_reaper_stop(k);
          },
        });
        const log = await finish(wd, ['oom_kill', 'oom_reaper', 'oom_unable_to_reap']);
        const kills = log.filter((x) => x.kind === 'oom_kill');
        expect(out.shadow).toBe(NV);
        // reclaim raised blockable CLEARs on the mirrored victim before any OOM
        expect(out.clearBefore as number).toBeGreaterThan(0);
        expect(kills[0].text).toContain(`oom_memcg=/job,task_memcg=/job,task=victim,pid=${victim}`);
        expect(kills[0].text).toContain(`Memory cgroup out of memory: Killed process ${victim} (victim)`);
        expect(out.unstable).toBe(true);
        expect(out.nonblockUnmap as number).toBeGreaterThan(0);
        const st = out.stats as NonNullable<ReturnType<typeof memcgStats>>;
        expect(st.events.oom as number).toBeGreaterThanOrEqual(1);
        expect(st.events.max as number).toBeGreaterThanOrEqual(2 + MAX_RECLAIM_RETRIES);
        expect(st.peak).toBe(32);
        if (mode === 'released') {
          expect(out.reap).toEqual({ attempts: 4, unable: 0, reaped: 1 });
          expect(out.victimPages).toBe(0);
          expect(out.dev).toBe(-EFAULT);
          expect(st.events.oom_kill).toBe(1);
          expect(st.current).toBe(NG); // the grower got all its pages once the victim's were reaped
          expect(kills.length).toBe(1);
          expect(out.waits).toEqual([SIGKILL, 0, 0]);
        } else {
          expect(out.reap).toEqual({ attempts: 10, unable: 1, reaped: 0 });
          expect(st.events.oom_kill).toBe(2);
          expect(kills.length).toBe(2);
          expect(kills[1].text).toContain(`Memory cgroup out of memory: Killed process ${grower} (grower)`);
          expect(log.find((x) => x.kind === 'oom_unable_to_reap')!.text).toMatch(/held by holder/);
          expect(out.waits).toEqual([SIGKILL, SIGKILL, 0]);
        }
      });
    }
  }
});

// ---- memory.max written at run time --------------------------------------------------------------------

describe('memory.max lowered at run time under a dmirror mirror (sim, swap off): "how a user fakes an OOM"', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: reclaim gets nowhere, a memcg OOM kills the group's member (a bigger process outside survives); the write returns once usage fits; torn down with nothing leaked`, async () => {
      const wd = world(seed);
      const { k, step } = wd;
      const gpu = cgroup_mkdir(k, 'gpu');
      const sh = { mod: 0, fd: 0, mm: 0 };
      const out: Record<string, unknown> = {};
      const NP = 16;
      const victim = proc(wd, 'gpu', gpu, async (mm) => {
        await waitFor(k, step, 1);
        const fd = await dmirror_open(sh.mod, 0);
        expect(fd).toBeGreaterThan(0);
        Object.assign(sh, { fd, mm });
        const ptr = await mapAt(mm, BASE, NP);
        const mirror = await mapAt(mm, BASE + 64 * P, NP);
        await touch(ptr, NP, 7);
        const r = await dmirror_ioctl(sh.mod, fd, HMM_DMIRROR_READ, { addr: ptr, ptr: mirror, npages: NP });
        out.read = [r.ret, r.cpages];
        out.mirrored = await n(get_user(mirror + 3 * P));
        raise(k, step, 2);
      }, () => true);
      const outsider = proc(wd, 'outsider', 0, async (mm) => {
        await touch(await mapAt(mm, BASE, 48), 48);
      }, () => Atomics.load(k.arena.i32, step) < 9);
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          sh.mod = await hmm_dmirror_init({ chunkPages: 32 });
          expect(sh.mod).toBeGreaterThan(0);
          raise(k, step, 1);
          await waitFor(k, step, 2);
          out.before = current(k, gpu);
          const t0 = k.sched.now();
          out.ret = await n(memory_max_write(k, gpu, '32K')); // 8 pages
          out.ms = (k.sched.now() - t0) / MS;
          out.after = memcgStats(k, gpu);
          out.victimSkip = mm_flags_test(MMF_OOM_SKIP, sh.mm);
          out.wait = ((await waitpid(victim)) as { signal: number }).signal;
          expect(await dmirror_close(sh.mod, sh.fd)).toBe(0); // the fd outlived the mm
          await hmm_dmirror_exit(sh.mod);
          raise(k, step, 9);
          out.outsider = ((await waitpid(outsider)) as { signal: number }).signal;
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'oom_reaper']);
      expect(out.read).toEqual([0, NP]);
      expect(out.mirrored).toBe(7 + 3);
      expect(out.before).toBe(2 * NP);
      expect(out.ret).toBe(0);
      const st = out.after as NonNullable<ReturnType<typeof memcgStats>>;
      expect([st.current, st.max, st.events.oom_kill, st.procs]).toEqual([0, 8, 1, []]);
      expect(st.events.oom).toBeGreaterThanOrEqual(1);
      expect(st.events.max).toBe(0); // memory.max writes reclaim without charging
      expect(out.victimSkip).toBe(true); // exit_mmap got there (the reaper's timer then drops it)
      expect([out.wait, out.outsider]).toEqual([SIGKILL, 0]);
      expect(out.ms as number).toBeGreaterThan(0);
      const kills = log.filter((x) => x.kind === 'oom_kill');
      expect(kills.length).toBe(1);
      expect(kills[0].text).toContain(`oom_memcg=/gpu,task_memcg=/gpu,task=gpu,pid=${victim}`);
      expect(kills[0].text).toContain(`Memory cgroup out of memory: Killed process ${victim} (gpu)`);
    });
  }
});

describe('victim choice inside the group: oom_score_adj and memory.oom.group (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: OOM_SCORE_ADJ_MIN is never chosen, even when biggest; with nothing killable left memory.max returns over the limit; oom.group kills every killable member`, async () => {
      const wd = world(seed);
      const { k, step } = wd;
      const svc = cgroup_mkdir(k, 'svc');
      const grp = cgroup_mkdir(k, 'grp');
      expect(memory_oom_group_write(k, grp, 1)).toBe(0);
      const out: Record<string, unknown> = {};
      const ready = (): void => {
        Atomics.add(k.arena.i32, step + 1, 1);
        k.sched.wake(step + 1, Infinity);
      };
      const member = (name: string, cg: number, pages: number, adj = 0): number => {
        const pid = proc(wd, name, cg, async (mm) => {
          await touch(await mapAt(mm, BASE, pages), pages);
          ready();
        }, () => Atomics.load(k.arena.i32, step) < 9);
        expect(oom_score_adj_write(k, pid, adj)).toBe(0);
        return pid;
      };
      const big = member('big', svc, 24, OOM_SCORE_ADJ_MIN);
      const mid = member('mid', svc, 12);
      // adj scales by (memory.max + swap) / 1000 pages, 0 for a limit this small: no effect here
      const small = member('small', svc, 4, 500);
      const a = member('a', grp, 8);
      const b = member('b', grp, 6);
      const c = member('c', grp, 4, OOM_SCORE_ADJ_MIN);
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          await waitFor(k, step + 1, 6);
          expect(await n(memory_max_write(k, svc, 8))).toBe(0);
          out.svc = [memcgStats(k, svc)!.current, memcgStats(k, svc)!.events.oom_kill, memcgStats(k, svc)!.procs];
          expect(await n(memory_max_write(k, grp, 2))).toBe(0);
          out.grp = [memcgStats(k, grp)!.current, memcgStats(k, grp)!.events.oom_kill, memcgStats(k, grp)!.events.oom_group_kill, memcgStats(k, grp)!.procs];
          raise(k, step, 9);
          out.waits = [];
          for (const pid of [big, mid, small, a, b, c]) (out.waits as number[]).push(((await waitpid(pid)) as { signal: number }).signal);
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'oom_reaper']);
      expect(out.svc).toEqual([24, 2, [big]]);
      expect(out.grp).toEqual([4, 2, 1, [c]]);
      expect(out.waits).toEqual([0, SIGKILL, SIGKILL, SIGKILL, SIGKILL, 0]);
      const lines = log.filter((x) => x.kind === 'oom_kill').map((x) => x.text.split('\n').pop()!.replace(/ total-vm.*/, ''));
      expect(lines).toEqual([
        `Memory cgroup out of memory: Killed process ${mid} (mid)`,
        `Memory cgroup out of memory: Killed process ${small} (small)`,
        'Memory cgroup out of memory: /svc: Out of memory and no killable processes...',
        `Memory cgroup out of memory: Killed process ${a} (a)`,
        'Tasks in /grp are going to be killed due to memory.oom.group set',
        `Memory cgroup out of memory: Killed process ${b} (b)`,
        'Memory cgroup out of memory: /grp: Out of memory and no killable processes...',
      ]);
    });
  }
});

describe('VM_FAULT_OOM goes through pagefault_out_of_memory (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a charge that fails with nobody killable leaks VM_FAULT_OOM to the #PF handler: a "Huh VM_FAULT_OOM leaked out" ratelimited to 10 per 5 s and the access retried (no SIGBUS) until memory.max is raised`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const pin = cgroup_mkdir(k, 'pin');
      expect(memory_max_write(k, pin, 4)).toBe(0);
      const out: Record<string, unknown> = {};
      const only = proc(wd, 'only', pin, async (mm) => {
        const a = await mapAt(mm, BASE, 8);
        for (let i = 0; i < 8; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
        out.sig = uaccess_signal();
        out.last = await n(get_user(a + 7 * P));
      });
      expect(oom_score_adj_write(k, only, OOM_SCORE_ADJ_MIN)).toBe(0);
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          // 13 failed faults (one memcg OOM each), well inside one 5 s ratelimit interval
          while (memcgStats(k, pin)!.events.oom < 13) {
            const p = k.sched.point();
            if (p !== undefined) await p;
          }
          out.stuckAt = memcgStats(k, pin)!.current;
          expect(await n(memory_max_write(k, pin, 'max'))).toBe(0);
          out.wait = ((await waitpid(only)) as { signal: number }).signal;
          out.events = memcgStats(k, pin)!.events;
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'pagefault_oom']);
      expect(out.stuckAt).toBe(4);
      expect([out.wait, out.sig, out.last]).toEqual([0, 0, 8]);
      const ev = out.events as Record<string, number>;
      expect(ev.oom).toBeGreaterThanOrEqual(13);
      expect(ev.oom_kill).toBe(0);
      const pf = log.filter((x) => x.kind === 'pagefault_oom');
      expect(pf.length).toBe(10); // DEFAULT_RATELIMIT_BURST in the first 5 s, the rest suppressed
      expect(pf[0].text).toBe('Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF');
      expect(log.filter((x) => x.kind === 'oom_kill').every((x) => x.text.endsWith('/pin: Out of memory and no killable processes...'))).toBe(true);
    });
  }
});

describe('both memcg OOM paths under threads (each task in its own worker)', () => {
  it('memory.max lowered under the hog kills it; then the grower charges past the limit, reclaim fails, and its own memcg OOM kills it; usage back to 0, nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = usage(k);
    oom_set_reaper_policy(k, 'v4.6');
    const memcg = cgroup_mkdir(k, 'job');
    const ctl = k.kmalloc.kzalloc(MemcgCtlL.$size);
    const runner = new ThreadsRunner(k, { watchdogMs: 8000, timeoutMs: 25_000 });
    runner.spawn({ name: 'oom_reaper', kind: 'kthread', module: oomKillModule(), fn: 'oom_reaper' });
    const base = { ctl, memcg, base: BASE, pageSize: P, max: 12 };
    const hog = spawn_process(k, runner, { name: 'hog', module: FIXTURE, fn: 'memcgHog', args: { ...base, pages: 24 } });
    const grower = spawn_process(k, runner, { name: 'grower', module: FIXTURE, fn: 'memcgGrower', args: { ...base, pages: 20 } });
    expect([cgroup_procs_write(k, memcg, hog), cgroup_procs_write(k, memcg, grower)]).toEqual([0, 0]);
    runner.spawn({ name: 'ctl', kind: 'kthread', module: FIXTURE, fn: 'memcgCtl', args: { ...base, pages: 0, hog, grower } });
    const r = await runner.run();
    const log = k.klog.read();
    expect(r.failed, dumpLog(log)).toEqual([]);
    expect(r.status, r.report ?? dumpLog(log)).toBe('done');
    const w = k.arena.i32;
    const f = (x: keyof typeof MemcgCtlL): number => w[ctl + (MemcgCtlL[x] as number)];
    expect([f('max_ret'), f('after_max'), f('kills_after_max'), f('hog_signal')]).toEqual([0, 0, 1, SIGKILL]);
    expect([f('grower_wrote'), f('grower_signal'), f('end_current'), f('end_oom_kill'), f('peak')]).toEqual([12, SIGKILL, 0, 2, 24]);
    // 2 + MAX_RECLAIM_RETRIES failed rounds before the OOM; after it, the reaper (at once under
    // v4.6) may free the grower's pages before its own retries run out
    expect(f('end_max_events')).toBeGreaterThanOrEqual(MAX_RECLAIM_RETRIES + 2);
    const kills = log.filter((x) => x.kind === 'oom_kill').map((x) => x.text.split('\n').pop()!.replace(/ total-vm.*/, ''));
    expect(kills).toEqual([`Memory cgroup out of memory: Killed process ${hog} (hog)`, `Memory cgroup out of memory: Killed process ${grower} (grower)`]);
    expect(log.filter((x) => !['oom_kill', 'oom_reaper'].includes(x.kind)), dumpLog(log)).toEqual([]);
    reap_zombies(k);
    k.kmalloc.kfree(ctl);
    expect(usage(k)).toEqual(before);
  }, 40_000);
});

describe('__ratelimit (lib/ratelimit.c) behind the #PF warning', () => {
  it('10 pass per 5 s interval; the first caller of the next interval reports how many were suppressed', async () => {
    const wd = world(1, {}, false);
    const { k } = wd;
    const rs = k.kmalloc.kzalloc(8);
    const out: boolean[] = [];
    wd.s.spawn({
      name: 't',
      fn: async () => {
        for (let i = 0; i < 15; i++) out.push(___ratelimit(k, rs, 'f', 'rl'));
        await sleepMs(k, 4999);
        out.push(___ratelimit(k, rs, 'f', 'rl'));
        await sleepMs(k, 1);
        out.push(___ratelimit(k, rs, 'f', 'rl'));
      },
    });
    const log = await (async () => {
      const r = await wd.s.run();
      expect(r.status).toBe('done');
      return k.klog.read();
    })();
    k.kmalloc.kfree(rs);
    expect(out).toEqual([...Array(10).fill(true), ...Array(5).fill(false), false, true]);
    expect(log.map((x) => [x.kind, x.text])).toEqual([['rl', 'f: 6 callbacks suppressed']]);
  });
});

describe('the page allocator runs out of memory (no memcg, no reclaim) (sim)', () => {
  for (const policy of ['v5.16', 'v5.15'] as const) {
    it(`${policy}: __alloc_pages_may_oom kills the biggest process and the fault then succeeds; no VM_FAULT_OOM leaks to the #PF handler`, async () => {
      const wd = world(2, { mem: { pages: 192, pageSize: P } });
      const { k, step } = wd;
      mem_cgroup_set_oom_policy(k, policy);
      const out: Record<string, unknown> = {};
      const hog = proc(wd, 'hog', 0, async (mm) => {
        const pages = k.zone.nrFree - 40;
        await touch(await mapAt(mm, BASE, pages), pages);
        raise(k, step, 1);
      }, () => true);
      const f = proc(wd, 'f', 0, async (mm) => {
        await waitFor(k, step, 1);
        await touch(await mapAt(mm, BASE, 60), 60);
        out.done = true;
      });
      wd.s.spawn({
        name: 'ctl',
        kind: 'kthread',
        fn: async () => {
          out.waits = [((await waitpid(hog)) as { signal: number }).signal, ((await waitpid(f)) as { signal: number }).signal];
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'oom_reaper', 'pagefault_oom']);
      expect(out.done).toBe(true);
      expect(out.waits).toEqual([SIGKILL, 0]);
      expect(log.some((x) => x.kind === 'pagefault_oom')).toBe(false);
      expect(log.find((x) => x.kind === 'oom_kill')!.text).toMatch(new RegExp(`^Out of memory: Killed process ${hog} \\(hog\\)`));
    });
  }
});
