// Swap with devices (reference §3.3 hmm_range_fault; DESIGN check 6 data integrity) under
// `sim` over several seeds, through the dmirror driver (lib/test_hmm.c): a snapshot reports
// swap entries as not valid and faults nothing, a fault request swaps them in, and data a
// device wrote survives reclaim and swap-in (the swap-roundtrip outcome). Then the
// data-integrity check: the device-migration dirty bit under migrateDevicePolicy 'v6.0' and
// 'v5.19', and a device write through a writable-clean PTE that nobody dirties.

import { describe, expect, it } from 'vitest';
import { put_page } from '../src/mm/mm_pt.js';
import { vm_munmap } from '../src/mm/mmap.js';
import { _PAGE_DIRTY, is_swap_entry, pte_present } from '../src/mm/pgtable.js';
import { swapStats } from '../src/mm/swapfile.js';
import { copy_from_user, copy_to_user, get_user } from '../src/mm/uaccess.js';
import { HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS, HMM_DMIRROR_PROT_NONE, HMM_DMIRROR_READ, HMM_DMIRROR_SNAPSHOT, HMM_DMIRROR_WRITE, dmirror_close, dmirror_ioctl, dmirror_open, dmirror_stats, hmm_dmirror_exit, hmm_dmirror_init } from '../drivers/dmirror/index.js';
import { grabPage, reclaimRange } from './fixtures/swap_tasks.js';
import { N, P, SEEDS, badPages, f1, f2, finish, mapRW, n, proc, pteAt, ptes, world, writePages, type World } from './fixtures/swap_world.js';

/** A process that loads dmirror, opens device 0, runs `fn`, closes and unloads. */
function withDmirror(wd: World, fn: (ctx: { mm: number; mod: number; fd: number }) => Promise<void>): number {
  return proc(
    wd,
    async ({ mm }) => {
      const mod = await hmm_dmirror_init({ chunkPages: 32 });
      expect(mod).toBeGreaterThan(0);
      const fd = await dmirror_open(mod, 0);
      expect(fd).toBeGreaterThanOrEqual(0);
      await fn({ mm, mod, fd });
      expect(await dmirror_close(mod, fd)).toBe(0);
      await hmm_dmirror_exit(mod);
    },
    'hmm-tests',
  );
}

/** fill count ints at a with f(i) */
async function fillInts(a: number, count: number, f: (i: number) => number): Promise<void> {
  const v = Int32Array.from({ length: count }, (_, i) => f(i));
  expect(await copy_to_user(a, new Uint8Array(v.buffer))).toBe(0);
}

/** the first int of [a, a + count ints) that is not f(i), or -1 */
async function mismatch(a: number, count: number, f: (i: number) => number): Promise<number> {
  const v = new Int32Array(count);
  expect(await copy_from_user(new Uint8Array(v.buffer), a, count * 4)).toBe(0);
  for (let i = 0; i < count; i++) if (v[i] !== f(i)) return i;
  return -1;
}

const INTS = P / 4;
const g1 = (i: number): number => i;
const g2 = (i: number): number => -i - 1;

describe('§3.3 hmm_range_fault on swap entries, and the swap-roundtrip of device-written data (dmirror, sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a snapshot (no fault flags) reports swap entries as not valid and faults nothing; READ faults them in; a device WRITE faults them in for write; that data survives reclaim and comes back to the CPU and the device (swap-roundtrip)`, async () => {
      const wd = world(seed);
      const { k } = wd;
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await mapRW(mm, N);
        const mirror = await mapRW(mm, N);
        await fillInts(a, N * INTS, g1);
        expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
        // snapshot: HMM_PFN_VALID clear, pfn 0 -> PROT_NONE; the PTEs stay swap entries
        const snap = await dmirror_ioctl(mod, fd, HMM_DMIRROR_SNAPSHOT, { addr: a, ptr: mirror, npages: N });
        expect([snap.ret, snap.cpages]).toEqual([0, N]);
        const bytes = new Uint8Array(N);
        expect(await copy_from_user(bytes, mirror)).toBe(0);
        expect(Array.from(bytes)).toEqual(Array(N).fill(HMM_DMIRROR_PROT_NONE));
        expect(ptes(k, mm, a, N).every(is_swap_entry)).toBe(true);
        expect(swapStats(k).pswpin).toBe(0);
        // READ: hmm_range_fault faults the swap entries in (do_swap_page through handle_mm_fault)
        const rd = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: N });
        expect([rd.ret, rd.cpages]).toEqual([0, N]);
        expect(rd.faults).toBeGreaterThanOrEqual(1);
        expect(await mismatch(mirror, N * INTS, g1)).toBe(-1);
        expect(swapStats(k)).toMatchObject({ pswpin: N, swapCache: N });
        // out again (clean pages: dropped, their slots kept), then the device writes new data
        expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
        await fillInts(mirror, N * INTS, g2);
        const wr = await dmirror_ioctl(mod, fd, HMM_DMIRROR_WRITE, { addr: a, ptr: mirror, npages: N });
        expect([wr.ret, wr.cpages]).toEqual([0, N]);
        expect(wr.faults).toBeGreaterThanOrEqual(1);
        // the write faults left the pages dirty and out of the swap cache: nothing stale to keep
        expect(ptes(k, mm, a, N).every((pte) => pte_present(pte) && (pte & _PAGE_DIRTY) !== 0)).toBe(true);
        expect(swapStats(k)).toMatchObject({ swapCache: 0, used: 0 });
        // out and back: the device's data is what the CPU and the device see
        expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
        expect(ptes(k, mm, a, N).every(is_swap_entry)).toBe(true);
        await fillInts(mirror, N * INTS, () => 0);
        const rd2 = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a, ptr: mirror, npages: N });
        expect(rd2.ret).toBe(0);
        expect(await mismatch(mirror, N * INTS, g2)).toBe(-1);
        expect((await reclaimRange(k, mm, a, N)).freed).toBe(N);
        expect(await mismatch(a, N * INTS, g2)).toBe(-1);
        expect(dmirror_stats(mod, fd)).toMatchObject({ violations: 0 });
        expect(await n(vm_munmap(mm, a, N * P))).toBe(0);
        expect(await n(vm_munmap(mm, mirror, N * P))).toBe(0);
      });
      await finish(wd);
      expect(swapStats(wd.k).lostWrites).toBe(0);
    });
  }
});

