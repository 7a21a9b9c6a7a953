// An rmap walk holds each mm it visits, grabbed while the mapping still pins it (the kernel's
// walk holds the anon_vma lock, which exit_mmap needs before its mmdrop). A walk that takes its
// mmgrab after dropping the rmap lock can come after an exiting fork child's last mmdrop:
// "mmgrab ... mm_count 0", then a second __mmdrop (kmalloc double free) and invalidations of
// a freed mm. Here the child exits between the snapshot and the visit.

import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { SimScheduler } from '../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm/mman.js';
import { mmdrop } from '../src/mm/mm_inline.js';
import { mmUsage } from '../src/mm/mm_layer.js';
import { pte_lookup } from '../src/mm/mm_pt.js';
import { vm_mmap } from '../src/mm/mmap.js';
import { pte_pfn } from '../src/mm/pgtable.js';
import { do_fork, reap_zombies, spawn_process, waitpid, type ProcessContext } from '../src/mm/process.js';
import { rmap_mappings } from '../src/mm/rmap.js';
import { MmL } from '../src/mm/types.js';
import { get_user, put_user } from '../src/mm/uaccess.js';
import { dump } from './helpers.js';

const P = 4096;
const CFG: BootConfig = {
  maxTasks: 16,
  mem: { pages: 256, pageSize: P },
  mm: { pgtables: 96, vmas: 32, rmapNodes: 256, shmObjs: 4, procs: 8 },
  kmalloc: { 8: 256, 16: 128, 32: 128, 64: 64, 256: 16, 1024: 8 },
  klogBytes: 1 << 16,
  eventRecords: 1 << 10,
};

async function n<T>(v: T | Promise<T>): Promise<T> {
  return await v;
}

describe('rmap walks and mm lifetime (an exiting fork child under a walk)', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: the walk's snapshot pins the child's mm struct across the child's exit; nothing is freed twice`, async () => {
      const k = bootKernel(CFG);
      const before = mmUsage(k);
      const kmBefore = k.kmalloc.usage();
      const s = new SimScheduler(k, { seed, stallMs: 5000 });
      const seen: { count: number; users: number }[] = [];
      const prog = async ({ k, mm }: ProcessContext<unknown>): Promise<void> => {
        const w = k.arena.i32;
        const a = await n(vm_mmap(mm, 0, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
        expect(await n(put_user(7, a))).toBe(0);
        const pfn = pte_pfn(w[pte_lookup(k, w[mm + MmL.pgd], a)]);
        const go = k.kmalloc.kzalloc(2);
        let childMm = 0;
        const cpid = await do_fork({
          name: 'child',
          fn: async (c: ProcessContext<unknown>) => {
            childMm = c.mm;
            expect(await n(get_user(a))).toBe(7); // still the shared COW frame
            Atomics.store(w, go, 1);
            k.sched.wake(go, 1);
            while (Atomics.load(w, go + 1) === 0) await k.sched.wait(go + 1, 0);
          },
        });
        expect(cpid).toBeGreaterThan(0);
        while (Atomics.load(w, go) === 0) await k.sched.wait(go, 0);
        // the walk's snapshot: both mms map the frame
        const maps = rmap_mappings(k, pfn, true);
        expect(maps.map((m) => m.mm).sort()).toEqual([mm, childMm].sort());
        // the child exits now: exit_mmap drops its mapping, then its mm_users' mmdrop
        Atomics.store(w, go + 1, 1);
        k.sched.wake(go + 1, 1);
        const st = await waitpid(cpid);
        expect(st).toEqual({ code: 0, signal: 0 });
        // the address space is gone but the struct is the walk's until it drops it
        seen.push({ count: Atomics.load(w, childMm + MmL.mm_count), users: Atomics.load(w, childMm + MmL.mm_users) });
        for (const m of maps) mmdrop(m.mm);
        // the next walk over the frame reaches only the parent
        expect(rmap_mappings(k, pfn)).toEqual([{ mm, addr: a }]);
        expect(await n(get_user(a))).toBe(7);
        k.kmalloc.kfree(go);
      };
      const pid = spawn_process(k, s, { name: 'prog', fn: prog as never });
      expect(pid).toBeGreaterThan(0);
      const r = await s.run();
      const klog = k.klog.read();
      expect(r.failed, dump(klog)).toEqual([]);
      expect(r.status, r.report ?? dump(klog)).toBe('done');
      expect(klog.map((x) => `[${x.kind}] ${x.text}`)).toEqual([]);
      expect(seen).toEqual([{ count: 1, users: 0 }]);
      reap_zombies(k);
      expect(mmUsage(k)).toEqual(before);
      expect(k.kmalloc.usage()).toEqual(kmBefore);
    });
  }
});
