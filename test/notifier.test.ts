// The mmu_notifier and mmu_interval_notifier core under `sim`, over several seeds. Each test
// names the reference section or §9 scenario it checks (../shared/reference/kernel-semantics.md).
// Invalidations are synthetic: tests call start/end directly, as the mm will. The drivers are
// minimal: a recording interval driver (mutex in blockable ranges, trylock otherwise) and a few
// hlist drivers that count, fail or sleep.

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bootKernel, type BootConfig } from '../src/run/boot.js';
import { ThreadsRunner } from '../src/run/threads.js';
import { current } from '../src/sched/current.js';
import type { Kernel } from '../src/sched/kernel.js';
import type { RunResult } from '../src/sched/scheduler.js';
import { SimScheduler, type SimOptions } from '../src/sched/sim.js';
import { Arena, ArenaPlan } from '../src/shm/arena.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { defineStruct } from '../src/shm/layout.js';
import { EAGAIN, EDEADLK, EINVAL, EOVERFLOW } from '../src/shm/errno.js';
import { might_sleep } from '../src/sync/context.js';
import { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_trylock, mutex_unlock } from '../src/sync/mutex.js';
import { mm_alloc, mmdrop, mmgrab, mmput } from '../src/mm/mm_struct.js';
import { MmL, PAGE_SIZE, ULONG_MAX } from '../src/mm/types.js';
import {
  ITNodeL,
  interval_tree_check,
  interval_tree_insert,
  interval_tree_iter_first,
  interval_tree_iter_next,
  interval_tree_node_init,
  interval_tree_nodes,
  interval_tree_remove,
  it_last,
  it_start,
} from '../src/notifier/interval_tree.js';
import {
  MIN_DEFERRED_INSERT,
  MIN_IN_TREE,
  MIN_REMOVED,
  MN_DEAD,
} from '../src/notifier/subscriptions.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_UNMAP,
  MinL,
  MmuNotifierRange,
  MnL,
  NK,
  SubsL,
  defineIntervalNotifierOps,
  defineNotifierOps,
  mmu_interval_check_retry,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_set_seq,
  mmu_notifier_clear_flush_young,
  mmu_notifier_get,
  mmu_notifier_init,
  mmu_notifier_invalidate_range_end,
  mmu_notifier_invalidate_range_start,
  mmu_notifier_invalidate_range_start_nonblock,
  mmu_notifier_priv,
  mmu_notifier_put,
  mmu_notifier_range_blockable,
  mmu_notifier_range_init,
  mmu_notifier_range_init_owner,
  mmu_notifier_register,
  mmu_notifier_subscriptions_state,
  mmu_notifier_synchronize,
  mmu_notifier_test_young,
  mmu_notifier_unregister,
  type SubscriptionsState,
} from '../src/notifier/index.js';

const SEEDS = [1, 2, 3];
const US = 1000;
const MS = 1000 * US;
const MB = 1 << 20;

const CFG: BootConfig = {
  maxTasks: 16,
  lockClasses: 64,
  lockdepEdges: 512,
  eventRecords: 1 << 14,
  klogBytes: 1 << 18,
  strings: 256,
  stringBytes: 8192,
  kmalloc: { 8: 256, 16: 256, 32: 256, 64: 32 },
  mem: { pages: 16, pageSize: 4096 },
};

// ---- minimal drivers -----------------------------------------------------------------------

/** per-subscription driver state (the `priv` of every test subscription) */
const DrvL = defineStruct('test_drv', {
  lock: MUTEX_WORDS,
  id: 1, // label in LOG
  calls: 1,
  counter: 1, // hlist: starts minus ends
  /** interval: 1 = false in non-blockable ranges, 2 = false always. hlist: 1 = -EAGAIN when non-blockable, 2 = always */
  fail: 1,
  lastSeq: 1,
  lastEvent: 1,
  /** 1: the callback also calls this (a remove/read_begin/unregister from inside a callback) */
  reenter: 1,
  reenterRet: 1,
});

/** what callbacks did, in order ("I1" interval id 1, "S2"/"E2" hlist start/end of id 2) */
let LOG: string[] = [];
/** the callback re-entry under test (scenario "remove from inside a callback") */
let REENTER: ((sub: number) => unknown) | null = null;

const w32 = (): Int32Array => current.k.arena.i32;
const drvMutex = (st: number): Mutex => new Mutex(current.k, st + DrvL.lock);

const recOps = defineIntervalNotifierOps('test-rec', {
  invalidate(sub, range, cur_seq) {
    const w = w32();
    const st = mmu_notifier_priv(sub);
    const body = (): boolean => {
      LOG.push(`I${w[st + DrvL.id]}`);
      w[st + DrvL.calls]++;
      w[st + DrvL.lastEvent] = range.event;
      w[st + DrvL.lastSeq] = cur_seq;
      mmu_interval_set_seq(sub, cur_seq);
      mutex_unlock(drvMutex(st));
      if (w[st + DrvL.reenter] && REENTER) {
        const r = REENTER(sub);
        w[st + DrvL.reenterRet] = typeof r === 'number' ? r : 1;
      }
      return true;
    };
    const fail = w[st + DrvL.fail];
    if (fail === 2) {
      LOG.push(`I${w[st + DrvL.id]}!`);
      return false;
    }
    if (!mmu_notifier_range_blockable(range)) {
      if (fail === 1 || !mutex_trylock(drvMutex(st))) {
        LOG.push(`I${w[st + DrvL.id]}!`);
        return false;
      }
      return body();
    }
    const p = mutex_lock(drvMutex(st));
    return p ? p.then(body) : body();
  },
});

function hlistStart(sub: number, range: MmuNotifierRange): number {
  const w = w32();
  const st = mmu_notifier_priv(sub);
  LOG.push(`S${w[st + DrvL.id]}`);
  w[st + DrvL.calls]++;
  const fail = w[st + DrvL.fail];
  if (fail === 2 || (fail === 1 && !mmu_notifier_range_blockable(range))) return -EAGAIN;
  w[st + DrvL.counter]++;
  return 0;
}

function hlistEnd(sub: number): void {
  const w = w32();
  const st = mmu_notifier_priv(sub);
  LOG.push(`E${w[st + DrvL.id]}`);
  w[st + DrvL.counter]--;
}

/** A: counts invalidations (KVM-style), has an end, never fails unless told to */
const countOps = defineNotifierOps('test-count', {
  invalidate_range_start: hlistStart,
  invalidate_range_end: hlistEnd,
  release(sub) {
    LOG.push(`R${w32()[mmu_notifier_priv(sub) + DrvL.id]}`);
  },
});
/** B: may fail, and (correctly) has no end */
const failOps = defineNotifierOps('test-fail', { invalidate_range_start: hlistStart });
/** B with an end: a failing start that also has an end (the WARN case) */
const failEndOps = defineNotifierOps('test-fail-end', { invalidate_range_start: hlistStart, invalidate_range_end: hlistEnd });
/** takes its mutex in start and end, even when the range is not blockable */
const sleepyOps = defineNotifierOps('test-sleepy', {
  invalidate_range_start(sub) {
    const m = drvMutex(mmu_notifier_priv(sub));
    const p = mutex_lock(m);
    if (p) return p.then(() => (mutex_unlock(m), 0));
    mutex_unlock(m);
    return 0;
  },
  invalidate_range_end(sub) {
    const m = drvMutex(mmu_notifier_priv(sub));
    const p = mutex_lock(m);
    if (p) return p.then(() => mutex_unlock(m));
    mutex_unlock(m);
  },
});
/** an async start: always returns a Promise */
const asyncOps = defineNotifierOps('test-async', {
  async invalidate_range_start() {
    return 0;
  },
});
const youngOps = defineNotifierOps('test-young', {
  clear_flush_young: (sub) => w32()[mmu_notifier_priv(sub) + DrvL.id] & 3,
  test_young(sub) {
    LOG.push(`Y${w32()[mmu_notifier_priv(sub) + DrvL.id]}`);
    return w32()[mmu_notifier_priv(sub) + DrvL.id] === 2 ? 1 : 0;
  },
});
const tlbAndStartOps = defineNotifierOps('test-tlb-and-start', { arch_invalidate_secondary_tlbs() {}, invalidate_range_start: () => 0 });
const getOps = defineNotifierOps('test-get', {
  alloc_notifier() {
    const k = current.k;
    const sub = k.kmalloc.kzalloc(MnL.$size);
    LOG.push('alloc');
    return sub === 0 ? -12 : sub;
  },
  free_notifier(sub) {
    LOG.push('free');
    current.k.kmalloc.kfree(sub);
  },
});

