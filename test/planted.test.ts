// Planted bugs, each a copy of the devmirror fixture (test/fixtures/devmirror.ts, the smallest
// reference mirror on the device API) with one bug marked "PLANTED BUG", each caught by the
// check that should catch it under `sim`, and each with its correct twin (the unmodified
// 'test-mirror') running the same scenario over the same seeds with no record at all:
//   a. no trylock in the non-blockable path (mirror_notrylock)  -> context: 'might_sleep'
//   b. no mmu_interval_set_seq (mirror_noseq)                    -> mirror invariant
//   c. zapping without the lock (mirror_zapnolock)               -> lockdep_assert_held in shadow_pte_zap: 'lockdep_assert'
//   d. returning before in-flight accesses drain (mirror_nofence) -> mirror invariant
//   e. ignoring PROTECTION events (mirror_noprot)                 -> mirror invariant (mprotect R; fork's COW)
//   f. GFP_KERNEL under the notifier lock (mirror_gfpkernel)      -> lockdep: 'lockdep_circular'
//   g. no mmu_interval_read_retry: already planted as mirror_noretry, tested in device.test.ts
//      (caught by the retry-protocol check), as are mirror_nozap and mirror_nolock.
// The scenarios are deterministic in what they do; the seeds vary sim's interleavings of the
// tasks involved (process, device programs, fork child). Each bug must be caught on the FIRST
// seed and on every one of SEEDS.length; the twin must stay clean on all of them.

import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { do_fork, reap_zombies, spawn_process, waitpid, type ProcessContext } from '../src/mm/process.js';
import { put_user } from '../src/mm/uaccess.js';
import { ResL, deviceUsage, device_close, device_inflight, device_open, spawnDeviceProgram, type DevProgramArgs } from '../src/device/index.js';
import { oom_reap_task_mm } from './fixtures/reaper.js';
import { testMirror } from './fixtures/devmirror.js';
import { plantedNotrylock } from './fixtures/planted/mirror_notrylock.js';
import { noseq_set_hook, plantedNoseq } from './fixtures/planted/mirror_noseq.js';
import { plantedZapNolock } from './fixtures/planted/mirror_zapnolock.js';
import { plantedNofence } from './fixtures/planted/mirror_nofence.js';
import { plantedNoprot } from './fixtures/planted/mirror_noprot.js';
import { plantedGfpKernel } from './fixtures/planted/mirror_gfpkernel.js';

void [testMirror, plantedNotrylock, plantedNoseq, plantedZapNolock, plantedNofence, plantedNoprot, plantedGfpKernel];

const SEEDS = [1, 2, 3, 4, 5];
const P = 4096;

const CFG: BootConfig = {
  maxTasks: 40,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 15,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 16 },
  mem: { pages: 1024, pageSize: P },
  device: { devices: 8, sptDirs: 64, sptLeaves: 32 },
};

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

function dumpLog(log: KlogRecord[]): string {
  return log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
}

