// `--trace`: the Chrome/Perfetto trace of a run (src/run/trace.ts) for runs whose events are
// known, under `sim` (several seeds) and `threads`: a process that writes N pages (N CPU-fault
// spans on its track), a dmirror engine that reads them (N device-fault spans on the engine's
// track), a munmap (one MMU_NOTIFY_UNMAP span over the window, enclosing the device's zap), a
// planted violation (an instant on the process's track); the OOM reaper's attempts, retry
// sleeps and a lock wait; a ring that wrapped. The file parses, spans nest on every track,
// and under threads the spans of different workers sit on one time base.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import { buildTrace, writeTrace, type ChromeTrace, type TraceEvent } from '../src/run/trace.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult, Runner } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { mmap_write_lock, mmap_write_unlock } from '../src/mm/mm_inline.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { vm_mmap } from '../src/mm/mmap.js';
import { oom_kill_process, oom_reaper, oom_reaper_stop, oom_set_reaper_policy } from '../src/mm/oom_kill.js';
import { cond_resched, reap_zombies, spawn_process, waitpid } from '../src/mm/process.js';
import { put_user } from '../src/mm/uaccess.js';
import { deviceUsage } from '../src/device/index.js';
import { TraceCtlL, type TraceArgs } from './fixtures/trace_tasks.js';

const P = 4096;
const N = 8;
const BASE = 0x40000000;
const FIXTURE = fileURLToPath(new URL('./fixtures/trace_tasks.ts', import.meta.url));
const CFG: BootConfig = {
  maxTasks: 24,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 14,
  klogBytes: 1 << 17,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 32 },
  mem: { pages: 1024, pageSize: P },
  device: { devices: 4, sptDirs: 32, sptLeaves: 16 },
};

const dir = mkdtempSync(join(tmpdir(), 'shadowmm-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hex = (v: number): string => `0x${v.toString(16)}`;

interface Run {
  k: Kernel;
  r: RunResult;
  trace: ChromeTrace;
}

/** Run the fixture, check it ended clean with nothing leaked, write the trace and parse it back. */
async function runFixture(scheduler: 'sim' | 'threads', seed: number, cfg: BootConfig = {}): Promise<Run> {
  const k = bootKernel({ ...CFG, ...cfg });
  const before = { mm: mmUsage(k), kmalloc: k.kmalloc.usage() };
  const ctl = k.kmalloc.kzalloc(TraceCtlL.$size);
  const runner: Runner = scheduler === 'sim' ? new SimScheduler(k, { seed, stallMs: 5000 }) : new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 30_000, preload: [FIXTURE] });
  const args: TraceArgs = { ctl, base: BASE, pages: N, pageSize: P, plant: true };
  expect(spawn_process(k, runner, { name: 'tracer', module: FIXTURE, fn: 'traceProc', args })).toBeGreaterThan(0);
  const r = await runner.run();
  const log = k.klog.read();
  const text = log.map((x) => `[${x.kind}] ${x.text}`).join('\n');
  expect(r.status, r.report ?? text).toBe('done');
  expect(r.failed).toEqual([]);
  expect(log.map((x) => x.kind), text).toEqual(['trace_planted']);
  expect(k.arena.i32[ctl + TraceCtlL.done]).toBe(1);
  const path = join(dir, `fixture-${scheduler}-${seed}.json`);
  const sum = writeTrace(k, r, path, { scenario: 'trace-fixture' });
  expect(sum.path).toBe(path);
  const trace = JSON.parse(readFileSync(path, 'utf8')) as ChromeTrace;
  expect(sum.events).toBe(trace.traceEvents.length);
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect({ mm: mmUsage(k), kmalloc: k.kmalloc.usage() }).toEqual(before);
  expect(deviceUsage(k)).toEqual({ devices: 0, sptDirs: 0, sptLeaves: 0 });
  return { k, r, trace };
}

/** [pid, tid] of the track whose thread name starts with `prefix`; exactly one. */
function track(t: ChromeTrace, prefix: string): [number, number] {
  const m = t.traceEvents.filter((e) => e.ph === 'M' && e.name === 'thread_name' && String(e.args?.name).startsWith(prefix));
  expect(m.map((e) => e.args?.name), `tracks named ${prefix}*`).toHaveLength(1);
  return [m[0].pid, m[0].tid!];
}

