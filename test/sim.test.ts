import { describe, expect, it } from 'vitest';
import type { Kernel } from '../src/sched/kernel.js';
import { current } from '../src/sched/current.js';
import { TASK_FAILED, TaskL } from '../src/sched/task.js';
import { EV, EV_TYPE, EV_WORDS } from '../src/shm/events.js';
import {
  complete,
  down_read,
  down_write,
  mutex_lock,
  mutex_unlock,
  spin_is_locked,
  spin_lock,
  spin_unlock,
  srcu_read_lock,
  srcu_read_unlock,
  synchronize_srcu,
  up_read,
  up_write,
  wait_event,
  wait_event_timeout,
  wait_for_completion,
  wake_up,
  type Spinlock,
} from '../src/sync/index.js';
import { dump, kinds, mkCompletion, mkMutex, mkRwsem, mkSpin, mkSrcu, mkWq, ofKind, seeds, simProgram } from './helpers.js';

const SEEDS = seeds(30);

function countEvents(k: Kernel, type: number): number {
  const recs = k.events.records();
  let n = 0;
  for (let o = 0; o < recs.length; o += EV_WORDS) if (recs[o + EV_TYPE] === type) n++;
  return n;
}

describe('Execution model 4 (sim): mutual exclusion and no lost wake-ups under contention', () => {
  it(`mutex: one holder at a time, no lost update, every waiter woken (${SEEDS.length} seeds)`, async () => {
    let contended = 0;
    for (const seed of SEEDS) {
      let inside = 0;
      let maxInside = 0;
      let counter = 0;
      const { k, r, log } = await simProgram({ seed }, (k) => {
        const m = mkMutex(k, 'm');
        const body = async () => {
          for (let i = 0; i < 40; i++) {
            await mutex_lock(m);
            maxInside = Math.max(maxInside, ++inside);
            const v = counter;
            await k.sched.point();
            counter = v + 1;
            inside--;
            mutex_unlock(m);
            await k.sched.point();
          }
        };
        return { t0: body, t1: body, t2: body, t3: body };
      });
      expect(r.status, `seed ${seed}: ${r.report}`).toBe('done');
      expect(maxInside).toBe(1);
      expect(counter).toBe(160);
      expect(log, dump(log)).toEqual([]);
      contended += countEvents(k, EV.CONTENDED);
    }
    expect(contended).toBeGreaterThan(SEEDS.length); // the lock really was fought over
  });

  it(`spinlock: critical sections never interleave and the preempt count comes back to 0 (${SEEDS.length} seeds)`, async () => {
    for (const seed of SEEDS) {
      let counter = 0;
      let inside = 0;
      let overlap = false;
      let lock: Spinlock | null = null;
      const preemptAtEnd: number[] = [];
      const { r, log } = await simProgram({ seed }, (k) => {
        const l = (lock = mkSpin(k, 'l'));
        const body = async () => {
          for (let i = 0; i < 30; i++) {
            spin_lock(l);
            if (inside++ !== 0) overlap = true;
            counter = counter + 1;
            inside--;
            spin_unlock(l);
            await k.sched.point();
          }
          preemptAtEnd.push(k.arena.i32[current.base + TaskL.preempt]);
        };
        return { a: body, b: body, c: body };
      });
      expect(r.status).toBe('done');
      expect(r.failed).toEqual([]);
      expect(log, dump(log)).toEqual([]);
      expect(overlap).toBe(false);
      expect(counter).toBe(90);
      expect(preemptAtEnd).toEqual([0, 0, 0]);
      expect(spin_is_locked(lock!)).toBe(false);
    }
  });

  it(`rwsem: a writer is alone, readers share, every task finishes (${SEEDS.length} seeds)`, async () => {
    let sawSharedRead = false;
    for (const seed of SEEDS) {
      let readers = 0;
      let writers = 0;
      let maxReaders = 0;
      let writes = 0;
      const bad: string[] = [];
      const { r, log } = await simProgram({ seed }, (k) => {
        const s = mkRwsem(k, 'sem');
        const reader = async () => {
          for (let i = 0; i < 25; i++) {
            await down_read(s);
            readers++;
            if (writers !== 0) bad.push(`reader with ${writers} writer(s)`);
            maxReaders = Math.max(maxReaders, readers);
            await k.sched.point();
            if (writers !== 0) bad.push(`writer entered under a reader`);
            readers--;
            up_read(s);
            await k.sched.point();
          }
        };
        const writer = async () => {
          for (let i = 0; i < 15; i++) {
            await down_write(s);
            writers++;
            if (writers !== 1 || readers !== 0) bad.push(`writer with ${writers - 1} writer(s), ${readers} reader(s)`);
            const v = writes;
            await k.sched.point();
            writes = v + 1;
            if (writers !== 1 || readers !== 0) bad.push(`someone entered under a writer`);
            writers--;
            up_write(s);
            await k.sched.point();
          }
        };
        return { r0: reader, r1: reader, r2: reader, w0: writer, w1: writer };
      });
      expect(r.status, `seed ${seed}: ${r.report}`).toBe('done');
      expect(bad).toEqual([]);
      expect(writes).toBe(30);
      expect(log, dump(log)).toEqual([]);
      if (maxReaders > 1) sawSharedRead = true;
    }
    expect(sawSharedRead).toBe(true);
  });

  it(`wait_event/wake_up ping-pong completes every round (${SEEDS.length} seeds)`, async () => {
    const ROUNDS = 60;
    for (const seed of SEEDS) {
      const trace: string[] = [];
      const { r, log } = await simProgram({ seed }, (k) => {
        const wq = mkWq(k, 'wq');
        let turn = 0;
        const player = (me: number) => async () => {
          for (let i = 0; i < ROUNDS; i++) {
            await wait_event(wq, () => turn === me);
            trace.push(`${me}`);
            await k.sched.point(); // let the other side test its condition in between
            turn = 1 - me;
            wake_up(wq);
          }
        };
        // a bystander on the same queue: woken too, must not steal anything
        const bystander = async () => {
          await wait_event(wq, () => trace.length >= ROUNDS);
        };
        return { ping: player(0), pong: player(1), bystander };
      });
      expect(r.status, `seed ${seed}: lost wake-up?\n${r.report}`).toBe('done');
      expect(trace.join('')).toBe('01'.repeat(ROUNDS));
      expect(log).toEqual([]);
    }
  });

  it(`completion ping-pong: each wait consumes exactly one complete() (${SEEDS.length} seeds)`, async () => {
    const ROUNDS = 60;
    for (const seed of SEEDS) {
      const trace: string[] = [];
      const { r } = await simProgram({ seed }, (k) => {
        const ping = mkCompletion(k, 'ping');
        const pong = mkCompletion(k, 'pong');
        return {
          a: async () => {
            for (let i = 0; i < ROUNDS; i++) {
              trace.push('a');
              complete(ping);
              await k.sched.point();
              await wait_for_completion(pong);
            }
          },
          b: async () => {
            for (let i = 0; i < ROUNDS; i++) {
              await wait_for_completion(ping);
              trace.push('b');
              await k.sched.point();
              complete(pong);
            }
          },
        };
      });
      expect(r.status, `seed ${seed}: ${r.report}`).toBe('done');
      expect(trace.join('')).toBe('ab'.repeat(ROUNDS));
    }
  });

  it('wait_event_timeout times out in virtual time when nobody wakes it, and returns early when woken', async () => {
    for (const seed of seeds(10)) {
      const got: Record<string, [number, number]> = {};
      const { r } = await simProgram({ seed }, (k) => {
        const wq = mkWq(k, 'wq');
        let flag = false;
        return {
          lonely: async () => {
            const t0 = k.sched.now();
            const left = await wait_event_timeout(wq, () => false, 2e6);
            got.lonely = [left, k.sched.now() - t0];
          },
          woken: async () => {
            const t0 = k.sched.now();
            const left = await wait_event_timeout(wq, () => flag, 10e6);
            got.woken = [left, k.sched.now() - t0];
          },
          waker: async () => {
            await k.sched.sleep(1e6);
            flag = true;
            wake_up(wq);
          },
        };
      });
      expect(r.status).toBe('done');
      expect(got.lonely[0]).toBe(0);
      expect(got.lonely[1]).toBeGreaterThanOrEqual(2e6);
      expect(got.lonely[1]).toBeLessThan(2.1e6);
      expect(got.woken[0]).toBeGreaterThan(8e6);
      expect(got.woken[1]).toBeGreaterThanOrEqual(1e6);
      expect(got.woken[1]).toBeLessThan(1.1e6);
    }
  });

  it(`SRCU: synchronize_srcu waits for a reader that entered before it, not for one that came later (${SEEDS.length} seeds)`, async () => {
    const MS = 1e6;
    for (const seed of SEEDS) {
      const t: Record<string, number> = {};
      const { r, log } = await simProgram({ seed }, (k) => {
        const ss = mkSrcu(k, 'ss');
        const entered = mkCompletion(k, 'entered');
        return {
          early: async () => {
            const idx = srcu_read_lock(ss);
            t.earlyIn = k.sched.now();
            complete(entered);
            await k.sched.sleep(5 * MS);
            t.earlyOut = k.sched.now();
            srcu_read_unlock(ss, idx);
          },
          syncer: async () => {
            await wait_for_completion(entered);
            t.syncStart = k.sched.now();
            await synchronize_srcu(ss);
            t.syncEnd = k.sched.now();
          },
          late: async () => {
            await k.sched.sleep(1 * MS); // the grace period is well under way by now
            const idx = srcu_read_lock(ss);
            t.lateIn = k.sched.now();
            await k.sched.sleep(100 * MS);
            srcu_read_unlock(ss, idx);
            t.lateOut = k.sched.now();
          },
        };
      });
      expect(r.status, `seed ${seed}: ${r.report}`).toBe('done');
      expect(log, dump(log)).toEqual([]);
      expect(t.syncStart).toBeLessThan(t.lateIn);
      expect(t.syncEnd).toBeGreaterThanOrEqual(t.earlyOut);
      expect(t.syncEnd, `seed ${seed}: synchronize_srcu waited for a reader that came after it`).toBeLessThan(t.lateOut);
      expect(t.syncEnd).toBeLessThan(6 * MS);
    }
  });

  it('SRCU: back-to-back grace periods each wait for the readers present when they start', async () => {
    const MS = 1e6;
    for (const seed of seeds(10)) {
      const t: Record<string, number> = {};
      const { r } = await simProgram({ seed }, (k) => {
        const ss = mkSrcu(k, 'ss');
        return {
          reader: async () => {
            await k.sched.sleep(1 * MS);
            const idx = srcu_read_lock(ss);
            await k.sched.sleep(10 * MS);
            t.readerOut = k.sched.now();
            srcu_read_unlock(ss, idx);
          },
          syncer: async () => {
            await synchronize_srcu(ss); // no reader yet: immediate
            t.first = k.sched.now();
            await k.sched.sleep(2 * MS);
            await synchronize_srcu(ss); // the reader is inside: wait for it
            t.second = k.sched.now();
          },
        };
      });
      expect(r.status).toBe('done');
      expect(t.first).toBeLessThan(1 * MS);
      expect(t.second).toBeGreaterThanOrEqual(t.readerOut);
    }
  });
});

