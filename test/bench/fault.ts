// CPU fault throughput: one task under `sim` maps N anonymous pages, writes one word in each
// (one write fault per page: zero-filled frame, PTE, rmap), unmaps them, and repeats. The
// figure counts faults per wall second, munmap included. Beside it, the same loop as a tiny C
// program built with the machine's `cc` and timed the same way in the same run.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootKernel } from '../../src/run/boot.js';
import { SimScheduler } from '../../src/sched/sim.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../src/mm/mman.js';
import { vm_mmap, vm_munmap } from '../../src/mm/mmap.js';
import { mmUsage } from '../../src/mm/mm_layer.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { put_user } from '../../src/mm/uaccess.js';
import { median, nowNs, samples } from './measure.js';

const PAGE = 4096;
const PAGES = 256; // per mmap
const ROUNDS = 400; // mmap/touch/munmap rounds per sample
const WARMUP = 2;
const REPS = 5;

export interface FaultBench {
  cpu_fault_per_s: number;
  native_fault_per_s: number | null;
  native_note?: string;
}

/** One sample: faults per wall second over ROUNDS rounds. */
async function onceFaults(seed: number, lockdep: boolean): Promise<number> {
  const k = bootKernel({ lockdep, events: false, mem: { pages: PAGES + 64, pageSize: PAGE } });
  const before = mmUsage(k);
  const sim = new SimScheduler(k, { seed });
  let faults = 0;
  let error = '';
  let t0 = 0;
  let dt = 0;
  spawn_process(k, sim, {
    name: 'faulter',
    fn: async ({ mm }) => {
      t0 = nowNs();
      for (let r = 0; r < ROUNDS; r++) {
        const m = vm_mmap(mm, 0, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        const a = typeof m === 'number' ? m : await m;
        if (a < 0) {
          error = `mmap: ${a}`;
          return;
        }
        for (let i = 0; i < PAGES; i++) {
          const p = put_user(i, a + i * PAGE);
          const v = typeof p === 'number' ? p : await p;
          if (v !== 0) {
            error = `put_user: ${v}`;
            return;
          }
        }
        const u = vm_munmap(mm, a, PAGES * PAGE);
        if ((typeof u === 'number' ? u : await u) !== 0) {
          error = 'munmap failed';
          return;
        }
        faults += PAGES;
      }
      dt = nowNs() - t0;
    },
  });
  const res = await sim.run();
  reap_zombies(k);
  if (res.status !== 'done' || error !== '' || faults !== ROUNDS * PAGES) throw new Error(`fault bench: run '${res.status}' ${error} faults ${faults}`);
  const after = mmUsage(k);
  if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`fault bench: leak ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
  return (faults / dt) * 1e9;
}

const C_SOURCE = `
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
int main(int argc, char **argv) {
  long pages = atol(argv[1]), rounds = atol(argv[2]), page = 4096;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long r = 0; r < rounds; r++) {
    volatile int *p = mmap(0, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (long i = 0; i < pages; i++) p[i * (page / 4)] = (int)i;
    if (munmap((void *)p, pages * page)) return 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
  printf("%.0f\\n", pages * rounds / ns * 1e9);
  return 0;
}
`;

/** The native loop, compiled now; null with a note when there is no compiler. */
function nativeFaults(): { perS: number | null; note?: string } {
  let dir = '';
  try {
    dir = mkdtempSync(join(tmpdir(), 'shadowmm-fault-'));
    const src = join(dir, 'fault.c');
    const bin = join(dir, 'fault');
    writeFileSync(src, C_SOURCE);
    try {
      execFileSync('cc', ['-O2', '-o', bin, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      return { perS: null, note: `no native figure: cc failed or is missing (${(e as Error).message.split('\n')[0]})` };
    }
    const runs: number[] = [];
    for (let i = 0; i < WARMUP + REPS; i++) {
      const out = execFileSync(bin, [String(PAGES), String(ROUNDS)], { encoding: 'utf8' });
      if (i >= WARMUP) runs.push(Number(out.trim()));
    }
    return { perS: Math.round(median(runs)) };
  } catch (e) {
    return { perS: null, note: `no native figure: ${(e as Error).message.split('\n')[0]}` };
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/** Default kernel config except the event log (off, as in the other speed figures); lockdep on unless told. */
export async function benchCpuFault(opts: { lockdep?: boolean } = {}): Promise<FaultBench> {
  const lockdep = opts.lockdep ?? true;
  let seed = 1;
  const xs = await samples(WARMUP, REPS, () => onceFaults(seed++, lockdep));
  const native = nativeFaults();
  const out: FaultBench = { cpu_fault_per_s: Math.round(median(xs)), native_fault_per_s: native.perS };
  if (native.note) out.native_note = native.note;
  return out;
}

// `node dist/test/bench/fault.js` or `npx tsx test/bench/fault.ts`: print the figures
if (process.argv[1] && /bench[/\\]fault\.(ts|js)$/.test(process.argv[1])) {
  const lockdep = !process.argv.includes('--no-lockdep');
  benchCpuFault({ lockdep }).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
}