// ---- harness -------------------------------------------------------------------------------

interface World {
  k: Kernel;
  mm: number;
}

function world(cfg: BootConfig = {}): World {
  LOG = [];
  REENTER = null;
  const k = bootKernel({ ...CFG, ...cfg });
  const mm = mm_alloc();
  if (mm === 0) throw new Error('mm_alloc failed');
  return { k, mm };
}

/** driver state with id `id`; its mutex is named after it */
function drv(k: Kernel, id: number, fail = 0): number {
  const st = k.kmalloc.kzalloc(DrvL.$size);
  mutex_init(k, st + DrvL.lock, `drv${id}->lock`, '&drv->lock');
  k.arena.i32[st + DrvL.id] = id;
  k.arena.i32[st + DrvL.fail] = fail;
  return st;
}

function isub(k: Kernel): number {
  return k.kmalloc.kzalloc(MinL.$size);
}

function hsub(k: Kernel, ops: Parameters<typeof mmu_notifier_init>[1], st: number): number {
  const sub = k.kmalloc.kzalloc(MnL.$size);
  expect(mmu_notifier_init(sub, ops, st)).toBe(0);
  return sub;
}

async function run(k: Kernel, opts: Partial<SimOptions>, tasks: Record<string, () => unknown>): Promise<{ r: RunResult; log: KlogRecord[] }> {
  const s = new SimScheduler(k, { seed: 1, stallMs: 5000, maxTimeNs: 10e9, ...opts });
  for (const [name, fn] of Object.entries(tasks)) s.spawn({ name, fn });
  const r = await s.run();
  return { r, log: k.klog.read() };
}

const ofKind = (log: KlogRecord[], kind: string): KlogRecord[] => log.filter((x) => x.kind === kind);
const dump = (log: KlogRecord[]): string => log.map((x) => `[${x.kind}] ${x.text}`).join('\n---\n');
const now = (): number => current.k.sched.now();
const sleep = (ns: number): Promise<void> | undefined => current.k.sched.sleep(ns);
const range = (mm: number, start: number, end: number, event: 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 = MMU_NOTIFY_UNMAP): MmuNotifierRange =>
  mmu_notifier_range_init(new MmuNotifierRange(), event, 0, mm, start, end);
const state = (mm: number): SubscriptionsState => mmu_notifier_subscriptions_state(mm)!;

function expectClean(r: RunResult, log: KlogRecord[]): void {
  expect(r.failed, JSON.stringify(r.failed)).toEqual([]);
  expect(r.status, r.report ?? '').toBe('done');
  expect(log, dump(log)).toEqual([]);
}

function expectTreeSound(k: Kernel, mm: number): void {
  const subs = k.arena.i32[mm + MmL.notifier_subscriptions];
  expect(interval_tree_check(k.arena, subs + SubsL.itree)).toEqual([]);
}

/** insert an interval subscription for driver `st` over [start, start + len) */
async function insert(mm: number, sub: number, start: number, len: number, st: number): Promise<void> {
  expect(await mmu_interval_notifier_insert(sub, mm, start, len, recOps, st)).toBe(0);
}

// ---- the interval tree ---------------------------------------------------------------------------

describe('interval tree (struct interval_tree_node in the arena)', () => {
  it('stays a balanced, correctly augmented tree and answers overlap queries exactly as brute force, in start order', () => {
    const COUNT = 400;
    const plan = new ArenaPlan();
    plan.region('itree', 2 + COUNT * ITNodeL.$size); // the root word, then the nodes
    const a = Arena.create(plan.layout());
    const root = a.region('itree');
    const node = (i: number): number => root + 2 + i * ITNodeL.$size;
    let s = 12345;
    const rnd = (n: number): number => {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>> 0) % n;
    };
    const inTree = new Set<number>();
    const nodesAt = (): number[] => interval_tree_nodes(a, root);
    for (let step = 0; step < 6000; step++) {
      const i = rnd(COUNT);
      if (inTree.has(i)) {
        interval_tree_remove(a, root, node(i));
        inTree.delete(i);
      } else {
        const st = rnd(500) * PAGE_SIZE;
        interval_tree_node_init(a, node(i), st, st + rnd(40) * PAGE_SIZE + PAGE_SIZE - 1);
        interval_tree_insert(a, root, node(i));
        inTree.add(i);
      }
      if (step % 250 === 0) expect(interval_tree_check(a, root)).toEqual([]);
      if (step % 20 === 0) {
        const qs = rnd(560) * PAGE_SIZE;
        const ql = qs + rnd(64) * PAGE_SIZE;
        const got: number[] = [];
        for (let x = interval_tree_iter_first(a, root, qs, ql); x !== 0; x = interval_tree_iter_next(a, x, qs, ql)) got.push(x);
        expect(got).toEqual(nodesAt().filter((x) => it_start(a, x) <= ql && it_last(a, x) >= qs));
      }
    }
    const all = nodesAt();
    expect(all).toHaveLength(inTree.size);
    for (let j = 1; j < all.length; j++) expect(it_start(a, all[j])).toBeGreaterThanOrEqual(it_start(a, all[j - 1]));
  });
});

// ---- §1.3/§1.4: the range ---------------------------------------------------------------------