/** A contended program with locks, wait queues, timers and randomness in every choice. */
function busyProgram(k: Kernel) {
  const m = mkMutex(k, 'm');
  const s = mkRwsem(k, 's');
  const wq = mkWq(k, 'wq');
  let produced = 0;
  const worker = (n: number) => async () => {
    for (let i = 0; i < 20; i++) {
      if ((i + n) % 3 === 0) {
        await down_write(s);
        await k.sched.point();
        up_write(s);
      } else {
        await down_read(s);
        await mutex_lock(m);
        produced++;
        wake_up(wq);
        await k.sched.point();
        mutex_unlock(m);
        up_read(s);
      }
      if (i % 7 === n) await k.sched.sleep(1000 * (n + 1));
    }
  };
  return {
    w0: worker(0),
    w1: worker(1),
    w2: worker(2),
    consumer: async () => {
      await wait_event(wq, () => produced >= 30);
    },
  };
}

describe('Execution model 4 (sim): the same seed gives the same run, event for event', () => {
  it('the same seed twice gives byte-identical event logs, arenas and hashes; different seeds differ', async () => {
    const hashes = new Map<number, number>();
    for (const seed of seeds(20)) {
      const a = await simProgram({ seed }, busyProgram);
      const b = await simProgram({ seed }, busyProgram);
      expect(a.r.status).toBe('done');
      expect(a.r.events).toBeGreaterThan(300);
      const ra = a.k.events.records();
      const rb = b.k.events.records();
      expect(a.k.events.count).toBeLessThanOrEqual(a.k.events.capacity); // the ring held the whole run
      expect(Buffer.compare(Buffer.from(ra.buffer), Buffer.from(rb.buffer))).toBe(0);
      expect(b.r.eventHash).toBe(a.r.eventHash);
      expect(b.r.steps).toBe(a.r.steps);
      expect(b.r.timeNs).toBe(a.r.timeNs);
      expect(Buffer.compare(Buffer.from(a.k.arena.u8), Buffer.from(b.k.arena.u8))).toBe(0);
      hashes.set(seed, a.r.eventHash);
    }
    expect(new Set(hashes.values()).size).toBe(hashes.size);
  });

  it('PCT runs are reproducible too, change points included', async () => {
    const len = (await simProgram({ seed: 1 }, busyProgram)).r.steps; // the program's length in steps
    for (const seed of seeds(10)) {
      const opts = { seed, strategy: 'pct' as const, pctDepth: 3, pctSteps: len };
      const a = await simProgram(opts, busyProgram);
      const b = await simProgram(opts, busyProgram);
      expect(a.r.status).toBe('done');
      expect(a.r.pctChangePoints.length).toBe(2);
      expect(b.r.pctChangePoints).toEqual(a.r.pctChangePoints);
      expect(b.r.eventHash).toBe(a.r.eventHash);
      expect(countEvents(a.k, EV.PCT_CHANGE)).toBeGreaterThan(0);
    }
  });
});

