// dmirror under `shadowmm stress` (src/device/stress_adapter.ts): the module (hmm_dmirror_init,
// two DEVICE_PRIVATE devices) is loaded once per run. Each stress device is an open of
// /dev/hmm_dmirror0 whose engines run the device layer's programs through pt (faults through
// dmirror_fault), plus an open of /dev/hmm_dmirror1 without engines that a CPU task's
// migrate uses: the migration of HMM_DMIRROR_MIGRATE_TO_DEV (or _TO_SYS) of a few pages.
// Every other mirror of the mm, dmirror0 included, sees those MIGRATE invalidations, and
// their faults bring the pages back (migrate_to_ram).
// Two of test_hmm's own races are left out, both from its MIGRATE owner filter (it skips
// set_seq and the zap for a migration whose owner is its own device, §8.3), which
// test/dmirror.test.ts covers: a fault on the migrating device installing a page under its
// own migration (so the engines run on another device), and MIGRATE_TO_DEV's read-back
// through pt meeting a migrate_to_ram of a page it just moved (so the read-back is skipped).

import { current } from '../../src/sched/current.js';
import { defineStressAdapter, spawnStressEngines } from '../../src/device/stress_adapter.js';
import { EBADF, EINVAL } from '../../src/shm/errno.js';
import { dmirror_migrate_range } from './migrate.js';
import { dmirror_close, dmirror_of, dmirror_open, dmirror_stats, hmm_dmirror_exit, hmm_dmirror_init } from './index.js';

export const stress = defineStressAdapter({
  driver: 'dmirror',
  description: 'lib/test_hmm.c: an open of /dev/hmm_dmirror0 with engines, one of hmm_dmirror1 migrating pages to device memory',
  init: () => hmm_dmirror_init({ chunkPages: 32 }),
  async open({ k, handle, priv }) {
    const fd = await dmirror_open(handle, 0);
    if (fd < 0) return fd;
    const mig = await dmirror_open(handle, 1);
    if (mig < 0) {
      await dmirror_close(handle, fd);
      return mig;
    }
    k.arena.i32[priv] = mig;
    return fd;
  },
  start: spawnStressEngines,
  migrate({ handle, priv, addr, npages }) {
    const k = current.k;
    const d = dmirror_of(handle, k.arena.i32[priv]);
    if (d === 0) return -EBADF;
    if (d < 0) return -EINVAL;
    // to the device, or (about every other call) back to system memory
    return dmirror_migrate_range(k, d, addr, npages, Math.floor(addr / k.mmLayer.pageSize) % 2 === 0);
  },
  async close(dev, handle, priv) {
    const r = await dmirror_close(handle, current.k.arena.i32[priv]);
    const r0 = await dmirror_close(handle, dev);
    return r0 !== 0 ? r0 : r;
  },
  exit: (_k, handle) => hmm_dmirror_exit(handle),
  stats: (_k, dev, handle) => {
    const s = dmirror_stats(handle, dev);
    return { invalidations: s.invalidations, eagain: s.eagain, retries: s.retries, migrate_races: s.migrate_races };
  },
});
