// The OOM killer and the oom_reaper (mm/oom_kill.c, reference §5, §7 and §9 scenarios 15, 25)
// under `sim` over several seeds: §9.15 with the odp driver (umem_mutex held, then released or
// held throughout), §9.25 after MMF_UNSTABLE, victim selection by RSS and the count of victims
// chosen while an earlier one still held memory, the OOM_REAPER_DELAY timer; and one `threads`
// run of the reap path. Every run ends with nothing leaked (frames, tables, VMAs, processes,
// kmalloc objects, devices).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ThreadsRunner } from '../src/run/threads.js';
import { OomCtlL } from './fixtures/oom_tasks.js';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EFAULT } from '../src/shm/errno.js';
import { mm_flags_test, mmap_write_lock, mmap_write_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap } from '../src/mm/mmap.js';
import { SIGBUS, SIGKILL } from '../src/mm/memory.js';
import { pte_present } from '../src/mm/pgtable.js';
import { cond_resched, kill_process, reap_zombies, spawn_process, waitpid, type ProcessFn } from '../src/mm/process.js';
import { get_user, kthread_unuse_mm, kthread_use_mm, put_user, uaccess_signal } from '../src/mm/uaccess.js';
import { MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MmL } from '../src/mm/types.js';
import { MAX_OOM_REAP_RETRIES, oomStats, oomKillModule, oom_reaper, oom_reaper_stop, oom_set_reaper_policy, out_of_memory, type OomReaperPolicy } from '../src/mm/oom_kill.js';
import { deviceUsage, shadowEntries } from '../src/device/index.js';
import { IB_ACCESS_LOCAL_WRITE, IB_ACCESS_ON_DEMAND, IB_ACCESS_REMOTE_READ, IB_ACCESS_REMOTE_WRITE, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, ODP_NONBLOCK_TRYLOCK, ib_advise_mr, ib_dereg_mr, ib_reg_mr, odp_lock, odp_unlock } from '../drivers/odp/index.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const N = 16;
const BASE = 0x40000000;
const ODP_ACCESS = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ;
const MS = 1e6;
const OOM_FIXTURE = fileURLToPath(new URL('./fixtures/oom_tasks.ts', import.meta.url));

const CFG: BootConfig = {
  maxTasks: 32,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 32 },
  mem: { pages: 2048, pageSize: P },
};

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

interface World {
  k: Kernel;
  s: SimScheduler;
  step: number;
  before: ReturnType<typeof usage>;
}

function usage(k: Kernel): { mm: ReturnType<typeof mmUsage>; kmalloc: Record<string, number>; dev: ReturnType<typeof deviceUsage> } {
  return { mm: mmUsage(k), kmalloc: k.kmalloc.usage(), dev: deviceUsage(k) };
}

function world(seed: number, policy: OomReaperPolicy): World {
  const k = bootKernel(CFG);
  const before = usage(k);
  const step = k.kmalloc.kzalloc(8);
  oom_set_reaper_policy(k, policy);
  const s = new SimScheduler(k, { seed, stallMs: 5000 });
  s.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
  return { k, s, step, before };
}

const dumpLog = (log: KlogRecord[]): string => log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');

/** Run to the end; reap; klog only `allow`; nothing leaked. */
async function finish(wd: World, allow: string[]): Promise<KlogRecord[]> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
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
  while (!cond()) await sleepMs(k, 10);
}