describe('§1.3, §1.4: struct mmu_notifier_range', () => {
  it('has the exact event values and the blockable flag helper', () => {
    expect([MMU_NOTIFY_UNMAP, MMU_NOTIFY_CLEAR, MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_PROTECTION_PAGE, MMU_NOTIFY_SOFT_DIRTY, MMU_NOTIFY_RELEASE, MMU_NOTIFY_MIGRATE, MMU_NOTIFY_EXCLUSIVE]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const { mm } = world();
    const r = mmu_notifier_range_init_owner(new MmuNotifierRange(), MMU_NOTIFY_MIGRATE, 0, mm, 0, PAGE_SIZE, 77);
    expect([r.event, r.owner, r.start, r.end, mmu_notifier_range_blockable(r)]).toEqual([MMU_NOTIFY_MIGRATE, 77, 0, PAGE_SIZE, false]);
  });

  it('start sets BLOCKABLE, start_nonblock clears it (only when the mm has notifiers)', async () => {
    for (const seed of SEEDS) {
      const { k, mm } = world();
      const st = drv(k, 1);
      const seen: boolean[] = [];
      const { r, log } = await run(k, { seed }, {
        t: async () => {
          await insert(mm, isub(k), 0, MB, st);
          REENTER = null;
          const a = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(a);
          seen.push(mmu_notifier_range_blockable(a));
          await mmu_notifier_invalidate_range_end(a);
          const b = range(mm, 0, PAGE_SIZE);
          b.flags = 1;
          expect(mmu_notifier_invalidate_range_start_nonblock(b)).toBe(0);
          seen.push(mmu_notifier_range_blockable(b));
          await mmu_notifier_invalidate_range_end(b);
        },
      });
      expectClean(r, log);
      expect(seen).toEqual([true, false]);
    }
  });
});

// ---- §2.2, §9 scenarios 9-13: the sequence protocol -------------------------------------------------

describe('§2.2 / scenario 9: read_begin mid-invalidation sleeps until the last end', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the reader wakes at the second (non-overlapping) end, not the first`, async () => {
      const { k, mm } = world();
      const st = drv(k, 1);
      const X = isub(k);
      const t: Record<string, number> = {};
      let seq = -1;
      let retry = true;
      await (async () => {
        const setup = await run(k, { seed }, { setup: () => insert(mm, X, 0, MB, st) });
        expectClean(setup.r, setup.log);
      })();
      const { r, log } = await run(k, { seed, strategy: seed === 3 ? 'pct' : 'random' }, {
        inv1: async () => {
          const rg = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          await sleep(2 * MS);
          t.end1 = now();
          await mmu_notifier_invalidate_range_end(rg);
        },
        inv2: async () => {
          await sleep(0.5 * MS);
          const rg = range(mm, 16 * MB, 16 * MB + PAGE_SIZE); // overlaps no subscription
          await mmu_notifier_invalidate_range_start(rg);
          await sleep(3 * MS);
          t.end2 = now();
          await mmu_notifier_invalidate_range_end(rg);
        },
        reader: async () => {
          await sleep(1 * MS);
          t.begin = now();
          seq = await mmu_interval_read_begin(X);
          t.woke = now();
          retry = mmu_interval_read_retry(X, seq);
        },
      });
      expectClean(r, log);
      expect(t.woke).toBeGreaterThan(t.end1);
      expect(t.woke).toBeGreaterThanOrEqual(t.end2);
      expect(seq & 1).toBe(1);
      expect(retry).toBe(false);
      expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0 });
    });
  }
});

describe('scenario 10: overlapping starts S1 S2 E1 E2', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the seq stays odd after E1; E2 makes it even, runs deferred work and wakes waiters`, async () => {
      const { k, mm } = world();
      const st = drv(k, 1);
      const st2 = drv(k, 2);
      const X = isub(k);
      const Y = isub(k);
      const t: Record<string, number> = {};
      const seen: Record<string, unknown> = {};
      const { r, log } = await run(k, { seed }, {
        main: async () => {
          await insert(mm, X, 0, MB, st);
          const r1 = range(mm, 0, PAGE_SIZE);
          const r2 = range(mm, PAGE_SIZE, 2 * PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(r1); // S1
          await mmu_notifier_invalidate_range_start(r2); // S2
          seen.afterS2 = { ...state(mm) };
          await sleep(2 * MS);
          await mmu_notifier_invalidate_range_end(r1); // E1
          seen.afterE1 = { ...state(mm), woke: t.woke };
          await sleep(1 * MS);
          t.e2 = now();
          await mmu_notifier_invalidate_range_end(r2); // E2
          seen.afterE2 = { ...state(mm) };
        },
        inserter: async () => {
          await sleep(0.5 * MS);
          await insert(mm, Y, 32 * MB, PAGE_SIZE, st2);
          seen.yState = k.arena.i32[Y + MinL.state];
        },
        waiter: async () => {
          await sleep(0.5 * MS);
          await mmu_interval_read_begin(X);
          t.woke = now();
        },
      });
      expectClean(r, log);
      expect(seen.afterS2).toMatchObject({ invalidate_seq: 3, active_invalidate_ranges: 2 });
      expect(seen.yState).toBe(MIN_DEFERRED_INSERT);
      expect(seen.afterE1).toMatchObject({ invalidate_seq: 3, active_invalidate_ranges: 1, deferred: [Y], woke: undefined });
      expect(seen.afterE2).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, deferred: [], itree: [X, Y] });
      expect(t.woke).toBeGreaterThanOrEqual(t.e2);
      expect(k.arena.i32[Y + MinL.state]).toBe(MIN_IN_TREE);
      expect(LOG).toEqual(['I1', 'I1']);
      expectTreeSound(k, mm);
    });
  }
});

describe('scenario 11: insert while the seq is odd', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: deferred, no callback for the in-flight range, in the tree at the final end, read_begin blocks until then`, async () => {
      const { k, mm } = world();
      const X = isub(k);
      const Y = isub(k);
      const stY = drv(k, 2);
      const t: Record<string, number> = {};
      const seen: Record<string, unknown> = {};
      const { r, log } = await run(k, { seed }, {
        inv: async () => {
          await insert(mm, X, 0, MB, drv(k, 1));
          const rg = range(mm, 0, 2 * PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          await sleep(2 * MS);
          t.end = now();
          await mmu_notifier_invalidate_range_end(rg);
          // a later invalidation of the same range reaches Y
          const rg2 = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg2);
          await mmu_notifier_invalidate_range_end(rg2);
        },
        ins: async () => {
          await sleep(0.5 * MS);
          await insert(mm, Y, 0, PAGE_SIZE, stY); // overlaps the in-flight range
          seen.during = { ...state(mm), y: k.arena.i32[Y + MinL.state] };
          await mmu_interval_read_begin(Y);
          t.yBegin = now();
          seen.callsAtBegin = k.arena.i32[stY + DrvL.calls];
        },
      });
      expectClean(r, log);
      expect(seen.during).toMatchObject({ invalidate_seq: 3, itree: [X], deferred: [Y], y: MIN_DEFERRED_INSERT });
      expect(t.yBegin).toBeGreaterThanOrEqual(t.end);
      expect(seen.callsAtBegin).toBe(0);
      expect(LOG).toEqual(['I1', 'I1', 'I2']);
      expect(state(mm).itree).toEqual([X, Y]);
      expectTreeSound(k, mm);
    });
  }
});

describe('scenario 12: insert while even with ranges active', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: the seq is forced odd, the node is inserted now, read_begin blocks until every active range ends`, async () => {
      const { k, mm } = world();
      const X = isub(k);
      const Y = isub(k);
      const t: Record<string, number> = {};
      const seen: Record<string, unknown> = {};
      const { r, log } = await run(k, { seed }, {
        inv: async () => {
          await insert(mm, X, 0, MB, drv(k, 1));
          const rg = range(mm, 64 * MB, 64 * MB + PAGE_SIZE); // overlaps nothing: seq stays even
          await mmu_notifier_invalidate_range_start(rg);
          seen.before = { ...state(mm) };
          await sleep(2 * MS);
          t.end = now();
          await mmu_notifier_invalidate_range_end(rg);
        },
        ins: async () => {
          await sleep(0.5 * MS);
          await insert(mm, Y, 0, PAGE_SIZE, drv(k, 2));
          seen.after = { ...state(mm), y: k.arena.i32[Y + MinL.state] };
          await mmu_interval_read_begin(Y);
          t.yBegin = now();
        },
      });
      expectClean(r, log);
      expect(seen.before).toMatchObject({ invalidate_seq: 2, active_invalidate_ranges: 1 });
      expect(seen.after).toMatchObject({ invalidate_seq: 3, itree: [X, Y], deferred: [], y: MIN_IN_TREE });
      expect(t.yBegin).toBeGreaterThanOrEqual(t.end);
      expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0 });
      expect(LOG).toEqual([]); // the in-flight range overlapped nobody
    });
  }
});

