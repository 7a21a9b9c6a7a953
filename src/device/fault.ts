// Device faults. An access that misses raises a device fault for the page it stopped at; the
// driver's fault handler services it (typically the §3.4 hmm_range_fault loop, hmm_fault.ts)
// and the access retries. The handler runs in the engine's task, or, when the device has a
// fault task, there: the engine queues the fault in its slot and sleeps until it is done.
//
// Liveness (DESIGN check 8): a streak of faults on one page with no access of the engine in
// between, longer than livenessRounds rounds and livenessMs, is a livelock: a 'liveness'
// record (the driver's own diagnosis, the device's counters, who is blocked) and -EDEADLK,
// which ends the program.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { blockedReport } from '../sched/report.js';
import type { TaskContext } from '../sched/scheduler.js';
import { splat } from '../sched/splat.js';
import { EDEADLK } from '../shm/errno.js';
import { recentEventsText } from './check.js';
import { deviceLabel, deviceStats, device_stat_add } from './device.js';
import { driverOf } from './registry.js';
import { DEV_ENGINES, DEV_EV, DEV_FAULT_ATOMIC, DEV_FAULT_WRITE, DEV_STAT, DevL, EngL, FQ_BUSY, FQ_DONE, FQ_IDLE, FQ_QUEUED, engine_at } from './types.js';

/**
 * device_fault: engine `eng` missed at addr; have the driver fault [addr, addr + npages pages)
 * in. 0 = retry the access; a negative errno = the access fails (-EDEADLK: livelock, stop).
 */
export function device_fault(dev: number, eng: number, addr: number, npages: number, flags: number): number | Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const f = k.arena.f64;
  const e = engine_at(dev, eng);
  const vpn = Math.floor(addr / k.mmLayer.pageSize) | 0;
  device_stat_add(dev, DEV_STAT.faults);
  k.events.emit(DEV_EV.FAULT, t.id, dev, vpn, flags);
  const acc = Atomics.load(w, e + EngL.accesses);
  const now = k.sched.now();
  if (w[e + EngL.live_rounds] > 0 && w[e + EngL.live_vpn] === vpn && w[e + EngL.live_acc] === acc) {
    const rounds = ++w[e + EngL.live_rounds];
    const since = f[(e + EngL.live_since) >> 1];
    if (rounds >= k.devices.livenessRounds && now - since >= k.devices.livenessNs) {
      livelock(k, dev, eng, addr, flags, rounds, now - since);
      w[e + EngL.live_rounds] = 0;
      return -EDEADLK;
    }
  } else {
    w[e + EngL.live_rounds] = 1;
    w[e + EngL.live_vpn] = vpn;
    w[e + EngL.live_acc] = acc;
    f[(e + EngL.live_since) >> 1] = now;
  }
  f[(e + EngL.fault_addr) >> 1] = addr;
  w[e + EngL.fault_npages] = npages;
  w[e + EngL.fault_flags] = flags;
  if (Atomics.load(w, dev + DevL.fault_task) !== 0) return queued(k, dev, eng);
  Atomics.store(w, e + EngL.fault_status, FQ_BUSY);
  const r = driverOf(dev).fault(dev, addr, npages, flags);
  if (typeof r === 'number') return done(k, dev, eng, r);
  return r.then((v) => done(k, dev, eng, v));
}

function done(k: Kernel, dev: number, eng: number, ret: number): number {
  const w = k.arena.i32;
  const e = engine_at(dev, eng);
  w[e + EngL.fault_result] = ret;
  Atomics.store(w, e + EngL.fault_status, FQ_IDLE);
  if (ret < 0) device_stat_add(dev, DEV_STAT.fault_errors);
  const vpn = Math.floor(k.arena.f64[(e + EngL.fault_addr) >> 1] / k.mmLayer.pageSize) | 0;
  k.events.emit(DEV_EV.FAULT_DONE, current.id, dev, vpn, ret);
  return ret;
}

/** Queue the fault for the device's fault task and sleep until it is serviced. */
async function queued(k: Kernel, dev: number, eng: number): Promise<number> {
  const w = k.arena.i32;
  const st = engine_at(dev, eng) + EngL.fault_status;
  Atomics.store(w, st, FQ_QUEUED);
  Atomics.add(w, dev + DevL.fq_seq, 1);
  k.sched.wake(dev + DevL.fq_seq, Infinity);
  for (let s = Atomics.load(w, st); s !== FQ_DONE; s = Atomics.load(w, st)) {
    const r = k.sched.wait(st, s);
    if (typeof r !== 'number') await r;
  }
  return done(k, dev, eng, w[engine_at(dev, eng) + EngL.fault_result]);
}

/**
 * The fault task of a device (a named export, so both schedulers run it): service queued
 * faults until the device stops. args: { dev }.
 */
export async function device_fault_task(ctx: TaskContext<{ dev: number }>): Promise<void> {
  const { k } = ctx;
  const dev = ctx.args.dev;
  const w = k.arena.i32;
  Atomics.store(w, dev + DevL.fault_task, ctx.task.id);
  const drv = driverOf(dev);
  for (;;) {
    const seq = Atomics.load(w, dev + DevL.fq_seq);
    let served = false;
    for (let eng = 0; eng < DEV_ENGINES; eng++) {
      const e = engine_at(dev, eng);
      if (Atomics.compareExchange(w, e + EngL.fault_status, FQ_QUEUED, FQ_BUSY) !== FQ_QUEUED) continue;
      served = true;
      let r = drv.fault(dev, k.arena.f64[(e + EngL.fault_addr) >> 1], w[e + EngL.fault_npages], w[e + EngL.fault_flags]);
      if (typeof r !== 'number') r = await r;
      w[e + EngL.fault_result] = r;
      Atomics.store(w, e + EngL.fault_status, FQ_DONE);
      k.sched.wake(e + EngL.fault_status, Infinity);
    }
    if (served) continue;
    if (Atomics.load(w, dev + DevL.stop) !== 0) break;
    const r = k.sched.wait(dev + DevL.fq_seq, seq);
    if (typeof r !== 'number') await r;
  }
}

function livelock(k: Kernel, dev: number, eng: number, addr: number, flags: number, rounds: number, ns: number): void {
  const w = k.arena.i32;
  device_stat_add(dev, DEV_STAT.livelocks);
  const drv = driverOf(dev);
  const what = (flags & DEV_FAULT_ATOMIC) !== 0 ? 'atomic' : (flags & DEV_FAULT_WRITE) !== 0 ? 'write' : 'read';
  const stats = Object.entries(deviceStats(k, dev))
    .map(([n, v]) => `${n} ${v}`)
    .join(', ');
  const task = w[engine_at(dev, eng) + EngL.task];
  splat(
    k,
    'liveness',
    [
      `INFO: device livelock: ${deviceLabel(k, dev)} engine ${eng} faulted 0x${addr.toString(16)} (${what}) ${rounds} times in ${(ns / 1e6).toFixed(3)} ms ` +
        'without one access getting through: every fault returned 0 (retry) and the access missed again',
      `driver: ${drv.diagnose ? drv.diagnose(dev) : '(no diagnosis)'}`,
      `device: ${stats}`,
      `engine task events:`,
      recentEventsText(k, task),
      blockedReport(k, 'tasks blocked meanwhile:'),
    ].join('\n'),
  );
}
