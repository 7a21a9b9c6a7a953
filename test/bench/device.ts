// Device access throughput: one device engine streams over a faulted-in buffer through its
// shadow page table (device_access bursts of BURST pages: begin, translate, touch one word,
// end), under `sim` with one task running. Two figures from the same run: the mirror check on
// (the default: every access compares the shadow PTE with the host PTE) and off (speed runs).
// Counts page accesses per wall second.

import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap } from '../../src/mm/mmap.js';
import { spawn_process } from '../../src/mm/process.js';
import { put_user } from '../../src/mm/uaccess.js';
import { DEV_READ, device_access, device_close, device_engine_attach, device_fault, device_miss, device_open } from '../../src/device/index.js';
import '../fixtures/devmirror.js';
import { median, nowNs } from './measure.js';

const PAGE = 4096;
const PAGES = 1024;
const BURST = 64;
const PASSES = 100; // per sample: PASSES * PAGES accesses
const WARMUP = 2;
const REPS = 7;

export interface DeviceAccessBench {
  device_access_per_s_checked: number;
  device_access_per_s_unchecked: number;
}

async function n(v: number | Promise<number>): Promise<number> {
  return typeof v === 'number' ? v : await v;
}

export async function benchDeviceAccess(): Promise<DeviceAccessBench> {
  const k = bootKernel({ mem: { pages: PAGES + 256, pageSize: PAGE }, device: { sptLeaves: 8, sptDirs: 8 } });
  const sim = new SimScheduler(k, { seed: 1, stallMs: 60_000 });
  const rate: Record<'on' | 'off', number[]> = { on: [], off: [] };
  let error = '';
  spawn_process(k, sim, {
    name: 'bench',
    fn: async ({ mm }) => {
      const a = await n(vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
      for (let i = 0; i < PAGES; i++) await n(put_user(i, a + i * PAGE));
      const dev = await device_open('test-mirror', { name: 'bench0' });
      if (dev < 0) {
        error = `device_open ${dev}`;
        return;
      }
      // the device's engine: fault the buffer in, then stream; the process waits on a word
      const doneWord = k.kmalloc.kzalloc(8);
      const resolve = (): void => {
        Atomics.store(k.arena.i32, doneWord, 1);
        k.sched.wake(doneWord, Infinity);
      };
      {
        k.sched.spawn({
          name: 'bench0:e0',
          kind: 'device',
          fn: async () => {
            device_engine_attach(dev, 0);
            for (let addr = a; addr < a + PAGES * PAGE; ) {
              const done = device_access(dev, 0, addr, BURST, DEV_READ);
              addr += done * PAGE;
              if (done < BURST && addr < a + PAGES * PAGE && (await n(device_fault(dev, 0, device_miss.addr, BURST - done, 0))) < 0) {
                error = 'fault in failed';
                return resolve();
              }
            }
            for (const mode of ['on', 'off', 'on', 'off'] as const) {
              k.devices.mirrorCheck = mode === 'on';
              for (let rep = 0; rep < WARMUP + REPS; rep++) {
                let pages = 0;
                const t0 = nowNs();
                for (let p = 0; p < PASSES; p++) {
                  for (let addr = a; addr < a + PAGES * PAGE; addr += BURST * PAGE) pages += device_access(dev, 0, addr, BURST, DEV_READ);
                }
                const dt = nowNs() - t0;
                if (pages !== PASSES * PAGES) error = `a pass missed: ${pages} pages`;
                if (rep >= WARMUP) rate[mode].push((pages / dt) * 1e9);
              }
            }
            k.devices.mirrorCheck = true;
            resolve();
          },
        });
      }
      while (Atomics.load(k.arena.i32, doneWord) === 0) {
        const r = k.sched.wait(doneWord, 0);
        if (typeof r !== 'number') await r;
      }
      k.kmalloc.kfree(doneWord);
      await device_close(dev);
    },
  });
  const res = await sim.run();
  const log = k.klog.read();
  if (res.status !== 'done' || error !== '' || log.length !== 0) throw new Error(`device bench: run '${res.status}' ${error} ${log.map((x) => x.kind).join(',')}`);
  return { device_access_per_s_checked: Math.round(median(rate.on)), device_access_per_s_unchecked: Math.round(median(rate.off)) };
}

// `node dist/test/bench/device.js` (or tsx) prints the figures alone
if (import.meta.url === `file://${process.argv[1]}`) {
  benchDeviceAccess().then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
}
