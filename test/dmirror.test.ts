// drivers/dmirror (lib/test_hmm.c) driven the way tools/testing/selftests/mm/hmm-tests.c
// drives the kernel's: a process opens the device, mmaps a buffer and a mirror buffer, and
// issues ioctls with {addr, ptr, npages}. Reference §9 scenarios 1-8, 19-21 and 27 under `sim`
// over several seeds, each test named by its scenario and the selftest it mirrors; bad ioctl
// input; and a `threads` run. Every run ends with no klog record but those the test expects
// (so no 'mirror_invariant'), and nothing leaked (frames, tables, VMAs, kmalloc objects).

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler } from '../src/sched/sim.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { EBADF, EFAULT, EINVAL, ENOENT, EPERM } from '../src/shm/errno.js';
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_EXCLUSIVE, MMU_NOTIFY_MIGRATE, MMU_NOTIFY_PROTECTION_PAGE, MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_RELEASE, MMU_NOTIFY_UNMAP } from '../src/notifier/index.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_madvise } from '../src/mm/madvise.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { ZERO_PFN } from '../src/mm/page.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { is_device_private_entry, pte_pfn, pte_present } from '../src/mm/pgtable.js';
import { do_fork, reap_zombies, spawn_process, waitpid, type ProcessFn } from '../src/mm/process.js';
import { copy_from_user, copy_to_user, get_user, put_user } from '../src/mm/uaccess.js';
import { MmL, ULONG_MAX } from '../src/mm/types.js';
import {
  DMIRROR_LIVELOCK_ROUNDS,
  DPT_XA_TAG_ATOMIC,
  DPT_XA_TAG_WRITE,
  ENXIO,
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_FLAGS,
  HMM_DMIRROR_FLAG_FAIL_ALLOC,
  HMM_DMIRROR_MIGRATE_TO_DEV,
  HMM_DMIRROR_MIGRATE_TO_SYS,
  HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
  HMM_DMIRROR_PROT_ERROR,
  HMM_DMIRROR_PROT_NONE,
  HMM_DMIRROR_PROT_READ,
  HMM_DMIRROR_PROT_WRITE,
  HMM_DMIRROR_PROT_ZERO,
  HMM_DMIRROR_READ,
  HMM_DMIRROR_RELEASE,
  HMM_DMIRROR_SNAPSHOT,
  HMM_DMIRROR_WRITE,
  dmirror_close,
  dmirror_device_counters,
  dmirror_entries,
  dmirror_ioctl,
  dmirror_log,
  dmirror_open,
  dmirror_set_hooks_fd,
  dmirror_stats,
  hmm_dmirror_exit,
  hmm_dmirror_init,
} from '../drivers/dmirror/index.js';
import { DmCtlL, dmCpu, type DmStressArgs } from './fixtures/dmirror_tasks.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const INTS = P / 4;
const N = 16; // HMM_BUFFER_SIZE is 1024 pages in the selftests; 16 keeps sim runs short

const CFG: BootConfig = {
  maxTasks: 24,
  lockClasses: 128,
  lockdepEdges: 2048,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 512,
  stringBytes: 16384,
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 16 },
  mem: { pages: 1024, pageSize: P },
};

// ---- harness ----------------------------------------------------------------------------------------

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

interface World {
  k: Kernel;
  s: SimScheduler;
  step: number;
  before: ReturnType<typeof mmUsage>;
  kmallocBefore: Record<string, number>;
}

function world(seed: number): World {
  const k = bootKernel(CFG);
  const step = k.kmalloc.kzalloc(8);
  return { k, s: new SimScheduler(k, { seed, stallMs: 10_000 }), step, before: mmUsage(k), kmallocBefore: k.kmalloc.usage() };
}

function dumpLog(log: KlogRecord[]): string {
  return log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
}

/** Run to the end; reap; nothing but `allow` in klog; nothing leaked. */
async function finish(wd: World, allow: string[] = []): Promise<{ r: RunResult; log: KlogRecord[] }> {
  const { k, s } = wd;
  const r = await s.run();
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  reap_zombies(k);
  expect(log.filter((x) => !allow.includes(x.kind)), dumpLog(log)).toEqual([]);
  k.kmalloc.kfree(wd.step);
  expect(mmUsage(k)).toEqual(wd.before);
  expect({ ...k.kmalloc.usage() }).toEqual({ ...wd.kmallocBefore, 'kmalloc-8': wd.kmallocBefore['kmalloc-8'] - 1 });
  return { r, log };
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

/** A process that loads the module, runs `fn` with it, and unloads it. */
function withModule(wd: World, fn: (ctx: { mm: number; mod: number }) => Promise<void>): number {
  const pid = spawn_process(wd.k, wd.s, {
    name: 'hmm-tests',
    fn: (async ({ mm }) => {
      const mod = await hmm_dmirror_init({ chunkPages: 32 });
      expect(mod).toBeGreaterThan(0);
      await fn({ mm, mod });
      await hmm_dmirror_exit(mod);
    }) as ProcessFn,
  });
  expect(pid).toBeGreaterThan(0);
  return pid;
}

/** struct hmm_buffer: ptr (the mapping under test) and mirror (where device data goes) */
interface Buffer {
  ptr: number;
  mirror: number;
  npages: number;
  cpages: number;
  faults: number;
}

async function mmapOk(mm: number, pages: number, prot: number, flags: number): Promise<number> {
  const a = await n(vm_mmap(mm, 0, pages * P, prot, flags | MAP_ANONYMOUS));
  expect(a).toBeGreaterThan(0);
  return a;
}

async function hmm_buffer(mm: number, npages: number, prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE): Promise<Buffer> {
  return { ptr: await mmapOk(mm, npages, prot, flags), mirror: await mmapOk(mm, npages, PROT_READ | PROT_WRITE, MAP_PRIVATE), npages, cpages: 0, faults: 0 };
}

async function hmm_buffer_free(mm: number, b: Buffer): Promise<void> {
  expect(await n(vm_munmap(mm, b.ptr, b.npages * P))).toBe(0);
  expect(await n(vm_munmap(mm, b.mirror, b.npages * P))).toBe(0);
}

/** hmm_dmirror_cmd: the ioctl; on success the buffer's cpages/faults, as the selftest's helper */
async function hmm_dmirror_cmd(mod: number, fd: number, request: number, b: Buffer, npages: number): Promise<number> {
  const r = await dmirror_ioctl(mod, fd, request, { addr: b.ptr, ptr: b.mirror, npages });
  if (r.ret === 0) {
    b.cpages = r.cpages;
    b.faults = r.faults;
  }
  return r.ret;
}

/** int i of user memory at a, for i in [from, to) */
async function ints(a: number, count: number, from = 0): Promise<Int32Array> {
  const out = new Int32Array(count);
  expect(await copy_from_user(new Uint8Array(out.buffer), a + from * 4, count * 4)).toBe(0);
  return out;
}

async function fill(a: number, count: number, f: (i: number) => number): Promise<void> {
  const v = Int32Array.from({ length: count }, (_, i) => f(i));
  expect(await copy_to_user(a, new Uint8Array(v.buffer))).toBe(0);
}

/** every int i of [a, a + count ints) equals f(i): the first index that does not, or -1 */
async function mismatch(a: number, count: number, f: (i: number) => number): Promise<number> {
  const v = await ints(a, count);
  for (let i = 0; i < count; i++) if (v[i] !== f(i)) return i;
  return -1;
}

function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

const seq = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);
const id = (i: number): number => i;
const neg = (i: number): number => -i;