describe('Execution model 4 (sim): virtual time', () => {
  it('jumps to the next timer when nobody can run: a 5 s sleep takes milliseconds of wall time', async () => {
    const wall0 = performance.now();
    const woke: Record<string, number> = {};
    const { r } = await simProgram({ seed: 1 }, (k) => ({
      long: async () => {
        await k.sched.sleep(5e9);
        woke.long = k.sched.now();
      },
      short: async () => {
        await k.sched.sleep(1e9);
        woke.short = k.sched.now();
        await k.sched.sleep(1e9);
        woke.short2 = k.sched.now();
      },
    }));
    const wall = performance.now() - wall0;
    expect(r.status).toBe('done');
    expect(woke.short).toBeGreaterThanOrEqual(1e9);
    expect(woke.short).toBeLessThan(1e9 + 1e6);
    expect(woke.short2).toBeGreaterThanOrEqual(2e9);
    expect(woke.short2).toBeLessThan(2e9 + 1e6);
    expect(woke.long).toBeGreaterThanOrEqual(5e9);
    expect(woke.long).toBeLessThan(5e9 + 1e6);
    expect(r.timeNs).toBeGreaterThanOrEqual(5e9);
    expect(r.timeNs).toBeLessThan(5e9 + 1e6);
    expect(wall).toBeLessThan(1000);
  });

  it('charges nsPerPoint per scheduling point so busy loops see time pass', async () => {
    const { r } = await simProgram({ seed: 3, nsPerPoint: 1000 }, (k) => ({
      spin: async () => {
        for (let i = 0; i < 500; i++) await k.sched.point();
      },
    }));
    expect(r.steps).toBe(500);
    expect(r.timeNs).toBe(500 * 1000);
  });
});

