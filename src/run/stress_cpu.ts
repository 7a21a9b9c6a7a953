// The CPU operations of a stress worker's threads (stress_tasks.ts draws them): reads and
// writes, munmap + mmap back, mprotect R and back, MADV_DONTNEED, fork (budgeted: task records
// are not recycled) with its child, and a driver's device migration. Each returns false when
// it was skipped; a result no race with the other threads explains is a 'stress_error' record.

import { fileURLToPath } from 'node:url';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { EBUSY, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM } from '../shm/errno.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { do_madvise } from '../mm/madvise.js';
import { vm_mmap, vm_munmap } from '../mm/mmap.js';
import { do_mprotect } from '../mm/mprotect.js';
import { do_fork, waitpid, type ProcessContext } from '../mm/process.js';
import { get_user, put_user } from '../mm/uaccess.js';
import type { StressAdapter } from '../device/stress_adapter.js';
import { StressCtlL, n, rng, stressError, type CpuOp, type StressTaskArgs, type WorkerArgs } from './stress_shared.js';

const STRESS_CPU = fileURLToPath(import.meta.url);

export interface Migrator {
  dev: number;
  priv: number;
  ad: StressAdapter;
  handle: number;
}

const EXPECTED_MIGRATE = new Set([0, -EFAULT, -EBUSY, -ENOENT, -EINVAL, -EPERM, -ENOMEM]);

/** threads: forks the budget allows by now (spread evenly over the run) */
function forkAllowance(k: Kernel, a: StressTaskArgs): number {
  const f = k.arena.f64;
  const start = f[(a.ctl + StressCtlL.start_ms) >> 1];
  if (start === 0 || a.durationMs <= 0) return 0;
  return (k.arena.i32[a.ctl + StressCtlL.forks_budget0] * (Date.now() - start)) / a.durationMs;
}

/** One CPU operation; false when it was skipped (the fork budget). */
export async function cpuOp(
  k: Kernel,
  a: WorkerArgs,
  mm: number,
  thread: number,
  op: CpuOp,
  addr: number,
  len: number,
  rnd: (n: number) => number,
  scratch: number,
  migrators: Migrator[],
): Promise<boolean> {
  const ps = a.pageSize;
  const w = k.arena.i32;
  switch (op) {
    case 'read': {
      // a fault after a zap, on a swapped-out page, a migrated one; -EFAULT while unmapped
      await n(get_user(addr + 4 * rnd(8)));
      return true;
    }
    case 'write': {
      const r = await n(put_user(a.slot * 100000 + thread * 1000 + rnd(1000), addr + 4 * (8 + thread)));
      if (r !== 0 && r !== -EFAULT) stressError(k, a.ctl, `w${a.slot}.${thread}: put_user ${r}`);
      return true;
    }
    case 'munmap': {
      const r = await n(vm_munmap(mm, addr, len * ps));
      if (r !== 0) stressError(k, a.ctl, `w${a.slot}.${thread}: munmap ${r}`);
      await n(k.sched.point());
      const m = await n(vm_mmap(mm, addr, len * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED));
      if (m !== addr && m !== -ENOMEM) stressError(k, a.ctl, `w${a.slot}.${thread}: mmap back ${m}`);
      return true;
    }
    case 'mprotect': {
      // -ENOMEM while another thread has part of the range unmapped
      await n(do_mprotect(mm, addr, len * ps, PROT_READ));
      await n(k.sched.point());
      await n(do_mprotect(mm, addr, len * ps, PROT_READ | PROT_WRITE));
      return true;
    }
    case 'dontneed': {
      const r = await n(do_madvise(mm, addr, len * ps, MADV_DONTNEED));
      if (r !== 0 && r !== -ENOMEM) stressError(k, a.ctl, `w${a.slot}.${thread}: MADV_DONTNEED ${r}`);
      return true;
    }
    case 'fork': {
      // threads: the budget is spread over the run (the first few at once)
      const used = Atomics.load(w, a.ctl + StressCtlL.forks_done);
      if (a.opsPerThread === 0 && used >= 8 && used >= forkAllowance(k, a)) {
        Atomics.add(w, a.ctl + StressCtlL.forks_skipped, 1);
        return false;
      }
      if (Atomics.sub(w, a.ctl + StressCtlL.fork_budget, 1) <= 0) {
        Atomics.add(w, a.ctl + StressCtlL.fork_budget, 1);
        Atomics.add(w, a.ctl + StressCtlL.forks_skipped, 1);
        return false;
      }
      Atomics.add(w, a.ctl + StressCtlL.forks_done, 1);
      const pid = await do_fork({ name: `w${a.slot}child`, module: STRESS_CPU, fn: 'stressChild', args: { base: a.base, npages: a.npages, pageSize: ps, seed: rnd(1 << 30) } });
      if (pid < 0) {
        if (pid !== -ENOMEM) stressError(k, a.ctl, `w${a.slot}.${thread}: fork ${pid}`);
        return false;
      }
      const st = await waitpid(pid);
      if (typeof st === 'number' || (st.code !== 0 && st.signal === 0)) stressError(k, a.ctl, `w${a.slot}.${thread}: child ${JSON.stringify(st)}`);
      return true;
    }
    case 'migrate': {
      const m = migrators[rnd(migrators.length)];
      const r = await n(m.ad.migrate!({ dev: m.dev, priv: m.priv, handle: m.handle, addr, npages: len, scratch }));
      if (!EXPECTED_MIGRATE.has(r)) stressError(k, a.ctl, `${m.ad.driver}: migrate ${r}`);
      return true;
    }
  }
}

/** A forked child: breaks COW on a few pages of its copy, reads one, exits. */
export async function stressChild({ k, args }: ProcessContext<{ base: number; npages: number; pageSize: number; seed: number }>): Promise<void> {
  const rnd = rng(args.seed);
  for (let i = 0; i < 3; i++) {
    const r = await n(put_user(0xc0de + i, args.base + rnd(args.npages) * args.pageSize + 4));
    if (r !== 0 && r !== -EFAULT) splat(k, 'stress_error', `stress: child put_user ${r}`);
  }
  await n(get_user(args.base + rnd(args.npages) * args.pageSize));
}