/** mmap `pages` private RW pages and write i + 1 into word 0 of page i. */
async function mapWritten(mm: number, pages: number): Promise<number> {
  const a = await n(vm_mmap(mm, 0, pages * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  expect(a).toBeGreaterThan(0);
  for (let i = 0; i < pages; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
  return a;
}

async function waitWord(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

async function runProgram(k: Kernel, program: string, args: Omit<DevProgramArgs, 'resultAt'>): Promise<number> {
  const res = k.kmalloc.kzalloc(ResL.$size);
  spawnDeviceProgram(k, k.sched, program, { ...args, resultAt: res });
  await waitWord(k, res + ResL.done, 1);
  const pages = k.arena.i32[res + ResL.pages];
  k.kmalloc.kfree(res);
  return pages;
}

async function sleepNs(k: Kernel, ns: number): Promise<void> {
  const p = k.sched.sleep(ns);
  if (p !== undefined) await p;
}

type Scenario = (k: Kernel, ctx: ProcessContext<unknown>, dev: number) => Promise<void>;

/**
 * One sim run of `scenario` on a fresh kernel with a device of `driver` (opened as 'dut');
 * checks that it ran to the end with nothing leaked, and returns the klog's records.
 */
async function runOnce(seed: number, driver: string, scenario: Scenario): Promise<KlogRecord[]> {
  const k = bootKernel(CFG);
  const before = mmUsage(k);
  const kmallocBefore = k.kmalloc.usage();
  const s = new SimScheduler(k, { seed, stallMs: 5000 });
  const pid = spawn_process(k, s, {
    name: 'p',
    fn: async (ctx) => {
      const dev = await device_open(driver, { name: 'dut' });
      expect(dev).toBeGreaterThan(0);
      await scenario(k, ctx, dev);
      expect(await device_close(dev)).toBe(0);
    },
  });
  expect(pid).toBeGreaterThan(0);
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(k.kmalloc.usage()).toEqual(kmallocBefore);
  expect(deviceUsage(k)).toEqual({ devices: 0, sptDirs: 0, sptLeaves: 0 });
  return log;
}

interface Planted {
  id: string;
  what: string;
  driver: string;
  check: string;
  /** the record kind that must appear, and nothing else */
  kind: string;
  /** the record's text must match */
  text: RegExp;
  scenario: Scenario;
}

const PLANTED: Planted[] = [
  {
    id: 'a',
    what: 'no trylock in the non-blockable path (mutex_lock under the OOM reaper)',
    driver: 'planted-notrylock',
    check: 'the context check',
    kind: 'might_sleep',
    text: /^BUG: sleeping function called from invalid context at mutex_lock\n.*non_block: 1/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 4);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toBe(4);
      // the reaper's non-blockable UNMAP of every private VMA (nothing else runs: no contention)
      expect(oom_reap_task_mm(k, mm)).toBe(true);
      expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
    },
  },
  {
    id: 'b',
    what: 'no mmu_interval_set_seq (a fault that collided with an mprotect installs its stale writable pfn)',
    driver: 'planted-noseq',
    check: 'the mirror invariant',
    kind: 'mirror_invariant',
    text: /^BUG: mirror invariant: device dut@[0-9a-f]+ \(planted-noseq\) writes 0x[0-9a-f]+ through a shadow PTE \(pfn \d+, write, .*read-only/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 2);
      let collide = true;
      // the colliding invalidation, between hmm_range_fault and the notifier lock
      // (only planted-noseq has the hook; the twin's loop has no gap to hook into)
      noseq_set_hook(async () => {
        if (!collide) return;
        collide = false;
        expect(await n(do_mprotect(mm, a, P, PROT_READ))).toBe(0);
      });
      try {
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 1, op: 'write', value: 3 });
        if (collide) expect(await n(do_mprotect(mm, a, P, PROT_READ))).toBe(0); // the twin: the same mprotect
        collide = false;
        await runProgram(k, 'dev_stream', { dev, start: a, npages: 1, op: 'write', value: 4 });
      } finally {
        noseq_set_hook(null);
      }
      expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
    },
  },
  {
    id: 'c',
    what: 'zapping without the notifier lock',
    driver: 'planted-zapnolock',
    check: "lockdep_assert_held in the device layer's shadow_pte_zap",
    kind: 'lockdep_assert',
    text: /^WARNING: lockdep_assert_held\(mirror->lock@[0-9a-f]+\) failed in shadow_pte_zap on dut@[0-9a-f]+ \(planted-zapnolock\)/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 4);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toBe(4);
      expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
    },
  },
  {
    id: 'd',
    what: 'returning before in-flight accesses drain (munmap while a slow access is in flight)',
    driver: 'planted-nofence',
    check: 'the mirror invariant',
    kind: 'mirror_invariant',
    text: /^BUG: mirror invariant: device dut@[0-9a-f]+ \(planted-nofence\) reads 0x[0-9a-f]+ .* but the host PTE is none/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 4);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toBe(4);
      const res = k.kmalloc.kzalloc(ResL.$size);
      spawnDeviceProgram(k, k.sched, 'dev_stream', { dev, start: a, npages: 4, burst: 4, holdNs: 1e6, resultAt: res });
      while (device_inflight(k, dev, 0) === 0) await sleepNs(k, 1000);
      expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
      await waitWord(k, res + ResL.done, 1);
      k.kmalloc.kfree(res);
    },
  },
  {
    id: 'e1',
    what: 'ignoring PROTECTION events (mprotect R, then a device write)',
    driver: 'planted-noprot',
    check: 'the mirror invariant',
    kind: 'mirror_invariant',
    text: /^BUG: mirror invariant: device dut@[0-9a-f]+ \(planted-noprot\) writes 0x[0-9a-f]+ through a shadow PTE \(pfn \d+, write, .*read-only/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 2);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 2, op: 'write', value: 7 })).toBe(2);
      expect(await n(do_mprotect(mm, a, 2 * P, PROT_READ))).toBe(0);
      await runProgram(k, 'dev_stream', { dev, start: a, npages: 2, op: 'write', value: 8, burst: 1 });
      expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
    },
  },
  {
    id: 'e2',
    what: "ignoring PROTECTION events (fork's COW write-protect, then a device write)",
    driver: 'planted-noprot',
    check: 'the mirror invariant',
    kind: 'mirror_invariant',
    text: /^BUG: mirror invariant: device dut@[0-9a-f]+ \(planted-noprot\) writes 0x[0-9a-f]+ through a shadow PTE \(pfn \d+, write, .*read-only/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 2);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 2, op: 'write', value: 7 })).toBe(2);
      const pid = await do_fork({ name: 'child', fn: async () => {} });
      expect(pid).toBeGreaterThan(0);
      await runProgram(k, 'dev_stream', { dev, start: a, npages: 2, op: 'write', value: 8, burst: 1 });
      const st = await waitpid(pid);
      expect(typeof st === 'number' ? st : st.code).toBe(0);
      expect(await n(vm_munmap(mm, a, 2 * P))).toBe(0);
    },
  },
  {
    id: 'f',
    what: 'a GFP_KERNEL allocation under the notifier lock (no reclaim happens)',
    driver: 'planted-gfpkernel',
    check: 'lockdep',
    kind: 'lockdep_circular',
    text: /mirror->lock[\s\S]*mmu_notifier_invalidate_range_start|mmu_notifier_invalidate_range_start[\s\S]*mirror->lock/,
    async scenario(k, { mm }, dev) {
      const a = await mapWritten(mm, 4);
      expect(await runProgram(k, 'dev_stream', { dev, start: a, npages: 4 })).toBe(4);
      expect(await n(vm_munmap(mm, a, 4 * P))).toBe(0);
    },
  },
];