describe('The checks 8: liveness bounds end a run with a report', () => {
  it("a livelock ends at maxSteps with status 'step-limit' and names who waits on whom", async () => {
    for (const seed of seeds(5)) {
      const { k, r, log } = await simProgram({ seed, maxSteps: 5000 }, (k) => {
        const m = mkMutex(k, 'livelock_mutex');
        const locked = mkCompletion(k, 'locked');
        let flag = false;
        return {
          spinner: async () => {
            await mutex_lock(m);
            complete(locked);
            while (!flag) await k.sched.point(); // waits for something only the waiter can do
            mutex_unlock(m);
          },
          waiter: async () => {
            await wait_for_completion(locked);
            await mutex_lock(m);
            flag = true;
            mutex_unlock(m);
          },
        };
      });
      expect(r.status).toBe('step-limit');
      expect(r.steps).toBe(5000);
      const report = r.report ?? '';
      expect(report).toMatch(/no end after 5000 scheduling steps/);
      expect(report).toMatch(/task waiter\/2 blocked in mutex on livelock_mutex@[0-9a-f]+, held by spinner\/1 \(runnable\)/);
      expect(ofKind(log, 'liveness').map((x) => x.text)).toEqual([report]);
      expect(k.events.count).toBeGreaterThan(0);
    }
  });

  it("a run that never ends in virtual time stops at maxTimeNs with status 'time-limit'", async () => {
    const wall0 = performance.now();
    const { r, log } = await simProgram({ seed: 1, maxTimeNs: 2e9 }, (k) => ({
      ticker: async () => {
        for (;;) await k.sched.sleep(10e6);
      },
    }));
    expect(r.status).toBe('time-limit');
    expect(r.timeNs).toBeLessThanOrEqual(2e9);
    expect(r.timeNs).toBeGreaterThan(1.9e9);
    expect(r.report).toMatch(/no end after 2 s of virtual time/);
    expect(ofKind(log, 'liveness')).toHaveLength(1);
    expect(performance.now() - wall0).toBeLessThan(2000);

    // a busy loop reaches the time bound through nsPerPoint
    const busy = await simProgram({ seed: 1, maxTimeNs: 1e6, nsPerPoint: 100 }, (k) => ({
      busy: async () => {
        for (;;) await k.sched.point();
      },
    }));
    expect(busy.r.status).toBe('time-limit');
    expect(busy.r.steps).toBe(10_000);
  });

  it("a task that awaits a promise the scheduler does not know ends the run as 'stalled'", async () => {
    const { r } = await simProgram({ seed: 1, stallMs: 100 }, () => ({
      foreign: async () => {
        await new Promise((res) => setTimeout(res, 5_000).unref());
      },
    }));
    expect(r.status).toBe('stalled');
    expect(r.report).toMatch(/foreign\/\d+ awaited something that is not the scheduler/);
  });
});

