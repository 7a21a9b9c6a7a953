// swap-roundtrip: reference §3.3 (hmm_range_fault on swap entries), §6.1 and DESIGN check 6
// (data integrity) with the dmirror driver (lib/test_hmm.c). The device WRITEs a pattern into
// a process's untouched buffer (its write faults map the pages dirty), memory pressure swaps
// the buffer out, then the first half is read back by the CPU (do_swap_page from a user
// fault) and the second half by a device READ (hmm_range_fault faulting the swap entries in).
// Every word read back is copied into the scenario's own words; check() compares them all.
// - 'pageout': MADV_PAGEOUT of the buffer (inject_reclaim_range): every page goes out.
// - 'kswapd': another process touches more memory than the machine has; kswapd (and direct
//   reclaim) swap out what is oldest: the device-written buffer first.
// - 'clean-pte-write': the buffer was swapped out and read back by the CPU first, so its PTEs
//   are writable but clean (an exclusive swap-cache page, v6.11+ do_swap_page). A device
//   WRITE through them needs no fault, and dmirror, like test_hmm, never dirties the page it
//   writes: the next reclaim drops the page as clean and the device's data is lost. Expected:
//   'data_integrity' ("BUG: lost write"), and the CPU's old data read back.

import { defineScenario } from '../run/scenario.js';
import type { Kernel } from '../sched/kernel.js';
import { defineStruct } from '../shm/layout.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap, vm_munmap } from '../mm/mmap.js';
import { pte_lookup } from '../mm/mm_pt.js';
import { _PAGE_DIRTY, is_swap_entry, pte_present } from '../mm/pgtable.js';
import type { ProcessContext } from '../mm/process.js';
import { copy_from_user, copy_to_user, get_user, put_user } from '../mm/uaccess.js';
import { inject_reclaim_range } from '../mm/fault_inject.js';
import { swapStats, swapUsage } from '../mm/swapfile.js';
import { MmL } from '../mm/types.js';
import { HMM_DMIRROR_READ, HMM_DMIRROR_WRITE, dmirror_close, dmirror_ioctl, dmirror_open, dmirror_stats, hmm_dmirror_exit, hmm_dmirror_init } from '../../drivers/dmirror/index.js';
import { settle as n, waitAtLeast, raise } from '../run/words.js';

export const SrL = defineStruct('swap_roundtrip_ctl', {
  setup: 1, // 0 ok, else the failing step's errno
  hog_go: 1, // the hog may start
  hog_done: 1, // the hog touched its memory and let it go
  hog_pages: 1, // pages the hog touched
  write_ret: 1,
  write_faults: 1,
  dirty_after_write: 1, // buffer PTEs dirty after the device WRITE
  pressure_ret: 1, // MADV_PAGEOUT's return
  out: 1, // buffer pages that are swap entries before the read-back
  cpu_out: 1, // of the CPU's half
  cpu_in: 1, // of the CPU's half: present after it read them
  dev_out: 1,
  dev_in: 1, // of the device's half: present after its READ (hmm_range_fault swapped them in)
  read_ret: 1,
  read_cpages: 1,
  pswpout: 1, // during the pressure
  dmirror_violations: 1,
  lost_writes: 1,
  done: 1,
});

export interface SrArgs {
  /** pages of the buffer (even) */
  pages: number;
  pressure: 'pageout' | 'kswapd';
  /** the buffer was swapped out and read back (writable-clean PTEs) before the device writes */
  cleanPte: boolean;
  /** pages the hog touches under 'kswapd' */
  hogPages: number;
}

type Ctx = SrArgs & { ctl: number; res: number[] };

/** what the device writes: word i of page p */
export const devWord = (p: number, i: number): number => (0x5a000000 + (p << 12) + i) | 0;
/** what the CPU wrote before ('clean-pte-write') */
export const oldWord = (p: number, i: number): number => -(p * 4096 + i) - 1;

const PAGE_WORDS = 1024;

