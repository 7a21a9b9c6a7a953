// Device-private memory, device migration and device-exclusive access under `sim` over
// several seeds, on a small dmirror-like device (test/fixtures/devmem.ts). Each test names the
// reference section or §9 scenario it checks (../shared/reference/kernel-semantics.md). Every
// run ends with no klog record the test did not expect (so no broken mirror invariant, no bad
// page state), every device page back on its pagemap, and no frame, table, VMA, rmap node,
// process or kmalloc object left behind.

import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import type { Kernel } from '../src/sched/kernel.js';
import { SimScheduler } from '../src/sched/sim.js';
import { EFAULT, EINVAL, ENOENT, EPERM } from '../src/shm/errno.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_UNMAP,
  MnL,
  defineNotifierOps,
  mmu_interval_read_begin,
  mmu_notifier_init,
  mmu_notifier_register,
  mmu_notifier_unregister,
  type MmuNotifierRange,
} from '../src/notifier/index.js';
import { HMM_PFN_REQ_FAULT, HMM_PFN_VALID, HMM_PFN_WRITE, HmmRange, hmm_pfn_flags, hmm_pfn_to_pfn, hmm_range_fault } from '../src/hmm/hmm.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, MREMAP_MAYMOVE, PROT_NONE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { do_mremap } from '../src/mm/mremap.js';
import { FOLL_LONGTERM, FOLL_WRITE, pin_user_pages_remote, unpin_user_pages } from '../src/mm/gup.js';
import { rmap_mappings } from '../src/mm/rmap.js';
import { mmap_read_lock, mmap_read_unlock } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { vm_mmap, vm_munmap } from '../src/mm/mmap.js';
import { do_mprotect } from '../src/mm/mprotect.js';
import { do_madvise } from '../src/mm/madvise.js';
import { GUP_PIN_COUNTING_BIAS, PageL } from '../src/mm/page.js';
import { is_device_exclusive_entry, is_device_private_entry, is_writable_swp_entry, pte_pfn, pte_present, pte_write, swp_offset } from '../src/mm/pgtable.js';
import { PROC_ZOMBIE, do_fork, process_info, reap_zombies, spawn_process, waitpid, type ProcessContext } from '../src/mm/process.js';
import { MM_ANONPAGES, MmL } from '../src/mm/types.js';
import { copy_from_user, copy_to_user, get_user, put_user } from '../src/mm/uaccess.js';
import { vma_lookup } from '../src/mm/vma.js';
import { is_device_private_page, pgmapPagesInUse } from '../src/mm/memremap.js';
import { migrate_device_pages_to_ram } from '../src/mm/migrate_device.js';
import {
  DmemL,
  dmemHooks,
  dmem_access,
  dmem_check_all,
  dmem_check_exclusive,
  dmem_close,
  dmem_entry,
  dmem_exclusive,
  dmem_log,
  dmem_migrate_to_dev,
  dmem_migrate_to_sys,
  dmem_open,
  dmem_release,
  dmem_stats,
  type LoggedRange,
} from './fixtures/devmem.js';
import { dump } from './helpers.js';

const SEEDS = [1, 2, 3];
const P = 4096;
const W = P / 4;
const N = 8;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const DEV_PAGES = 16;

const CFG: BootConfig = {
  maxTasks: 16,
  mem: { pages: 512, pageSize: P },
  mm: { pgtables: 160, vmas: 64, rmapNodes: 1200, shmObjs: 8, procs: 8 },
  kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 32, 1024: 16 },
  klogBytes: 1 << 17,
  eventRecords: 1 << 12,
};

// ---- harness ------------------------------------------------------------------------------------

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

type Program = (ctx: ProcessContext<unknown>) => Promise<void>;

/** Boot, run one process under `sim` with `seed`, reap, and check a clean end with nothing left behind. */
async function run(seed: number, prog: Program, threads = 1, allow: string[] = []): Promise<Kernel> {
  const k = bootKernel(CFG);
  const before = mmUsage(k);
  const kmBefore = k.kmalloc.usage();
  const s = new SimScheduler(k, { seed, stallMs: 5000 });
  const pid = spawn_process(k, s, { name: 'prog', fn: prog as never, threads });
  expect(pid).toBeGreaterThan(0);
  const r = await s.run();
  const klog = k.klog.read();
  expect(r.failed, dump(klog)).toEqual([]);
  expect(r.status, r.report ?? dump(klog)).toBe('done');
  expect(klog.filter((x) => !allow.includes(x.kind)).map((x) => `[${x.kind}] ${x.text}`)).toEqual([]);
  expect(process_info(k, pid).state).toBe(PROC_ZOMBIE);
  reap_zombies(k);
  expect(mmUsage(k)).toEqual(before);
  expect(k.kmalloc.usage()).toEqual(kmBefore);
  return k;
}

/** Page p, word j of pattern `tag`. */
const pat = (tag: number, p: number, j: number): number => (tag * 1_000_003 + p * 4099 + j * 7) | 0;

/** Write pattern `tag` over pages [from, from + count) of the buffer at a. */
async function writePattern(a: number, from: number, count: number, tag: number): Promise<void> {
  const buf = new Int32Array(count * W);
  for (let p = 0; p < count; p++) for (let j = 0; j < W; j++) buf[p * W + j] = pat(tag, from + p, j);
  expect(await copy_to_user(a + from * P, new Uint8Array(buf.buffer))).toBe(0);
}