describe('Execution model 4 (sim): PCT finds a depth-2 ordering bug that random walk misses', () => {
  // B takes one step, then A must run all N of its steps with B never interleaving, before
  // B's second step observes the bug. A random walk gets that with probability ~2^-N per run;
  // PCT with depth 2 needs B to start on top and its one change point to land on B's 2nd
  // step: probability >= 1/(2 * steps) per run.
  const N = 20;
  const LEN = N + 2; // scheduling points in the whole program
  async function plantedBug(seed: number, strategy: 'pct' | 'random'): Promise<boolean> {
    let x = 0;
    let bug = false;
    const { r } = await simProgram(
      { seed, strategy, pctDepth: 2, pctSteps: LEN },
      (k) => ({
        A: async () => {
          for (let i = 0; i < N; i++) {
            x++;
            await k.sched.point();
          }
        },
        B: async () => {
          await k.sched.point();
          const x0 = x;
          await k.sched.point();
          if (x - x0 === N) bug = true;
        },
      }),
      { events: false },
    );
    expect(r.status).toBe('done');
    expect(r.steps).toBe(LEN);
    return bug;
  }

  it('PCT (depth 2, pctSteps = program length) finds it within 100 runs; random walk finds it in none of 1000 runs', async () => {
    const pctHits: number[] = [];
    for (const seed of seeds(100)) if (await plantedBug(seed, 'pct')) pctHits.push(seed);
    const randomHits: number[] = [];
    for (const seed of seeds(1000)) if (await plantedBug(seed, 'random')) randomHits.push(seed);
    // observed with these seeds: PCT 7 hits in seeds 1..100 (first at seed 8); random 0 in 1..1000
    expect(pctHits.length).toBeGreaterThanOrEqual(1);
    expect(pctHits[0]).toBeLessThanOrEqual(100);
    expect(randomHits).toEqual([]);
  });
});

