// The world the device and driver suites share: a small kernel under one sim scheduler, and
// the end-of-run checks (status, failures, klog, and nothing leaked: mm usage, kmalloc objects,
// devices and shadow tables back where they started).

import { expect } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap } from '../src/mm/mmap.js';
import { reap_zombies, spawn_process, type ProcessFn } from '../src/mm/process.js';
import { put_user } from '../src/mm/uaccess.js';
import { deviceUsage } from '../src/device/index.js';

export const P = 4096;

export const CFG: BootConfig = {
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

export async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

export function dumpLog(log: KlogRecord[]): string {
  return log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
}

export interface World {
  k: Kernel;
  s: SimScheduler;
  before: ReturnType<typeof mmUsage>;
  kmallocBefore: Record<string, number>;
}

export function world(seed: number, cfg: BootConfig = {}): World {
  const k = bootKernel({ ...CFG, ...cfg });
  return { k, s: new SimScheduler(k, { seed, stallMs: 5000 }), before: mmUsage(k), kmallocBefore: k.kmalloc.usage() };
}

/** Run to the end; reap; nothing leaked; klog holds only the kinds allowed. */
export async function finish(wd: World, allow: string[] = []): Promise<{ r: RunResult; log: KlogRecord[] }> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  expect(mmUsage(k)).toEqual(wd.before);
  expect(k.kmalloc.usage()).toEqual(wd.kmallocBefore);
  expect(deviceUsage(k)).toEqual({ devices: 0, sptDirs: 0, sptLeaves: 0 });
  return { r, log };
}

export function proc(wd: World, fn: ProcessFn): number {
  const pid = spawn_process(wd.k, wd.s, { name: 'p', fn });
  expect(pid).toBeGreaterThan(0);
  return pid;
}

/** mmap `pages` private RW pages and write i + 1 into word 0 of page i. */
export async function mapWritten(mm: number, pages: number): Promise<number> {
  const a = await n(vm_mmap(mm, 0, pages * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  expect(a).toBeGreaterThan(0);
  for (let i = 0; i < pages; i++) expect(await n(put_user(i + 1, a + i * P))).toBe(0);
  return a;
}

export async function waitWord(k: Kernel, at: number, v: number): Promise<void> {
  const w = k.arena.i32;
  for (let c = Atomics.load(w, at); c < v; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}