const on = (t: ChromeTrace, [pid, tid]: [number, number]): TraceEvent[] => t.traceEvents.filter((e) => e.ph !== 'M' && e.pid === pid && e.tid === tid);
const spans = (t: ChromeTrace, tr: [number, number], name: string): TraceEvent[] => on(t, tr).filter((e) => e.ph === 'X' && e.name === name);
/** start and end in ns (the file holds µs; the viewer rounds them back to ns) */
const t0 = (e: TraceEvent): number => Math.round(e.ts! * 1000);
const end = (e: TraceEvent): number => t0(e) + Math.round(e.dur! * 1000);

/** Every track: times never go back, and its spans nest (each ends before its parent does). */
function checkTracks(t: ChromeTrace): void {
  const byTrack = new Map<string, TraceEvent[]>();
  for (const e of t.traceEvents) {
    if (e.ph === 'M') continue;
    expect(typeof e.ts === 'number' && Number.isFinite(e.ts), JSON.stringify(e)).toBe(true);
    const key = `${e.pid}/${e.tid ?? 'c'}`;
    byTrack.set(key, [...(byTrack.get(key) ?? []), e]);
  }
  for (const [key, list] of byTrack) {
    const open: TraceEvent[] = [];
    for (let i = 0; i < list.length; i++) {
      const e = list[i];
      if (i > 0) expect(e.ts!, `track ${key}: ${e.name} goes back in time`).toBeGreaterThanOrEqual(list[i - 1].ts!);
      if (e.ph !== 'X') continue;
      expect(e.dur!).toBeGreaterThanOrEqual(0);
      while (open.length > 0 && end(open[open.length - 1]) <= t0(e)) open.pop();
      const parent = open[open.length - 1];
      if (parent && e.dur! > 0) expect(end(e), `track ${key}: ${e.name} at ${e.ts} overlaps the end of ${parent.name}`).toBeLessThanOrEqual(end(parent));
      open.push(e);
    }
  }
}

/** What every run of the fixture must show, whichever scheduler ran it. */
function checkFixture(t: ChromeTrace): { cpu: TraceEvent[]; dev: TraceEvent[]; unmap: TraceEvent } {
  checkTracks(t);
  expect(t.displayTimeUnit).toBe('ns');
  expect(t.otherData).toMatchObject({ generator: 'shadowmm', scenario: 'trace-fixture', wrapped: false, eventsLost: 0, status: 'done' });
  const proc = track(t, 'tracer');
  const eng = track(t, 'hmm_dmirror0:e0/');
  const groups = Object.fromEntries(t.traceEvents.filter((e) => e.name === 'process_name').map((e) => [e.pid, e.args?.name]));
  expect(groups[proc[0]]).toBe('CPU tasks');
  expect(groups[eng[0]]).toBe('device engines');
  const pages = Array.from({ length: N }, (_, i) => hex(BASE + i * P));
  // N CPU faults, one per page, each a write fault from user space that resolved
  const cpu = spans(t, proc, 'cpu fault');
  expect(cpu.map((e) => e.args?.address)).toEqual(pages);
  for (const e of cpu) expect(e.args).toMatchObject({ flags: 'FAULT_FLAG_WRITE|FAULT_FLAG_USER', result: '0' });
  // N device faults on the engine's track, one per page, reads that returned 0
  const dev = spans(t, eng, 'device fault');
  expect(dev.map((e) => e.args?.address)).toEqual(pages);
  for (const e of dev) expect(e.args).toMatchObject({ access: 'read', result: 0 });
  expect(String(dev[0].args?.device)).toMatch(/^hmm_dmirror0@/);
  // one UNMAP over the window, blockable and successful, with the device's zap inside it
  const unmaps = spans(t, proc, 'MMU_NOTIFY_UNMAP').filter((e) => e.args?.start === hex(BASE));
  expect(unmaps.map((e) => e.args)).toEqual([expect.objectContaining({ start: hex(BASE), end: hex(BASE + N * P), blockable: true, result: 0 })]);
  const unmap = unmaps[0];
  const zaps = on(t, proc).filter((e) => e.name === 'zap' && t0(e) >= t0(unmap) && t0(e) <= end(unmap));
  expect(zaps.length).toBe(1);
  expect(zaps[0].args?.entries).toBe(N);
  // the planted violation: an instant on the process's track, after the device's run
  const v = on(t, proc).filter((e) => e.ph === 'i' && e.cat === 'violation');
  expect(v.map((e) => e.name)).toEqual(['trace_planted']);
  expect(String(v[0].args?.text)).toContain('planted by the trace test');
  expect(t0(v[0])).toBeLessThanOrEqual(t0(unmap));
  // counters: free pages, the mm's rss up to N pages and back to 0, nothing left in flight
  // (a counter track is "<name> <key>", as Perfetto names it; one key per event)
  const series = (e: TraceEvent): string => `${e.name} ${Object.keys(e.args ?? {}).join()}`;
  const counter = (name: string): number[] => t.traceEvents.filter((e) => e.ph === 'C' && series(e) === name).map((e) => Object.values(e.args!)[0] as number);
  expect(counter('free pages').length).toBeGreaterThan(N);
  const rss = series(t.traceEvents.find((e) => e.ph === 'C' && e.name.startsWith('rss mm@'))!);
  expect(rss).toMatch(/^rss mm@[0-9a-f]+ pages$/);
  expect(Math.max(...counter(rss))).toBe(N);
  expect(counter(rss).at(-1)).toBe(0);
  for (const c of ['invalidations in flight', 'page faults in flight', 'device faults in flight']) {
    expect(Math.max(...counter(c)), c).toBe(1);
    expect(counter(c).at(-1), c).toBe(0);
  }
  return { cpu, dev, unmap };
}

