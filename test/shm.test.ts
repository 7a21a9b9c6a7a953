import { describe, expect, it } from 'vitest';
import { restoreKernel } from '../src/run/boot.js';
import { Prng } from '../src/sched/prng.js';
import { SimL } from '../src/sched/sim.js';
import { Arena, ArenaPlan } from '../src/shm/arena.js';
import { EV, EV_A, EV_TYPE, EV_WORDS, EventLog } from '../src/shm/events.js';
import { Klog } from '../src/shm/klog.js';
import { Kmalloc } from '../src/shm/kmalloc.js';
import { defineStruct } from '../src/shm/layout.js';
import { IndexPool } from '../src/shm/pool.js';
import { StringTable } from '../src/shm/strings.js';
import { mutex_lock, mutex_unlock } from '../src/sync/index.js';
import { boot, mkMutex, runSim } from './helpers.js';

function arenaWith(build: (p: ArenaPlan) => void): Arena {
  const p = new ArenaPlan();
  build(p);
  return Arena.create(p.layout());
}

describe('Execution model 1: struct layouts (defineStruct)', () => {
  it('lays fields out at consecutive word offsets and rounds the size up to even', () => {
    const L = defineStruct('thing', { a: 1, arr: 4, b: 1, c: 1 });
    expect([L.a, L.arr, L.b, L.c]).toEqual([0, 1, 5, 6]);
    expect(L.$size).toBe(8); // 7 words rounded up so Float64 views stay aligned
    expect(L.$name).toBe('thing');
    expect(L.$fields).toEqual({ a: 1, arr: 4, b: 1, c: 1 });
    const E = defineStruct('even', { x: 2, y: 2 });
    expect([E.x, E.y, E.$size]).toEqual([0, 2, 4]);
    expect(Object.isFrozen(L)).toBe(true);
  });

  it('rejects bad field sizes with an error naming the struct, the field and the size', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, Infinity]) {
      expect(() => defineStruct('s', { ok: 1, broken: bad })).toThrow(
        new RegExp(`defineStruct\\(s\\): field 'broken' needs a whole number of words >= 1, got ${String(bad)}`),
      );
    }
    expect(() => defineStruct('s', { $size: 1 })).toThrow(/field '\$size' may not start with '\$'/);
  });

  it('the task struct and the sim struct fit their declared fields', () => {
    expect(SimL.prng).toBe(0);
    expect(SimL.clock).toBe(4);
    expect(SimL.$size % 2).toBe(0);
  });
});

describe('Execution model 1: arena regions', () => {
  it('plans 8-byte aligned regions and refuses a region reserved twice', () => {
    const p = new ArenaPlan();
    const a = p.region('a', 3);
    const b = p.region('b', 5);
    expect(a % 2).toBe(0);
    expect(b % 2).toBe(0);
    expect(b).toBeGreaterThanOrEqual(a + 3);
    expect(() => p.region('a', 1)).toThrow(/region 'a' reserved twice/);
    expect(() => p.region('c', -1)).toThrow(/bad size/);
    const arena = Arena.create(p.layout());
    expect(arena.region('b')).toBe(b);
    expect(arena.regionWords('b')).toBe(5);
    expect(() => arena.region('nope')).toThrow(/no region 'nope'/);
  });

  it('attach checks the buffer matches the layout, restore checks the snapshot size', () => {
    const arena = arenaWith((p) => p.region('x', 10));
    const other = arenaWith((p) => p.region('x', 20));
    expect(() => Arena.attach(arena.sab, other.layout)).toThrow(/does not match the layout/);
    const view = Arena.attach(arena.sab, arena.layout);
    view.i32[view.region('x')] = 42;
    expect(arena.i32[arena.region('x')]).toBe(42); // same memory
    expect(() => Arena.restore(arena.snapshot(), other.layout)).toThrow(/snapshot is \d+ bytes, layout needs \d+/);
  });
});