/** The CPU's view of `count` pages at a (faulting device pages back as it goes). */
async function readUser(a: number, count: number): Promise<Int32Array> {
  const buf = new Int32Array(count * W);
  expect(await copy_from_user(new Uint8Array(buf.buffer), a)).toBe(0);
  return buf;
}

/** The page numbers (from `from`) whose contents are not pattern `tag`; [] when all match. */
function mismatches(buf: Int32Array, from: number, tag: number | ((p: number) => number)): number[] {
  const bad: number[] = [];
  for (let p = 0; p < buf.length / W; p++) {
    const t = typeof tag === 'number' ? tag : tag(from + p);
    for (let j = 0; j < W; j++) {
      if (buf[p * W + j] !== (t === 0 ? 0 : pat(t, from + p, j))) {
        bad.push(from + p);
        break;
      }
    }
  }
  return bad;
}

function hostPte(k: Kernel, mm: number, addr: number): number {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : k.arena.i32[slot];
}

const rssAnon = (k: Kernel, mm: number): number => k.arena.i32[mm + MmL.rss_stat + MM_ANONPAGES];
const seq = (count: number, from = 0): number[] => Array.from({ length: count }, (_, i) => from + i);

async function open(k: Kernel, mm: number, a: number, pages: number, owner: number): Promise<number> {
  const dev = await dmem_open(k, mm, a, pages, owner, DEV_PAGES);
  expect(dev).toBeGreaterThan(0);
  return dev;
}

/** Evict whatever is still on the device, check the table against the host, close. */
async function close(k: Kernel, dev: number): Promise<void> {
  expect(dmem_check_all(k, dev)).toBe(0);
  expect(await dmem_release(k, dev)).toBe(0);
  expect(pgmapPagesInUse(dev + DmemL.pgmap)).toBe(0);
  const st = dmem_stats(k, dev);
  expect(st.cfree).toBe(st.calloc);
  expect(await dmem_close(k, dev)).toBe(0);
}

// ---- a recording hlist subscriber (another secondary MMU of the mm) ------------------------------------

interface Rec {
  phase: 'start' | 'end';
  event: number;
  owner: number;
  start: number;
  end: number;
}
const recs: Rec[] = [];
const recorder = defineNotifierOps('migrate_test_recorder', {
  invalidate_range_start(_sub: number, r: MmuNotifierRange) {
    recs.push({ phase: 'start', event: r.event, owner: r.owner, start: r.start, end: r.end });
    return 0;
  },
  invalidate_range_end(_sub: number, r: MmuNotifierRange) {
    recs.push({ phase: 'end', event: r.event, owner: r.owner, start: r.start, end: r.end });
  },
});

async function watch(k: Kernel, mm: number): Promise<number> {
  recs.length = 0;
  const sub = k.kmalloc.kzalloc(MnL.$size);
  expect(mmu_notifier_init(sub, recorder)).toBe(0);
  expect(await n(mmu_notifier_register(sub, mm))).toBe(0);
  return sub;
}

async function unwatch(k: Kernel, sub: number, mm: number): Promise<void> {
  expect(await mmu_notifier_unregister(sub, mm)).toBe(0);
  k.kmalloc.kfree(sub);
}

/** recorded starts as [event, owner, start, end]; the ends must match them one for one */
function starts(): [number, number, number, number][] {
  const s = recs.filter((r) => r.phase === 'start').map((r): [number, number, number, number] => [r.event, r.owner, r.start, r.end]);
  const e = recs.filter((r) => r.phase === 'end').map((r): [number, number, number, number] => [r.event, r.owner, r.start, r.end]);
  expect(e).toEqual(s);
  return s;
}

const logged = (k: Kernel, dev: number): [number, number, number, number][] => dmem_log(k, dev).map((r: LoggedRange) => [r.event, r.owner, r.start, r.end]);

/** every page of [a, a + count pages) is a device-private entry of a page with this owner */
function onDevice(k: Kernel, mm: number, a: number, count: number, owner: number): boolean {
  return seq(count).every((i) => {
    const pte = hostPte(k, mm, a + i * P);
    if (!is_device_private_entry(pte)) return false;
    const pfn = swp_offset(pte);
    return is_device_private_page(k, pfn) && k.arena.i32[k.zone.page(pfn) + PageL.owner] === owner;
  });
}

const presentRW = (k: Kernel, mm: number, addr: number): boolean => pte_present(hostPte(k, mm, addr)) && pte_write(hostPte(k, mm, addr));

// ---- tests ------------------------------------------------------------------------------------------