// ---- §9.1-9.8 ----------------------------------------------------------------------------------------

describe('dmirror §9 scenarios 1-8 (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.1 anon_read: 0, cpages N, faults 1, entries tagged WRITE; with pte_none and the zero page under PROT_READ too`, async () => {
      const wd = world(seed);
      const { k } = wd;
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        expect(fd).toBeGreaterThanOrEqual(0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        const e = dmirror_entries(mod, fd, b.ptr, b.ptr + N * P);
        expect(e.map((x) => x.vpn)).toEqual(seq(b.ptr / P, N));
        for (const x of e) {
          expect(x.tag).toBe(DPT_XA_TAG_WRITE); // the CPU PTEs are writable, even for a read fault
          expect(x.pfn).toBe(pte_pfn(hostPte(k, mm, x.vpn * P)));
        }
        // the selftest's own shape: the first two pages left zero (pte_none, then the zero page), PROT_READ
        const c = await hmm_buffer(mm, N);
        await fill(c.ptr + 2 * P, (N - 2) * INTS, (i) => i + 2 * INTS);
        expect(await n(do_mprotect(mm, c.ptr, N * P, PROT_READ))).toBe(0);
        expect(await n(get_user(c.ptr + P))).toBe(0);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, c, N)).toBe(0);
        expect([c.cpages, c.faults]).toEqual([N, 1]);
        expect(await mismatch(c.mirror, N * INTS, (i) => (i < 2 * INTS ? 0 : i))).toBe(-1);
        const ce = dmirror_entries(mod, fd, c.ptr, c.ptr + N * P);
        expect(ce.every((x) => x.tag === 0)).toBe(true);
        expect(ce.slice(0, 2).map((x) => x.pfn)).toEqual([ZERO_PFN, ZERO_PFN]);
        expect(dmirror_stats(mod, fd)).toMatchObject({ violations: 0 });
        await hmm_buffer_free(mm, b);
        await hmm_buffer_free(mm, c);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.2 anon_write after a read: the WRITE-tagged entries need no fault (faults 0)`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        await fill(b.mirror, N * INTS, neg);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 0]);
        expect(await mismatch(b.ptr, N * INTS, neg)).toBe(-1);
        // anon_write on fresh memory: one fault round for every page
        const c = await hmm_buffer(mm, N);
        await fill(c.mirror, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, c, N)).toBe(0);
        expect([c.cpages, c.faults]).toEqual([N, 1]);
        expect(await mismatch(c.ptr, N * INTS, id)).toBe(-1);
        await hmm_buffer_free(mm, b);
        await hmm_buffer_free(mm, c);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.3 anon_read_prot: PROT_NONE -> -EFAULT, the mirror untouched`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        await fill(b.mirror, N * INTS, neg);
        expect(await n(do_mprotect(mm, b.ptr, N * P, PROT_NONE))).toBe(0);
        expect(await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: N })).toEqual({ ret: -EFAULT, cpages: 0, faults: 0 });
        expect(await n(do_mprotect(mm, b.ptr, N * P, PROT_READ))).toBe(0);
        expect(await mismatch(b.ptr, N * INTS, id)).toBe(-1);
        expect(await mismatch(b.mirror, N * INTS, neg)).toBe(-1);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.4 anon_write_prot: PROT_READ untouched: READ 1 page (zero page) faults 1; WRITE -> -EPERM; after mprotect RW, WRITE -> 0, faults 1`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N, PROT_READ);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, 1)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([1, 1]);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + P)).toEqual([{ vpn: b.ptr / P, pfn: ZERO_PFN, tag: 0 }]);
        await fill(b.mirror, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(-EPERM);
        expect(await mismatch(b.ptr, N * INTS, () => 0)).toBe(-1);
        expect(await n(do_mprotect(mm, b.ptr, N * P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(dmirror_log(mod, fd).at(-1)).toEqual({ event: MMU_NOTIFY_PROTECTION_VMA, start: b.ptr, end: b.ptr + N * P, blockable: true });
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(await mismatch(b.ptr, N * INTS, id)).toBe(-1);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.5 munmap: UNMAP (blockable) erases the range and one page past it (the test_hmm quirk); READ of a range with a hole -> -EFAULT`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        // the lower half: the erase's inclusive last index is end >> PAGE_SHIFT, the upper half's first page
        const half = b.ptr + (N / 2) * P;
        expect(await n(vm_munmap(mm, b.ptr, (N / 2) * P))).toBe(0);
        expect(dmirror_log(mod, fd)).toEqual([{ event: MMU_NOTIFY_UNMAP, start: b.ptr, end: half, blockable: true }]);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P).map((x) => x.vpn)).toEqual(seq(half / P + 1, N / 2 - 1));
        // the selftest's anon_teardown shape: the range now has a hole; nothing is copied back
        expect(await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: N })).toEqual({ ret: -EFAULT, cpages: 0, faults: 0 });
        // the upper half alone still reads (its first page re-faulted)
        const up = { ...b, ptr: half };
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, up, N / 2)).toBe(0);
        expect([up.cpages, up.faults]).toEqual([N / 2, 1]);
        expect(await mismatch(b.mirror, (N / 2) * INTS, (i) => i + (N / 2) * INTS)).toBe(-1);
        expect(await n(vm_munmap(mm, half, (N / 2) * P))).toBe(0);
        expect(await n(vm_munmap(mm, b.mirror, N * P))).toBe(0);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.5 anon_teardown: a thread munmaps the upper half while the device reads; 0 (all N, faults 1, data right) or -EFAULT`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const outcomes: number[] = [];
      let bufPtr = 0;
      const pid = spawn_process(k, wd.s, {
        name: 'teardown',
        threads: 2,
        fn: (async ({ mm, thread }) => {
          if (thread === 1) {
            await waitFor(k, wd.step, 1);
            for (let i = 0; i < (seed % 4) * 3; i++) await n(k.sched.point());
            expect(await n(vm_munmap(mm, bufPtr + (N / 2) * P, (N / 2) * P))).toBe(0);
            raise(k, wd.step + 1, 1);
            return;
          }
          const mod = await hmm_dmirror_init({ chunkPages: 32 });
          const fd = await dmirror_open(mod, 0);
          const b = await hmm_buffer(mm, N);
          await fill(b.ptr, N * INTS, (i) => i + seed);
          bufPtr = b.ptr;
          raise(k, wd.step, 1);
          const r = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: N });
          outcomes.push(r.ret);
          if (r.ret === 0) {
            expect([r.cpages, r.faults]).toEqual([N, 1]);
            expect(await mismatch(b.mirror, N * INTS, (i) => i + seed)).toBe(-1);
          } else expect(r).toEqual({ ret: -EFAULT, cpages: 0, faults: 0 });
          await waitFor(k, wd.step + 1, 1);
          expect(await n(vm_munmap(mm, b.ptr, (N / 2) * P))).toBe(0);
          expect(await n(vm_munmap(mm, b.mirror, N * P))).toBe(0);
          expect(await dmirror_close(mod, fd)).toBe(0);
          await hmm_dmirror_exit(mod);
        }) as ProcessFn,
      });
      expect(pid).toBeGreaterThan(0);
      await finish(wd);
      expect(outcomes).toHaveLength(1);
    });

    it(`seed ${seed}: §9.6 mprotect RW -> R: PROTECTION_VMA erases; WRITE -> -EPERM; READ re-faults untagged (read-only) entries`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        expect(await n(do_mprotect(mm, b.ptr, N * P, PROT_READ))).toBe(0);
        expect(dmirror_log(mod, fd)).toEqual([{ event: MMU_NOTIFY_PROTECTION_VMA, start: b.ptr, end: b.ptr + N * P, blockable: true }]);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P)).toEqual([]);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(-EPERM);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P).every((x) => x.tag === 0)).toBe(true);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.7 anon_write_child: PROTECTION_PAGE on the parent; the child's own fd writes its copy (faults 1); the parent's device WRITE breaks COW and succeeds`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const go = wd.step;
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        await fill(b.mirror, N * INTS, neg);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        await fill(b.mirror, N * INTS, neg);
        const child = await do_fork({
          name: 'child',
          fn: async () => {
            await waitFor(k, go, 1);
            expect(await mismatch(b.ptr, N * INTS, id)).toBe(-1);
            expect(await mismatch(b.mirror, N * INTS, neg)).toBe(-1);
            // The child process needs its own mirror to its own mm.
            const child_fd = await dmirror_open(mod, 0);
            expect(child_fd).toBeGreaterThanOrEqual(0);
            const cb = { ...b };
            expect(await hmm_dmirror_cmd(mod, child_fd, HMM_DMIRROR_WRITE, cb, N)).toBe(0);
            expect([cb.cpages, cb.faults]).toEqual([N, 1]);
            expect(await mismatch(b.ptr, N * INTS, neg)).toBe(-1);
            expect(await dmirror_close(mod, child_fd)).toBe(0);
            raise(k, go, 2);
          },
        });
        expect(child).toBeGreaterThan(0);
        // every COW mapping is write-protected: the buffer and the mirror buffer
        const prot = dmirror_log(mod, fd);
        expect(prot.every((x) => x.event === MMU_NOTIFY_PROTECTION_PAGE && x.blockable)).toBe(true);
        // (the two mappings may have merged into one VMA)
        expect(prot.filter((x) => x.start <= b.ptr && x.end >= b.ptr + N * P)).toHaveLength(1);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P)).toEqual([]);
        raise(k, go, 1);
        await waitFor(k, go, 2);
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        // Check that the parent's buffer did not change.
        expect(await mismatch(b.ptr, N * INTS, id)).toBe(-1);
        // the parent's own device write: each page's COW break raises CLEAR under the walk
        await fill(b.mirror, N * INTS, (i) => 3 * i);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(await mismatch(b.ptr, N * INTS, (i) => 3 * i)).toBe(-1);
        expect(dmirror_log(mod, fd).slice(prot.length).every((x) => x.event === MMU_NOTIFY_CLEAR)).toBe(true);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.7 anon_write_child_shared: MAP_SHARED, no COW: the child's device write is the parent's memory`, async () => {
      const wd = world(seed);
      const { k } = wd;
      withModule(wd, async ({ mm, mod }) => {
        const b = await hmm_buffer(mm, N, PROT_READ | PROT_WRITE, MAP_SHARED);
        await fill(b.ptr, N * INTS, id);
        await fill(b.mirror, N * INTS, neg);
        const child = await do_fork({
          name: 'child',
          fn: async () => {
            const child_fd = await dmirror_open(mod, 0);
            const cb = { ...b };
            expect(await hmm_dmirror_cmd(mod, child_fd, HMM_DMIRROR_WRITE, cb, N)).toBe(0);
            expect([cb.cpages, cb.faults]).toEqual([N, 1]);
            expect(await dmirror_close(mod, child_fd)).toBe(0);
          },
        });
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        expect(await mismatch(b.ptr, N * INTS, neg)).toBe(-1);
        await hmm_buffer_free(mm, b);
        void k;
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.8 collision: an invalidation between hmm_range_fault and the mutex makes read_retry true: nothing stored, the loop retries`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        let calls = 0;
        let programsAtHook = -1;
        dmirror_set_hooks_fd(mod, fd, {
          async afterRangeFault() {
            if (calls++ > 0) return;
            expect(await n(do_madvise(mm, b.ptr, N * P, MADV_DONTNEED))).toBe(0);
            programsAtHook = dmirror_stats(mod, fd).programs;
          },
        });
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(programsAtHook).toBe(0);
        expect(dmirror_stats(mod, fd)).toMatchObject({ retries: 1, programs: 1, violations: 0 });
        expect(dmirror_log(mod, fd)).toEqual([{ event: MMU_NOTIFY_CLEAR, start: b.ptr, end: b.ptr + N * P, blockable: true }]);
        // the retry saw the zapped pages: the zero page, read-only, zeros
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P).every((x) => x.pfn === ZERO_PFN && x.tag === 0)).toBe(true);
        expect(await mismatch(b.mirror, N * INTS, () => 0)).toBe(-1);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });
  }
});

