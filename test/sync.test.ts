import { describe, expect, it } from 'vitest';
import type { Kernel } from '../src/sched/kernel.js';
import type { TaskFn } from '../src/sched/scheduler.js';
import type { SimScheduler } from '../src/sched/sim.js';
import { current } from '../src/sched/current.js';
import { EV, EV_TYPE, EV_WORDS } from '../src/shm/events.js';
import {
  complete,
  down_read,
  down_read_trylock,
  down_write,
  down_write_trylock,
  mutex_lock,
  mutex_owner,
  mutex_trylock,
  mutex_unlock,
  non_block_end,
  non_block_start,
  preempt_disable,
  preempt_enable,
  read_seqcount_begin,
  read_seqcount_retry,
  spin_is_locked,
  spin_lock,
  spin_trylock,
  spin_unlock,
  synchronize_srcu,
  try_wait_for_completion,
  up_read,
  up_write,
  wait_event,
  wait_for_completion,
  write_seqcount_begin,
  write_seqcount_end,
} from '../src/sync/index.js';
import { dump, kinds, mkCompletion, mkMutex, mkRwsem, mkSeq, mkSpin, mkSrcu, mkWq, ofKind, seeds, simProgram } from './helpers.js';

const sim = (k: Kernel) => k.sched as SimScheduler;

/**
 * Run `probe` synchronously inside a task and check it took no scheduling point and let no
 * other task run: the step count and the current task are unchanged, and the event log got
 * no switch, block or wake-up in between.
 */
function noSchedulingPoint<T>(k: Kernel, probe: () => T): T {
  const steps = sim(k).stepCount;
  const me = current;
  const events = k.events.count;
  const out = probe();
  expect(out).not.toBeInstanceOf(Promise);
  expect(sim(k).stepCount).toBe(steps);
  expect(current).toBe(me);
  const recs = k.events.records();
  for (let o = recs.length - (k.events.count - events) * EV_WORDS; o < recs.length; o += EV_WORDS) {
    expect([EV.SWITCH, EV.BLOCK, EV.WAKE, EV.CONTENDED]).not.toContain(recs[o + EV_TYPE]);
  }
  return out;
}

