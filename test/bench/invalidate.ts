// Invalidation cost seen by a mirroring driver: a munmap-style MMU_NOTIFY_UNMAP, blockable,
// over 2 MiB that one interval subscriber (test/fixtures/mirror.ts) mirrors with all 512
// shadow PTEs programmed. The figure is start + end of that invalidation (the itree phase, the
// driver's callback taking its mutex and zapping 512 entries, the final end), median of
// repetitions, inside one `sim` task so nothing contends. The host PTEs stay, so between
// repetitions a device READ (the hmm_range_fault loop, no CPU fault) programs the 512 entries
// again, untimed.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start, mmu_notifier_range_init } from '../../src/notifier/index.js';
import { MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap } from '../../src/mm/mmap.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { dmirror_entries, dmirror_open, dmirror_read, dmirror_release } from '../fixtures/mirror.js';
import { median, nowNs } from './measure.js';

const PAGE = 4096;
const PAGES = 512; // 2 MiB
const WARMUP = 50;
const REPS = 400;

export interface InvalidateBench {
  invalidate_2mb_us: number;
}

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

/** Lockdep on unless told (as the kernel config defaults); the event log off, as in the other speed figures. */
export async function benchInvalidate2mb(opts: { lockdep?: boolean } = {}): Promise<InvalidateBench> {
  const k = bootKernel({ lockdep: opts.lockdep ?? true, events: false, mem: { pages: PAGES + 256, pageSize: PAGE } });
  const sim = new SimScheduler(k, { seed: 1 });
  const xs: number[] = [];
  let error = '';
  spawn_process(k, sim, {
    name: 'mirrored',
    fn: async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE));
      const dev = await n(dmirror_open(k, mm, a, PAGES));
      if (a < 0 || dev < 0) {
        error = `setup: mmap ${a}, dmirror_open ${dev}`;
        return;
      }
      const range = new MmuNotifierRange();
      for (let i = 0; i < WARMUP + REPS; i++) {
        const cmd = await dmirror_read(k, dev, a, PAGES);
        if (cmd.ret !== 0 || dmirror_entries(k, dev).length !== PAGES) {
          error = `repopulate: READ ${JSON.stringify(cmd)}, ${dmirror_entries(k, dev).length} entries`;
          return;
        }
        const t0 = nowNs();
        mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, mm, a, a + PAGES * PAGE);
        const s = mmu_notifier_invalidate_range_start(range);
        if (s !== undefined) await s;
        const e = mmu_notifier_invalidate_range_end(range);
        if (e !== undefined) await e;
        const dt = nowNs() - t0;
        if (dmirror_entries(k, dev).length !== 0) {
          error = 'the invalidation left shadow entries';
          return;
        }
        if (i >= WARMUP) xs.push(dt);
      }
      await dmirror_release(k, dev);
    },
  });
  const r = await sim.run();
  reap_zombies(k);
  const log = k.klog.read();
  if (r.status !== 'done' || error !== '' || log.length !== 0) {
    throw new Error(`invalidate bench: run '${r.status}' ${error} ${log.map((x) => `[${x.kind}] ${x.text}`).join('; ')}`);
  }
  return { invalidate_2mb_us: Math.round(median(xs) / 10) / 100 };
}

// `node dist/test/bench/invalidate.js` or `npx tsx test/bench/invalidate.ts`: print the figure
if (process.argv[1] && /bench[/\\]invalidate\.(ts|js)$/.test(process.argv[1])) {
  const lockdep = !process.argv.includes('--no-lockdep');
  benchInvalidate2mb({ lockdep }).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
}