// ---- §9.19-9.21, §9.27 ---------------------------------------------------------------------------------

const HOST_DEVICE_PRIVATE = is_device_private_entry;

describe('dmirror §9 scenarios 19-21 and 27 (sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.19 migrate / double_map: MIGRATE (owner dev0) is ignored by dev0 and erases dev1's mirror; cpages N; a CPU touch migrates a page back and erases its entry`, async () => {
      const wd = world(seed);
      const { k } = wd;
      withModule(wd, async ({ mm, mod }) => {
        const fd0 = await dmirror_open(mod, 0);
        const fd1 = await dmirror_open(mod, 1);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        // double_map: both devices mirror the pages first
        for (const fd of [fd0, fd1]) {
          expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_READ, b, N)).toBe(0);
          expect([b.cpages, b.faults]).toEqual([N, 1]);
        }
        await fill(b.mirror, N * INTS, () => -1);
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, b, N)).toBe(0);
        expect(b.cpages).toBe(N);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        expect(dmirror_log(mod, fd0)).toEqual([]);
        expect(dmirror_log(mod, fd1).map((x) => x.event)).toContain(MMU_NOTIFY_MIGRATE);
        expect(dmirror_entries(mod, fd1, b.ptr, b.ptr + N * P)).toEqual([]);
        expect(seq(0, N).every((i) => HOST_DEVICE_PRIVATE(hostPte(k, mm, b.ptr + i * P)))).toBe(true);
        expect(dmirror_entries(mod, fd0, b.ptr, b.ptr + N * P).every((x) => x.tag === DPT_XA_TAG_WRITE)).toBe(true);
        expect(dmirror_device_counters(mod, 0)).toEqual({ calloc: N, cfree: 0 });
        // dev1 reads device-private pages of another owner: faulted back to system memory
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_READ, b, N)).toBe(0);
        expect([b.cpages, b.faults]).toEqual([N, 1]);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        expect(seq(0, N).every((i) => pte_present(hostPte(k, mm, b.ptr + i * P)))).toBe(true);
        expect(dmirror_entries(mod, fd0, b.ptr, b.ptr + N * P)).toEqual([]); // migrate_to_ram erased them
        expect(dmirror_device_counters(mod, 0)).toEqual({ calloc: N, cfree: N });
        // migrate_fault: to the device, half back by CPU touch, all to the device again
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, b, N)).toBe(0);
        expect(await mismatch(b.ptr, (N / 2) * INTS, id)).toBe(-1);
        expect(dmirror_entries(mod, fd0, b.ptr, b.ptr + N * P).map((x) => x.vpn)).toEqual(seq(b.ptr / P + N / 2, N / 2));
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, b, N)).toBe(0);
        expect(b.cpages).toBe(N);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        // MIGRATE_TO_SYS: cpages counts what moved
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_SYS, b, N)).toBe(0);
        expect(b.cpages).toBe(N);
        expect(seq(0, N).every((i) => pte_present(hostPte(k, mm, b.ptr + i * P)))).toBe(true);
        expect(await mismatch(b.ptr, N * INTS, id)).toBe(-1);
        expect(dmirror_stats(mod, fd0).violations + dmirror_stats(mod, fd1).violations).toBe(0);
        await hmm_buffer_free(mm, b);
        for (const fd of [fd0, fd1]) expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.19 migrate_shared -> -ENOENT; migrate_mixed: PROT_NONE or a hole -> -EINVAL, zero/RO/RW pages move, another device's page -> -ENOENT; migrate_release and migrate_multiple`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd0 = await dmirror_open(mod, 0);
        const fd1 = await dmirror_open(mod, 1);
        // migrate_shared
        const sh = await hmm_buffer(mm, N, PROT_READ | PROT_WRITE, MAP_SHARED);
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, sh, N)).toBe(-ENOENT);
        await hmm_buffer_free(mm, sh);
        // migrate_mixed
        const b = await hmm_buffer(mm, 6, PROT_NONE);
        const p = b.ptr;
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_MIGRATE_TO_DEV, b, 6)).toBe(-EINVAL);
        expect(await n(vm_munmap(mm, p + P, P))).toBe(0);
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_MIGRATE_TO_DEV, b, 3)).toBe(-EINVAL);
        expect(await n(do_mprotect(mm, p + 2 * P, P, PROT_READ))).toBe(0);
        expect(await n(get_user(p + 2 * P))).toBe(0);
        expect(await n(do_mprotect(mm, p + 3 * P, P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(await n(put_user(3, p + 3 * P))).toBe(0);
        expect(await n(do_mprotect(mm, p + 3 * P, P, PROT_READ))).toBe(0);
        expect(await n(do_mprotect(mm, p + 4 * P, 2 * P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(await n(put_user(3, p + 4 * P))).toBe(0);
        expect(await n(put_user(3, p + 5 * P))).toBe(0);
        const mid = { ...b, ptr: p + 2 * P };
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_MIGRATE_TO_DEV, mid, 4)).toBe(0);
        expect(mid.cpages).toBe(4);
        const last = { ...b, ptr: p + 5 * P };
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, last, 1)).toBe(-ENOENT);
        expect(await n(vm_munmap(mm, p, 6 * P))).toBe(0);
        expect(await n(vm_munmap(mm, b.mirror, 6 * P))).toBe(0);
        // migrate_release: RELEASE evicts the chunks, the CPU then reads system memory
        const r = await hmm_buffer(mm, N);
        await fill(r.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, r, N)).toBe(0);
        expect(r.cpages).toBe(N);
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_RELEASE, r, N)).toBe(0);
        expect(await mismatch(r.ptr, N * INTS, id)).toBe(-1);
        await hmm_buffer_free(mm, r);
        // migrate_multiple (NTIMES 10 in the selftest)
        for (let c = 0; c < 3; c++) {
          const m = await hmm_buffer(mm, N);
          await fill(m.ptr, N * INTS, (i) => i + c);
          expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, m, N)).toBe(0);
          expect(m.cpages).toBe(N);
          expect(await mismatch(m.mirror, N * INTS, (i) => i + c)).toBe(-1);
          expect(await mismatch(m.ptr, N * INTS, (i) => i + c)).toBe(-1);
          await hmm_buffer_free(mm, m);
        }
        for (const fd of [fd0, fd1]) expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.20 exclusive: EXCLUSIVE then ATOMIC entries (CHECK_EXCLUSIVE -EPERM); a CPU write raises EXCLUSIVE with owner NULL, the entries go (CHECK 0); exclusive_mprotect -> WRITE -EPERM`, async () => {
      const wd = world(seed);
      const { k } = wd;
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_EXCLUSIVE, b, N)).toBe(0);
        expect(b.cpages).toBe(N);
        expect(await mismatch(b.mirror, N * INTS, id)).toBe(-1);
        expect(dmirror_log(mod, fd).every((x) => x.event === MMU_NOTIFY_EXCLUSIVE)).toBe(true);
        expect(dmirror_log(mod, fd)).toHaveLength(N);
        expect(dmirror_entries(mod, fd, b.ptr, b.ptr + N * P).every((x) => x.tag === DPT_XA_TAG_ATOMIC)).toBe(true);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_CHECK_EXCLUSIVE, b, N)).toBe(-EPERM);
        // Fault pages back to system memory and check them.
        const v = await ints(b.ptr, N * INTS);
        for (let i = 0; i < v.length; i++) v[i]++;
        expect(await copy_to_user(b.ptr, new Uint8Array(v.buffer))).toBe(0);
        expect(await mismatch(b.ptr, N * INTS, (i) => i + 1)).toBe(-1);
        expect(dmirror_log(mod, fd).slice(-N).every((x) => x.event === MMU_NOTIFY_EXCLUSIVE)).toBe(true);
        expect(seq(0, N).every((i) => pte_present(hostPte(k, mm, b.ptr + i * P)))).toBe(true);
        // Check atomic access revoked
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_CHECK_EXCLUSIVE, b, N)).toBe(0);
        // exclusive_mprotect
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_EXCLUSIVE, b, N)).toBe(0);
        expect(await n(do_mprotect(mm, b.ptr, N * P, PROT_READ))).toBe(0);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_WRITE, b, N)).toBe(-EPERM);
        expect(dmirror_stats(mod, fd).violations).toBe(0);
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.20 exclusive_cow: fork after EXCLUSIVE; parent and child each increment their copy`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, N);
        await fill(b.ptr, N * INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_EXCLUSIVE, b, N)).toBe(0);
        const bump = async (): Promise<void> => {
          const v = await ints(b.ptr, N * INTS);
          for (let i = 0; i < v.length; i++) expect(v[i]++).toBe(i);
          expect(await copy_to_user(b.ptr, new Uint8Array(v.buffer))).toBe(0);
          expect(await mismatch(b.ptr, N * INTS, (i) => i + 1)).toBe(-1);
        };
        const child = await do_fork({ name: 'child', fn: bump });
        await bump();
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });

    it(`seed ${seed}: §9.21 exit: RELEASE [0, ULONG_MAX] then UNMAP; on the fd that outlives the mm EXCLUSIVE/MIGRATE/SNAPSHOT -> -EINVAL and READ livelocks (bounded, reported)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const sh = { mod: 0, fd: -1, a: 0 };
      const res: Record<string, unknown> = {};
      wd.s.spawn({
        name: 'modprobe',
        kind: 'kthread',
        fn: async () => {
          sh.mod = await hmm_dmirror_init({ chunkPages: 32 });
          raise(k, wd.step, 1);
          const pid = Atomics.load(k.arena.i32, wd.step + 1) || (await waitFor(k, wd.step + 1, 1), k.arena.i32[wd.step + 1]);
          expect(await waitpid(pid)).toEqual({ code: 0, signal: 0 });
          const { mod, fd, a } = sh;
          res.log = dmirror_log(mod, fd);
          res.entries = dmirror_entries(mod, fd).length;
          const arg = { addr: a, ptr: a, npages: N };
          res.exclusive = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_EXCLUSIVE, arg)).ret;
          res.migrate = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_DEV, arg)).ret;
          res.migrate_sys = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_SYS, arg)).ret;
          res.snapshot = (await dmirror_ioctl(mod, fd, HMM_DMIRROR_SNAPSHOT, arg)).ret;
          res.read = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, arg);
          expect(await dmirror_close(mod, fd)).toBe(0);
          await hmm_dmirror_exit(mod);
        },
      });
      const pid = spawn_process(k, wd.s, {
        name: 'victim',
        fn: (async ({ mm }) => {
          await waitFor(k, wd.step, 1);
          sh.fd = await dmirror_open(sh.mod, 0);
          const b = await hmm_buffer(mm, N);
          await fill(b.ptr, N * INTS, id);
          expect(await hmm_dmirror_cmd(sh.mod, sh.fd, HMM_DMIRROR_READ, b, N)).toBe(0);
          sh.a = b.ptr;
        }) as ProcessFn,
      });
      k.arena.i32[wd.step + 1] = pid;
      const { log } = await finish(wd, ['liveness']);
      expect(res.log).toEqual([
        { event: MMU_NOTIFY_RELEASE, start: 0, end: ULONG_MAX, blockable: true },
        { event: MMU_NOTIFY_UNMAP, start: 0, end: ULONG_MAX, blockable: true },
      ]);
      expect(res).toMatchObject({ entries: 0, exclusive: -EINVAL, migrate: -EINVAL, migrate_sys: -EINVAL, snapshot: -EINVAL });
      expect(res.read).toEqual({ ret: -ENOENT, cpages: 0, faults: DMIRROR_LIVELOCK_ROUNDS, livelock: true });
      const live = log.filter((x) => x.kind === 'liveness');
      expect(live).toHaveLength(1);
      expect(live[0].text).toMatch(/mm is gone \(mm_users 0\)/);
    });

    it(`seed ${seed}: §9.27 snapshot of 7 pages [PROT_NONE, hole, zero, RO, RW, dev-private local, dev-private remote] -> FF FF 11 01 02 22 00`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd0 = await dmirror_open(mod, 0);
        const fd1 = await dmirror_open(mod, 1);
        const b = await hmm_buffer(mm, 7, PROT_NONE);
        const p = b.ptr;
        expect(await n(vm_munmap(mm, p + P, P))).toBe(0);
        expect(await n(do_mprotect(mm, p + 2 * P, P, PROT_READ))).toBe(0);
        expect(await n(get_user(p + 2 * P))).toBe(0);
        expect(await n(do_mprotect(mm, p + 3 * P, P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(await n(put_user(3, p + 3 * P))).toBe(0);
        expect(await n(do_mprotect(mm, p + 3 * P, P, PROT_READ))).toBe(0);
        expect(await n(do_mprotect(mm, p + 4 * P, 3 * P, PROT_READ | PROT_WRITE))).toBe(0);
        expect(await n(put_user(3, p + 4 * P))).toBe(0);
        const five = { ...b, ptr: p + 5 * P };
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_MIGRATE_TO_DEV, five, 1)).toBe(0);
        expect(five.cpages).toBe(1);
        const six = { ...b, ptr: p + 6 * P };
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_MIGRATE_TO_DEV, six, 1)).toBe(0);
        expect(six.cpages).toBe(1);
        expect(await hmm_dmirror_cmd(mod, fd0, HMM_DMIRROR_SNAPSHOT, b, 7)).toBe(0);
        expect(b.cpages).toBe(7);
        const bytes = new Uint8Array(7);
        expect(await copy_from_user(bytes, b.mirror)).toBe(0);
        expect(Array.from(bytes)).toEqual([
          HMM_DMIRROR_PROT_ERROR,
          HMM_DMIRROR_PROT_ERROR,
          HMM_DMIRROR_PROT_ZERO | HMM_DMIRROR_PROT_READ,
          HMM_DMIRROR_PROT_READ,
          HMM_DMIRROR_PROT_WRITE,
          HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE,
          HMM_DMIRROR_PROT_NONE,
        ]);
        expect(Array.from(bytes)).toEqual([0xff, 0xff, 0x11, 0x01, 0x02, 0x22, 0x00]);
        // a snapshot faults nothing: page 6 is still on device 1
        expect(await hmm_dmirror_cmd(mod, fd1, HMM_DMIRROR_SNAPSHOT, six, 1)).toBe(0);
        expect(await copy_from_user(bytes, b.mirror, 1)).toBe(0);
        expect(bytes[0]).toBe(HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE);
        expect(await n(vm_munmap(mm, p, 7 * P))).toBe(0);
        expect(await n(vm_munmap(mm, b.mirror, 7 * P))).toBe(0);
        for (const fd of [fd0, fd1]) expect(await dmirror_close(mod, fd)).toBe(0);
      });
      await finish(wd);
    });
  }
});

// ---- §8.3: test_hmm's MIGRATE owner filter skips set_seq ----------------------------------------------

describe('dmirror §8.3 (sim): a fault that finds its own device page in place races that page\'s migrate_to_ram', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: read_retry cannot see the migration (no set_seq), the stale device page is stored, and the first access through it is reported`, async () => {
      const wd = world(seed);
      withModule(wd, async ({ mm, mod }) => {
        const fd = await dmirror_open(mod, 0);
        const b = await hmm_buffer(mm, 1);
        await fill(b.ptr, INTS, id);
        expect(await hmm_dmirror_cmd(mod, fd, HMM_DMIRROR_MIGRATE_TO_DEV, b, 1)).toBe(0);
        // PROTECTION_VMA erases the entry; the page stays on the device (its entry read-only)
        expect(await n(do_mprotect(mm, b.ptr, P, PROT_READ))).toBe(0);
        expect(dmirror_entries(mod, fd)).toEqual([]);
        let calls = 0;
        dmirror_set_hooks_fd(mod, fd, {
          async afterRangeFault() {
            // the walk reported the device page in place; now the CPU takes it back
            if (calls++ === 0) expect(await n(get_user(b.ptr + 4))).toBe(1);
          },
        });
        const r = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: 1 });
        expect(r.ret).toBe(-EFAULT); // our check stops the access; test_hmm would copy a freed device page
        // MIGRATE_TO_DEV's and migrate_to_ram's MIGRATE, both ours: no set_seq, so no retry
        expect(dmirror_stats(mod, fd)).toMatchObject({ migrate_skipped: 2, migrate_races: 1, retries: 0, violations: 1 });
        await hmm_buffer_free(mm, b);
        expect(await dmirror_close(mod, fd)).toBe(0);
      });
      const { log } = await finish(wd, ['mirror_invariant']);
      expect(log.map((x) => x.kind)).toEqual(['mirror_invariant']);
      expect(log[0].text).toMatch(/reads 0x[0-9a-f]+ through pt \(pfn \d+, tag \d\), but the host PTE is 0x[0-9a-f]+ \(pfn \d+, read-only\)/);
    });
  }
});

