import { describe, expect, it } from 'vitest';
import type { Kernel } from '../src/sched/kernel.js';
import type { TaskFn } from '../src/sched/scheduler.js';
import {
  down_read,
  down_write,
  fs_reclaim_map,
  invalidate_start_map,
  lock_map_acquire,
  lock_map_release,
  lockdep_assert_held,
  lockdep_assert_held_write,
  might_lock,
  mutex_lock,
  mutex_lock_nested,
  mutex_trylock,
  mutex_unlock,
  srcu_read_lock,
  srcu_read_unlock,
  synchronize_srcu,
  up_read,
  up_write,
  type Mutex,
} from '../src/sync/index.js';
import type { BootConfig } from '../src/run/boot.js';
import type { KlogRecord } from '../src/shm/klog.js';
import { dump, kinds, mkMutex, mkRwsem, mkSrcu, ofKind, seeds, simProgram } from './helpers.js';

const MS = 1e6;
const lockdepKinds = (log: KlogRecord[]) => kinds(log).filter((x) => x.startsWith('lockdep'));

async function lockPair(a: Mutex, b: Mutex): Promise<void> {
  await mutex_lock(a);
  await mutex_lock(b);
  mutex_unlock(b);
  mutex_unlock(a);
}

/** ABBA that cannot deadlock: `ba` starts only after `ab` is long done. */
function abbaSerialized(k: Kernel): Record<string, TaskFn> {
  const a = mkMutex(k, 'lock_A');
  const b = mkMutex(k, 'lock_B');
  return {
    ab: async () => {
      await lockPair(a, b);
    },
    ba: async () => {
      await k.sched.sleep(1 * MS);
      await lockPair(b, a);
    },
  };
}