describe('trace of a run with known events (sim)', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: N CPU-fault spans on the process, N device-fault spans on the engine, one UNMAP over the window enclosing the zap, the planted violation`, async () => {
      const { cpu, dev, unmap } = checkFixture((await runFixture('sim', seed)).trace);
      // the process waited for the engine: causality holds in virtual time too
      expect(t0(dev[0])).toBeGreaterThanOrEqual(end(cpu[N - 1]));
      expect(t0(unmap)).toBeGreaterThanOrEqual(end(dev[N - 1]));
    });
  }

  it('the same seed gives the same trace', async () => {
    const a = (await runFixture('sim', 7)).trace;
    const b = (await runFixture('sim', 7)).trace;
    expect(b.traceEvents).toEqual(a.traceEvents);
  });
});

describe('trace of a run with known events (threads)', () => {
  it('the same spans; the workers share one time base: the engine faults after the CPU faults and before the munmap that waited for it', async () => {
    const { trace } = await runFixture('threads', 0);
    const { cpu, dev, unmap } = checkFixture(trace);
    expect(trace.otherData.timeBase).toMatch(/performance.timeOrigin/);
    // The process wrote every page, then waited for the engine (another worker) to finish,
    // then munmapped: with one clock these hold; with per-worker clocks they would not.
    expect(t0(dev[0])).toBeGreaterThanOrEqual(end(cpu[N - 1]));
    expect(t0(unmap)).toBeGreaterThanOrEqual(end(dev[N - 1]));
    // every access of the engine ended before the munmap began (its exit may come later: the
    // program posts its result, then returns)
    const accesses = spans(trace, track(trace, 'hmm_dmirror0:e0/'), 'device access');
    expect(accesses.length).toBeGreaterThanOrEqual(N);
    for (const e of accesses) expect(end(e)).toBeLessThanOrEqual(t0(unmap));
  }, 40_000);
});

describe('a ring that wrapped', () => {
  it('keeps the newest events, says so, and still nests and ends every span', async () => {
    const { k, r, trace } = await runFixture('sim', 4, { eventRecords: 96 });
    expect(k.events.count).toBeGreaterThan(96);
    expect(trace.otherData).toMatchObject({ wrapped: true, eventsKept: 96, eventsLost: k.events.count - 96 });
    expect(trace.traceEvents.filter((e) => e.name === 'event ring wrapped')).toHaveLength(1);
    checkTracks(trace);
    // the violation comes from the klog, which does not wrap
    expect(trace.traceEvents.filter((e) => e.name === 'trace_planted')).toHaveLength(1);
    expect(buildTrace(k, r).summary).toMatchObject({ wrapped: true, lost: k.events.count - 96 });
  });

  it('a run with the event log off (a speed run): no spans, a note saying why, the klog still there', async () => {
    const { k, trace } = await runFixture('sim', 5, { events: false });
    expect(k.events.count).toBe(0);
    expect(trace.traceEvents.filter((e) => e.ph === 'X')).toEqual([]);
    expect(trace.traceEvents.filter((e) => e.name === 'event log off')).toHaveLength(1);
    expect(trace.traceEvents.filter((e) => e.name === 'trace_planted')).toHaveLength(1);
    expect(trace.otherData).toMatchObject({ eventsRecorded: 0, wrapped: false });
  });
});

// ---- the OOM reaper's retries and a lock wait ----------------------------------------------------

describe('the reaper retrying behind a held mmap_lock (sim, v4.6)', () => {
  for (const seed of [1, 2]) {
    it(`seed ${seed}: an oom_reap_task span holding the failed attempts, their retry sleeps and the last attempt; the victim's exit waits on the lock as a span`, async () => {
      const k = bootKernel(CFG);
      const before = { mm: mmUsage(k), kmalloc: k.kmalloc.usage() };
      oom_set_reaper_policy(k, 'v4.6');
      const ctl = k.kmalloc.kzalloc(4); // [0] the victim's mm, [1] the lock is held
      const w = k.arena.i32;
      const s = new SimScheduler(k, { seed, stallMs: 5000 });
      const waitFor = async (at: number): Promise<void> => {
        for (let v = Atomics.load(w, at); v === 0; v = Atomics.load(w, at)) {
          const r = k.sched.wait(at, v);
          if (typeof r !== 'number') await r;
        }
      };
      const sleepMs = async (ms: number): Promise<void> => {
        const p = k.sched.sleep(ms * 1e6);
        if (p !== undefined) await p;
      };
      s.spawn({ name: 'oom_reaper', kind: 'kthread', fn: oom_reaper });
      const victim = spawn_process(k, s, {
        name: 'victim',
        fn: async ({ mm }) => {
          const a = vm_mmap(mm, BASE, N * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
          expect(typeof a === 'number' ? a : await a).toBe(BASE);
          for (let i = 0; i < N; i++) {
            const r = put_user(i, BASE + i * P);
            expect(typeof r === 'number' ? r : await r).toBe(0);
          }
          Atomics.store(w, ctl, mm);
          k.sched.wake(ctl, Infinity);
          for (;;) {
            await cond_resched();
            await sleepMs(1);
          }
        },
      });
      s.spawn({
        name: 'holder',
        fn: async () => {
          await waitFor(ctl);
          const p = mmap_write_lock(w[ctl]);
          if (p !== undefined) await p;
          Atomics.store(w, ctl + 1, 1);
          k.sched.wake(ctl + 1, Infinity);
          await sleepMs(250); // the reaper's trylock fails meanwhile: it retries HZ/10 apart
          mmap_write_unlock(w[ctl]);
        },
      });
      s.spawn({
        name: 'oom',
        kind: 'kthread',
        fn: async () => {
          await waitFor(ctl + 1);
          oom_kill_process(k, victim);
          await waitpid(victim);
          oom_reaper_stop(k);
        },
      });
      const r = await s.run();
      expect(r.status, r.report ?? '').toBe('done');
      expect(k.klog.read().map((x) => x.kind)).toEqual(expect.arrayContaining(['oom_kill']));
      const { trace } = buildTrace(k, r);
      checkTracks(trace);
      const reaper = track(trace, 'oom_reaper/');
      const task = spans(trace, reaper, 'oom_reap_task');
      expect(task).toHaveLength(1);
      const attempts = spans(trace, reaper, 'oom_reap_task_mm');
      const sleeps = spans(trace, reaper, 'reaper retry sleep');
      expect(attempts.length).toBeGreaterThanOrEqual(2);
      expect(sleeps).toHaveLength(attempts.length - 1);
      expect(attempts.map((e) => e.args?.result)).toEqual([...Array(attempts.length - 1).fill('retry'), 'reaped']);
      expect(attempts.map((e) => e.args?.attempt)).toEqual(attempts.map((_, i) => i + 1));
      expect(task[0].args).toMatchObject({ pid: victim, attempts: attempts.length, result: 'reaped' });
      for (const e of [...attempts, ...sleeps]) {
        expect(t0(e)).toBeGreaterThanOrEqual(t0(task[0]));
        expect(end(e)).toBeLessThanOrEqual(end(task[0]));
      }
      // the klog's oom_kill line is an instant on the oom task's track
      expect(on(trace, track(trace, 'oom/')).filter((e) => e.name === 'oom_kill')).toHaveLength(1);
      // a lock wait behind the holder (the victim's exit, or the reaper-free path), ended by the unlock
      const waits = trace.traceEvents.filter((e) => e.ph === 'X' && e.cat === 'lock' && String(e.args?.holder).startsWith('holder/'));
      expect(waits.length).toBeGreaterThan(0);
      expect(waits[0].name).toMatch(/^contended .*mmap_lock/);
      reap_zombies(k);
      k.kmalloc.kfree(ctl);
      expect({ mm: mmUsage(k), kmalloc: k.kmalloc.usage() }).toEqual(before);
    });
  }
});