export default defineScenario<SrArgs, { res: number[]; ctl: number }>({
  name: 'swap-roundtrip',
  description: 'device-written data survives reclaim to swap and swap-in by the CPU and by hmm_range_fault (dmirror); a write through a clean PTE is lost (§3.3, check 6)',
  config: {
    maxTasks: 16,
    lockClasses: 128,
    lockdepEdges: 2048,
    eventRecords: 1 << 14,
    klogBytes: 1 << 17,
    strings: 512,
    stringBytes: 16384,
    kmalloc: { 8: 256, 16: 128, 32: 128, 64: 64, 256: 32, 1024: 24 },
    mem: { pages: 256, pageSize: 4096, reclaim: true, min: 8, low: 24, high: 48 },
    swap: { slots: 512 },
    mm: { pgtables: 64, vmas: 32, procs: 4 },
    device: { devices: 4, sptDirs: 16, sptLeaves: 16 },
  },
  drivers: ['dmirror'],
  args: { pages: 8, pressure: 'pageout', cleanPte: false, hogPages: 320 },
  variants: {
    pageout: {
      description: 'MADV_PAGEOUT swaps the device-written buffer out; every word comes back through the CPU and hmm_range_fault',
      args: { pressure: 'pageout' },
    },
    kswapd: {
      description: 'another process overcommits memory: kswapd and/or direct reclaim swap the buffer out; every word comes back',
      args: { pressure: 'kswapd' },
    },
    'clean-pte-write': {
      description: 'a device WRITE through writable-clean PTEs (after a CPU read swap-in) never dirties the page: reclaim drops it, the write is lost and reported',
      args: { pressure: 'pageout', cleanPte: true },
      expect: { violations: ['data_integrity'] },
    },
  },
  services: ['kswapd'],
  limits: { threadsTimeMs: 30_000 },
  start(ctx) {
    const ctl = ctx.alloc(SrL.$size);
    const res = Array.from({ length: ctx.args.pages }, () => ctx.alloc(PAGE_WORDS));
    const args: Ctx = { ...ctx.args, ctl, res };
    ctx.process({ name: 'hmm-app', fn: 'srApp', args });
    if (args.pressure === 'kswapd') ctx.process({ name: 'hog', fn: 'srHog', args });
    return { res, ctl };
  },
  check(end) {
    const g = (f: keyof typeof SrL.$fields): number => end.word(end.state.ctl + SrL[f]);
    const N = end.args.pages;
    const H = N / 2;
    if (g('setup') !== 0) return [`setup failed with ${g('setup')}`];
    if (g('done') !== 1) return ['the app did not finish'];
    const out: string[] = [];
    const clean = end.args.cleanPte;
    if (g('write_ret') !== 0) out.push(`the device WRITE returned ${g('write_ret')}`);
    if (!clean && (g('write_faults') < 1 || g('dirty_after_write') !== N)) out.push(`the device WRITE should fault the untouched buffer in for write (faults ${g('write_faults')}, dirty PTEs ${g('dirty_after_write')} of ${N})`);
    if (clean && g('dirty_after_write') !== 0) out.push(`clean-pte-write: ${g('dirty_after_write')} PTEs dirty after the device WRITE; the point is that none is`);
    if (g('pressure_ret') !== 0) out.push(`MADV_PAGEOUT returned ${g('pressure_ret')}`);
    if (end.args.pressure === 'kswapd' && g('hog_pages') !== end.args.hogPages) out.push(`the hog touched ${g('hog_pages')} of ${end.args.hogPages} pages`);
    if (g('out') !== N) out.push(`${g('out')} of ${N} buffer pages were swapped out before the read-back`);
    if (g('cpu_out') < 1 || g('cpu_in') !== H) out.push(`CPU half: ${g('cpu_out')} swapped out, ${g('cpu_in')} of ${H} present after the reads (do_swap_page)`);
    if (g('dev_out') < 1 || g('dev_in') !== H) out.push(`device half: ${g('dev_out')} swapped out, ${g('dev_in')} of ${H} present after the READ (hmm_range_fault)`);
    if (g('read_ret') !== 0 || g('read_cpages') !== H) out.push(`the device READ returned ${g('read_ret')}, cpages ${g('read_cpages')} (expected 0, ${H})`);
    if (clean ? g('pswpout') !== 0 : g('pswpout') < g('out')) out.push(`pswpout rose by ${g('pswpout')} for ${g('out')} pages out${clean ? ' (clean pages are dropped, not written)' : ''}`);
    if (g('dmirror_violations') !== 0) out.push(`dmirror counted ${g('dmirror_violations')} mirror violations`);
    if (g('lost_writes') !== (clean ? N : 0)) out.push(`${g('lost_writes')} lost writes counted, expected ${clean ? N : 0}`);
    // every word, as the CPU (first half) and the device (second half) read it
    const want = clean ? oldWord : devWord;
    const w = end.k.arena.i32;
    for (let p = 0; p < N; p++) {
      const at = end.state.res[p];
      let bad = -1;
      for (let i = 0; i < PAGE_WORDS && bad < 0; i++) if (w[at + i] !== want(p, i)) bad = i;
      if (bad >= 0) out.push(`page ${p} (${p < H ? 'CPU' : 'device'} read-back) word ${bad} is 0x${(w[at + bad] >>> 0).toString(16)}, expected 0x${(want(p, bad) >>> 0).toString(16)}${clean ? ' (the CPU\'s old data: the device write is lost)' : ''}`);
    }
    const su = swapUsage(end.k);
    if (su.used !== 0 || su.swapCache !== 0) out.push(`swap left behind: ${su.used} slots, ${su.swapCache} swap-cache pages`);
    return out;
  },
});

