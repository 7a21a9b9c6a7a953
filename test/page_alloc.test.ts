import { describe, expect, it } from 'vitest';
import { bootKernel } from '../src/run/boot.js';
import { SimScheduler } from '../src/sched/sim.js';
import { GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, __GFP_ZERO } from '../src/mm/gfp.js';
import { PageL } from '../src/mm/page.js';
import { __free_page, alloc_page, might_alloc } from '../src/mm/page_alloc.js';
import { kfree, kzalloc } from '../src/mm/slab.js';
import { invalidate_start_map, lock_map_acquire, lock_map_release, mutex_init, mutex_lock, mutex_trylock, mutex_unlock } from '../src/sync/index.js';
import { memalloc_noreclaim_restore, memalloc_noreclaim_save } from '../src/sched/task.js';
import { current } from '../src/sched/current.js';

const kinds = (k: ReturnType<typeof bootKernel>) => k.klog.read().map((r) => r.kind);

describe('page allocator: frames, watermarks, generations', () => {
  it('hands out distinct frames until the min watermark, then fails without sleeping for GFP_NOWAIT', () => {
    const k = bootKernel({ mem: { pages: 64, pageSize: 256, min: 4 } });
    const got = new Set<number>();
    for (;;) {
      const pfn = alloc_page(k, GFP_NOWAIT) as number;
      if (pfn === 0) break;
      expect(got.has(pfn)).toBe(false);
      got.add(pfn);
    }
    expect(got.size).toBe(63 - 4); // pfn 0 is the zero page; min frames stay in reserve
    expect(k.zone.allocFailures).toBe(1);
    // GFP_ATOMIC may dip into the reserve
    expect(alloc_page(k, GFP_ATOMIC)).toBeGreaterThan(0);
  });

  it('bumps the generation of a freed frame and zeroes with __GFP_ZERO', () => {
    const k = bootKernel({ mem: { pages: 8, pageSize: 256, min: 1 } });
    const w = k.arena.i32;
    const pfn = alloc_page(k, GFP_KERNEL) as number;
    const gen = w[k.zone.page(pfn) + PageL.gen];
    w[k.zone.pageData(pfn) + 3] = 0x1234;
    __free_page(k, pfn);
    expect(w[k.zone.page(pfn) + PageL.gen]).toBe(gen + 1);
    expect(() => __free_page(k, pfn)).toThrow(/already free/);
    const again = alloc_page(k, GFP_KERNEL | __GFP_ZERO) as number;
    expect(again).toBe(pfn);
    expect(w[k.zone.pageData(again) + 3]).toBe(0);
  });

  it('rejects a bad memory config with a message naming the field', () => {
    expect(() => bootKernel({ mem: { pages: 8, pageSize: 102 } })).toThrow(/mem.pageSize/);
    expect(() => bootKernel({ mem: { pages: 1, pageSize: 4096 } })).toThrow(/mem.pages/);
  });
});

describe('reference §6.3: a driver lock held across a GFP_KERNEL allocation', () => {
  async function run(seed: number, gfp: number, callbackTrylock: boolean) {
    const k = bootKernel({ mem: { pages: 64, pageSize: 256 } });
    const drv = mutex_init(k, k.kmalloc.kzalloc(4), '&dmirror->mutex');
    const sim = new SimScheduler(k, { seed });
    // the notifier core calls the driver's invalidate callback inside the invalidate-start map
    sim.spawn({
      name: 'invalidate',
      fn: async () => {
        const map = invalidate_start_map(k);
        lock_map_acquire(map);
        if (callbackTrylock) {
          if (mutex_trylock(drv)) mutex_unlock(drv);
        } else {
          await mutex_lock(drv);
          mutex_unlock(drv);
        }
        lock_map_release(map);
      },
    });
    // the driver's fault path allocates while holding its notifier lock
    sim.spawn({
      name: 'fault',
      fn: async () => {
        await mutex_lock(drv);
        const obj = kzalloc(k, 8, gfp);
        kfree(k, obj);
        mutex_unlock(drv);
      },
    });
    const r = await sim.run();
    return { k, r };
  }

  it('is reported by lockdep from the first run, with no reclaim happening', async () => {
    for (let seed = 1; seed <= 8; seed++) {
      const { k, r } = await run(seed, GFP_KERNEL, false);
      expect(r.status).toBe('done');
      const circ = k.klog.read().filter((x) => x.kind === 'lockdep_circular');
      expect(circ.length).toBe(1);
      expect(circ[0].text).toContain('&dmirror->mutex');
      expect(circ[0].text).toContain('mmu_notifier_invalidate_range_start');
      expect(k.zone.allocFailures).toBe(0);
    }
  });

  it('is not reported for GFP_ATOMIC / GFP_NOWAIT, nor when the callback only trylocks', async () => {
    for (const [gfp, trylock] of [[GFP_ATOMIC, false], [GFP_NOWAIT, false], [GFP_KERNEL, true]] as const) {
      const { k, r } = await run(3, gfp, trylock);
      expect(r.status).toBe('done');
      expect(kinds(k)).not.toContain('lockdep_circular');
    }
  });

  it('might_alloc(GFP_KERNEL) under a spinlock-free, PF_MEMALLOC task primes nothing', async () => {
    const k = bootKernel({ mem: { pages: 16, pageSize: 256 } });
    const drv = mutex_init(k, k.kmalloc.kzalloc(4), 'drv');
    const sim = new SimScheduler(k, { seed: 1 });
    sim.spawn({
      name: 'reclaimer',
      fn: async () => {
        const map = invalidate_start_map(k);
        lock_map_acquire(map);
        await mutex_lock(drv);
        mutex_unlock(drv);
        lock_map_release(map);
        await mutex_lock(drv);
        const old = memalloc_noreclaim_save(current);
        might_alloc(k, GFP_KERNEL); // a reclaimer's own allocations do not recurse into reclaim
        memalloc_noreclaim_restore(current, old);
        mutex_unlock(drv);
      },
    });
    expect((await sim.run()).status).toBe('done');
    expect(kinds(k)).not.toContain('lockdep_circular');
  });
});

describe('alloc_pages: order 0 only', () => {
  it('hands out order-0 pages and refuses a higher order with a warning, not a bogus block', async () => {
    const { alloc_pages, __free_pages } = await import('../src/mm/page_alloc.js');
    const k = bootKernel({ mem: { pages: 16, pageSize: 256, min: 1 } });
    const pfn = alloc_pages(k, GFP_KERNEL, 0) as number;
    expect(pfn).toBeGreaterThan(0);
    const free = k.zone.nrFree;
    expect(alloc_pages(k, GFP_KERNEL, 9)).toBe(0);
    expect(k.zone.nrFree).toBe(free);
    expect(kinds(k)).toContain('warn');
    __free_pages(k, pfn, 0);
    expect(k.zone.nrFree).toBe(free + 1);
    expect(() => __free_pages(k, pfn, 2)).toThrow(/order 2/);
  });
});