// ---- DESIGN check 6: data integrity -------------------------------------------------------------------

describe('check 6 data integrity: the device-migration dirty bit (migrateDevicePolicy v6.0 vs v5.19, dmirror, sim)', () => {
  for (const seed of SEEDS) {
    for (const policy of ['v6.0', 'v5.19'] as const) {
      for (const how of ['moved', 'failed'] as const) {
        const lost = policy === 'v5.19';
        it(`seed ${seed} ${policy}, migration ${how === 'moved' ? 'to the device and back' : 'that fails (an extra page reference)'}: a swap-cache page (clean copy in its slot) written by the CPU (dirty PTE only), then reclaimed, ${lost ? 'loses the write: "BUG: lost write" (data_integrity)' : 'keeps the data and is clean'}`, async () => {
          const wd = world(seed, { migrateDevicePolicy: policy });
          const { k } = wd;
          const M = 4;
          const res: Record<string, unknown> = {};
          withDmirror(wd, async ({ mm, mod, fd }) => {
            const a = await mapRW(mm, M);
            const mirror = await mapRW(mm, M);
            await writePages(a, M, f1);
            expect((await reclaimRange(k, mm, a, M)).freed).toBe(M);
            expect(await badPages(a, M, f1)).toEqual([]); // read faults: the pages stay in the swap cache
            expect(swapStats(k).swapCache).toBe(M);
            await writePages(a, M, f2); // through writable-clean PTEs: only the PTEs get dirty
            expect(ptes(k, mm, a, M).every((pte) => (pte & _PAGE_DIRTY) !== 0)).toBe(true);
            const pins = how === 'failed' ? Array.from({ length: M }, (_, i) => grabPage(k, mm, a + i * P)) : [];
            const to = await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_DEV, { addr: a, ptr: mirror, npages: M });
            res.toDev = to.ret;
            for (const pfn of pins) put_page(k, pfn);
            const back = await dmirror_ioctl(mod, fd, HMM_DMIRROR_MIGRATE_TO_SYS, { addr: a, ptr: mirror, npages: M });
            res.back = [back.ret, back.cpages];
            expect(ptes(k, mm, a, M).every(pte_present)).toBe(true);
            res.freed = (await reclaimRange(k, mm, a, M)).freed;
            res.data = await badPages(a, M, f2);
            expect(await n(vm_munmap(mm, a, M * P))).toBe(0);
            expect(await n(vm_munmap(mm, mirror, M * P))).toBe(0);
          });
          const log = await finish(wd, lost ? ['data_integrity'] : []);
          const moved = !lost && how === 'moved';
          if (moved) expect(res.toDev).toBe(0);
          expect(res.back).toEqual([0, moved ? M : 0]);
          expect(res.freed).toBe(M);
          expect(res.data).toEqual(lost ? [0, 1, 2, 3] : []);
          const bad = log.filter((x) => x.kind === 'data_integrity');
          expect(bad.length).toBe(lost ? M : 0);
          if (lost) {
            expect(bad[0].text).toMatch(/^BUG: lost write: pfn \d+ \(mm@[0-9a-f]+, addr 0x[0-9a-f]+\) is clean but differs from its swap copy in slot \d+/);
            expect(swapStats(wd.k).lostWrites).toBe(M);
          }
        });
      }
    }
  }
});

describe('check 6 data integrity: a device write through a writable-clean PTE (dmirror, sim)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: a read fault maps an exclusive swap-cache page writable but clean (v6.11+ do_swap_page); hmm_range_fault asks no fault for a device write there, dmirror (like test_hmm) never dirties the page it writes, and reclaim drops the write: reported`, async () => {
      const wd = world(seed);
      const { k } = wd;
      const res: Record<string, unknown> = {};
      withDmirror(wd, async ({ mm, mod, fd }) => {
        const a = await mapRW(mm, 1);
        const mirror = await mapRW(mm, 1);
        await fillInts(a, INTS, g1);
        expect((await reclaimRange(k, mm, a, 1)).freed).toBe(1);
        expect(await n(get_user(a))).toBe(0); // read fault: writable, clean, still in the swap cache
        await fillInts(mirror, INTS, g2);
        const wr = await dmirror_ioctl(mod, fd, HMM_DMIRROR_WRITE, { addr: a, ptr: mirror, npages: 1 });
        res.write = [wr.ret, wr.faults];
        res.dirty = (pteAt(k, mm, a) & _PAGE_DIRTY) !== 0;
        res.freed = (await reclaimRange(k, mm, a, 1)).freed;
        res.cpu = await mismatch(a, INTS, g1); // the old contents are back: the device's write is gone
        expect(await n(vm_munmap(mm, a, P))).toBe(0);
        expect(await n(vm_munmap(mm, mirror, P))).toBe(0);
      });
      const log = await finish(wd, ['data_integrity']);
      expect(res).toEqual({ write: [0, 1], dirty: false, freed: 1, cpu: -1 }); // one device fault, served without a host fault
      expect(log.filter((x) => x.kind === 'data_integrity').length).toBe(1);
    });
  }
});