describe('The checks 4: lockdep finds order cycles from runs that did not deadlock', () => {
  it('an ABBA inversion is reported once, naming both locks, from a run that ended done (20 seeds)', async () => {
    for (const seed of seeds(20)) {
      const { r, log } = await simProgram({ seed }, abbaSerialized);
      expect(r.status).toBe('done');
      expect(lockdepKinds(log), dump(log)).toEqual(['lockdep_circular']);
      const text = ofKind(log, 'lockdep_circular')[0].text;
      expect(text).toMatch(/WARNING: possible circular locking dependency detected/);
      expect(text).toMatch(/ba\/2 is trying to acquire lock:\n lock_A@[0-9a-f]+ \(lock_A\)/);
      expect(text).toMatch(/but task is already holding lock:\n lock_B@[0-9a-f]+ \(lock_B\)/);
      expect(text).toMatch(/\(lock_B\): acquired after \(lock_A\) \(first taken by ab\/1/);
      expect(ofKind(log, 'lockdep_circular')[0].task).toBe(2);
    }
  });

  it('a 3-lock cycle (A->B, B->C, C->A by three serialized tasks) is reported with its chain (20 seeds)', async () => {
    for (const seed of seeds(20)) {
      const { r, log } = await simProgram({ seed }, (k) => {
        const a = mkMutex(k, 'lock_A');
        const b = mkMutex(k, 'lock_B');
        const c = mkMutex(k, 'lock_C');
        return {
          t1: async () => {
            await lockPair(a, b);
          },
          t2: async () => {
            await k.sched.sleep(1 * MS);
            await lockPair(b, c);
          },
          t3: async () => {
            await k.sched.sleep(2 * MS);
            await lockPair(c, a);
          },
        };
      });
      expect(r.status).toBe('done');
      expect(lockdepKinds(log), dump(log)).toEqual(['lockdep_circular']);
      const text = log.find((x) => x.kind === 'lockdep_circular')!.text;
      expect(text).toMatch(/possible circular locking dependency/);
      expect(text).toMatch(/t3\/3 is trying to acquire lock:\n lock_A@/);
      expect(text).toMatch(/but task is already holding lock:\n lock_C@/);
      expect(text).toMatch(/-> #0 \(lock_C\): acquired after \(lock_B\) \(first taken by t2\/2/);
      expect(text).toMatch(/-> #1 \(lock_B\): acquired after \(lock_A\) \(first taken by t1\/1/);
      expect(text).toMatch(/-> #2 \(lock_A\): now taken after \(lock_C\) by t3\/3/);
      expect(text).toMatch(/Chain exists of:\n\s+\(lock_A\) --> \(lock_B\) --> \(lock_C\) --> \(lock_A\)/);
    }
  });

  it('each distinct cycle is reported once, not per acquisition; a new cycle is still reported', async () => {
    for (const seed of seeds(10)) {
      const { r, log } = await simProgram({ seed }, (k) => {
        const a = mkMutex(k, 'lock_A');
        const b = mkMutex(k, 'lock_B');
        const c = mkMutex(k, 'lock_C');
        const d = mkMutex(k, 'lock_D');
        return {
          ab: async () => {
            for (let i = 0; i < 10; i++) {
              await lockPair(a, b);
              await k.sched.sleep(1 * MS);
            }
          },
          ba: async () => {
            await k.sched.sleep(MS / 2);
            for (let i = 0; i < 10; i++) {
              await lockPair(b, a);
              await k.sched.sleep(1 * MS);
            }
          },
          cd_dc: async () => {
            await k.sched.sleep(30 * MS);
            await lockPair(c, d);
            await lockPair(d, c);
            await lockPair(d, c);
          },
        };
      });
      expect(r.status).toBe('done');
      const circ = ofKind(log, 'lockdep_circular');
      expect(circ.map((x) => x.text.match(/trying to acquire lock:\n (\w+)@/)![1]), dump(log)).toEqual(['lock_A', 'lock_C']);
    }
  });

  it('a deadlocking ABBA is reported by lockdep before the run ends as a deadlock', async () => {
    const { r, log } = await simProgram({ seed: 4 }, (k) => {
      const a = mkMutex(k, 'lock_A');
      const b = mkMutex(k, 'lock_B');
      return {
        ab: async () => {
          await mutex_lock(a);
          await k.sched.sleep(MS);
          await mutex_lock(b);
        },
        ba: async () => {
          await mutex_lock(b);
          await k.sched.sleep(MS);
          await mutex_lock(a);
        },
      };
    });
    expect(r.status).toBe('deadlock');
    expect(kinds(log)).toEqual(['lockdep_circular', 'deadlock']);
  });

  it('a lock taken inside an SRCU read section is still ordered after the locks held outside it', async () => {
    // M -> [srcu read] -> N, then N -> M elsewhere: a real ABBA between M and N. The recursive
    // SRCU reader between them must not hide the M -> N dependency.
    for (const seed of seeds(10)) {
      const { r, log } = await simProgram({ seed }, (k) => {
        const m = mkMutex(k, 'outer_M');
        const n = mkMutex(k, 'inner_N');
        const ss = mkSrcu(k, 'notifier_srcu');
        return {
          reader: async () => {
            await mutex_lock(m);
            const idx = srcu_read_lock(ss);
            await mutex_lock(n);
            mutex_unlock(n);
            srcu_read_unlock(ss, idx);
            mutex_unlock(m);
          },
          other: async () => {
            await k.sched.sleep(MS);
            await lockPair(n, m);
          },
        };
      });
      expect(r.status).toBe('done');
      expect(lockdepKinds(log), dump(log)).toEqual(['lockdep_circular']);
      expect(log[0].text).toMatch(/other\/2 is trying to acquire lock:\n outer_M@/);
      expect(log[0].text).toMatch(/already holding lock:\n inner_N@/);
    }
  });
});

describe('The checks 4: recursion, subclasses and assertions', () => {
  it('taking a second lock of the same class is recursive locking; mutex_lock_nested with a subclass is not', async () => {
    const nest = async (nested: boolean) => {
      const { r, log } = await simProgram({ seed: 1 }, (k) => {
        const parent = mkMutex(k, 'inode_parent', 'inode_lock');
        const child = mkMutex(k, 'inode_child', 'inode_lock');
        return {
          t: async () => {
            await mutex_lock(parent);
            if (nested) await mutex_lock_nested(child, 1);
            else await mutex_lock(child);
            mutex_unlock(child);
            mutex_unlock(parent);
          },
        };
      });
      expect(r.status).toBe('done');
      return log;
    };
    const plain = await nest(false);
    expect(kinds(plain)).toEqual(['lockdep_recursive']);
    expect(plain[0].text).toMatch(/WARNING: possible recursive locking detected/);
    expect(plain[0].text).toMatch(/t\/1 is trying to acquire lock:\n inode_child@[0-9a-f]+ \(inode_lock\)/);
    expect(plain[0].text).toMatch(/already holding lock:\n inode_parent@[0-9a-f]+ \(inode_lock\)/);
    expect(plain[0].text).toMatch(/May be due to missing lock nesting notation/);
    expect(await nest(true), 'mutex_lock_nested(child, 1)').toEqual([]);
  });

  it('a task re-taking its own mutex is reported as recursion and the run ends as a deadlock, not a hang', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const m = mkMutex(k, 'self_lock');
      return {
        t: async () => {
          await mutex_lock(m);
          await mutex_lock(m);
        },
      };
    });
    expect(r.status).toBe('deadlock');
    expect(kinds(log)).toEqual(['lockdep_recursive', 'deadlock']);
    expect(r.report).toMatch(/task t\/1 blocked in mutex on self_lock@[0-9a-f]+, held by t\/1/);
  });

  it('down_read of an rwsem the task already read-holds is reported as recursion', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const s = mkRwsem(k, 'mmap_lock');
      return {
        t: async () => {
          await down_read(s);
          await down_read(s); // deadlocks once a writer queues in between
          up_read(s);
          up_read(s);
        },
      };
    });
    expect(r.status).toBe('done');
    expect(kinds(log)).toEqual(['lockdep_recursive']);
    expect(log[0].text).toMatch(/mmap_lock@/);
  });

  it('lockdep_assert_held fires when the lock is not held and not when it is', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const m = mkMutex(k, 'asserted_mutex');
      const s = mkRwsem(k, 'asserted_sem');
      return {
        t: async () => {
          lockdep_assert_held(m); // 1: not held
          await mutex_lock(m);
          lockdep_assert_held(m); // held: silent
          mutex_unlock(m);
          await down_read(s);
          lockdep_assert_held(s); // read-held counts as held
          lockdep_assert_held_write(s); // 2: not held for write
          up_read(s);
          await down_write(s);
          lockdep_assert_held_write(s); // silent
          up_write(s);
        },
        other: async () => {
          await k.sched.point();
          lockdep_assert_held(m); // 3: held by someone else is not held by me (or not held)
        },
      };
    });
    expect(r.status).toBe('done');
    const asserts = ofKind(log, 'lockdep_assert');
    expect(kinds(log)).toEqual(['lockdep_assert', 'lockdep_assert', 'lockdep_assert']);
    const heads = asserts.map((x) => x.text.split('\n')[0]);
    for (const want of [
      /^WARNING: lockdep_assert_held\(asserted_mutex@[0-9a-f]+\) failed in t\/1$/,
      /^WARNING: lockdep_assert_held_write\(asserted_sem@[0-9a-f]+\) failed in t\/1$/,
      /^WARNING: lockdep_assert_held\(asserted_mutex@[0-9a-f]+\) failed in other\/2$/,
    ]) {
      expect(heads.filter((h) => want.test(h)), `${want} in\n${heads.join('\n')}`).toHaveLength(1);
    }
  });

  it('might_lock teaches lockdep an ordering without taking the lock', async () => {
    const program = (withMightLock: boolean) => (k: Kernel) => {
      const a = mkMutex(k, 'lock_A');
      const b = mkMutex(k, 'lock_B');
      return {
        path: async () => {
          await mutex_lock(a);
          if (withMightLock) might_lock(b); // this path may take B under A (just not this time)
          mutex_unlock(a);
        },
        inverse: async () => {
          await k.sched.sleep(MS);
          await lockPair(b, a);
        },
      };
    };
    for (const seed of seeds(5)) {
      const yes = await simProgram({ seed }, program(true));
      expect(yes.r.status).toBe('done');
      expect(lockdepKinds(yes.log)).toEqual(['lockdep_circular']);
      expect(yes.log[0].text).toMatch(/\(lock_B\): acquired after \(lock_A\) \(first taken by path\/1/);
      const no = await simProgram({ seed }, program(false));
      expect(no.log).toEqual([]);
    }
  });
});