describe('Execution model 3: trylock never sleeps', () => {
  it('mutex_trylock / down_read_trylock / down_write_trylock on a lock another task holds return false at once', async () => {
    for (const seed of seeds(20)) {
      const seen: Record<string, unknown> = {};
      let otherRanDuringProbe = false;
      const { r, log } = await simProgram({ seed }, (k) => {
        const m = mkMutex(k, 'm');
        const wsem = mkRwsem(k, 'wsem');
        const rsem = mkRwsem(k, 'rsem');
        const held = mkCompletion(k, 'held');
        const done = mkCompletion(k, 'done');
        let probing = false;
        return {
          holder: async () => {
            await mutex_lock(m);
            await down_write(wsem);
            await down_read(rsem);
            complete(held);
            await wait_for_completion(done);
            up_read(rsem);
            up_write(wsem);
            mutex_unlock(m);
          },
          tryer: async () => {
            await wait_for_completion(held);
            probing = true;
            seen.mutex = noSchedulingPoint(k, () => mutex_trylock(m));
            seen.readOfWriteLocked = noSchedulingPoint(k, () => down_read_trylock(wsem));
            seen.writeOfWriteLocked = noSchedulingPoint(k, () => down_write_trylock(wsem));
            seen.writeOfReadLocked = noSchedulingPoint(k, () => down_write_trylock(rsem));
            probing = false;
            // a read trylock of a read-held rwsem succeeds, also without a scheduling point
            const steps = sim(k).stepCount;
            seen.readOfReadLocked = down_read_trylock(rsem);
            expect(sim(k).stepCount).toBe(steps);
            if (seen.readOfReadLocked) up_read(rsem);
            complete(done);
          },
          bystander: async () => {
            for (let i = 0; i < 20; i++) {
              if (probing) otherRanDuringProbe = true;
              await k.sched.point();
            }
          },
        };
      });
      expect(r.status, r.report ?? '').toBe('done');
      expect(seen).toEqual({ mutex: false, readOfWriteLocked: false, writeOfWriteLocked: false, writeOfReadLocked: false, readOfReadLocked: true });
      expect(otherRanDuringProbe).toBe(false);
      expect(log, dump(log)).toEqual([]);
    }
  });

  it('a successful trylock takes no scheduling point either, and is fine in atomic context', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const m = mkMutex(k, 'm');
      const s = mkRwsem(k, 's');
      const l = mkSpin(k, 'l');
      const c = mkCompletion(k, 'c');
      return {
        t: async () => {
          spin_lock(l); // atomic context: only non-sleeping calls are allowed
          expect(noSchedulingPoint(k, () => mutex_trylock(m))).toBe(true);
          expect(noSchedulingPoint(k, () => down_write_trylock(s))).toBe(true);
          expect(noSchedulingPoint(k, () => down_read_trylock(s))).toBe(false);
          expect(noSchedulingPoint(k, () => try_wait_for_completion(c))).toBe(false);
          up_write(s);
          spin_unlock(l);
          mutex_unlock(m);
          expect(noSchedulingPoint(k, () => down_read_trylock(s))).toBe(true);
          up_read(s);
          complete(c);
          expect(noSchedulingPoint(k, () => try_wait_for_completion(c))).toBe(true);
          expect(mutex_owner(m)).toBe(-1);
        },
        other: async () => {
          await k.sched.point();
        },
      };
    });
    expect(r.status).toBe('done');
    expect(r.failed).toEqual([]);
    expect(log, dump(log)).toEqual([]);
  });

  it('spin_trylock of a held spinlock returns false without a lockup report; spin_lock of it is a lockup, not a hang', async () => {
    const { k, r, log } = await simProgram({ seed: 1 }, (k) => {
      const l = mkSpin(k, 'recursive_spin');
      return {
        t: async () => {
          spin_lock(l);
          expect(noSchedulingPoint(k, () => spin_trylock(l))).toBe(false);
          expect(spin_is_locked(l)).toBe(true);
          spin_unlock(l);
          expect(spin_trylock(l)).toBe(true);
          spin_unlock(l);
          expect(kinds(k.klog.read())).toEqual([]);
          spin_lock(l);
          spin_lock(l); // AA on a spinlock: under sim the holder can never run again
        },
      };
    });
    expect(r.status).toBe('done');
    expect(r.failed.map((f) => f.name)).toEqual(['t']);
    expect(r.failed[0].error).toMatch(/spinlock lockup suspected/);
    const lockup = ofKind(log, 'spin_lockup');
    expect(lockup).toHaveLength(1);
    expect(lockup[0].text).toMatch(/recursive_spin@[0-9a-f]+ wanted by t\/1, owner t\/1/);
    expect(ofKind(log, 'lockdep_recursive')).toHaveLength(1);
    expect(k.tasks.get(1).name).toBe('t');
  });
});

/** A single task `t` doing `body` on a fresh kernel; returns the klog. */
async function oneTask(body: (k: Kernel) => TaskFn, seed = 1) {
  const out = await simProgram({ seed }, (k) => ({ t: body(k), idle: async () => { await k.sched.point(); } }));
  expect(out.r.status, out.r.report ?? '').toBe('done');
  expect(out.r.failed).toEqual([]);
  return out.log;
}