function ptes(k: Kernel, mm: number, a: number, pages: number): number[] {
  const pgd = k.arena.i32[mm + MmL.pgd];
  const out: number[] = [];
  for (let i = 0; i < pages; i++) {
    const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, a + i * k.mmLayer.pageSize);
    out.push(slot < 0 ? 0 : k.arena.i32[slot]);
  }
  return out;
}

const count = (xs: number[], f: (pte: number) => boolean): number => xs.filter(f).length;

async function fillPages(a: number, from: number, pages: number, f: (p: number, i: number) => number): Promise<number> {
  const v = new Int32Array(PAGE_WORDS);
  for (let p = 0; p < pages; p++) {
    for (let i = 0; i < PAGE_WORDS; i++) v[i] = f(from + p, i);
    const r = await copy_to_user(a + p * PAGE_WORDS * 4, new Uint8Array(v.buffer));
    if (r !== 0) return -14;
  }
  return 0;
}

/** Copy `pages` pages at a into the result words of pages from..from+pages. */
async function readBack(k: Kernel, args: Ctx, a: number, from: number, pages: number): Promise<number> {
  const v = new Int32Array(PAGE_WORDS);
  for (let p = 0; p < pages; p++) {
    if ((await copy_from_user(new Uint8Array(v.buffer), a + p * PAGE_WORDS * 4)) !== 0) return -14;
    k.arena.i32.set(v, args.res[from + p]);
  }
  return 0;
}

