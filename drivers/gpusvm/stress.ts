// gpusvm under `shadowmm stress` (src/device/stress_adapter.ts): one GPU VM whose SVM range is
// the process's window, with small notifiers and chunks so the window spans several of each;
// xe's page-fault worker (the device's fault task) services the GPU faults and the garbage
// collector's worker removes unmapped ranges, while the engines run GPU programs.

import { spawnDeviceFaultTask } from '../../src/device/index.js';
import { defineStressAdapter, spawnStressEngines } from '../../src/device/stress_adapter.js';
import { gpusvmStats, gpusvm_open, spawnGpusvmGcWorker } from './index.js';

export const stress = defineStressAdapter({
  driver: 'gpusvm',
  description: 'a GPU VM mirroring the window (drm_gpusvm notifiers and ranges), a fault worker and the garbage collector',
  open: ({ k, mm, name, base, npages }) => {
    const ps = k.mmLayer.pageSize;
    return gpusvm_open({ mm, name, mmStart: base, mmRange: npages * ps, notifierSize: 16 * ps, chunkSizes: [8 * ps, 2 * ps, ps] });
  },
  start(a) {
    spawnDeviceFaultTask(a.k, a.spawner, a.dev);
    spawnGpusvmGcWorker(a.k, a.spawner, a.dev);
    spawnStressEngines(a);
  },
  stats(k, dev) {
    const s = gpusvmStats(k, dev);
    return { faults: s.faults, invalidations: s.invalidations, ranges_inserted: s.ranges_inserted, gc_ranges: s.gc_ranges, bind_eagain: s.bind_eagain, gc_in_notifier: s.gc_in_notifier };
  },
});