describe('device migration (reference §4 MIGRATE_TO_DEV / MIGRATE_TO_SYS, §6.1, §7, §9.19)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.19 a CPU-written pattern goes to device memory and back intact; empty and zero-page PTEs migrate as zeroed pages`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, 6, 1);
        expect(await n(get_user(a + 6 * P))).toBe(0); // page 6 maps the zero page; page 7 stays empty
        const dev = await open(k, mm, a, N, 1);
        expect(await dmem_migrate_to_dev(k, dev, a, N)).toEqual({ ret: 0, cpages: N });
        expect(onDevice(k, mm, a, N, 1)).toBe(true);
        expect(seq(N).every((i) => is_writable_swp_entry(hostPte(k, mm, a + i * P)))).toBe(true);
        expect(rssAnon(k, mm)).toBe(N); // device pages count as anon pages; the zero page and the hole gained one each
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: 0, to_ram: 0 });
        // the device reads its own memory: the data went with the pages, nothing faulted back
        const out = new Int32Array(N * W);
        expect(await dmem_access(k, dev, a, N, false, out, null)).toBe(0);
        expect(mismatches(out, 0, (p) => (p < 6 ? 1 : 0))).toEqual([]);
        expect(onDevice(k, mm, a, N, 1)).toBe(true);
        expect(await dmem_migrate_to_sys(k, dev, a, N)).toBe(0);
        expect(seq(N).every((i) => presentRW(k, mm, a + i * P))).toBe(true);
        expect(pgmapPagesInUse(dev + DmemL.pgmap)).toBe(0);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N, to_ram: 0 });
        expect(mismatches(await readUser(a, N), 0, (p) => (p < 6 ? 1 : 0))).toEqual([]);
        expect(rssAnon(k, mm)).toBe(N);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §7/§9.19 MIGRATE carries the owner: the migrating device filters it (test_hmm), another device on the mm is invalidated, an hlist subscriber sees it paired; empty PTEs get a second MIGRATE from migrate_vma_pages`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, 6, 2); // pages 6 and 7 stay empty
        const d1 = await open(k, mm, a, N, 1);
        const d2 = await open(k, mm, a, N, 2);
        expect(await dmem_access(k, d1, a, 6, false, null, null)).toBe(0);
        expect(await dmem_access(k, d2, a, 6, false, null, null)).toBe(0);
        expect(seq(6).every((i) => dmem_entry(k, d2, a + i * P) !== null)).toBe(true);
        const sub = await watch(k, mm);
        const log1 = dmem_log(k, d1).length;
        expect(await dmem_migrate_to_dev(k, d1, a, N)).toEqual({ ret: 0, cpages: N });
        expect(starts()).toEqual([
          [MMU_NOTIFY_MIGRATE, 1, a, a + N * P], // migrate_vma_collect
          [MMU_NOTIFY_MIGRATE, 1, a + 6 * P, a + N * P], // migrate_vma_pages filling the empty PTEs
        ]);
        expect(dmem_log(k, d1).length).toBe(log1); // its own migration: ignored
        expect(logged(k, d2).slice(-2)).toEqual([
          [MMU_NOTIFY_MIGRATE, 1, a, a + N * P],
          [MMU_NOTIFY_MIGRATE, 1, a + 6 * P, a + N * P],
        ]);
        expect(seq(N).every((i) => dmem_entry(k, d2, a + i * P) === null)).toBe(true);
        // d1's table now holds its own device pages
        expect(seq(N).every((i) => is_device_private_page(k, dmem_entry(k, d1, a + i * P)!.pfn))).toBe(true);
        await unwatch(k, sub, mm);
        await close(k, d2);
        await close(k, d1);
        expect(mismatches(await readUser(a, N), 0, (p) => (p < 6 ? 2 : 0))).toEqual([]);
      });
    });

    it(`seed ${seed}: §9.19 MAP_SHARED anonymous memory is not migrated (-ENOENT, pages untouched); PROT_NONE and a hole are the caller's -EINVAL`, async () => {
      await run(seed, async ({ k, mm }) => {
        const s = await n(vm_mmap(mm, 0, 4 * P, RW, MAP_SHARED | MAP_ANONYMOUS));
        await writePattern(s, 0, 4, 3);
        const before = seq(4).map((i) => hostPte(k, mm, s + i * P));
        const dev = await open(k, mm, s, 4, 1);
        expect((await dmem_migrate_to_dev(k, dev, s, 4)).ret).toBe(-ENOENT);
        expect(seq(4).map((i) => pte_pfn(hostPte(k, mm, s + i * P)))).toEqual(before.map(pte_pfn));
        expect(seq(4).every((i) => presentRW(k, mm, s + i * P))).toBe(true);
        expect(pgmapPagesInUse(dev + DmemL.pgmap)).toBe(0); // the device pages it took went back (page_free)
        expect(mismatches(await readUser(s, 4), 0, 3)).toEqual([]);
        await close(k, dev);
        expect(await n(vm_munmap(mm, s, 4 * P))).toBe(0);

        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 0, 4, 4);
        const d = await open(k, mm, a, 4, 1);
        expect(await n(do_mprotect(mm, a, 4 * P, PROT_NONE))).toBe(0);
        expect((await dmem_migrate_to_dev(k, d, a, 4)).ret).toBe(-EINVAL);
        expect(await n(do_mprotect(mm, a, 4 * P, RW))).toBe(0);
        expect(await n(vm_munmap(mm, a + 2 * P, P))).toBe(0);
        // test_hmm migrates chunk by chunk: the part before the hole moves, then the hole is -EINVAL
        expect((await dmem_migrate_to_dev(k, d, a, 4)).ret).toBe(-EINVAL);
        expect(onDevice(k, mm, a, 2, 1)).toBe(true);
        expect((await dmem_migrate_to_dev(k, d, a + 2 * P, 1)).ret).toBe(-EINVAL);
        expect(mismatches(await readUser(a, 2), 0, 4)).toEqual([]);
        expect(mismatches(await readUser(a + 3 * P, 1), 3, 4)).toEqual([]);
        await close(k, d);
      });
    });

    it(`seed ${seed}: mprotect makes writable device-private entries read-only (change_pte_range), so hmm sees no WRITE`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 0, 4, 9);
        const dev = await open(k, mm, a, 4, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, 4)).ret).toBe(0);
        expect(seq(4).every((i) => is_device_private_entry(hostPte(k, mm, a + i * P)) && is_writable_swp_entry(hostPte(k, mm, a + i * P)))).toBe(true);
        expect(await n(do_mprotect(mm, a, 4 * P, PROT_READ))).toBe(0);
        expect(seq(4).every((i) => is_device_private_entry(hostPte(k, mm, a + i * P)) && !is_writable_swp_entry(hostPte(k, mm, a + i * P)))).toBe(true);
        // back to RW: still read-only until a write fault decides again, as in the kernel
        expect(await n(do_mprotect(mm, a, 4 * P, RW))).toBe(0);
        expect(is_writable_swp_entry(hostPte(k, mm, a))).toBe(false);
        expect(mismatches(await readUser(a, 4), 0, 9)).toEqual([]);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §4/§9.19 a CPU touch of a device page calls migrate_to_ram: that page comes back with what the device wrote, MIGRATE with the owner, the driver erases its entry`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 5);
        const dev = await open(k, mm, a, N, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, N)).ret).toBe(0);
        // the device writes its own memory (owner match: no fault)
        expect(await dmem_access(k, dev, a, N, true, null, (p, j) => pat(6, p, j))).toBe(0);
        expect(onDevice(k, mm, a, N, 1)).toBe(true);
        const sub = await watch(k, mm);
        expect(await n(get_user(a + 3 * P + 8))).toBe(pat(6, 3, 2));
        expect(starts()).toEqual([[MMU_NOTIFY_MIGRATE, 1, a + 3 * P, a + 4 * P]]);
        expect(presentRW(k, mm, a + 3 * P)).toBe(true);
        expect(is_device_private_page(k, pte_pfn(hostPte(k, mm, a + 3 * P)))).toBe(false);
        expect(dmem_entry(k, dev, a + 3 * P)).toBeNull();
        expect(onDevice(k, mm, a, 3, 1) && onDevice(k, mm, a + 4 * P, 4, 1)).toBe(true);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: 1, to_ram: 1 });
        // a write touch: the page comes back writable and keeps the write
        expect(await n(put_user(77, a + 5 * P))).toBe(0);
        expect(presentRW(k, mm, a + 5 * P)).toBe(true);
        expect(await n(get_user(a + 5 * P))).toBe(77);
        const all = await readUser(a, N);
        expect(all[5 * W]).toBe(77);
        all[5 * W] = pat(6, 5, 0); // the rest of page 5 is the device's
        expect(mismatches(all, 0, 6)).toEqual([]);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N, to_ram: N });
        expect(rssAnon(k, mm)).toBe(N);
        await unwatch(k, sub, mm);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §3.3 hmm_range_fault with dev_private_owner == owner reports the device pfn without faulting; another owner's device page is faulted back to RAM`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 7);
        const d1 = await open(k, mm, a, N, 1);
        const d2 = await open(k, mm, a, N, 2);
        expect((await dmem_migrate_to_dev(k, d1, a, N)).ret).toBe(0);
        const ptes = seq(N).map((i) => hostPte(k, mm, a + i * P));
        const sub = await watch(k, mm);
        const r = new HmmRange();
        r.notifier = d1 + DmemL.notifier;
        r.start = a;
        r.end = a + N * P;
        r.hmm_pfns = new Uint32Array(2 * N);
        r.default_flags = HMM_PFN_REQ_FAULT;
        r.dev_private_owner = 1;
        r.notifier_seq = await n(mmu_interval_read_begin(r.notifier));
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        try {
          expect(await hmm_range_fault(r)).toBe(0);
        } finally {
          mmap_read_unlock(mm);
        }
        expect(seq(N).map((i) => [hmm_pfn_flags(r.hmm_pfns, i) >>> 0, hmm_pfn_to_pfn(r.hmm_pfns, i)])).toEqual(ptes.map((pte) => [(HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0, swp_offset(pte)]));
        expect(seq(N).map((i) => hostPte(k, mm, a + i * P))).toEqual(ptes);
        expect(starts()).toEqual([]);
        // the other device asks for the pages: each faults back through d1's migrate_to_ram
        const out = new Int32Array(N * W);
        expect(await dmem_access(k, d2, a, N, false, out, null)).toBe(0);
        expect(mismatches(out, 0, 7)).toEqual([]);
        expect(seq(N).every((i) => presentRW(k, mm, a + i * P))).toBe(true);
        expect(seq(N).every((i) => dmem_entry(k, d2, a + i * P)?.pfn === pte_pfn(hostPte(k, mm, a + i * P)))).toBe(true);
        expect(dmem_stats(k, d1)).toEqual({ calloc: N, cfree: N, to_ram: N });
        expect(starts().every(([ev, owner]) => ev === MMU_NOTIFY_MIGRATE && owner === 1)).toBe(true);
        await unwatch(k, sub, mm);
        await close(k, d2);
        await close(k, d1);
      });
    });

    it(`seed ${seed}: §6.1 a pinned page cannot migrate: it keeps its PTE, the others move`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 0, 4, 8);
        const dev = await open(k, mm, a, 4, 1);
        const pinned = pte_pfn(hostPte(k, mm, a + P));
        const w = k.arena.i32;
        const pg = k.zone.page(pinned);
        // what pin_user_pages leaves on a small folio (reference §6.2)
        Atomics.add(w, pg + PageL.refcount, GUP_PIN_COUNTING_BIAS);
        Atomics.add(w, pg + PageL.pincount, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, 4)).ret).toBe(-ENOENT);
        expect(hostPte(k, mm, a + P) !== 0 && pte_pfn(hostPte(k, mm, a + P))).toBe(pinned);
        expect(presentRW(k, mm, a + P)).toBe(true);
        expect(onDevice(k, mm, a, 1, 1) && onDevice(k, mm, a + 2 * P, 2, 1)).toBe(true);
        Atomics.sub(w, pg + PageL.refcount, GUP_PIN_COUNTING_BIAS);
        Atomics.sub(w, pg + PageL.pincount, 1);
        expect(mismatches(await readUser(a, 4), 0, 8)).toEqual([]);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: a CPU fault on a migration entry waits for the migration to finish, then retries (and finds the page on the device)`, async () => {
      const gate = { addr: 0, dev: 0, done: false };
      try {
        await run(
          seed,
          async ({ k, mm, thread }) => {
            if (thread === 0) {
              const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
              await writePattern(a, 0, 2, 9);
              const dev = await open(k, mm, a, 2, 1);
              gate.dev = dev;
              dmemHooks.afterSetup = async () => {
                // the range is all migration entries now: hold them while the other thread meets them
                gate.addr = a;
                await k.sched.sleep(3_000_000);
              };
              expect((await dmem_migrate_to_dev(k, dev, a, 2)).ret).toBe(0);
              dmemHooks.afterSetup = null;
              while (!gate.done) await k.sched.sleep(100_000);
              await close(k, dev);
            } else {
              while (gate.addr === 0) await k.sched.sleep(100_000);
              const t0 = k.sched.now();
              expect(await n(get_user(gate.addr + 4))).toBe(pat(9, 0, 1));
              // it slept until finalize, then its retry met the device-private entry and brought the page back
              expect(k.sched.now() - t0).toBeGreaterThan(1_000_000);
              expect(dmem_stats(k, gate.dev).to_ram).toBe(1);
              gate.done = true;
            }
          },
          2,
        );
      } finally {
        dmemHooks.afterSetup = null;
      }
    });
  }
});

describe('reference §8.3: the MIGRATE owner filter skips set_seq', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: test_hmm's filter lets the device's own fault pass read_retry across its own migrate_to_ram and program a stale pfn (the mirror check catches it); a driver that moves the seq retries`, async () => {
      let fire = false;
      try {
        const k = await run(
          seed,
          async ({ k, mm }) => {
            const a = await n(vm_mmap(mm, 0, P, RW, PRIV));
            await writePattern(a, 0, 1, 40);
            for (const careful of [false, true]) {
              const dev = await dmem_open(k, mm, a, 1, 1, DEV_PAGES, careful);
              expect(dev).toBeGreaterThan(0);
              expect((await dmem_migrate_to_dev(k, dev, a, 1)).ret).toBe(0);
              // drop our entry without touching the page, so the next access faults (hmm_range_fault reports the device pfn)
              const pt = k.arena.i32[dev + DmemL.pt];
              k.arena.i32[pt] = 0;
              fire = true;
              dmemHooks.afterRangeFault = async () => {
                if (!fire) return;
                fire = false;
                // between hmm_range_fault and the driver lock, a CPU touch takes the page back
                expect(await n(get_user(a))).toBe(pat(40, 0, 0));
              };
              const out = new Int32Array(W);
              const r = await dmem_access(k, dev, a, 1, false, out, null);
              dmemHooks.afterRangeFault = null;
              if (careful) {
                expect(r).toBe(0);
                expect(mismatches(out, 0, 40)).toEqual([]);
                expect(dmem_entry(k, dev, a)?.pfn).toBe(pte_pfn(hostPte(k, mm, a)));
              } else {
                expect(r).toBe(-EFAULT); // programmed the device pfn the migration took away
                expect(is_device_private_page(k, dmem_entry(k, dev, a)!.pfn)).toBe(true);
                expect(pte_present(hostPte(k, mm, a))).toBe(true);
                k.arena.i32[pt] = 0; // forget it, so close's check passes
              }
              await close(k, dev);
            }
          },
          1,
          ['mirror_invariant'],
        );
        expect(k.klog.read().filter((x) => x.kind === 'mirror_invariant')).toHaveLength(1);
      } finally {
        dmemHooks.afterRangeFault = null;
      }
    });
  }
});