describe('scenario 13: remove mid-invalidation', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: blocks until the final end; a still-deferred insert is just unlinked; no callbacks after return`, async () => {
      const { k, mm } = world();
      const stX = drv(k, 1);
      const X = isub(k);
      const Y = isub(k);
      const t: Record<string, number> = {};
      const seen: Record<string, unknown> = {};
      const { r, log } = await run(k, { seed }, {
        inv: async () => {
          await insert(mm, X, 0, MB, stX);
          const rg = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          await sleep(2 * MS);
          t.end = now();
          await mmu_notifier_invalidate_range_end(rg);
        },
        remover: async () => {
          await sleep(0.5 * MS);
          const ret = await mmu_interval_notifier_remove(X);
          t.removed = now();
          seen.ret = ret;
          seen.callsAtReturn = k.arena.i32[stX + DrvL.calls];
        },
        deferredThenRemoved: async () => {
          await sleep(0.3 * MS);
          await insert(mm, Y, 0, PAGE_SIZE, drv(k, 2));
          seen.y = k.arena.i32[Y + MinL.state];
          const ret = mmu_interval_notifier_remove(Y); // no wait: a plain number
          seen.yRet = ret;
          seen.yAfter = { state: k.arena.i32[Y + MinL.state], deferred: state(mm).deferred.includes(Y) };
        },
        later: async () => {
          await sleep(4 * MS);
          const rg = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          await mmu_notifier_invalidate_range_end(rg);
        },
      });
      expectClean(r, log);
      expect(seen.ret).toBe(0);
      expect(t.removed).toBeGreaterThanOrEqual(t.end);
      expect(seen.y).toBe(MIN_DEFERRED_INSERT);
      expect(seen.yRet).toBe(0);
      expect(seen.yAfter).toEqual({ state: MIN_REMOVED, deferred: false });
      expect(k.arena.i32[stX + DrvL.calls]).toBe(seen.callsAtReturn);
      expect(LOG).toEqual(['I1']);
      expect(state(mm)).toMatchObject({ itree: [], deferred: [], invalidate_seq: 4 });
    });
  }
});

// ---- scenario 14: registration errors -------------------------------------------------------------

describe('scenario 14: register errors', () => {
  it('length 0 or start + length - 1 overflow -> -EOVERFLOW; the whole space is fine', async () => {
    const { k, mm } = world();
    const st = drv(k, 1);
    const rets: number[] = [];
    const { r, log } = await run(k, {}, {
      t: async () => {
        rets.push(await mmu_interval_notifier_insert(isub(k), mm, 0, 0, recOps, st));
        rets.push(await mmu_interval_notifier_insert(isub(k), mm, 2 ** 64 - PAGE_SIZE, 2 * PAGE_SIZE, recOps, st));
        rets.push(await mmu_interval_notifier_insert(isub(k), mm, PAGE_SIZE, ULONG_MAX, recOps, st));
        rets.push(await mmu_interval_notifier_insert(isub(k), mm, 1, ULONG_MAX, recOps, st)); // 1 + (2^64 - 2): exactly ULONG_MAX
        rets.push(await mmu_interval_notifier_insert(isub(k), mm, 0, 2 ** 64 - PAGE_SIZE, recOps, st)); // dmirror's [0, ULONG_MAX & PAGE_MASK)
      },
    });
    expectClean(r, log);
    expect(rets).toEqual([-EOVERFLOW, -EOVERFLOW, -EOVERFLOW, 0, 0]);
    expect(state(mm).itree).toHaveLength(2);
  });

  it('zero mm_users -> WARN and -EINVAL (interval insert); BUG record and -EINVAL (register)', async () => {
    const { k, mm } = world();
    const X = isub(k);
    const out: number[] = [];
    const { r, log } = await run(k, {}, {
      t: async () => {
        await insert(mm, X, 0, MB, drv(k, 1));
        mmgrab(mm); // keep the struct while the address space goes
        await mmput(mm); // mm_users 0: exit_mmap
        out.push(await mmu_interval_notifier_insert(isub(k), mm, 0, PAGE_SIZE, recOps, drv(k, 2)));
        out.push(await mmu_notifier_register(hsub(k, countOps, drv(k, 3)), mm));
        out.push(await mmu_interval_notifier_remove(X));
        mmdrop(mm);
      },
    });
    expect(r.status).toBe('done');
    expect(out).toEqual([-EINVAL, -EINVAL, 0]);
    const warns = ofKind(log, NK.warn);
    expect(warns).toHaveLength(1);
    expect(warns[0].text).toMatch(/__mmu_interval_notifier_insert: WARN_ON\(atomic_read\(&mm->mm_users\) <= 0\)/);
    expect(ofKind(log, NK.bug)[0].text).toMatch(/BUG_ON\(atomic_read\(&mm->mm_users\) <= 0\)/);
    expect(LOG).toEqual(['I1']); // exit's RELEASE reached X
    expect(log.length, dump(log)).toBe(2);
  });

  it('ops with both arch_invalidate_secondary_tlbs and start/end -> WARN_ON_ONCE and -EINVAL', async () => {
    const { k, mm } = world();
    const out: number[] = [];
    const { r, log } = await run(k, {}, {
      t: async () => {
        out.push(await mmu_notifier_register(hsub(k, tlbAndStartOps, 0), mm));
        out.push(await mmu_notifier_register(hsub(k, tlbAndStartOps, 0), mm));
      },
    });
    expect(r.status).toBe('done');
    expect(out).toEqual([-EINVAL, -EINVAL]);
    expect(ofKind(log, NK.warn)).toHaveLength(1);
  });
});

// ---- scenario 16: the A/B problem under both policies -----------------------------------------

describe('scenario 16 / §1.7: A/B hlist in a non-blockable start', () => {
  async function ab(policy: 'v4.19' | 'v5.12', bOps: typeof failOps, seed: number) {
    const { k, mm } = world({ notifierPolicy: policy });
    const stA = drv(k, 1);
    const stB = drv(k, 2, 1);
    let ret = 0;
    const res = await run(k, { seed }, {
      reaper: async () => {
        expect(await mmu_notifier_register(hsub(k, countOps, stA), mm)).toBe(0);
        expect(await mmu_notifier_register(hsub(k, bOps, stB), mm)).toBe(0);
        const rg = range(mm, 0, 4 * PAGE_SIZE);
        ret = mmu_notifier_invalidate_range_start_nonblock(rg);
        if (ret === 0) await mmu_notifier_invalidate_range_end(rg); // the OOM reaper: no end after an error
      },
    });
    return { k, ret, counterA: k.arena.i32[stA + DrvL.counter], ...res };
  }

  for (const seed of SEEDS) {
    it(`seed ${seed}: v4.19: every start runs, the caller skips every end, A's counter is stuck at 1`, async () => {
      const { ret, counterA, r, log } = await ab('v4.19', failOps, seed);
      expect(r.status).toBe('done');
      expect(ret).toBe(-EAGAIN);
      expect(LOG).toEqual(['S2', 'S1']); // newest first; A's start runs although B failed
      expect(counterA).toBe(1);
      expect(ofKind(log, NK.startFailed).map((x) => x.text)).toEqual(['test-fail.invalidate_range_start callback failed with -11 in non-blockable context.']);
      expect(ofKind(log, NK.warn)).toEqual([]); // 4.19 had no WARNs
      const unpaired = ofKind(log, NK.pairing);
      expect(unpaired).toHaveLength(1);
      expect(unpaired[0].text).toMatch(/unpaired start: test-count\.invalidate_range_start .* A\/B problem/);
    });

    it(`seed ${seed}: v5.12: the core calls A's end, the counter is back at 0, nothing is unpaired`, async () => {
      const { ret, counterA, r, log } = await ab('v5.12', failOps, seed);
      expect(r.status).toBe('done');
      expect(ret).toBe(-EAGAIN);
      expect(LOG).toEqual(['S2', 'S1', 'E1']);
      expect(counterA).toBe(0);
      expect(log.map((x) => x.kind)).toEqual([NK.startFailed]);
    });

    it(`seed ${seed}: v5.12: B having an end is a WARN, and its end after the failed start a pairing violation`, async () => {
      const { ret, counterA, r, log } = await ab('v5.12', failEndOps, seed);
      expect(r.status).toBe('done');
      expect(ret).toBe(-EAGAIN);
      expect(LOG).toEqual(['S2', 'S1', 'E2', 'E1']);
      expect(counterA).toBe(0);
      expect(ofKind(log, NK.warn).map((x) => x.text.split('\n')[0])).toEqual([expect.stringContaining('WARN_ON(ops->invalidate_range_end)')]);
      expect(ofKind(log, NK.pairing)[0].text).toMatch(/end without start: test-fail-end\.invalidate_range_end .* its invalidate_range_start failed/);
    });
  }
});