describe('planted bugs (sim): each caught by its check, each correct twin clean over the same seeds', () => {
  for (const pb of PLANTED) {
    it(`${pb.id}: ${pb.what}: caught by ${pb.check} ('${pb.kind}') within 1 seed, and on each of ${SEEDS.length} seeds`, async () => {
      for (const seed of SEEDS) {
        const log = await runOnce(seed, pb.driver, pb.scenario);
        expect(log.length, `seed ${seed}: not caught`).toBeGreaterThan(0);
        expect(
          log.filter((x) => x.kind !== pb.kind),
          `seed ${seed}: ${dumpLog(log)}`,
        ).toEqual([]);
        expect(log[0].text, `seed ${seed}`).toMatch(pb.text);
        if (process.env.PLANTED_SHOW && seed === SEEDS[0]) process.stderr.write(`--- ${pb.id} (${log.length} records)\n${log[0].text.split("\n").slice(0, 6).join("\n")}\n`);
      }
    });

    it(`${pb.id}: the correct twin (test-mirror) runs the same scenario clean over the same ${SEEDS.length} seeds`, async () => {
      for (const seed of SEEDS) {
        const log = await runOnce(seed, 'test-mirror', pb.scenario);
        expect(log, `seed ${seed}: ${dumpLog(log)}`).toEqual([]);
      }
    });
  }
});