describe('device-exclusive access (reference §7, §9.20)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §9.20 EXCLUSIVE with the caller's owner; CHECK_EXCLUSIVE -EPERM; a CPU write raises EXCLUSIVE with owner NULL, erases the entry, and sees the device's atomic write`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
        await writePattern(a, 0, 2, 10);
        const dev = await open(k, mm, a, 2, 1);
        const sub = await watch(k, mm);
        const pfns = [0, 1].map((i) => pte_pfn(hostPte(k, mm, a + i * P)));
        expect(await dmem_exclusive(k, dev, a, 2)).toBe(0);
        expect(starts()).toEqual([
          [MMU_NOTIFY_EXCLUSIVE, 1, a, a + P],
          [MMU_NOTIFY_EXCLUSIVE, 1, a + P, a + 2 * P],
        ]);
        expect([0, 1].map((i) => is_device_exclusive_entry(hostPte(k, mm, a + i * P)) && swp_offset(hostPte(k, mm, a + i * P)))).toEqual(pfns);
        expect(rssAnon(k, mm)).toBe(2);
        expect(await dmem_check_exclusive(k, dev, a, 2)).toBe(-EPERM);
        // an atomic device write through the exclusive entry
        expect(await dmem_access(k, dev, a, 1, true, null, (_p, j) => (j === 0 ? 1234 : pat(10, 0, j)))).toBe(0);
        recs.length = 0;
        expect(await n(put_user(99, a + 4))).toBe(0);
        expect(starts()).toEqual([[MMU_NOTIFY_EXCLUSIVE, 0, a, a + P]]);
        expect(logged(k, dev).slice(-1)).toEqual([[MMU_NOTIFY_EXCLUSIVE, 0, a, a + P]]);
        expect(presentRW(k, mm, a)).toBe(true);
        expect(pte_pfn(hostPte(k, mm, a))).toBe(pfns[0]);
        expect(await dmem_check_exclusive(k, dev, a, 1)).toBe(0);
        expect(await dmem_check_exclusive(k, dev, a + P, 1)).toBe(-EPERM);
        expect([await n(get_user(a)), await n(get_user(a + 4)), await n(get_user(a + 8))]).toEqual([1234, 99, pat(10, 0, 2)]);
        // the other page: a CPU read ends it too
        expect(await n(get_user(a + P))).toBe(pat(10, 1, 0));
        expect(await dmem_check_exclusive(k, dev, a, 2)).toBe(0);
        await unwatch(k, sub, mm);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §9.20 exclusive, then mprotect R: PROTECTION_VMA erases the entry, a device WRITE is -EPERM, a CPU read restores a read-only PTE`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, P, RW, PRIV));
        await writePattern(a, 0, 1, 11);
        const dev = await open(k, mm, a, 1, 1);
        expect(await dmem_exclusive(k, dev, a, 1)).toBe(0);
        expect(await n(do_mprotect(mm, a, P, PROT_READ))).toBe(0);
        expect(logged(k, dev).slice(-1)).toEqual([[MMU_NOTIFY_PROTECTION_VMA, 0, a, a + P]]);
        expect(await dmem_check_exclusive(k, dev, a, 1)).toBe(0);
        expect(await dmem_access(k, dev, a, 1, true, null, () => 0)).toBe(-EPERM);
        expect(is_device_exclusive_entry(hostPte(k, mm, a))).toBe(true);
        expect(await n(get_user(a + 4))).toBe(pat(11, 0, 1));
        expect(logged(k, dev).slice(-1)).toEqual([[MMU_NOTIFY_EXCLUSIVE, 0, a, a + P]]);
        expect(pte_present(hostPte(k, mm, a)) && !pte_write(hostPte(k, mm, a))).toBe(true);
        expect(await n(put_user(1, a))).toBe(-EFAULT);
        expect(await n(do_mprotect(mm, a, P, RW))).toBe(0);
        expect(await n(put_user(1, a))).toBe(0);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: fork restores a device-exclusive entry in the parent and copies it as a COW page; both keep the data`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, P, RW, PRIV));
        await writePattern(a, 0, 1, 12);
        const dev = await open(k, mm, a, 1, 1);
        expect(await dmem_exclusive(k, dev, a, 1)).toBe(0);
        const child = await do_fork({
          name: 'child',
          fn: async () => {
            expect(await n(get_user(a + 4))).toBe(pat(12, 0, 1));
            expect(await n(put_user(5, a))).toBe(0);
          },
        });
        expect(child).toBeGreaterThan(0);
        expect(pte_present(hostPte(k, mm, a)) && !pte_write(hostPte(k, mm, a))).toBe(true); // restored, then write-protected
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        expect(await n(get_user(a))).toBe(pat(12, 0, 0));
        expect(await dmem_check_exclusive(k, dev, a, 1)).toBe(0);
        await close(k, dev);
      });
    });
  }
});