// ---- scenario 17: false / errors in blockable ranges ---------------------------------------------------

describe('scenario 17: failure in a blockable range', () => {
  it('an interval false is a WARN, treated as done: later nodes and the hlist still run', async () => {
    const { k, mm } = world();
    const { r, log } = await run(k, {}, {
      t: async () => {
        await insert(mm, isub(k), 0, PAGE_SIZE, drv(k, 1, 2)); // always false
        await insert(mm, isub(k), PAGE_SIZE, PAGE_SIZE, drv(k, 2));
        await mmu_notifier_register(hsub(k, countOps, drv(k, 3)), mm);
        const rg = range(mm, 0, 2 * PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(rg);
        await mmu_notifier_invalidate_range_end(rg);
      },
    });
    expect(r.status).toBe('done');
    expect(LOG).toEqual(['I1!', 'I2', 'S3', 'E3']);
    expect(ofKind(log, NK.warn)[0].text).toMatch(/mn_itree_invalidate: WARN_ON\(mmu_notifier_range_blockable\(range\)\)/);
    expect(ofKind(log, NK.context)[0].text).toMatch(/returned false for the blockable range/);
    expect(log).toHaveLength(2);
    expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, open_ranges: 0 });
  });

  it('an hlist start error: pr_info + WARN + a check-3 record, ignored by the void caller', async () => {
    const { k, mm } = world();
    const { r, log } = await run(k, {}, {
      t: async () => {
        await mmu_notifier_register(hsub(k, failOps, drv(k, 1, 2)), mm); // -EAGAIN even when blockable
        const rg = range(mm, 0, PAGE_SIZE);
        expect(mmu_notifier_invalidate_range_start(rg)).toBeUndefined();
        await mmu_notifier_invalidate_range_end(rg);
      },
    });
    expect(r.status).toBe('done');
    expect(log.map((x) => x.kind)).toEqual([NK.startFailed, NK.warn, NK.context]);
    expect(log[0].text).toBe('test-fail.invalidate_range_start callback failed with -11 in blockable context.');
    expect(log[1].text).toMatch(/WARN_ON\(mmu_notifier_range_blockable\(range\) \|\| _ret != -EAGAIN\)/);
  });

  it('v5.12 with a failing blockable start: the core has already run the ends, so the caller\'s end runs them twice (flagged)', async () => {
    const { k, mm } = world();
    const stA = drv(k, 1);
    const { r, log } = await run(k, {}, {
      t: async () => {
        await mmu_notifier_register(hsub(k, countOps, stA), mm);
        await mmu_notifier_register(hsub(k, failOps, drv(k, 2, 2)), mm);
        const rg = range(mm, 0, PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(rg);
        await mmu_notifier_invalidate_range_end(rg);
      },
    });
    expect(r.status).toBe('done');
    expect(LOG).toEqual(['S2', 'S1', 'E1', 'E1']);
    expect(k.arena.i32[stA + DrvL.counter]).toBe(-1);
    expect(ofKind(log, NK.pairing)[0].text).toMatch(/end without start: test-count\.invalidate_range_end/);
  });
});

// ---- scenario 18: sleeping in non-blockable callbacks -----------------------------------------------

describe('scenario 18: sleeping in a non-blockable start or end', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: mutex_lock in a non-blockable start and in its end -> might_sleep records (non_block: 1)`, async () => {
      const { k, mm } = world();
      const st = drv(k, 1);
      const { r, log } = await run(k, { seed }, {
        setup: async () => {
          await mmu_notifier_register(hsub(k, sleepyOps, st), mm);
        },
        reaper: async () => {
          await sleep(MS);
          const rg = range(mm, 0, PAGE_SIZE);
          expect(mmu_notifier_invalidate_range_start_nonblock(rg)).toBe(0);
          expect(mmu_notifier_invalidate_range_end(rg)).toBeUndefined();
        },
      });
      expect(r.failed).toEqual([]);
      const ms = ofKind(log, 'might_sleep');
      // one report per task, site and held lock: start and end are the same site here
      expect(ms.length).toBeGreaterThanOrEqual(1);
      expect(ms[0].text).toMatch(/sleeping function called from invalid context at mutex_lock/);
      expect(ms[0].text).toMatch(/non_block: 1/);
    });
  }

  it('the end alone (start blockable-clean, end non-blockable) is reported too', async () => {
    const { k, mm } = world();
    const st = drv(k, 1);
    const { log } = await run(k, {}, {
      t: async () => {
        await mmu_notifier_register(hsub(k, sleepyOps, st), mm);
        const rg = range(mm, 0, PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(rg);
        rg.flags = 0; // as if the start had been the non-blockable one
        mmu_notifier_invalidate_range_end(rg);
      },
    });
    expect(ofKind(log, 'might_sleep')).toHaveLength(1);
  });

  it('an interval callback that calls might_sleep() in a non-blockable range is reported', async () => {
    const sleepyInterval = defineIntervalNotifierOps('test-interval-sleepy', {
      invalidate() {
        might_sleep('test_interval_invalidate');
        return true;
      },
    });
    const { k, mm } = world();
    const { log } = await run(k, {}, {
      t: async () => {
        expect(await mmu_interval_notifier_insert(isub(k), mm, 0, MB, sleepyInterval)).toBe(0);
        const rg = range(mm, 0, PAGE_SIZE);
        expect(mmu_notifier_invalidate_range_start_nonblock(rg)).toBe(0);
        mmu_notifier_invalidate_range_end(rg);
      },
    });
    expect(ofKind(log, 'might_sleep')[0].text).toMatch(/test_interval_invalidate/);
  });

  it('a callback that returns a Promise in a non-blockable range is a check-3 record and counts as -EAGAIN', async () => {
    const { k, mm } = world();
    let ret = 0;
    const { log } = await run(k, {}, {
      t: async () => {
        await mmu_notifier_register(hsub(k, asyncOps, 0), mm);
        ret = mmu_notifier_invalidate_range_start_nonblock(range(mm, 0, PAGE_SIZE));
      },
    });
    expect(ret).toBe(-EAGAIN);
    expect(ofKind(log, NK.context)[0].text).toMatch(/test-async\.invalidate_range_start returned a Promise/);
  });
});

// ---- §2.3 / scenario 15 (notifier part): a non-blockable false -----------------------------------------

describe('§2.3 / scenario 15: a false in a non-blockable range', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: stops at the first false: no later interval or hlist notifier runs, the itree is closed, -EAGAIN`, async () => {
      const { k, mm } = world();
      const stA = drv(k, 3);
      let ret = 0;
      const { r, log } = await run(k, { seed }, {
        t: async () => {
          await insert(mm, isub(k), 0, PAGE_SIZE, drv(k, 1, 1)); // false when non-blockable
          await insert(mm, isub(k), PAGE_SIZE, PAGE_SIZE, drv(k, 2));
          await mmu_notifier_register(hsub(k, countOps, stA), mm);
          ret = mmu_notifier_invalidate_range_start_nonblock(range(mm, 0, 2 * PAGE_SIZE));
        },
      });
      expectClean(r, log);
      expect(ret).toBe(-EAGAIN);
      expect(LOG).toEqual(['I1!']);
      expect(k.arena.i32[stA + DrvL.counter]).toBe(0);
      expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, open_ranges: 0 });
    });
  }

  it('the driver lock held elsewhere makes the trylock fail the same way; released, the next attempt succeeds', async () => {
    const { k, mm } = world();
    const st = drv(k, 1);
    const rets: number[] = [];
    const { r, log } = await run(k, {}, {
      setup: () => insert(mm, isub(k), 0, MB, st),
      holder: async () => {
        await mutex_lock(drvMutex(st));
        await sleep(2 * MS);
        mutex_unlock(drvMutex(st));
      },
      reaper: async () => {
        await sleep(MS);
        for (let i = 0; i < 3; i++) {
          const rg = range(mm, 0, MB);
          const ret = mmu_notifier_invalidate_range_start_nonblock(rg);
          rets.push(ret);
          if (ret === 0) mmu_notifier_invalidate_range_end(rg);
          await sleep(MS);
        }
      },
    });
    expectClean(r, log);
    expect(rets).toEqual([-EAGAIN, 0, 0]);
  });
});