describe('The checks 4: fs_reclaim and mmu_notifier_invalidate_range_start primed as the kernel primes them', () => {
  /**
   * Task `notifier` is the notifier core calling a driver's invalidate callback: the callback
   * takes the driver lock inside the invalidate-start map. Task `driver` allocates with
   * GFP_KERNEL while holding that lock: the page allocator acquires fs_reclaim, and reclaim
   * may invalidate (fs_reclaim -> invalidate_range_start), so the driver lock is ordered both
   * before and after invalidate_range_start. No reclaim has to happen for lockdep to see it.
   */
  const program = (callbackTrylock: boolean, serialize: 'notifier-first' | 'driver-first' | 'racy') => (k: Kernel) => {
    const drv = mkMutex(k, 'drv->notifier_lock');
    const delay = (who: string) => (serialize === 'racy' ? 0 : serialize.startsWith(who) ? 0 : MS);
    return {
      notifier: async () => {
        const d = delay('notifier');
        if (d) await k.sched.sleep(d);
        lock_map_acquire(invalidate_start_map(k));
        if (callbackTrylock) {
          if (mutex_trylock(drv)) mutex_unlock(drv);
        } else {
          await mutex_lock(drv);
          mutex_unlock(drv);
        }
        lock_map_release(invalidate_start_map(k));
      },
      driver: async () => {
        const d = delay('driver');
        if (d) await k.sched.sleep(d);
        await mutex_lock(drv);
        // kmalloc(GFP_KERNEL) -> fs_reclaim_acquire + the invalidate-start priming
        lock_map_acquire(fs_reclaim_map(k));
        lock_map_acquire(invalidate_start_map(k));
        lock_map_release(invalidate_start_map(k));
        lock_map_release(fs_reclaim_map(k));
        mutex_unlock(drv);
      },
    };
  };

  for (const order of ['notifier-first', 'driver-first', 'racy'] as const) {
    it(`a driver lock held across a GFP_KERNEL allocation and taken in the blocking callback is reported (${order}, 10 seeds)`, async () => {
      for (const seed of seeds(10)) {
        const { r, log } = await simProgram({ seed }, program(false, order));
        expect(r.status).toBe('done');
        expect(lockdepKinds(log), dump(log)).toEqual(['lockdep_circular']);
        const text = log[0].text;
        expect(text).toMatch(/possible circular locking dependency/);
        expect(text).toMatch(/drv->notifier_lock/);
        expect(text).toMatch(/mmu_notifier_invalidate_range_start/);
        expect(text).toMatch(/fs_reclaim/);
      }
    });
  }

  it('the same with mutex_trylock in the callback is not reported (20 seeds)', async () => {
    for (const seed of seeds(20)) {
      for (const order of ['notifier-first', 'driver-first', 'racy'] as const) {
        const { r, log } = await simProgram({ seed }, program(true, order));
        expect(r.status).toBe('done');
        expect(log, dump(log)).toEqual([]);
      }
    }
  });
});