describe('device-private pages through fork, munmap, RELEASE and GUP (reference §6.2, §7, §4 RELEASE)', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: §7 fork of an mm with device-private pages: the child shares them read-only; a touch on either side brings the shared page back for both, then COW separates them`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, 4 * P, RW, PRIV));
        await writePattern(a, 0, 4, 13);
        const dev = await open(k, mm, a, 4, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, 4)).ret).toBe(0);
        const dpfns = seq(4).map((i) => swp_offset(hostPte(k, mm, a + i * P)));
        const child = await do_fork({
          name: 'child',
          fn: async ({ k: ck, mm: cmm }: ProcessContext<unknown>) => {
            expect(seq(4).map((i) => swp_offset(hostPte(ck, cmm, a + i * P)))).toEqual(dpfns);
            expect(seq(4).every((i) => is_device_private_entry(hostPte(ck, cmm, a + i * P)) && !is_writable_swp_entry(hostPte(ck, cmm, a + i * P)))).toBe(true);
            expect(rssAnon(ck, cmm)).toBe(4);
            expect(mismatches(await readUser(a, 4), 0, 13)).toEqual([]);
            expect(await n(put_user(-1, a))).toBe(0);
            expect(await n(get_user(a))).toBe(-1);
          },
        });
        expect(child).toBeGreaterThan(0);
        expect(seq(4).every((i) => !is_writable_swp_entry(hostPte(k, mm, a + i * P)))).toBe(true); // COW: read-only in the parent too
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        // the child's touches moved the shared pages back for the parent as well
        expect(seq(4).every((i) => pte_present(hostPte(k, mm, a + i * P)))).toBe(true);
        expect(mismatches(await readUser(a, 4), 0, 13)).toEqual([]);
        expect(await n(put_user(3, a + P))).toBe(0);
        expect(dmem_stats(k, dev)).toEqual({ calloc: 4, cfree: 4, to_ram: 4 });
        await close(k, dev);
      });
    });

    it(`seed ${seed}: munmap of device-private pages frees them through page_free (rss too); a child that exits without touching its copies leaves the parent's alone`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 14);
        const dev = await open(k, mm, a, N, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, N)).ret).toBe(0);
        const child = await do_fork({ name: 'child', fn: async () => undefined });
        expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
        expect(pgmapPagesInUse(dev + DmemL.pgmap)).toBe(N);
        expect(seq(N).every((i) => k.arena.i32[k.zone.page(swp_offset(hostPte(k, mm, a + i * P))) + PageL.refcount] === 1)).toBe(true);
        expect(await n(vm_munmap(mm, a, N / 2 * P))).toBe(0);
        expect(logged(k, dev).slice(-1)).toEqual([[MMU_NOTIFY_UNMAP, 0, a, a + (N / 2) * P]]);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N / 2, to_ram: 0 });
        expect(rssAnon(k, mm)).toBe(N / 2);
        expect(await n(vm_munmap(mm, a + (N / 2) * P, (N / 2) * P))).toBe(0);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N, to_ram: 0 });
        expect(rssAnon(k, mm)).toBe(0);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §4 RELEASE evicts every device page of the pagemap back to RAM (migrate_device_pfns), CLEAR per mapping, data intact`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 15);
        const dev = await open(k, mm, a, N, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, N)).ret).toBe(0);
        expect(await dmem_access(k, dev, a, 2, true, null, (p, j) => pat(16, p, j))).toBe(0);
        const sub = await watch(k, mm);
        expect(await dmem_release(k, dev)).toBe(0);
        expect(starts().map(([ev, , s, e]) => [ev, e - s])).toEqual(seq(N).map(() => [MMU_NOTIFY_CLEAR, P]));
        expect(seq(N).every((i) => presentRW(k, mm, a + i * P))).toBe(true);
        expect(pgmapPagesInUse(dev + DmemL.pgmap)).toBe(0);
        expect(mismatches(await readUser(a, N), 0, (p) => (p < 2 ? 16 : 15))).toEqual([]);
        await unwatch(k, sub, mm);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: mremap moves device-private entries and their rmap nodes; a touch at the new address brings the page back, munmap frees it`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, 2 * P, RW, PRIV));
        await writePattern(a, 0, 2, 18);
        const dev = await open(k, mm, a, 2, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, 2)).ret).toBe(0);
        expect(await n(vm_mmap(mm, a + 2 * P, P, PROT_READ, PRIV | MAP_FIXED))).toBe(a + 2 * P); // no room to grow in place
        const b = await n(do_mremap(mm, a, 2 * P, 4 * P, MREMAP_MAYMOVE));
        expect(b).not.toBe(a);
        expect(onDevice(k, mm, b, 2, 1)).toBe(true);
        // the rmap follows the move, so RELEASE and remove_migration_ptes find the entries
        for (let i = 0; i < 2; i++) expect(rmap_mappings(k, swp_offset(hostPte(k, mm, b + i * P)))).toEqual([{ mm, addr: b + i * P }]);
        expect(mismatches(await readUser(b, 1), 0, 18)).toEqual([]);
        expect(presentRW(k, mm, b)).toBe(true);
        expect(await n(vm_munmap(mm, b, 4 * P))).toBe(0); // page 1 still on the device: zapped at its new address
        expect(await n(vm_munmap(mm, a + 2 * P, P))).toBe(0);
        expect(dmem_stats(k, dev)).toEqual({ calloc: 2, cfree: 2, to_ram: 1 });
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §6.2 a FOLL_LONGTERM pin of device-private pages migrates them to system memory first, then pins those`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 21);
        const dev = await open(k, mm, a, N, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, N)).ret).toBe(0);
        expect(onDevice(k, mm, a, N, 1)).toBe(true);
        const pages = new Array<number>(N).fill(0);
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        let got: number;
        try {
          got = await pin_user_pages_remote(mm, a, N, FOLL_WRITE | FOLL_LONGTERM, pages);
        } finally {
          mmap_read_unlock(mm);
        }
        expect(got).toBe(N);
        // every pin is on a system page now mapped by the CPU, none on device memory
        expect(pages.every((pfn) => !is_device_private_page(k, pfn))).toBe(true);
        expect(seq(N).every((i) => presentRW(k, mm, a + i * P) && pte_pfn(hostPte(k, mm, a + i * P)) === pages[i])).toBe(true);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N, to_ram: N });
        expect(mismatches(await readUser(a, N), 0, 21)).toEqual([]);
        unpin_user_pages(pages, N);
        await close(k, dev);
      });
    });

    it(`seed ${seed}: §6.2 migrate_device_pages_to_ram (what FOLL_LONGTERM GUP calls) brings a range's device pages back`, async () => {
      await run(seed, async ({ k, mm }) => {
        const a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
        await writePattern(a, 0, N, 17);
        const dev = await open(k, mm, a, N, 1);
        expect((await dmem_migrate_to_dev(k, dev, a, N)).ret).toBe(0);
        const l = mmap_read_lock(mm);
        if (l !== undefined) await l;
        try {
          expect(await migrate_device_pages_to_ram(mm, vma_lookup(k, mm, a), a, a + N * P, true)).toBe(0);
        } finally {
          mmap_read_unlock(mm);
        }
        expect(seq(N).every((i) => presentRW(k, mm, a + i * P))).toBe(true);
        expect(dmem_stats(k, dev)).toEqual({ calloc: N, cfree: N, to_ram: N });
        expect(mismatches(await readUser(a, N), 0, 17)).toEqual([]);
        await close(k, dev);
      });
    });
  }
});