// ---- stress: CPU threads against device ioctls ------------------------------------------------------------

const BASE = 0x40000000;

interface DmStressOpts {
  pages: number;
  iters: number;
  cpus: number;
  devs: number;
  seed: number;
  migrate: boolean;
}

function dmStressSetup(k: Kernel, spawner: { spawn: SimScheduler['spawn'] }, mod: string, o: DmStressOpts): number {
  const ctl = k.kmalloc.kzalloc(DmCtlL.$size);
  const args: DmStressArgs = { ctl, base: BASE, pageSize: P, ...o };
  // under sim the program is a function (process.ts would require() the .ts module)
  const prog = spawner instanceof SimScheduler ? { fn: dmCpu as ProcessFn<DmStressArgs> } : { module: mod, fn: 'dmCpu' };
  const pid = spawn_process(k, spawner, { name: 'cpu', ...prog, args, threads: o.cpus });
  expect(pid).toBeGreaterThan(0);
  spawner.spawn({ name: 'modprobe', kind: 'kthread', module: mod, fn: 'dmModprobe', args: { ...args, pid } });
  for (let d = 0; d < o.devs; d++) spawner.spawn({ name: `dmirror${d}`, kind: 'driver', module: mod, fn: 'dmDevice', args: { ...args, dev: d } });
  return ctl;
}