describe('Execution model 1: IndexPool', () => {
  const make = (count: number, objWords = 4) => {
    const arena = arenaWith((p) => IndexPool.plan(p, 'p', objWords, count));
    IndexPool.init(arena, 'p', count);
    return { arena, pool: new IndexPool(arena, 'p', objWords) };
  };

  it('hands out every index 1..N once, then returns 0 when exhausted', () => {
    const { pool } = make(5);
    expect(pool.capacity).toBe(6);
    const got = [1, 2, 3, 4, 5].map(() => pool.alloc());
    expect(new Set(got).size).toBe(5);
    expect(got.every((i) => i >= 1 && i <= 5)).toBe(true);
    expect(pool.used).toBe(5);
    expect(pool.freeCount).toBe(0);
    expect(pool.alloc()).toBe(0);
    expect(pool.alloc()).toBe(0);
    pool.free(got[2]);
    expect(pool.freeCount).toBe(1);
    expect(pool.alloc()).toBe(got[2]);
    expect(pool.alloc()).toBe(0);
  });

  it('objects do not overlap each other or the free-list links', () => {
    const { arena, pool } = make(8, 3);
    const ids: number[] = [];
    for (let i; (i = pool.alloc()) !== 0; ) ids.push(i);
    for (const i of ids) arena.i32.fill(i, pool.at(i), pool.at(i) + 3);
    for (const i of ids) expect(Array.from(arena.i32.subarray(pool.at(i), pool.at(i) + 3))).toEqual([i, i, i]);
    for (const i of ids) pool.free(i); // the links survive the object writes
    expect(pool.freeCount).toBe(8);
    const again = new Set<number>();
    for (let i; (i = pool.alloc()) !== 0; ) again.add(i);
    expect(again).toEqual(new Set(ids));
  });

  it('a double free and a free of a bad index throw; the pool stays consistent', () => {
    const { pool } = make(3);
    const i = pool.alloc();
    pool.free(i);
    expect(() => pool.free(i)).toThrow(new RegExp(`pool p: double free of index ${i}`));
    expect(() => pool.free(0)).toThrow(/free of bad index 0/);
    expect(() => pool.free(4)).toThrow(/free of bad index 4/);
    expect(() => pool.free(-1)).toThrow(/bad index/);
    expect(pool.freeCount).toBe(3);
    const all = [pool.alloc(), pool.alloc(), pool.alloc()];
    expect(new Set(all).size).toBe(3);
    expect(pool.alloc()).toBe(0);
    // the raw lock is free again after the throwing paths: alloc/free still work
    pool.free(all[0]);
    expect(pool.inUse(all[0])).toBe(false);
    expect(pool.inUse(all[1])).toBe(true);
  });

  it('zeroes an object on alloc, even after it was used and freed', () => {
    const { arena, pool } = make(1, 6);
    const i = pool.alloc();
    expect(Array.from(arena.i32.subarray(pool.at(i), pool.at(i) + 6))).toEqual([0, 0, 0, 0, 0, 0]);
    arena.i32.fill(-7, pool.at(i), pool.at(i) + 6);
    pool.free(i);
    expect(pool.alloc()).toBe(i);
    expect(Array.from(arena.i32.subarray(pool.at(i), pool.at(i) + 6))).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

describe('Execution model 1: StringTable', () => {
  const make = (maxStrings = 8, bytes = 64) => {
    const arena = arenaWith((p) => StringTable.plan(p, maxStrings, bytes));
    StringTable.init(arena, maxStrings);
    return arena;
  };

  it('interns each distinct string once and reads it back', () => {
    const arena = make();
    const st = new StringTable(arena);
    const a = st.intern('alpha');
    const b = st.intern('beta');
    expect(a).not.toBe(b);
    expect(st.intern('alpha')).toBe(a);
    expect(st.intern('')).toBe(0);
    expect(st.get(a)).toBe('alpha');
    expect(st.get(b)).toBe('beta');
    expect(st.get(0)).toBe('');
    expect(st.intern('ünï')).toBe(3);
    expect(st.get(3)).toBe('ünï');
  });

  it('dedups through the arena, not a per-thread cache: a second view finds the same ids', () => {
    const arena = make();
    const st1 = new StringTable(arena);
    const a = st1.intern('shared-name');
    const st2 = new StringTable(Arena.attach(arena.sab, arena.layout));
    expect(st2.intern('shared-name')).toBe(a);
    expect(st2.intern('other')).toBe(a + 1);
    expect(st1.intern('other')).toBe(a + 1);
    expect(st1.get(a + 1)).toBe('other');
  });

  it('a full table says so', () => {
    const arena = make(2, 64);
    const st = new StringTable(arena);
    st.intern('a');
    st.intern('b');
    expect(() => st.intern('c')).toThrow(/string table full/);
    const small = new StringTable(make(8, 4));
    small.intern('abcd');
    expect(() => small.intern('e')).toThrow(/string table full/);
  });
});

describe('Execution model 1: Klog', () => {
  const make = (bytes: number) => {
    const arena = arenaWith((p) => Klog.plan(p, bytes));
    return new Klog(arena);
  };

  it('reads back what was written, in order, from any index', () => {
    const log = make(4096);
    expect(log.write('warn', 3, 1234, 'first')).toBe(0);
    const big = 7 * 4294967296 + 5; // time above 2^32 ns
    expect(log.write('lockdep_circular', 4, big, 'second ✓')).toBe(1);
    expect(log.count).toBe(2);
    expect(log.read()).toEqual([
      { index: 0, kind: 'warn', task: 3, timeNs: 1234, text: 'first' },
      { index: 1, kind: 'lockdep_circular', task: 4, timeNs: big, text: 'second ✓' },
    ]);
    expect(log.read(1).map((r) => r.text)).toEqual(['second ✓']);
  });

  it('when full, a write returns -1, counts a drop and leaves earlier records intact', () => {
    const log = make(128);
    let n = 0;
    while (log.write('k', 1, n, `record ${n}`) >= 0) n++;
    expect(n).toBeGreaterThan(0);
    expect(log.dropped).toBe(1);
    expect(log.write('k', 1, 0, 'again')).toBe(-1);
    expect(log.dropped).toBe(2);
    expect(log.count).toBe(n);
    expect(log.read().map((r) => r.text)).toEqual(Array.from({ length: n }, (_, i) => `record ${i}`));
  });
});

describe('Execution model 1: Kmalloc size classes', () => {
  const make = () => {
    const cfg = { 8: 4, 16: 2, 64: 1 };
    const arena = arenaWith((p) => Kmalloc.plan(p, cfg));
    Kmalloc.init(arena, cfg);
    return { arena, km: new Kmalloc(arena, cfg) };
  };

  it('serves each request from the smallest class that fits', () => {
    const { km } = make();
    km.kzalloc(1);
    km.kzalloc(8);
    km.kzalloc(9);
    km.kzalloc(64);
    expect(km.usage()).toEqual({ 'kmalloc-8': 2, 'kmalloc-16': 1, 'kmalloc-64': 1 });
    expect(() => km.kzalloc(65)).toThrow(/65 words is larger than the largest size class/);
  });

  it('returns 0 when a class is exhausted, and objects are zeroed, distinct and freeable', () => {
    const { arena, km } = make();
    const a = km.kzalloc(16);
    const b = km.kzalloc(10);
    expect(km.kzalloc(12)).toBe(0); // -ENOMEM: 16-word class is full
    expect(Math.abs(a - b)).toBeGreaterThanOrEqual(16);
    arena.i32.fill(9, a, a + 16);
    km.kfree(a);
    expect(km.usage()['kmalloc-16']).toBe(1);
    const c = km.kzalloc(16);
    expect(c).toBe(a);
    expect(Array.from(arena.i32.subarray(c, c + 16)).every((v) => v === 0)).toBe(true);
    expect(() => km.kfree(c + 1)).toThrow(/not a kmalloc object/);
    km.kfree(c);
    expect(() => km.kfree(c)).toThrow(/double free/);
  });
});

describe('Execution model 1: event log', () => {
  it('keeps the last `capacity` records while the hash covers every event', () => {
    const cap = 4;
    const mk = () => {
      const arena = arenaWith((p) => EventLog.plan(p, cap));
      EventLog.init(arena, cap, true);
      return new EventLog(arena);
    };
    const ev = mk();
    for (let i = 0; i < 10; i++) ev.emit(EV.USER, 1, i, 0, 0);
    expect(ev.count).toBe(10);
    const recs = ev.records();
    expect(recs.length).toBe(cap * EV_WORDS);
    expect([0, 1, 2, 3].map((i) => recs[i * EV_WORDS + EV_A])).toEqual([6, 7, 8, 9]);
    expect(recs[EV_TYPE]).toBe(EV.USER);
    // a log that differs only in an event that fell out of the ring still hashes differently
    const other = mk();
    for (let i = 0; i < 10; i++) other.emit(EV.USER, 1, i === 0 ? 99 : i, 0, 0);
    expect(other.records()).toEqual(recs);
    expect(other.hash).not.toBe(ev.hash);
    const off = mk();
    off.enabled = false;
    off.emit(EV.USER, 1, 1, 1, 1);
    expect(off.count).toBe(0);
  });
});

describe('Execution model 1: a snapshot is a byte copy', () => {
  it('restoreKernel(snapshot) gives the same bytes, the same allocation sequence and the same PRNG stream', async () => {
    const k = boot({ kmalloc: { 8: 64, 16: 32, 32: 16, 256: 4, 1024: 2 } });
    // put some state in it: a run (tasks, events, lockdep classes), kmalloc objects, strings
    const m = mkMutex(k, 'snap-lock');
    const shared = k.kmalloc.kzalloc(8);
    await runSim(k, { seed: 7 }, {
      a: async () => {
        for (let i = 0; i < 5; i++) {
          await mutex_lock(m);
          k.arena.i32[shared]++;
          await k.sched.point();
          mutex_unlock(m);
        }
      },
      b: async () => {
        await mutex_lock(m);
        k.arena.i32[shared] += 10;
        mutex_unlock(m);
      },
    });
    k.kmalloc.kfree(k.kmalloc.kzalloc(30));
    k.klog.write('note', 0, 5, 'before the snapshot');
    const snap = k.arena.snapshot();
    const r = restoreKernel(snap, k.arena.layout, k.config);

    expect(r.arena.sab).not.toBe(k.arena.sab);
    expect(Buffer.compare(Buffer.from(r.arena.u8), Buffer.from(k.arena.u8))).toBe(0);
    expect(r.klog.read()).toEqual(k.klog.read());
    expect(r.strings.get(r.arena.i32[m.at + 3])).toBe('snap-lock');
    expect(r.events.hash).toBe(k.events.hash);
    expect(r.lockdep.classCount).toBe(k.lockdep.classCount);
    expect(r.arena.i32[shared]).toBe(15); // 5 x 1 + 10

    // the same operations on both give the same results and the same bytes
    const ops = (x: typeof k) => {
      const out: number[] = [];
      for (const words of [1, 8, 9, 30, 200, 3, 1000]) out.push(x.kmalloc.kzalloc(words));
      x.kmalloc.kfree(out[1]);
      out.push(x.kmalloc.kzalloc(2), x.tasks.pool.alloc(), x.strings.intern('after'), x.lockdep.classFor('new-class'));
      return out;
    };
    const a = ops(k);
    const b = ops(r);
    expect(b).toEqual(a);
    expect(a.every((v) => v !== 0)).toBe(true);
    expect(Buffer.compare(Buffer.from(r.arena.u8), Buffer.from(k.arena.u8))).toBe(0);

    // the sim PRNG's state is in the arena region 'sim': both continue with the same stream
    const at = k.arena.region('sim') + SimL.prng;
    expect(Array.from(k.arena.i32.subarray(at, at + 4)).some((v) => v !== 0)).toBe(true);
    // ...and it is the scheduler's own stream: the seed-7 stream, advanced by the run's draws
    const refW = new Int32Array(4);
    const ref = new Prng(refW, 0);
    ref.seed(7);
    const state = Array.from(k.arena.i32.subarray(at, at + 4));
    let draws = 0;
    while (draws < 100_000 && Array.from(refW).join() !== state.join()) {
      ref.next();
      draws++;
    }
    expect(draws).toBeGreaterThan(0);
    expect(draws).toBeLessThan(100_000);
    const p1 = new Prng(k.arena.i32, at);
    const p2 = new Prng(r.arena.i32, r.arena.region('sim') + SimL.prng);
    const s1 = Array.from({ length: 64 }, () => p1.next());
    const s2 = Array.from({ length: 64 }, () => p2.next());
    expect(s2).toEqual(s1);
    expect(new Set(s1).size).toBeGreaterThan(60);

    // and they are independent copies
    r.arena.i32[shared] = 12345;
    expect(k.arena.i32[shared]).toBe(15);
  });
});