describe('races under sim: migration, CPU touches and another device on one mm (data integrity, DESIGN check 6)', () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`seed ${seed}: a migrating device, a CPU thread counting in every page and a second device reading: no write lost, no stale read, no leak`, async () => {
      const st = { a: 0, d1: 0, d2: 0, ready: false, left: 3 };
      const ROUNDS = 4;
      await run(
        seed,
        async ({ k, mm, thread }) => {
          if (thread === 0) {
            st.a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
            await writePattern(st.a, 0, N, 20);
            // careful drivers: test_hmm's filter would let a fault of d1 race its own migration (§8.3)
            st.d1 = await dmem_open(k, mm, st.a, N, 1, DEV_PAGES, true);
            st.d2 = await dmem_open(k, mm, st.a, N, 2, DEV_PAGES, true);
            st.ready = true;
            for (let r = 0; r < ROUNDS; r++) {
              // pages the CPU or d2 pulled back meanwhile make the read-back -ENOENT
              expect([0, -ENOENT]).toContain((await dmem_migrate_to_dev(k, st.d1, st.a, N)).ret);
              expect(await dmem_access(k, st.d1, st.a, N, false, null, null)).toBe(0);
              expect(await dmem_migrate_to_sys(k, st.d1, st.a, N)).toBe(0);
            }
          } else {
            // stay runnable (a sleeper would only wake once thread 0 blocks): interleave at every point
            while (!st.ready) {
              const p = k.sched.point();
              await (p ?? k.sched.sleep(100));
            }
            for (let r = 0; r < ROUNDS * 2; r++) {
              for (let p = 0; p < N; p++) {
                const y = k.sched.point(); // a user program between accesses
                if (y !== undefined) await y;
                const at = st.a + p * P + 4 * thread;
                if (thread === 1) {
                  // word 1 of each page counts this thread's rounds
                  expect(await n(get_user(at))).toBe(r === 0 ? pat(20, p, 1) : r);
                  expect(await n(put_user(r + 1, at))).toBe(0);
                } else {
                  const out = new Int32Array(W);
                  expect(await dmem_access(k, st.d2, st.a + p * P, 1, false, out, null)).toBe(0);
                  expect(out[0]).toBe(pat(20, p, 0)); // word 0 never changes
                }
              }
            }
          }
          if (--st.left === 0) {
            const all = await readUser(st.a, N);
            for (let p = 0; p < N; p++) {
              expect(all[p * W + 1]).toBe(ROUNDS * 2);
              all[p * W + 1] = pat(20, p, 1);
            }
            expect(mismatches(all, 0, 20)).toEqual([]);
            await close(k, st.d2);
            await close(k, st.d1);
          }
        },
        3,
      );
    });
  }
});