function dmStressCheck(k: Kernel, ctl: number, o: DmStressOpts, r: RunResult, before: ReturnType<typeof mmUsage>, kmallocBefore: Record<string, number>): Record<string, number> {
  const w = k.arena.i32;
  const log = k.klog.read();
  expect(r.failed, dumpLog(log)).toEqual([]);
  expect(r.status, r.report ?? dumpLog(log)).toBe('done');
  // hmm_range_fault reports a read-only device-private page of the caller's own device in
  // place even for a write request (after mprotect R and back, say): test_hmm WARNs and -EFAULTs
  // A mirror-invariant record with migration is allowed only when the driver saw the §8.3
  // window open (see the §8.3 test): test_hmm's own race, not the emulator's.
  const races = w[ctl + DmCtlL.migrate_races];
  const known = (x: KlogRecord): boolean =>
    o.migrate && ((x.kind === 'warn' && /WARN_ON\(range->default_flags & HMM_PFN_WRITE\)/.test(x.text)) || (x.kind === 'mirror_invariant' && races > 0));
  expect(log.filter((x) => !known(x)), dumpLog(log)).toEqual([]);
  const sum = Object.fromEntries(['errors', 'violations', 'closed', 'ok', 'calls', 'accesses', 'invalidations'].map((f) => [f, w[ctl + (DmCtlL as unknown as Record<string, number>)[f]]]));
  expect(sum).toMatchObject({ errors: 0, closed: o.devs, calls: o.devs * o.iters });
  if (!o.migrate || races === 0) expect(sum.violations).toBe(0);
  expect(sum.ok).toBeGreaterThan(0);
  expect(sum.accesses).toBeGreaterThan(0);
  expect(sum.invalidations).toBeGreaterThan(0);
  k.kmalloc.kfree(ctl);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(k.kmalloc.usage()).toEqual(kmallocBefore);
  return sum;
}