describe('The checks 3: a sleep from an invalid context is caught', () => {
  it('mutex_lock under spin_lock', async () => {
    const log = await oneTask((k) => {
      const l = mkSpin(k, 'outer_spin');
      const m = mkMutex(k, 'inner_mutex');
      return async () => {
        spin_lock(l);
        await mutex_lock(m);
        mutex_unlock(m);
        spin_unlock(l);
      };
    });
    expect(kinds(log)).toEqual(['might_sleep']);
    expect(log[0].text).toMatch(/BUG: sleeping function called from invalid context at mutex_lock/);
    expect(log[0].text).toMatch(/in_atomic\(\): 1, irqs_disabled\(\): 0, non_block: 0, pid: 1, name: t/);
    expect(log[0].text).toMatch(/#0: outer_spin@/);
    expect(log[0].task).toBe(1);
  });

  it('mutex_lock under preempt_disable', async () => {
    const log = await oneTask((k) => {
      const m = mkMutex(k, 'm');
      return async () => {
        preempt_disable();
        await mutex_lock(m);
        mutex_unlock(m);
        preempt_enable();
      };
    });
    expect(kinds(log)).toEqual(['might_sleep']);
    expect(log[0].text).toMatch(/invalid context at mutex_lock\nin_atomic\(\): 1/);
  });

  const nonBlockCases: [string, (k: Kernel) => () => Promise<void> | void][] = [
    ['mutex_lock', (k) => { const m = mkMutex(k, 'm'); return async () => { await mutex_lock(m); mutex_unlock(m); }; }],
    ['wait_event', (k) => { const wq = mkWq(k, 'wq'); return async () => { await wait_event(wq, () => true); }; }],
    ['wait_for_completion', (k) => { const c = mkCompletion(k, 'c'); return async () => { complete(c); await wait_for_completion(c); }; }],
    ['synchronize_srcu', (k) => { const s = mkSrcu(k, 'srcu'); return async () => { await synchronize_srcu(s); }; }],
    ['down_read', (k) => { const s = mkRwsem(k, 's'); return async () => { await down_read(s); up_read(s); }; }],
    ['down_write', (k) => { const s = mkRwsem(k, 's'); return async () => { await down_write(s); up_write(s); }; }],
  ];

  for (const [site, make] of nonBlockCases) {
    it(`${site} inside non_block_start() is reported (even when it would not have had to wait)`, async () => {
      const log = await oneTask((k) => {
        const op = make(k);
        return async () => {
          non_block_start();
          await op();
          non_block_end();
        };
      });
      const ms = ofKind(log, 'might_sleep');
      expect(ms.length, dump(log)).toBeGreaterThanOrEqual(1);
      expect(ms[0].text).toMatch(new RegExp(`invalid context at ${site}\\nin_atomic\\(\\): 0, irqs_disabled\\(\\): 0, non_block: 1`));
      expect(kinds(log).every((x) => x === 'might_sleep')).toBe(true);
    });

    it(`${site} in a valid context produces no record`, async () => {
      const log = await oneTask((k) => {
        const op = make(k);
        return async () => {
          // the context was invalid and is valid again
          non_block_start();
          non_block_end();
          preempt_disable();
          preempt_enable();
          await op();
        };
      });
      expect(log, dump(log)).toEqual([]);
    });
  }

  it("a sched.sleep under a spinlock is 'scheduling while atomic'", async () => {
    const log = await oneTask((k) => {
      const l = mkSpin(k, 'l');
      return async () => {
        spin_lock(l);
        await k.sched.sleep(1000);
        spin_unlock(l);
        await k.sched.sleep(1000); // fine once the lock is dropped
      };
    });
    expect(kinds(log)).toEqual(['scheduling_while_atomic']);
    expect(log[0].text).toMatch(/BUG: scheduling while atomic: t\/1\/0x00000001 non_block: 0/);
  });

  it('a contended mutex_lock under a spinlock is both might_sleep and scheduling while atomic', async () => {
    const { r, log } = await simProgram({ seed: 2 }, (k) => {
      const l = mkSpin(k, 'l');
      const m = mkMutex(k, 'm');
      const c = mkCompletion(k, 'c');
      return {
        holder: async () => {
          await mutex_lock(m);
          complete(c);
          await k.sched.sleep(1000);
          mutex_unlock(m);
        },
        victim: async () => {
          await wait_for_completion(c);
          spin_lock(l);
          await mutex_lock(m);
          mutex_unlock(m);
          spin_unlock(l);
        },
      };
    });
    expect(r.status).toBe('done');
    expect(kinds(log)).toEqual(['might_sleep', 'scheduling_while_atomic']);
    expect(log.every((x) => x.task === 2)).toBe(true);
  });

  it('preempt_enable / non_block_end without a matching start warn about the underflow', async () => {
    const log = await oneTask(() => async () => {
      preempt_enable();
      non_block_end();
    });
    expect(kinds(log)).toEqual(['warn', 'warn']);
    expect(log[0].text).toMatch(/preempt_count underflow in t\/1/);
    expect(log[1].text).toMatch(/non_block_count underflow in t\/1/);
  });
});

describe('The checks 3/4: unlock by a task that does not hold the lock', () => {
  it('mutex_unlock by a non-owner is reported, naming the unlocker and the owner', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const m = mkMutex(k, 'owned_mutex');
      const c = mkCompletion(k, 'c');
      const stolen = mkCompletion(k, 'stolen');
      return {
        owner: async () => {
          await mutex_lock(m);
          complete(c);
          await wait_for_completion(stolen);
          mutex_unlock(m); // the owner's own unlock still drops its lockdep entry
        },
        thief: async () => {
          await wait_for_completion(c);
          mutex_unlock(m);
          complete(stolen);
        },
      };
    });
    expect(r.status).toBe('done');
    const bad = ofKind(log, 'bad_unlock');
    expect(bad.length).toBeGreaterThanOrEqual(1);
    expect(bad[0].text).toMatch(/owned_mutex@[0-9a-f]+ unlocked by thief\/2, owner owner\/1/);
    expect(bad[0].task).toBe(2);
    // no false report against the owner, who did unlock what it took
    expect(ofKind(log, 'lock_held_at_exit'), dump(log)).toEqual([]);
  });

  it('spin_unlock of a spinlock nobody holds is reported', async () => {
    const log = await oneTask((k) => {
      const l = mkSpin(k, 'free_spin');
      return async () => {
        spin_unlock(l);
        preempt_disable(); // spin_unlock dropped the preempt count below zero: restore it
      };
    });
    expect(kinds(log)).toContain('bad_unlock');
    expect(ofKind(log, 'bad_unlock')[0].text).toMatch(/free_spin@[0-9a-f]+ unlocked by t\/1, owner none/);
  });

  it('up_read / up_write of an rwsem not held that way are reported', async () => {
    const log = await oneTask((k) => {
      const s = mkRwsem(k, 'sem');
      return async () => {
        up_read(s);
        await down_read(s);
        up_write(s);
        up_read(s);
      };
    });
    const bad = ofKind(log, 'bad_unlock');
    expect(bad).toHaveLength(2);
    expect(bad[0].text).toMatch(/up_read of sem@[0-9a-f]+ by t\/1, but it is not read-locked/);
    expect(bad[1].text).toMatch(/up_write of sem@[0-9a-f]+ by t\/1, but it does not hold it for write/);
  });
});