describe('races under sim: zaps and fork against migration', () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`seed ${seed}: MADV_DONTNEED of pages in flight (migration and device-private entries zapped), and a fork, while a device migrates: contents right, nothing leaked`, async () => {
      const st = { a: 0, d1: 0, ready: false, left: 3 };
      const ROUNDS = 4;
      const H = N / 2; // pages [0, H) keep pattern 21; thread 1 owns [H, N)
      await run(
        seed,
        async ({ k, mm, thread }) => {
          if (thread === 0) {
            st.a = await n(vm_mmap(mm, 0, N * P, RW, PRIV));
            await writePattern(st.a, 0, N, 21);
            st.d1 = await dmem_open(k, mm, st.a, N, 1, DEV_PAGES, true);
            st.ready = true;
            for (let r = 0; r < ROUNDS; r++) {
              expect([0, -ENOENT]).toContain((await dmem_migrate_to_dev(k, st.d1, st.a, N)).ret);
              expect(await dmem_migrate_to_sys(k, st.d1, st.a, N)).toBe(0);
            }
          } else {
            while (!st.ready) {
              const p = k.sched.point();
              await (p ?? k.sched.sleep(100));
            }
            if (thread === 1) {
              for (let r = 0; r < ROUNDS; r++) {
                for (let p = H; p < N; p++) {
                  expect(await n(do_madvise(mm, st.a + p * P, P, MADV_DONTNEED))).toBe(0);
                  expect(await n(get_user(st.a + p * P + 8))).toBe(0);
                  await writePattern(st.a, p, 1, 30 + r);
                  expect(mismatches(await readUser(st.a + p * P, 1), p, 30 + r)).toEqual([]);
                }
              }
            } else {
              const y = k.sched.point();
              if (y !== undefined) await y;
              const child = await do_fork({
                name: 'child',
                fn: async () => {
                  expect(mismatches(await readUser(st.a, H), 0, 21)).toEqual([]);
                  expect(await n(put_user(-7, st.a))).toBe(0);
                },
              });
              expect(child).toBeGreaterThan(0);
              expect(await waitpid(child)).toEqual({ code: 0, signal: 0 });
              expect(mismatches(await readUser(st.a, H), 0, 21)).toEqual([]);
            }
          }
          if (--st.left === 0) {
            expect(mismatches(await readUser(st.a, H), 0, 21)).toEqual([]);
            expect(mismatches(await readUser(st.a + H * P, N - H), H, 30 + ROUNDS - 1)).toEqual([]);
            await close(k, st.d1);
          }
        },
        3,
      );
    });
  }
});