async function mapAt(mm: number, at: number, pages: number): Promise<number> {
  const a = await n(vm_mmap(mm, at, pages * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
  expect(a).toBe(at);
  for (let i = 0; i < pages; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
  return a;
}

function presentPages(k: Kernel, mm: number, a: number, pages: number): number {
  let c = 0;
  const pgd = k.arena.i32[mm + MmL.pgd];
  for (let i = 0; i < pages; i++) {
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, a + i * P);
    if (slot >= 0 && pte_present(k.arena.i32[slot])) c++;
  }
  return c;
}

/** A process that maps `pages`, then runs `body`; it dies at its next cond_resched once killed. */
function proc(wd: World, name: string, pages: number, body: (mm: number, a: number) => Promise<void>, loop = true): number {
  const fn: ProcessFn = async ({ mm }) => {
    const a = pages > 0 ? await mapAt(mm, BASE, pages) : 0;
    await body(mm, a);
    while (loop) {
      await cond_resched();
      await sleepMs(wd.k, 1);
    }
  };
  const pid = spawn_process(wd.k, wd.s, { name, fn });
  expect(pid).toBeGreaterThan(0);
  return pid;
}

describe('§9 scenario 15: OOM while the odp umem_mutex is held (sim)', () => {
  for (const seed of SEEDS) {
    for (const mode of ['released', 'held'] as const) {
      it(`seed ${seed} (${mode}): the reaper's non-blockable UNMAP gets -EAGAIN, retries 100 ms apart, then ${mode === 'released' ? 'reaps' : 'reports "unable to reap"'}; §9.25 after MMF_UNSTABLE; torn down with nothing leaked`, async () => {
        const wd = world(seed, 'v5.18');
        const { k, step } = wd;
        const sh = { mm: 0, mr: 0, a: 0 };
        const out: Record<string, unknown> = {};
        const victim = proc(wd, 'victim', N, async (mm, a) => {
          const mr = await ib_reg_mr({ addr: a, length: N * P, access: ODP_ACCESS, odpFlags: ODP_NONBLOCK_TRYLOCK });
          expect(mr).toBeGreaterThan(0);
          Object.assign(sh, { mm, mr, a });
          raise(k, step, 1);
          await waitFor(k, step, 9); // stuck where SIGKILL is not noticed: why the reaper exists
        });
        proc(wd, 'alloc', 2, async () => {
          await waitFor(k, step, 2);
          out.killStart = k.sched.now();
          out.chosen = out_of_memory(k);
        }, false);
        wd.s.spawn({
          name: 'holder',
          fn: async () => {
            await waitFor(k, step, 1);
            const p = odp_lock(sh.mr); // a page fault of the driver holding umem_mutex
            if (p !== undefined) await p;
            out.shadowBefore = shadowEntries(k, sh.mr).length;
            raise(k, step, 2);
            if (mode === 'released') await until(k, () => oomStats(k).reapAttempts >= 3);
            else await waitFor(k, step, 8);
            odp_unlock(sh.mr);
          },
        });
        wd.s.spawn({
          name: 'ctl',
          kind: 'kthread',
          fn: async () => {
            await waitFor(k, step, 2);
            await until(k, () => sh.mm !== 0 && mm_flags_test(MMF_OOM_SKIP, sh.mm));
            const st = oomStats(k);
            out.stats = { kills: st.kills, attempts: st.reapAttempts, unable: st.unableToReap, reaped: st.reaped };
            out.delayOk = st.firstAttemptMs - Math.floor((out.killStart as number) / MS) >= 2000; // OOM_REAPER_DELAY
            const gap = (st.lastAttemptMs - st.firstAttemptMs) / (st.reapAttempts - 1);
            out.gapOk = gap >= 100 && gap < 105;
            out.unstable = mm_flags_test(MMF_UNSTABLE, sh.mm);
            out.pages = presentPages(k, sh.mm, sh.a, N);
            out.rss = k.arena.i32[sh.mm + MmL.rss_stat + MM_ANONPAGES];
            out.shadow = shadowEntries(k, sh.mr).length;
            // §9.25: a CPU fault installing an anon PTE gets SIGBUS (only testable once reaped)
            if (mode === 'released') {
              kthread_use_mm(sh.mm);
              out.cpu = [(await n(get_user(sh.a))) < 0, uaccess_signal()];
              kthread_unuse_mm(sh.mm);
            }
            raise(k, step, 8);
            await sleepMs(k, 1);
            // §9.25: the device fault on the victim
            out.dev = await ib_advise_mr(sh.mr, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [{ addr: sh.a, length: P }]);
            expect(await ib_dereg_mr(sh.mr)).toBe(0); // exit_files' close of the MR, done for the victim
            raise(k, step, 9);
            out.wait = await waitpid(victim);
            oom_reaper_stop(k);
          },
        });
        const log = await finish(wd, ['oom_kill', 'oom_reaper', 'oom_unable_to_reap']);
        const kinds = log.map((x) => x.kind);
        expect(out.chosen).toBe(victim);
        expect(out.shadowBefore).toBe(N);
        expect(out.delayOk).toBe(true);
        expect(out.gapOk).toBe(true);
        expect(out.unstable).toBe(true);
        // §9.25: a device fault needing a fault-in fails; PTEs the reaper had to leave still serve
        expect(out.dev).toBe(mode === 'released' ? -EFAULT : 0);
        expect((out.wait as { signal: number }).signal).toBe(SIGKILL);
        if (mode === 'released') {
          expect(out.stats).toEqual({ kills: 1, attempts: 4, unable: 0, reaped: 1 });
          expect([out.pages, out.rss, out.shadow]).toEqual([0, 0, 0]);
          expect(out.cpu).toEqual([true, SIGBUS]);
          expect(kinds).toEqual(['oom_kill', 'oom_reaper']);
          expect(log[1].text).toMatch(new RegExp(`^oom_reaper: reaped process ${victim} \\(victim\\), now anon-rss:0kB`));
        } else {
          expect(out.stats).toEqual({ kills: 1, attempts: MAX_OOM_REAP_RETRIES, unable: 1, reaped: 0 });
          expect([out.pages, out.rss, out.shadow]).toEqual([N, N, N]); // skipped VMA: PTEs and mirror stay
          expect(kinds).toEqual(['oom_kill', 'oom_unable_to_reap']);
          expect(log[1].text).toContain(`oom_reaper: unable to reap pid:${victim} (victim)`);
          expect(log[1].text).toMatch(/held by holder/);
        }
      });
    }
  }
});

describe('victim selection by RSS; a second OOM while the first victim still holds its memory (sim, v4.6 immediate reaper)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the biggest RSS dies; an OOM before MMF_OOM_SKIP kills nobody; the mmap_lock held throughout -> "unable to reap"; the next OOM picks the next biggest and is counted`, async () => {
      const wd = world(seed, 'v4.6');
      const { k, step } = wd;
      const out: Record<string, unknown> = {};
      const mms: Record<string, number> = {};
      const ready = (name: string) => async (mm: number): Promise<void> => {
        mms[name] = mm;
        Atomics.add(k.arena.i32, step + 1, 1);
        k.sched.wake(step + 1, Infinity);
      };
      const small = proc(wd, 'small', 2, ready('small'));
      const big = proc(wd, 'big', 12, ready('big'));
      const mid = proc(wd, 'mid', 6, ready('mid'));
      wd.s.spawn({
        name: 'holder',
        fn: async () => {
          await waitFor(k, step + 1, 3);
          const p = mmap_write_lock(mms.big); // e.g. the victim's own mmap stuck behind I/O
          if (p !== undefined) await p;
          raise(k, step, 1);
          await waitFor(k, step, 2);
          mmap_write_unlock(mms.big);
        },
      });
      wd.s.spawn({
        name: 'oom',
        kind: 'kthread',
        fn: async () => {
          await waitFor(k, step, 1);
          const t0 = Math.floor(k.sched.now() / MS);
          out.first = out_of_memory(k);
          out.second = out_of_memory(k); // the victim has no MMF_OOM_SKIP yet: wait, kill nobody
          await until(k, () => mm_flags_test(MMF_OOM_SKIP, mms.big));
          const st = oomStats(k);
          out.immediate = st.firstAttemptMs - t0 < 5;
          out.bigHolds = k.arena.i32[mms.big + MmL.rss_stat + MM_ANONPAGES];
          out.third = out_of_memory(k);
          raise(k, step, 2);
          out.waits = [(await waitpid(big)) as { signal: number }, (await waitpid(mid)) as { signal: number }].map((x) => x.signal);
          out.st = oomStats(k);
          expect(kill_process(k, small)).toBe(0);
          await waitpid(small);
          oom_reaper_stop(k);
        },
      });
      const log = await finish(wd, ['oom_kill', 'oom_reaper', 'oom_unable_to_reap']);
      const st = out.st as ReturnType<typeof oomStats>;
      expect(out).toMatchObject({ first: big, second: true, immediate: true, bigHolds: 12, third: mid, waits: [SIGKILL, SIGKILL] });
      expect([st.kills, st.victimsWhileHeld, st.unableToReap]).toEqual([2, 1, 1]);
      const unable = log.filter((x) => x.kind === 'oom_unable_to_reap');
      expect(unable.length).toBe(1);
      expect(unable[0].text).toContain(`unable to reap pid:${big} (big)`);
      expect(unable[0].text).toMatch(/held by holder/);
      expect(log.filter((x) => x.kind === 'oom_kill').map((x) => x.text.match(/Killed process (\d+)/)?.[1])).toEqual([String(big), String(mid)]);
    });
  }
});