describe('The checks 4: SRCU read sections', () => {
  it('synchronize_srcu inside its own read section is reported (and the run ends, as a deadlock)', async () => {
    const { r, log } = await simProgram({ seed: 1 }, (k) => {
      const ss = mkSrcu(k, 'mn_srcu');
      return {
        t: async () => {
          const idx = srcu_read_lock(ss);
          await synchronize_srcu(ss);
          srcu_read_unlock(ss, idx);
        },
      };
    });
    const ld = log.filter((x) => x.kind.startsWith('lockdep'));
    expect(ld.length, dump(log)).toBe(1);
    expect(['lockdep_recursive', 'lockdep_circular']).toContain(ld[0].kind);
    expect(ld[0].text).toMatch(/mn_srcu@/);
    expect(r.status).toBe('deadlock');
    expect(r.report).toMatch(/task t\/1 blocked in srcu on mn_srcu/);
  });

  it('synchronize_srcu under a lock that a reader takes inside its read section is reported', async () => {
    for (const seed of seeds(10)) {
      const { r, log } = await simProgram({ seed }, (k) => {
        const ss = mkSrcu(k, 'mn_srcu');
        const m = mkMutex(k, 'drv_lock');
        return {
          reader: async () => {
            const idx = srcu_read_lock(ss);
            await mutex_lock(m);
            mutex_unlock(m);
            srcu_read_unlock(ss, idx);
          },
          syncer: async () => {
            await k.sched.sleep(MS);
            await mutex_lock(m);
            await synchronize_srcu(ss);
            mutex_unlock(m);
          },
        };
      });
      expect(r.status).toBe('done');
      expect(lockdepKinds(log), dump(log)).toEqual(['lockdep_circular']);
      expect(log[0].text).toMatch(/mn_srcu/);
      expect(log[0].text).toMatch(/drv_lock/);
    }
  });

  it('readers nesting read sections, and a synchronize_srcu outside any read section, are not reported', async () => {
    for (const seed of seeds(10)) {
      const { r, log } = await simProgram({ seed }, (k) => {
        const ss = mkSrcu(k, 'mn_srcu');
        const m = mkMutex(k, 'drv_lock');
        const reader = async () => {
          for (let i = 0; i < 3; i++) {
            const a = srcu_read_lock(ss);
            const b = srcu_read_lock(ss);
            await mutex_lock(m);
            await k.sched.point();
            mutex_unlock(m);
            srcu_read_unlock(ss, b);
            srcu_read_unlock(ss, a);
          }
        };
        return {
          r0: reader,
          r1: reader,
          syncer: async () => {
            await synchronize_srcu(ss);
            await synchronize_srcu(ss);
          },
        };
      });
      expect(r.status).toBe('done');
      expect(log, dump(log)).toEqual([]);
    }
  });
});

describe('The checks 4: lockdep switched off', () => {
  it('bootKernel({ lockdep: false }) reports nothing for the ABBA program (and on, it does)', async () => {
    const off: BootConfig = { lockdep: false };
    for (const seed of seeds(10)) {
      const { k, r, log } = await simProgram({ seed }, abbaSerialized, off);
      expect(r.status).toBe('done');
      expect(log).toEqual([]);
      expect(k.lockdep.enabled).toBe(false);
      expect(k.lockdep.edgeCount).toBe(0);
      const on = await simProgram({ seed }, abbaSerialized);
      expect(lockdepKinds(on.log)).toEqual(['lockdep_circular']);
    }
  });
});