describe('Execution model 4 (sim): seqcount readers retry around a writer', () => {
  it(`a reader never returns a torn pair (${20} seeds)`, async () => {
    let retried = 0;
    for (const seed of seeds(20)) {
      const torn: string[] = [];
      const { r } = await simProgram({ seed }, (k) => {
        const sq = mkSeq(k, 'seq');
        const wl = mkMutex(k, 'writer_lock');
        let x = 0;
        let y = 0;
        const writer = async () => {
          for (let i = 1; i <= 20; i++) {
            await mutex_lock(wl);
            write_seqcount_begin(sq);
            x = i;
            await k.sched.point();
            y = i;
            write_seqcount_end(sq);
            mutex_unlock(wl);
          }
        };
        const reader = async () => {
          for (let i = 0; i < 30; i++) {
            let a: number;
            let b: number;
            let s: number;
            let tries = 0;
            do {
              s = read_seqcount_begin(sq);
              a = x;
              await k.sched.point();
              b = y;
              tries++;
            } while (read_seqcount_retry(sq, s));
            if (tries > 1) retried++;
            if (a !== b) torn.push(`${a}/${b}`);
          }
        };
        return { w0: writer, w1: writer, r0: reader, r1: reader };
      });
      expect(r.status).toBe('done');
      expect(torn).toEqual([]);
    }
    expect(retried).toBeGreaterThan(0);
  });
});