describe('The checks 8: a real deadlock ends the run with a wait-for report instead of hanging', () => {
  it(`ABBA that really deadlocks: status 'deadlock', both tasks, their locks, the holders and the cycle (${20} seeds)`, async () => {
    for (const seed of seeds(20)) {
      const { k, r, log } = await simProgram({ seed }, (k) => {
        const a = mkMutex(k, 'lock_A');
        const b = mkMutex(k, 'lock_B');
        return {
          ab: async () => {
            await mutex_lock(a);
            await k.sched.sleep(1e6); // both first locks are taken before either second lock
            await mutex_lock(b);
            mutex_unlock(b);
            mutex_unlock(a);
          },
          ba: async () => {
            await mutex_lock(b);
            await k.sched.sleep(1e6);
            await mutex_lock(a);
            mutex_unlock(a);
            mutex_unlock(b);
          },
        };
      });
      expect(r.status).toBe('deadlock');
      const rep = r.report ?? '';
      const ab = `ab/1`;
      const ba = `ba/2`;
      expect(k.tasks.get(1).name).toBe('ab');
      expect(rep).toMatch(/^INFO: deadlock/);
      expect(rep).toMatch(new RegExp(`task ${ab} blocked in mutex on lock_B@[0-9a-f]+, held by ${ba} \\(blocked\\)`));
      expect(rep).toMatch(new RegExp(`task ${ba} blocked in mutex on lock_A@[0-9a-f]+, held by ${ab} \\(blocked\\)`));
      expect(rep).toMatch(/locks? held by ab\/1:\n\s+#0: lock_A@/); // (lockdep lists the lock being acquired too, as the kernel does)
      expect(rep).toMatch(/wait-for cycle: (ab\/1 -> ba\/2 -> ab\/1|ba\/2 -> ab\/1 -> ba\/2)/);
      expect(ofKind(log, 'deadlock').map((x) => x.text)).toEqual([rep]);
      expect(ofKind(log, 'lockdep_circular')).toHaveLength(1);
    }
  });

  it("a task that throws is in `failed` and klog, the others run on; a waiter on its lock is reported with holder 'failed'", async () => {
    for (const seed of seeds(10)) {
      let otherDone = false;
      const { k, r, log } = await simProgram({ seed }, (k) => ({
        boom: async () => {
          await k.sched.point();
          throw new Error('kaboom');
        },
        other: async () => {
          for (let i = 0; i < 10; i++) await k.sched.point();
          otherDone = true;
        },
      }));
      expect(r.status).toBe('done');
      expect(otherDone).toBe(true);
      expect(r.failed).toHaveLength(1);
      expect(r.failed[0]).toMatchObject({ task: 1, name: 'boom' });
      expect(r.failed[0].error).toMatch(/kaboom/);
      const tf = ofKind(log, 'task_failed');
      expect(tf).toHaveLength(1);
      expect(tf[0].text).toMatch(/task boom\/1 failed: Error: kaboom/);
      expect(tf[0].task).toBe(1);
      expect(k.tasks.get(1).state).toBe(TASK_FAILED);
    }

    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const m = mkMutex(k, 'orphan');
      return {
        holder: async () => {
          await mutex_lock(m);
          await k.sched.sleep(1000);
          throw new Error('died holding the lock');
        },
        waiter: async () => {
          await k.sched.point();
          await mutex_lock(m);
          mutex_unlock(m);
        },
      };
    });
    expect(r.status).toBe('deadlock');
    expect(r.failed.map((f) => f.name)).toEqual(['holder']);
    expect(kinds(log)).toEqual(expect.arrayContaining(['task_failed', 'lock_held_at_exit', 'deadlock']));
    expect(r.report).toMatch(/task waiter\/2 blocked in mutex on orphan@[0-9a-f]+, held by holder\/1 \(failed\)/);
  });
});

describe('the boot context under a sim scheduler (setup before run)', () => {
  it('takes free locks without being parked, and refuses to sleep with a clear error', async () => {
    const { bootKernel } = await import('../src/run/boot.js');
    const { SimScheduler } = await import('../src/sched/sim.js');
    const { mutex_init, mutex_lock, mutex_unlock } = await import('../src/sync/index.js');
    const k = bootKernel({});
    const m = mutex_init(k, k.kmalloc.kzalloc(4), 'setup_lock');
    const sim = new SimScheduler(k, { seed: 1 });
    let ran = 0;
    sim.spawn({ name: 'worker', fn: async () => { await mutex_lock(m); ran++; mutex_unlock(m); } });
    // boot context, scheduler created, run not started: the fast path must not park us
    expect(mutex_lock(m)).toBeUndefined();
    await expect(mutex_lock(m)).rejects.toThrow(/boot context/); // taken: it would have to sleep
    mutex_unlock(m);
    const r = await sim.run();
    expect(r.status).toBe('done');
    expect(ran).toBe(1);
  });
});

describe("the arena's guard page (a write through a NULL struct pointer)", () => {
  it('is reported at the end of the run, and the first region is left intact', async () => {
    const { bootKernel } = await import('../src/run/boot.js');
    const { SimScheduler } = await import('../src/sched/sim.js');
    for (const bad of [false, true]) {
      const k = bootKernel({});
      const name = k.strings.get(k.strings.intern('still-readable'));
      const sim = new SimScheduler(k, { seed: 1 });
      const nullStruct = 0; // what a failed kzalloc returns
      sim.spawn({ name: 'writer', fn: () => { if (bad) k.arena.i32[nullStruct + 9] = 42; } });
      expect((await sim.run()).status).toBe('done');
      const recs = k.klog.read().filter((r) => r.kind === 'null_deref');
      expect(recs.length).toBe(bad ? 1 : 0);
      if (bad) expect(recs[0].text).toMatch(/NULL pointer dereference, address: word 9/);
      expect(k.strings.get(k.strings.intern('still-readable'))).toBe(name); // no region was clobbered
    }
  });
});
