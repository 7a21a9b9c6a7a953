// Reclaim throughput through try_to_unmap_one: one task under `sim` maps PAGES anonymous pages
// and writes them; then, ROUNDS times: every mirror READs the whole range (its shadow PTEs
// programmed, untimed), the pages are isolated from the LRU and reclaimed (reclaim_pages, as
// MADV_PAGEOUT: folio_alloc_swap, try_to_unmap with one blockable CLEAR per page, swap_writepage,
// __remove_mapping, free), timed, and read back by the CPU (swap-in, untimed). The figure is
// pages reclaimed per wall second with no mirror, and with 4 interval-notifier mirrors
// (test/fixtures/mirror.ts: each invalidation takes the mirror's mutex and zaps its entries).

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../../src/mm/mmap.js';
import { mmUsage } from '../../src/mm/mm_layer.js';
import { pte_lookup } from '../../src/mm/mm_pt.js';
import { folio_isolate_lru, lruStats } from '../../src/mm/lru.js';
import { pte_pfn, pte_present } from '../../src/mm/pgtable.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { swapUsage } from '../../src/mm/swapfile.js';
import { get_user, put_user } from '../../src/mm/uaccess.js';
import { MmL } from '../../src/mm/types.js';
import { reclaim_pages } from '../../src/mm/vmscan.js';
import { dmirror_entries, dmirror_open, dmirror_read, dmirror_release } from '../fixtures/mirror.js';
import { median, nowNs, samples } from './measure.js';

const PAGE = 4096;
const PAGES = 256;
const ROUNDS = 8;
const WARMUP = 2;
const REPS = 5;

export interface ReclaimBench {
  reclaim_pages_per_s_0mirror: number;
  reclaim_pages_per_s_4mirror: number;
}

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

/** One sample: pages reclaimed per wall second over ROUNDS rounds of PAGES pages. */
async function onceReclaim(seed: number, mirrors: number, lockdep: boolean): Promise<number> {
  const k = bootKernel({ lockdep, events: false, mem: { pages: PAGES + 256, pageSize: PAGE }, swap: { slots: PAGES } });
  const before = JSON.stringify({ mm: mmUsage(k), swap: swapUsage(k), lru: lruStats(k) });
  const sim = new SimScheduler(k, { seed });
  let pages = 0;
  let dt = 0;
  let error = '';
  spawn_process(k, sim, {
    name: 'reclaimed',
    fn: async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
      if (a < 0) return void (error = `mmap: ${a}`);
      for (let i = 0; i < PAGES; i++) if ((await n(put_user(i + 1, a + i * PAGE))) !== 0) return void (error = 'put_user');
      const devs: number[] = [];
      for (let d = 0; d < mirrors; d++) devs.push(await n(dmirror_open(k, mm, a, PAGES, d + 1)));
      if (devs.some((d) => d < 0)) return void (error = `dmirror_open: ${devs}`);
      const w = k.arena.i32;
      const list: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        for (const dev of devs) {
          const cmd = await dmirror_read(k, dev, a, PAGES);
          if (cmd.ret !== 0 || dmirror_entries(k, dev).length !== PAGES) return void (error = `READ ${JSON.stringify(cmd)}`);
        }
        const t0 = nowNs();
        list.length = 0;
        const pgd = w[mm + MmL.pgd];
        for (let i = 0; i < PAGES; i++) {
          const pte = w[pte_lookup(k, pgd, a + i * PAGE)];
          if (pte_present(pte) && folio_isolate_lru(k, pte_pfn(pte))) list.push(pte_pfn(pte));
        }
        const freed = await n(reclaim_pages(k, list));
        dt += nowNs() - t0;
        if (freed !== PAGES) return void (error = `reclaimed ${freed} of ${PAGES}`);
        if (devs.some((dev) => dmirror_entries(k, dev).length !== 0)) return void (error = 'shadow entries survived reclaim');
        pages += freed;
        for (let i = 0; i < PAGES; i++) if ((await n(get_user(a + i * PAGE))) !== i + 1) return void (error = `page ${i} came back wrong`);
      }
      for (const dev of devs) await dmirror_release(k, dev);
      if ((await n(vm_munmap(mm, a, PAGES * PAGE))) !== 0) error = 'munmap';
    },
  });
  const res = await sim.run();
  reap_zombies(k);
  const log = k.klog.read();
  if (res.status !== 'done' || error !== '' || log.length !== 0) throw new Error(`reclaim bench: run '${res.status}' ${error} ${log.map((x) => `[${x.kind}] ${x.text}`).join('; ')}`);
  const after = JSON.stringify({ mm: mmUsage(k), swap: swapUsage(k), lru: lruStats(k) });
  if (after !== before) throw new Error(`reclaim bench: leak ${before} -> ${after}`);
  return (pages / dt) * 1e9;
}

/** Default kernel config except the event log (off, as in the other speed figures); lockdep on unless told. */
export async function benchReclaim(opts: { lockdep?: boolean } = {}): Promise<ReclaimBench> {
  const lockdep = opts.lockdep ?? true;
  let seed = 1;
  const x0 = await samples(WARMUP, REPS, () => onceReclaim(seed++, 0, lockdep));
  const x4 = await samples(WARMUP, REPS, () => onceReclaim(seed++, 4, lockdep));
  return { reclaim_pages_per_s_0mirror: Math.round(median(x0)), reclaim_pages_per_s_4mirror: Math.round(median(x4)) };
}

// `npx tsx test/bench/reclaim.ts`: print the figures
if (process.argv[1] && /bench[/\\]reclaim\.(ts|js)$/.test(process.argv[1])) {
  const lockdep = !process.argv.includes('--no-lockdep');
  benchReclaim({ lockdep }).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
}
