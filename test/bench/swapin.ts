// Swap-in fault throughput: one task under `sim` maps N anonymous pages, writes them, and
// swaps them all out (shrink_folio_list's steps, test/fixtures/swap_tasks.ts). Then, ROUNDS
// times: read one word of each page (a major fault each: a page allocated, the slot read, the
// swap cache entry made, the PTE mapped), and swap them out again (clean now: dropped, their
// slots kept). Only the fault loops are timed, so the figure is CPU faults on swap entries
// whose pages are in swap, not in the swap cache, per wall second.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../../src/mm/mmap.js';
import { mmUsage } from '../../src/mm/mm_layer.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { swapStats, swapUsage } from '../../src/mm/swapfile.js';
import { get_user, put_user } from '../../src/mm/uaccess.js';
import { reclaimRange } from '../fixtures/swap_tasks.js';
import { median, nowNs, samples } from './measure.js';

const PAGE = 4096;
const PAGES = 256;
const ROUNDS = 40;
const WARMUP = 2;
const REPS = 5;

export interface SwapinBench {
  swapin_fault_per_s: number;
}

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

/** One sample: swap-in faults per wall second over ROUNDS rounds of PAGES faults. */
async function onceSwapin(seed: number, lockdep: boolean): Promise<number> {
  const k = bootKernel({ lockdep, events: false, mem: { pages: PAGES + 128, pageSize: PAGE }, swap: { slots: PAGES } });
  const before = { mm: mmUsage(k), swap: swapUsage(k) };
  const sim = new SimScheduler(k, { seed });
  let faults = 0;
  let error = '';
  let dt = 0;
  spawn_process(k, sim, {
    name: 'swapper',
    fn: async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
      if (a < 0) return void (error = `mmap: ${a}`);
      for (let i = 0; i < PAGES; i++) if ((await n(put_user(i + 1, a + i * PAGE))) !== 0) return void (error = 'put_user');
      for (let r = 0; r < ROUNDS; r++) {
        const out = await reclaimRange(k, mm, a, PAGES);
        if (out.freed !== PAGES) return void (error = `reclaim freed ${out.freed} of ${PAGES}`);
        const t0 = nowNs();
        for (let i = 0; i < PAGES; i++) {
          if ((await n(get_user(a + i * PAGE))) !== i + 1) return void (error = `page ${i} came back wrong`);
        }
        dt += nowNs() - t0;
        faults += PAGES;
      }
      if ((await n(vm_munmap(mm, a, PAGES * PAGE))) !== 0) error = 'munmap';
    },
  });
  const res = await sim.run();
  reap_zombies(k);
  if (res.status !== 'done' || error !== '' || faults !== ROUNDS * PAGES) throw new Error(`swapin bench: run '${res.status}' ${error} faults ${faults}`);
  if (swapStats(k).majfault !== faults) throw new Error(`swapin bench: ${swapStats(k).majfault} major faults for ${faults} faults: some came from the swap cache`);
  const after = { mm: mmUsage(k), swap: swapUsage(k) };
  if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`swapin bench: leak ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
  return (faults / dt) * 1e9;
}

/** Default kernel config except the event log (off, as in the other speed figures); lockdep on unless told. */
export async function benchSwapin(opts: { lockdep?: boolean } = {}): Promise<SwapinBench> {
  const lockdep = opts.lockdep ?? true;
  let seed = 1;
  const xs = await samples(WARMUP, REPS, () => onceSwapin(seed++, lockdep));
  return { swapin_fault_per_s: Math.round(median(xs)) };
}

// `npx tsx test/bench/swapin.ts`: print the figure
if (process.argv[1] && /bench[/\\]swapin\.(ts|js)$/.test(process.argv[1])) {
  const lockdep = !process.argv.includes('--no-lockdep');
  benchSwapin({ lockdep }).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
}