describe('the reap path under threads (the reaper and the victim CPU task in their own workers)', () => {
  it('v4.6: the victim is killed, reaped by the oom_reaper worker while stuck, then exits; nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = usage(k);
    oom_set_reaper_policy(k, 'v4.6');
    const ctl = k.kmalloc.kzalloc(OomCtlL.$size * 4);
    const runner = new ThreadsRunner(k, { watchdogMs: 4000, timeoutMs: 20_000 });
    runner.spawn({ name: 'oom_reaper', kind: 'kthread', module: oomKillModule(), fn: 'oom_reaper' });
    const args = { ctl, base: BASE, pages: N, pageSize: P };
    const victim = spawn_process(k, runner, { name: 'victim', module: OOM_FIXTURE, fn: 'oomVictim', args });
    expect(victim).toBeGreaterThan(0);
    runner.spawn({ name: 'ctl', kind: 'kthread', module: OOM_FIXTURE, fn: 'oomCtl', args: { ...args, victim } });
    const r = await runner.run();
    const log = k.klog.read();
    expect(r.failed, dumpLog(log)).toEqual([]);
    expect(r.status, r.report ?? dumpLog(log)).toBe('done');
    const w = k.arena.i32;
    expect([w[ctl + OomCtlL.mapped], w[ctl + OomCtlL.chosen], w[ctl + OomCtlL.unstable], w[ctl + OomCtlL.rss_after], w[ctl + OomCtlL.signal]]).toEqual([N, victim, 1, 0, SIGKILL]);
    expect(log.map((x) => x.kind)).toEqual(['oom_kill', 'oom_reaper']);
    expect(oomStats(k)).toMatchObject({ kills: 1, reaped: 1, reapAttempts: 1, unableToReap: 0 });
    reap_zombies(k);
    k.kmalloc.kfree(ctl);
    expect(usage(k)).toEqual(before);
  }, 30_000);
});

describe('v5.18 OOM_REAPER_DELAY: a victim that exits on its own is never reaped (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: killable victim exits within the delay; exit_mmap sets MMF_OOM_SKIP and the timer drops it (no attempt)`, async () => {
      const wd = world(seed, 'v5.18');
      const { k, step } = wd;
      const out: Record<string, unknown> = {};
      const victim = proc(wd, 'victim', 8, async () => raise(k, step, 1));
      wd.s.spawn({
        name: 'oom',
        kind: 'kthread',
        fn: async () => {
          await waitFor(k, step, 1);
          out.chosen = out_of_memory(k);
          out.signal = ((await waitpid(victim)) as { signal: number }).signal;
          await sleepMs(k, 2500); // past the timer
          out.st = oomStats(k);
          oom_reaper_stop(k);
        },
      });
      await finish(wd, ['oom_kill']);
      expect(out).toMatchObject({ chosen: victim, signal: SIGKILL, st: { kills: 1, reapAttempts: 0, reaped: 0, unableToReap: 0 } });
    });
  }
});