// ---- scenario 29: ordering --------------------------------------------------------------------------

describe('scenario 29: ordering', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: hlist A, B, C registered in that order are called C, B, A for start and end; interval notifiers first`, async () => {
      const { k, mm } = world();
      const { r, log } = await run(k, { seed }, {
        t: async () => {
          for (const id of [1, 2, 3]) await mmu_notifier_register(hsub(k, countOps, drv(k, id)), mm);
          await insert(mm, isub(k), 0, MB, drv(k, 9));
          await insert(mm, isub(k), 0, PAGE_SIZE, drv(k, 8)); // equal start: after 9 in tree order
          const rg = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          LOG.push('|');
          await mmu_notifier_invalidate_range_end(rg);
        },
      });
      expectClean(r, log);
      expect(LOG).toEqual(['I9', 'I8', 'S3', 'S2', 'S1', '|', 'E3', 'E2', 'E1']);
    });
  }
});

// ---- §8.1: the itree leak -----------------------------------------------------------------------------

describe('§8.1: an hlist failure after the itree succeeded leaves the itree raised', () => {
  for (const policy of ['v5.12', 'v4.19'] as const) {
    it(`${policy}: reproduced (seq odd, active 1, readers hang) and recorded as a violation naming §8.1`, async () => {
      const { k, mm } = world({ notifierPolicy: policy });
      const X = isub(k);
      let ret = 0;
      const seen: Record<string, unknown> = {};
      const { r, log } = await run(k, { seed: 2 }, {
        reaper: async () => {
          await insert(mm, X, 0, MB, drv(k, 1));
          await mmu_notifier_register(hsub(k, failOps, drv(k, 2, 1)), mm);
          ret = mmu_notifier_invalidate_range_start_nonblock(range(mm, 0, PAGE_SIZE));
          seen.after = { ...state(mm) };
        },
        reader: async () => {
          await sleep(MS);
          await mmu_interval_read_begin(X); // waits for an end that never comes
          seen.readerWoke = true;
        },
      });
      expect(ret).toBe(-EAGAIN);
      expect(seen.after).toMatchObject({ invalidate_seq: 3, active_invalidate_ranges: 1, open_ranges: 0 });
      const leak = ofKind(log, NK.itreeLeak);
      expect(leak).toHaveLength(1);
      expect(leak[0].text).toMatch(/§8\.1/);
      expect(r.status).toBe('deadlock');
      expect(r.report).toMatch(/reader\/\d+ blocked in waitqueue on subscriptions->wq/);
      expect(seen.readerWoke).toBeUndefined();
    });
  }
});

// ---- bad input ----------------------------------------------------------------------------------------

describe('bad input never hangs or damages the arena', () => {
  it('unaligned ranges are reported and run; reversed, empty, negative or past-ULONG_MAX ranges are refused', async () => {
    const { k, mm } = world();
    const rets: unknown[] = [];
    const { r, log } = await run(k, {}, {
      t: async () => {
        await insert(mm, isub(k), 0, MB, drv(k, 1));
        const un = range(mm, 100, PAGE_SIZE + 100);
        await mmu_notifier_invalidate_range_start(un);
        await mmu_notifier_invalidate_range_end(un);
        for (const [s, e] of [[2 * PAGE_SIZE, PAGE_SIZE], [PAGE_SIZE, PAGE_SIZE], [-PAGE_SIZE, PAGE_SIZE], [0, 2 ** 65], [0.5, PAGE_SIZE], [NaN, PAGE_SIZE]]) {
          const b = range(mm, s, e);
          rets.push(mmu_notifier_invalidate_range_start_nonblock(b));
          rets.push(mmu_notifier_invalidate_range_end(b)); // a no-op, no second record
          const c = range(mm, s, e);
          rets.push(mmu_notifier_invalidate_range_start(c));
          await mmu_notifier_invalidate_range_end(c);
        }
      },
    });
    expect(r.status).toBe('done');
    expect(LOG).toEqual(['I1']);
    expect(rets).toEqual(Array.from({ length: 6 }, () => [-EINVAL, undefined, undefined]).flat());
    expect(ofKind(log, NK.badRange)).toHaveLength(1 + 12);
    expect(log).toHaveLength(13);
    expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, open_ranges: 0 });
  });

  it('an mm without notifiers still checks the range and the pairing', async () => {
    const { k, mm } = world();
    const rets: unknown[] = [];
    const { r, log } = await run(k, {}, {
      t: async () => {
        const rg = range(mm, 0, PAGE_SIZE);
        rets.push(mmu_notifier_invalidate_range_start(rg), mmu_notifier_invalidate_range_end(rg));
        rets.push(mmu_notifier_invalidate_range_end(rg)); // twice
        rets.push(mmu_notifier_invalidate_range_start_nonblock(range(mm, PAGE_SIZE, 0))); // reversed
      },
    });
    expect(r.status).toBe('done');
    expect(rets).toEqual([undefined, undefined, undefined, -EINVAL]);
    expect(log.map((x) => x.kind)).toEqual([NK.pairing, NK.badRange]);
    expect(mmu_notifier_subscriptions_state(mm)).toBeNull();
  });

  it('end without start, a double end, and an end after a failed non-blockable start are pairing records that change nothing', async () => {
    const { k, mm } = world();
    const { r, log } = await run(k, {}, {
      t: async () => {
        await insert(mm, isub(k), 0, MB, drv(k, 1, 1)); // false when non-blockable
        await mmu_notifier_invalidate_range_end(range(mm, 0, PAGE_SIZE));
        const twice = range(mm, 0, PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(twice);
        await mmu_notifier_invalidate_range_end(twice);
        await mmu_notifier_invalidate_range_end(twice);
        const failed = range(mm, 0, PAGE_SIZE);
        expect(mmu_notifier_invalidate_range_start_nonblock(failed)).toBe(-EAGAIN);
        await mmu_notifier_invalidate_range_end(failed);
      },
    });
    expect(r.status).toBe('done');
    const p = ofKind(log, NK.pairing).map((x) => x.text);
    expect(p).toHaveLength(3);
    expect(p[0]).toMatch(/never started/);
    expect(p[1]).toMatch(/already ended/);
    expect(p[2]).toMatch(/non-blockable start failed/);
    expect(state(mm)).toMatchObject({ invalidate_seq: 6, active_invalidate_ranges: 0, open_ranges: 0 });
  });

  it('a range started and reused without its end is an unpaired start; so is one still open at mmdrop (check 7)', async () => {
    const { k, mm } = world();
    const seen: Record<string, unknown> = {};
    const { r, log } = await run(k, {}, {
      t: async () => {
        const h = hsub(k, failOps, drv(k, 1));
        await mmu_notifier_register(h, mm);
        const rg = range(mm, 0, PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(rg);
        mmu_notifier_range_init(rg, MMU_NOTIFY_UNMAP, 0, mm, 0, PAGE_SIZE); // reused, no end
        await mmu_notifier_invalidate_range_start(rg); // and this one is never ended
        seen.open = state(mm).open_ranges;
        await mmu_notifier_unregister(h, mm);
        await mmput(mm); // the last reference: the container is destroyed
      },
    });
    expect(r.status).toBe('done');
    expect(seen.open).toBe(1);
    expect(ofKind(log, NK.pairing).map((x) => x.text)).toEqual([
      expect.stringMatching(/being reused without its invalidate_range_end/),
      expect.stringMatching(/1 invalidation\(s\) started on mm@[0-9a-f]+ never called invalidate_range_end/),
    ]);
    expect(k.arena.i32[mm + MmL.notifier_subscriptions]).toBe(0);
  });

  it('double unregister and double remove are refused with records; the mm keeps its references', async () => {
    const { k, mm } = world();
    const rets: number[] = [];
    let countBefore = 0;
    const { r, log } = await run(k, {}, {
      t: async () => {
        const h = hsub(k, countOps, drv(k, 1));
        const X = isub(k);
        await mmu_notifier_register(h, mm);
        await insert(mm, X, 0, MB, drv(k, 2));
        countBefore = k.arena.i32[mm + MmL.mm_count];
        rets.push(await mmu_notifier_unregister(h, mm));
        rets.push(await mmu_notifier_unregister(h, mm));
        rets.push(await mmu_interval_notifier_remove(X));
        rets.push(await mmu_interval_notifier_remove(X));
        rets.push(await mmu_notifier_unregister(hsub(k, countOps, 0), mm)); // never registered
        expect(k.arena.i32[h + MnL.state]).toBe(MN_DEAD);
      },
    });
    expect(r.status).toBe('done');
    expect(rets).toEqual([0, -EINVAL, 0, -EINVAL, -EINVAL]);
    expect(k.arena.i32[mm + MmL.mm_count]).toBe(countBefore - 2);
    const m = ofKind(log, NK.misuse).map((x) => x.text);
    expect(m).toHaveLength(3);
    expect(m[0]).toMatch(/double unregister/);
    expect(m[1]).toMatch(/double remove/);
    expect(m[2]).toMatch(/never registered/);
    expect(LOG).toEqual(['R1']);
  });

  for (const seed of SEEDS) {
    it(`seed ${seed}: remove, read_begin and unregister from inside a callback are refused with records, never a hang`, async () => {
      const { k, mm } = world();
      const st = drv(k, 1);
      const X = isub(k);
      const h = hsub(k, countOps, drv(k, 2));
      const out: unknown[] = [];
      const { r, log } = await run(k, { seed }, {
        t: async () => {
          await insert(mm, X, 0, MB, st);
          await mmu_notifier_register(h, mm);
          k.arena.i32[st + DrvL.reenter] = 1;
          REENTER = (sub) => {
            const rm = mmu_interval_notifier_remove(sub);
            const seq = mmu_interval_read_begin(sub) as number;
            out.push(rm, seq & 1, mmu_interval_read_retry(sub, seq));
            void mmu_notifier_unregister(h, mm).then((v) => out.push(v));
            return rm;
          };
          const rg = range(mm, 0, PAGE_SIZE);
          await mmu_notifier_invalidate_range_start(rg);
          REENTER = null;
          await mmu_notifier_invalidate_range_end(rg);
          out.push(k.arena.i32[X + MinL.state]);
          out.push(await mmu_interval_notifier_remove(X)); // outside: fine
          out.push(await mmu_notifier_unregister(h, mm));
        },
      });
      expect(r.status, r.report ?? '').toBe('done');
      expect(r.failed).toEqual([]);
      expect(out).toEqual([-EDEADLK, 0, true, -EDEADLK, MIN_IN_TREE, 0, 0]);
      const m = ofKind(log, NK.misuse).map((x) => x.text);
      expect(m).toEqual([
        expect.stringMatching(/remove\(test-rec\) called from inside an invalidation/),
        expect.stringMatching(/read_begin\(test-rec\) called from inside an invalidation/),
        expect.stringMatching(/unregister called from inside an invalidation/),
      ]);
      // lockdep sees read_begin's might-lock of the map it already holds
      expect(ofKind(log, 'lockdep_recursive').length).toBeGreaterThanOrEqual(1);
      expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, itree: [], hlist: [] });
    });
  }

  it('ops unknown to this thread: a clear error, and the itree is not left raised', async () => {
    const { k, mm } = world();
    const X = isub(k);
    const { r } = await run(k, {}, {
      t: async () => {
        await insert(mm, X, 0, MB, drv(k, 1));
        k.arena.i32[X + MinL.ops] = k.strings.intern('ghost-driver'); // as if defined only in another worker
        await mmu_notifier_invalidate_range_start(range(mm, 0, PAGE_SIZE));
      },
    });
    expect(r.failed).toHaveLength(1);
    expect(r.failed[0].error).toMatch(/ops 'ghost-driver' not registered in this thread: import its module in every worker/);
    expect(state(mm)).toMatchObject({ invalidate_seq: 4, active_invalidate_ranges: 0, open_ranges: 0 });
  });

  it('ops not made by defineNotifierOps are rejected up front', () => {
    const { k, mm } = world();
    expect(() => mmu_notifier_init(k.kmalloc.kzalloc(MnL.$size), { invalidate_range_start: () => 0 }, 0)).toThrow(/defineNotifierOps/);
    expect(() => mmu_interval_notifier_insert(isub(k), mm, 0, PAGE_SIZE, { invalidate: () => true })).toThrow(/defineIntervalNotifierOps/);
  });
});

// ---- §6.3: lockdep priming --------------------------------------------------------------------------

describe('§6.3: the invalidate-start map orders driver locks', () => {
  for (const seed of SEEDS) {
    for (const order of ['invalidate-first', 'reader-first'] as const) {
      it(`seed ${seed}, ${order}: a mutex taken in a blockable callback and held across read_begin -> circular report`, async () => {
        const { k, mm } = world();
        const st = drv(k, 1);
        const X = isub(k);
        const { r, log } = await run(k, { seed }, {
          setup: () => insert(mm, X, 0, MB, st),
          invalidator: async () => {
            await sleep(order === 'invalidate-first' ? MS : 3 * MS);
            const rg = range(mm, 0, PAGE_SIZE);
            await mmu_notifier_invalidate_range_start(rg);
            await mmu_notifier_invalidate_range_end(rg);
          },
          faulter: async () => {
            await sleep(2 * MS);
            const m = drvMutex(st);
            await mutex_lock(m); // the driver lock its callback takes...
            const seq = await mmu_interval_read_begin(X); // ...held across read_begin
            mmu_interval_check_retry(X, seq);
            mutex_unlock(m);
          },
        });
        expect(r.status).toBe('done');
        const circ = ofKind(log, 'lockdep_circular');
        expect(circ, dump(log)).toHaveLength(1);
        expect(circ[0].text).toMatch(/mmu_notifier_invalidate_range_start/);
        expect(circ[0].text).toMatch(/&drv->lock/);
      });
    }
  }
});

// ---- §1.6: release, get/put, young -------------------------------------------------------------------------

describe('§1.6 / scenario 21: exit_mmap and the lifecycle', () => {
  it('the last mmput releases: RELEASE [0, ULONG_MAX] to interval subs (which stay), ->release to hlist subs (unlinked); later starts reach only interval subs; everything is freed at the end', async () => {
    const { k, mm } = world();
    const stX = drv(k, 1);
    const X = isub(k);
    const h = hsub(k, countOps, drv(k, 2));
    const seen: Record<string, unknown> = {};
    const usageBefore = k.kmalloc.usage();
    const { r, log } = await run(k, {}, {
      t: async () => {
        await insert(mm, X, 0, MB, stX);
        await mmu_notifier_register(h, mm);
        mmgrab(mm); // a driver's reference, as an fd that outlives the process
        await mmput(mm);
        seen.releaseEvent = k.arena.i32[stX + DrvL.lastEvent];
        seen.afterRelease = { ...state(mm) };
        const rg = range(mm, 0, PAGE_SIZE);
        await mmu_notifier_invalidate_range_start(rg);
        await mmu_notifier_invalidate_range_end(rg);
        expect(await mmu_notifier_unregister(h, mm)).toBe(0);
        expect(await mmu_interval_notifier_remove(X)).toBe(0);
        mmdrop(mm);
      },
    });
    expectClean(r, log);
    expect(seen.releaseEvent).toBe(MMU_NOTIFY_RELEASE);
    expect(seen.afterRelease).toMatchObject({ hlist: [], itree: [X], invalidate_seq: 4 });
    expect(LOG).toEqual(['I1', 'R2', 'I1']);
    expect(k.arena.i32[mm + MmL.mm_count]).toBe(0);
    // the mm, its container: freed (the test's own driver structs remain)
    expect(k.kmalloc.usage()['kmalloc-64']).toBe(usageBefore['kmalloc-64'] - 1);
  });

  it('get/put: one subscription per ops and mm; the last put frees it after a grace period (mmu_notifier_synchronize)', async () => {
    const { k, mm } = world();
    const got: number[] = [];
    let countMid = 0;
    const { r, log } = await run(k, {}, {
      t: async () => {
        got.push(await mmu_notifier_get(getOps, mm));
        got.push(await mmu_notifier_get(getOps, mm));
        countMid = k.arena.i32[mm + MmL.mm_count];
        mmu_notifier_put(got[0]);
        expect(state(mm).hlist).toEqual([got[0]]);
        mmu_notifier_put(got[0]);
        expect(state(mm).hlist).toEqual([]);
        expect(LOG).toEqual(['alloc']);
        await mmu_notifier_synchronize();
        mmu_notifier_put(got[0]); // a put too many
      },
    });
    expect(r.status).toBe('done');
    expect(got[0]).toBeGreaterThan(0);
    expect(got[1]).toBe(got[0]);
    expect(LOG).toEqual(['alloc', 'free']);
    expect(k.arena.i32[mm + MmL.mm_count]).toBe(countMid - 1);
    expect(ofKind(log, NK.misuse)).toHaveLength(1);
  });

  it('get: -EOVERFLOW when users is UINT_MAX', async () => {
    const { k, mm } = world();
    const got: number[] = [];
    await run(k, {}, {
      t: async () => {
        got.push(await mmu_notifier_get(getOps, mm));
        k.arena.i32[got[0] + MnL.users] = -1; // UINT_MAX
        got.push(await mmu_notifier_get(getOps, mm));
      },
    });
    expect(got[1]).toBe(-EOVERFLOW);
  });

  it('clear_flush_young ORs every result; test_young stops at the first non-zero (newest first)', async () => {
    const { k, mm } = world();
    const out: number[] = [];
    await run(k, {}, {
      t: async () => {
        for (const id of [1, 2, 3]) await mmu_notifier_register(hsub(k, youngOps, drv(k, id)), mm);
        out.push(mmu_notifier_clear_flush_young(mm, 0, PAGE_SIZE));
        out.push(mmu_notifier_test_young(mm, 0));
      },
    });
    expect(out).toEqual([3, 1]);
    expect(LOG).toEqual(['Y3', 'Y2']);
  });
});

// ---- stress: no lost invalidation under sim ---------------------------------------------------------------

/** The mirror of test/fixtures/notifier_tasks.ts: N pages at 4 MiB, CPU entries at version 1, subscribed. */
async function mirror(n: number): Promise<World & { st: number; sub: number; fx: typeof import('./fixtures/notifier_tasks.js') }> {
  const fx = await import('./fixtures/notifier_tasks.js');
  const { k, mm } = world();
  const w = k.arena.i32;
  const st = k.kmalloc.kzalloc(fx.MirrorL.$size);
  mutex_init(k, st + fx.MirrorL.lock, 'mirror->lock');
  w[st + fx.MirrorL.cpu] = k.kmalloc.kzalloc(n);
  w[st + fx.MirrorL.dev] = k.kmalloc.kzalloc(n);
  w[st + fx.MirrorL.npages] = n;
  for (let i = 0; i < n; i++) w[w[st + fx.MirrorL.cpu] + i] = 1;
  k.arena.f64[(st + fx.MirrorL.base) >> 1] = 4 * MB;
  const sub = isub(k);
  // from the boot context: nothing contends yet, so the insert completes without sleeping
  expect(mmu_interval_notifier_insert(sub, mm, 4 * MB, n * PAGE_SIZE, fx.mirrorOps, st)).toBe(0);
  return { k, mm, st, sub, fx };
}

/** No lost invalidation: every shadow entry is none or the current CPU entry, none was seen inside a window. */
function expectMirrorSound(m: Awaited<ReturnType<typeof mirror>>, n: number, installs: number): void {
  const { k, st, fx, mm } = m;
  const w = k.arena.i32;
  expect(w[st + fx.MirrorL.bad]).toBe(0);
  expect(w[st + fx.MirrorL.installs]).toBe(installs);
  const cpu = w[st + fx.MirrorL.cpu];
  const dev = w[st + fx.MirrorL.dev];
  for (let i = 0; i < n; i++) expect([0, w[cpu + i]]).toContain(w[dev + i]);
  expect(state(mm)).toMatchObject({ active_invalidate_ranges: 0, open_ranges: 0, deferred: [] });
  expect(state(mm).invalidate_seq & 1).toBe(0);
}

describe('stress (sim): invalidators and read_begin/read_retry loops lose no invalidation', () => {
  const MOD = new URL('./fixtures/notifier_tasks.ts', import.meta.url).href;
  const ITERS = 300;
  const N = 24;
  for (const [seed, strategy] of [[11, 'random'], [12, 'pct'], [13, 'random'], [14, 'pct']] as const) {
    it(`seed ${seed} (${strategy}): 3 invalidators (some non-blockable), 3 readers`, async () => {
      const m = await mirror(N);
      const { k, mm, st, sub, fx } = m;
      const w = k.arena.i32;
      const s = new SimScheduler(k, { seed, strategy, pctDepth: 3, pctSteps: 20000, stallMs: 5000 });
      for (let i = 0; i < 3; i++) {
        s.spawn({ name: `inv${i}`, module: MOD, fn: 'mirrorInvalidator', args: { mm, sub, st, iters: ITERS, seed: seed * 10 + i, nonblockEvery: i === 0 ? 3 : 0 } });
        s.spawn({ name: `dev${i}`, module: MOD, fn: 'mirrorReader', args: { mm, sub, st, iters: ITERS, seed: seed * 100 + i, nonblockEvery: 0 } });
      }
      const r = await s.run();
      const log = k.klog.read();
      expectClean(r, log);
      expectMirrorSound(m, N, 3 * ITERS);
      if (strategy === 'random') {
        expect(w[st + fx.MirrorL.retries]).toBeGreaterThan(0); // collisions happened
        expect(w[st + fx.MirrorL.eagain]).toBeGreaterThan(0); // the reaper's trylock lost sometimes
      }
    });
  }
});

describe('stress (threads): one worker per task over the same arena', () => {
  const MOD = fileURLToPath(new URL('./fixtures/notifier_tasks.ts', import.meta.url));
  const ITERS = 1500;
  const N = 16;
  it('2 invalidators (one also non-blockable) and 2 readers: no lost invalidation, no report', async () => {
    const m = await mirror(N);
    const { k, mm, st, sub, fx } = m;
    const runner = new ThreadsRunner(k, { watchdogMs: 3000, timeoutMs: 40_000 });
    for (let i = 0; i < 2; i++) {
      runner.spawn({ name: `inv${i}`, module: MOD, fn: 'mirrorInvalidator', args: { mm, sub, st, iters: ITERS, seed: 7 + i, nonblockEvery: i === 0 ? 4 : 0 } });
      runner.spawn({ name: `dev${i}`, module: MOD, fn: 'mirrorReader', args: { mm, sub, st, iters: ITERS, seed: 70 + i, nonblockEvery: 0 } });
    }
    const r = await runner.run();
    const log = k.klog.read();
    expectClean(r, log);
    expectMirrorSound(m, N, 2 * ITERS);
    expect(k.arena.i32[st + fx.MirrorL.invalidations]).toBeGreaterThan(0);
  }, 60_000);
});
