// Device fault service and 4-device invalidation, in wall time inside one `sim` task (nothing
// contends, so sim's scheduling points return at once; sim's virtual clock is not used):
// - device_fault_4k_p50_us / device_fault_2mb_p50_us: one device_fault on an engine, served by
//   the test-mirror driver through the §3.4 hmm_range_fault loop (read_begin, hmm_range_fault
//   under the mmap_lock, the notifier lock, read_retry, install), over 1 page and over 512
//   pages whose CPU PTEs are present; the device's entries are zapped (untimed) before each.
// - invalidate_2mb_4dev_us: vm_munmap of 2 MiB that 4 test-mirror devices mirror with every
//   shadow PTE populated (the UNMAP invalidation reaching 4 subscriptions, each taking its lock,
//   zapping 512 entries and checking its fence, plus the CPU unmap itself); the window is
//   mapped, populated and faulted into the 4 devices again, untimed, between repetitions.
//   munmap_2mb_0dev_us is the same munmap with no device (the CPU side alone).
// Lockdep on (the kernel config default, as in invalidate_2mb_us), the event log off.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import type { Kernel } from '../../src/sched/kernel.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../../src/mm/mmap.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { DEV_READ, device_access, device_close, device_engine_claim, device_engine_release, device_fault, device_lock, device_open, device_unlock, shadow_pte_zap } from '../../src/device/index.js';
import '../fixtures/devmirror.js';
import { median, nowNs } from './measure.js';

const PAGE = 4096;
const PAGES_2MB = 512;

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

function boot(): Kernel {
  return bootKernel({ lockdep: true, events: false, maxTasks: 16, mem: { pages: 4 * PAGES_2MB + 512, pageSize: PAGE }, device: { devices: 8, sptDirs: 32, sptLeaves: 64 } });
}

async function runSim(k: Kernel, what: string, fn: (mm: number) => Promise<string>): Promise<void> {
  const sim = new SimScheduler(k, { seed: 1, stallMs: 60_000 });
  let error = '';
  spawn_process(k, sim, { name: 'bench', fn: async ({ mm }) => void (error = await fn(mm)) });
  const r = await sim.run();
  reap_zombies(k);
  const log = k.klog.read();
  if (r.status !== 'done' || error !== '' || log.length !== 0) throw new Error(`${what} bench: run '${r.status}' ${error} ${log.map((x) => `[${x.kind}] ${x.text}`).join('; ')}`);
}

/** Zap the device's entries over the range as an invalidation would (under the notifier lock). */
async function zap(dev: number, a: number, pages: number): Promise<void> {
  const p = device_lock(dev);
  if (p !== undefined) await p;
  shadow_pte_zap(dev, a, a + pages * PAGE);
  device_unlock(dev);
}

export interface DeviceFaultBench {
  device_fault_4k_p50_us: number;
  device_fault_2mb_p50_us: number;
}

export async function benchDeviceFault(): Promise<DeviceFaultBench> {
  const k = boot();
  const out: Record<number, number[]> = { 1: [], [PAGES_2MB]: [] };
  await runSim(k, 'device fault', async (mm) => {
    const a = await n(vm_mmap(mm, 0, PAGES_2MB * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE));
    if (a < 0) return `mmap ${a}`;
    const dev = await device_open('test-mirror', { name: 'bench0' });
    if (dev < 0) return `device_open ${dev}`;
    // this CPU task claims an engine slot (an ioctl's access, as the device tests do)
    const eng = device_engine_claim(dev);
    if (eng < 0) return `device_engine_claim ${eng}`;
    let error = '';
    for (const [pages, warmup, reps] of [
      [1, 500, 5000],
      [PAGES_2MB, 20, 200],
    ] as const) {
      for (let i = 0; i < warmup + reps && error === ''; i++) {
        await zap(dev, a, pages);
        const t0 = nowNs();
        const r = await n(device_fault(dev, eng, a, pages, 0));
        const dt = nowNs() - t0;
        if (r !== 0) error = `device_fault ${r}`;
        // every page is mapped now (and the access keeps the liveness check quiet)
        else if (device_access(dev, eng, a, pages, DEV_READ) !== pages) error = `a fault of ${pages} left pages out`;
        if (i >= warmup) out[pages].push(dt);
      }
    }
    device_engine_release(dev, eng);
    const c = await device_close(dev);
    return error || (c !== 0 ? `device_close ${c}` : '');
  });
  return { device_fault_4k_p50_us: Math.round(median(out[1]) / 10) / 100, device_fault_2mb_p50_us: Math.round(median(out[PAGES_2MB]) / 10) / 100 };
}

export interface Invalidate4devBench {
  invalidate_2mb_4dev_us: number;
  /** the same munmap with no device: what the 4 devices add is the difference */
  munmap_2mb_0dev_us: number;
}

export async function benchInvalidate2mb4dev(): Promise<Invalidate4devBench> {
  const none = await munmap2mb(0);
  return { invalidate_2mb_4dev_us: await munmap2mb(4), munmap_2mb_0dev_us: none };
}

/** median wall us of a vm_munmap of 2 MiB mirrored (every entry populated) by DEVS devices */
async function munmap2mb(DEVS: number): Promise<number> {
  const k = boot();
  const WARMUP = 20;
  const REPS = 150;
  const xs: number[] = [];
  await runSim(k, `invalidate ${DEVS}dev`, async (mm) => {
    const len = PAGES_2MB * PAGE;
    const a = await n(vm_mmap(mm, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE));
    if (a < 0) return `mmap ${a}`;
    const devs: number[] = [];
    const engs: number[] = [];
    for (let d = 0; d < DEVS; d++) {
      const dev = await device_open('test-mirror', { name: `bench${d}` });
      if (dev < 0) return `device_open ${dev}`;
      devs.push(dev);
      engs.push(device_engine_claim(dev));
      if (engs[d] < 0) return `device_engine_claim ${engs[d]}`;
    }
    let error = '';
    for (let i = 0; i < WARMUP + REPS && error === ''; i++) {
      if (i > 0 && (await n(vm_mmap(mm, a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE))) !== a) {
        error = 'mmap back';
        break;
      }
      // every device mirrors all 512 pages (populated writable PTEs: writable entries)
      for (let d = 0; d < DEVS; d++) {
        if ((await n(device_fault(devs[d], engs[d], a, PAGES_2MB, 0))) !== 0 || device_access(devs[d], engs[d], a, PAGES_2MB, DEV_READ) !== PAGES_2MB) error = 'populate';
      }
      const t0 = nowNs();
      const r = await n(vm_munmap(mm, a, len));
      const dt = nowNs() - t0;
      if (r !== 0) error = `munmap ${r}`;
      for (let d = 0; d < DEVS; d++) if (device_access(devs[d], engs[d], a, 1, DEV_READ) !== 0) error = 'an entry survived the munmap';
      if (i >= WARMUP) xs.push(dt);
    }
    for (let d = 0; d < DEVS; d++) {
      device_engine_release(devs[d], engs[d]);
      if ((await device_close(devs[d])) !== 0) error ||= 'device_close';
    }
    return error;
  });
  return Math.round(median(xs) / 10) / 100;
}