describe('dmirror stress (sim): CPU faults, munmap, mprotect and DONTNEED against device ioctls', () => {
  const MOD = new URL('./fixtures/dmirror_tasks.ts', import.meta.url).href;
  for (const [seed, strategy, migrate] of [[31, 'random', false], [32, 'pct', false], [33, 'random', true], [34, 'pct', true]] as const) {
    it(`seed ${seed} (${strategy}${migrate ? ', with migration and exclusive' : ''}): 2 CPU threads, 2 fds, no mirror-invariant violation`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const kb = k.kmalloc.usage();
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 50_000, stallMs: 10_000 });
      const o = { pages: 16, iters: 100, cpus: 2, devs: 2, seed, migrate };
      const ctl = dmStressSetup(k, s, MOD, o);
      dmStressCheck(k, ctl, o, await s.run(), before, kb);
    });
  }
});

describe('dmirror stress (threads): CPU tasks and device tasks in their own workers', () => {
  const MOD = fileURLToPath(new URL('./fixtures/dmirror_tasks.ts', import.meta.url));
  it('2 CPU threads and 2 device workers on one mm: no violation record, nothing leaked', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const kb = k.kmalloc.usage();
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000 });
    const o = { pages: 16, iters: 300, cpus: 2, devs: 2, seed: 7, migrate: false };
    const ctl = dmStressSetup(k, runner, MOD, o);
    dmStressCheck(k, ctl, o, await runner.run(), before, kb);
  }, 60_000);

  it('the same with MIGRATE_TO_DEV/SYS and EXCLUSIVE: migrate_to_ram runs in the CPU workers', async () => {
    const k = bootKernel(CFG);
    const before = mmUsage(k);
    const kb = k.kmalloc.usage();
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000 });
    const o = { pages: 16, iters: 200, cpus: 2, devs: 2, seed: 9, migrate: true };
    const ctl = dmStressSetup(k, runner, MOD, o);
    dmStressCheck(k, ctl, o, await runner.run(), before, kb);
  }, 60_000);
});