/** The process: dmirror, the buffer, the device's write, the pressure, the read-back. */
export async function srApp({ k, mm, args }: ProcessContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const N = args.pages;
  const H = N / 2;
  const fail = (r: number): void => raise(k, c + SrL.setup, r);
  if (ps !== PAGE_WORDS * 4) return fail(-22);
  const mod = await hmm_dmirror_init({ chunkPages: 16 });
  if (mod < 0) return fail(mod);
  const fd = await dmirror_open(mod, 0);
  if (fd < 0) return fail(fd);
  const a = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  const mirror = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (a < 0 || mirror < 0) return fail(Math.min(a, mirror));
  if (args.cleanPte) {
    // written by the CPU, swapped out, read back: writable-clean PTEs over swap-cache pages
    if ((await fillPages(a, 0, N, oldWord)) !== 0) return fail(-14);
    const r = await n(inject_reclaim_range(k, mm, a, a + N * ps));
    if (r !== 0) return fail(r);
    for (let p = 0; p < N; p++) await n(get_user(a + p * ps));
  }
  // the device writes the pattern (the source is the mirror buffer, as test_hmm's WRITE)
  if ((await fillPages(mirror, 0, N, devWord)) !== 0) return fail(-14);
  const wr = await dmirror_ioctl(mod, fd, HMM_DMIRROR_WRITE, { addr: a, ptr: mirror, npages: N });
  w[c + SrL.write_ret] = wr.ret;
  w[c + SrL.write_faults] = wr.faults;
  w[c + SrL.dirty_after_write] = count(ptes(k, mm, a, N), (pte) => pte_present(pte) && (pte & _PAGE_DIRTY) !== 0);
  if ((await fillPages(mirror, 0, N, () => 0)) !== 0) return fail(-14); // the READ must bring the data back
  // memory pressure
  const out0 = swapStats(k).pswpout;
  if (args.pressure === 'pageout') {
    w[c + SrL.pressure_ret] = await n(inject_reclaim_range(k, mm, a, a + N * ps));
  } else {
    // under threads kswapd may find some buffer pages referenced on a pass: the hog goes
    // round again (at most HOG_ROUNDS) until the whole buffer is out
    for (let round = 1; round <= HOG_ROUNDS; round++) {
      raise(k, c + SrL.hog_go, round);
      await waitAtLeast(k, c + SrL.hog_done, round);
      if (count(ptes(k, mm, a, N), is_swap_entry) === N) break;
    }
    raise(k, c + SrL.hog_go, HOG_STOP);
    await waitAtLeast(k, c + SrL.hog_done, HOG_STOP);
  }
  w[c + SrL.pswpout] = swapStats(k).pswpout - out0;
  const before = ptes(k, mm, a, N);
  w[c + SrL.out] = count(before, is_swap_entry);
  w[c + SrL.cpu_out] = count(before.slice(0, H), is_swap_entry);
  w[c + SrL.dev_out] = count(before.slice(H), is_swap_entry);
  // the first half: CPU faults
  if ((await readBack(k, args, a, 0, H)) !== 0) return fail(-14);
  w[c + SrL.cpu_in] = count(ptes(k, mm, a, H), pte_present);
  // the second half: the device READ (hmm_range_fault), then the CPU reads what it copied out
  const rd = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: a + H * ps, ptr: mirror + H * ps, npages: N - H });
  w[c + SrL.read_ret] = rd.ret;
  w[c + SrL.read_cpages] = rd.cpages;
  w[c + SrL.dev_in] = count(ptes(k, mm, a + H * ps, N - H), pte_present);
  if ((await readBack(k, args, mirror + H * ps, H, N - H)) !== 0) return fail(-14);
  w[c + SrL.dmirror_violations] = dmirror_stats(mod, fd).violations;
  w[c + SrL.lost_writes] = swapStats(k).lostWrites;
  await dmirror_close(mod, fd);
  await hmm_dmirror_exit(mod);
  await n(vm_munmap(mm, a, N * ps));
  await n(vm_munmap(mm, mirror, N * ps));
  raise(k, c + SrL.done, 1);
}

/** Another process: touches more memory than the machine has, then lets it go. */
const HOG_ROUNDS = 4;
const HOG_STOP = 1000;

export async function srHog({ k, mm, args }: ProcessContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const ps = k.mmLayer.pageSize;
  await waitAtLeast(k, c + SrL.hog_go, 1);
  const M = args.hogPages;
  const a = await n(vm_mmap(mm, 0, M * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (a < 0) return raise(k, c + SrL.setup, a);
  // one pass over its memory per round the buffer's owner asks for, until told to stop
  for (let round = 1; Atomics.load(k.arena.i32, c + SrL.hog_go) < HOG_STOP; round++) {
    let touched = 0;
    for (let i = 0; i < M; i++) if ((await n(put_user(i + 1, a + i * ps))) === 0) touched++;
    k.arena.i32[c + SrL.hog_pages] = touched;
    raise(k, c + SrL.hog_done, round);
    await waitAtLeast(k, c + SrL.hog_go, round + 1);
  }
  await n(vm_munmap(mm, a, M * ps));
  raise(k, c + SrL.hog_done, HOG_STOP);
}

