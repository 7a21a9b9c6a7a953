// Run one benchmark in this process and print its figures as one JSON line on stdout.
// run.ts starts a fresh process per benchmark so one benchmark's JIT state (inline caches,
// deopts) cannot move another's figures; each entry loads only its own module.

import { round } from './measure.js';

const BENCHES: Record<string, () => Promise<Record<string, number>>> = {
  // the lock's own cost, as a task under `threads` pays it (no exploration point)
  async mutex() {
    const { benchMutexUncontended } = await import('./mutex.js');
    const r = await benchMutexUncontended({ lockdep: false, point: 'none' });
    return { mutex_uncontended_ns: round(r.ns), raw_atomics_lock_unlock_ns: round(r.floorNs) };
  },
  // the same inside a `sim` task: every mutex_lock is also one of sim's scheduling steps
  async mutex_sim() {
    const { benchMutexUncontended } = await import('./mutex.js');
    const r = await benchMutexUncontended({ lockdep: false, point: 'sim' });
    return { mutex_uncontended_sim_ns: round(r.ns) };
  },
  async mutex_lockdep() {
    const { benchMutexUncontended } = await import('./mutex.js');
    const r = await benchMutexUncontended({ lockdep: true, point: 'sim' });
    return { mutex_uncontended_lockdep_ns: round(r.ns) };
  },
  async sim() {
    const { benchSimSchedPoints } = await import('./sim.js');
    const r = await benchSimSchedPoints();
    return { sim_sched_points_per_s: Math.round(r.pointsPerS), sim_steps_per_run: r.stepsPerRun };
  },
  async sim_speed() {
    const { benchSimSchedPoints } = await import('./sim.js');
    const r = await benchSimSchedPoints({ lockdep: false, events: false });
    return { sim_sched_points_per_s_speed: Math.round(r.pointsPerS) };
  },
  async fault() {
    const { benchCpuFault } = await import('./fault.js');
    const r = await benchCpuFault();
    // native_fault_per_s is null (with native_note saying why) where there is no C compiler
    const native = r.native_fault_per_s === null ? null : Math.round(r.native_fault_per_s);
    return { cpu_fault_per_s: Math.round(r.cpu_fault_per_s), native_fault_per_s: native, ...(r.native_note ? { native_note: r.native_note } : {}) } as unknown as Record<string, number>;
  },
  // CPU faults on swap entries whose pages are in swap, not in the swap cache
  async swapin() {
    const { benchSwapin } = await import('./swapin.js');
    return { ...(await benchSwapin()) };
  },
  // `shadowmm explore smoke` with one worker and with two, same process
  async explore() {
    const { benchExplore } = await import('./explore.js');
    return { ...(await benchExplore()) };
  },
  // pages reclaimed per second through try_to_unmap_one, with no mirror and with 4
  async reclaim() {
    const { benchReclaim } = await import('./reclaim.js');
    return { ...(await benchReclaim()) };
  },
  // virtual ms from the OOM decision to the victim's memory freed: memcg (memory.max) and a reaped global OOM
  async oom() {
    const { benchOom } = await import('./oom.js');
    return { ...(await benchOom()) };
  },
  async invalidate() {
    const { benchInvalidate2mb } = await import('./invalidate.js');
    return { invalidate_2mb_us: (await benchInvalidate2mb()).invalidate_2mb_us };
  },
  // device fault service through the hmm_range_fault loop, 1 page and 512 pages (wall time)
  async device_fault() {
    const { benchDeviceFault } = await import('./device_fault.js');
    return { ...(await benchDeviceFault()) };
  },
  // munmap of 2 MiB mirrored by 4 devices
  async invalidate_4dev() {
    const { benchInvalidate2mb4dev } = await import('./device_fault.js');
    return { ...(await benchInvalidate2mb4dev()) };
  },
  // 4 device workers and 2 CPU tasks on one mm for 10 s under `threads`
  async threads_stress() {
    const { benchThreadsStress } = await import('./threads_stress.js');
    return { ...(await benchThreadsStress()) };
  },
  // `shadowmm stress`, every reference driver, threads, 10 s with every check and 10 s without
  async stress() {
    const { benchStress } = await import('./stress.js');
    return { ...(await benchStress()) };
  },
  async device_access() {
    const { benchDeviceAccess } = await import('./device.js');
    const r = await benchDeviceAccess();
    return { device_access_per_s_checked: Math.round(r.device_access_per_s_checked), device_access_per_s_unchecked: Math.round(r.device_access_per_s_unchecked) };
  },
  async threads() {
    const { benchThreadsHandoff } = await import('./threads_handoff.js');
    const r = await benchThreadsHandoff();
    return { threads_mutex_handoff_p50_us: r.threads_mutex_handoff_p50_us, raw_atomics_handoff_p50_us: r.raw_atomics_handoff_p50_us };
  },
};

const name = process.argv[2] ?? '';
const bench = BENCHES[name];
if (!bench) {
  process.stderr.write(`bench: no benchmark '${name}' (have: ${Object.keys(BENCHES).join(', ')})\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await bench()) + '\n');