// ---- ioctl bad input ------------------------------------------------------------------------------------

describe('dmirror ioctl bad input (sim)', () => {
  it('unaligned addr, npages 0, addr + npages pages wrapping, unknown command -> -EINVAL (struct untouched); closed fd -> -EBADF; devices 2-3 -> -ENXIO', async () => {
    const wd = world(1);
    withModule(wd, async ({ mm, mod }) => {
      expect(await dmirror_open(mod, 2)).toBe(-ENXIO);
      expect(await dmirror_open(mod, 3)).toBe(-ENXIO);
      expect(await dmirror_open(mod, 4)).toBe(-ENXIO);
      const fd = await dmirror_open(mod, 1);
      const b = await hmm_buffer(mm, 2);
      const cases: [string, number, number, number][] = [
        ['unaligned addr', HMM_DMIRROR_READ, b.ptr + 8, 1],
        ['npages 0', HMM_DMIRROR_READ, b.ptr, 0],
        ['npages 0 (WRITE)', HMM_DMIRROR_WRITE, b.ptr, 0],
        ['addr + npages * PAGE_SIZE wraps', HMM_DMIRROR_READ, b.ptr, 2 ** 52],
        ['wraps past 2^64 exactly to addr', HMM_DMIRROR_SNAPSHOT, b.ptr, 2 ** 52],
        ['unknown command', 0x42, b.ptr, 1],
        ['unknown command 0x09 (READ_UNLOCKED is newer)', 0x09, b.ptr, 1],
        ['negative npages', HMM_DMIRROR_READ, b.ptr, -1],
      ];
      for (const [what, cmd, addr, npages] of cases) {
        const arg = { addr, ptr: b.mirror, npages, cpages: 77, faults: 88 };
        expect(await dmirror_ioctl(mod, fd, cmd, arg), what).toEqual({ ret: -EINVAL, cpages: 77, faults: 88 });
        expect(arg, what).toEqual({ addr, ptr: b.mirror, npages, cpages: 77, faults: 88 });
      }
      // the struct in user memory: copied in, copied back only on success
      const u = b.mirror;
      const put64 = async (at: number, v: number): Promise<void> => {
        expect(await n(put_user(v % 2 ** 32, at))).toBe(0);
        expect(await n(put_user(Math.floor(v / 2 ** 32), at + 4))).toBe(0);
      };
      await put64(u, b.ptr + 8);
      await put64(u + 8, b.ptr);
      await put64(u + 16, 1);
      await put64(u + 24, 5);
      await put64(u + 32, 6);
      expect(await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, u)).toEqual({ ret: -EINVAL, cpages: 5, faults: 6 });
      expect(Array.from(await ints(u, 10))).toEqual([(b.ptr + 8) | 0, Math.floor((b.ptr + 8) / 2 ** 32), b.ptr | 0, Math.floor(b.ptr / 2 ** 32), 1, 0, 5, 0, 6, 0]);
      await put64(u, b.ptr);
      await put64(u + 8, b.ptr + P); // the data lands in page 1 of that buffer, after the struct's page
      expect(await n(put_user(1234, b.ptr))).toBe(0);
      expect(await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, u)).toEqual({ ret: 0, cpages: 1, faults: 1 });
      expect(Array.from((await ints(u, 10)).subarray(6))).toEqual([1, 0, 1, 0]);
      expect(await n(get_user(b.ptr + P))).toBe(1234);
      expect((await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, 0)).ret).toBe(-EFAULT); // the struct's address is not mapped
      // FLAGS: accepted and stored (FAIL_ALLOC only matters for THP)
      expect(await dmirror_ioctl(mod, fd, HMM_DMIRROR_FLAGS, { addr: b.ptr, ptr: b.mirror, npages: HMM_DMIRROR_FLAG_FAIL_ALLOC })).toEqual({ ret: 0, cpages: 0, faults: 0 });
      expect(await dmirror_close(mod, fd)).toBe(0);
      expect(await dmirror_close(mod, fd)).toBe(-EBADF);
      expect((await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: 1 })).ret).toBe(-EBADF);
      await hmm_buffer_free(mm, b);
    });
    await finish(wd);
  });
});

