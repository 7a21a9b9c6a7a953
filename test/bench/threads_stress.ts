// threads_stress_ops_per_s: 4 device workers (test-mirror devices running stream and random
// programs) and 2 CPU tasks (writes that fault, munmap + mmap back, mprotect R and back) on one
// mm for 10 s of wall time under `threads`, every check on. Ops = device page accesses + CPU
// operations, per wall second of the run. It must end clean: no record in the klog, no
// violation, every shadow PTE agreeing with the host at the end, every device closed.

import { fileURLToPath } from 'node:url';
import { bootKernel } from '../../src/run/boot.js';
import { ThreadsRunner } from '../../src/run/threads.js';
import { reap_zombies, spawn_process } from '../../src/mm/process.js';
import { DEVS, StressL, type StressArgs } from './threads_stress_tasks.js';

const TASKS = fileURLToPath(new URL('./threads_stress_tasks.js', import.meta.url));
const DEVMIRROR = fileURLToPath(new URL('../fixtures/devmirror.js', import.meta.url));

export interface ThreadsStressBench {
  threads_stress_ops_per_s: number;
  threads_stress_device_pages: number;
  threads_stress_cpu_ops: number;
}

export async function benchThreadsStress(durationMs = 10_000): Promise<ThreadsStressBench> {
  const P = 4096;
  const k = bootKernel({
    maxTasks: 40,
    lockClasses: 128,
    lockdepEdges: 2048,
    klogBytes: 1 << 18,
    kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 16 },
    mem: { pages: 1024, pageSize: P },
    device: { devices: 8, sptDirs: 64, sptLeaves: 32 },
  });
  const runner = new ThreadsRunner(k, { watchdogMs: 5000, timeoutMs: durationMs + 30_000, preload: [DEVMIRROR] });
  const ctl = k.kmalloc.kzalloc(StressL.$size);
  const args: StressArgs = { ctl, base: 0x40000000, pages: 64, pageSize: P, cpus: 2, durationMs, epochMs: Date.now(), seed: 5 };
  if (spawn_process(k, runner, { name: 'stress', module: TASKS, fn: 'stressCpu', args, threads: 2 }) <= 0) throw new Error('threads stress: spawn_process');
  const r = await runner.run();
  reap_zombies(k);
  const w = k.arena.i32;
  const log = k.klog.read();
  const f = (x: keyof typeof StressL.$fields): number => w[ctl + (StressL as unknown as Record<string, number>)[x]];
  const bad = [r.status !== 'done' && `run '${r.status}' ${r.report ?? ''}`, log.length !== 0 && log.map((x) => `[${x.kind}] ${x.text.split('\n')[0]}`).join('; '), f('errors') && `${f('errors')} errors`, f('violations') && `${f('violations')} violations`, f('checked') && `${f('checked')} bad shadow PTEs`, f('closed') !== DEVS && `${f('closed')} devices closed`].filter(Boolean);
  if (bad.length) throw new Error(`threads stress: ${bad.join(', ')}`);
  const s = (f('end_ms') - f('start_ms')) / 1000;
  return { threads_stress_ops_per_s: Math.round((f('pages') + f('cpu_ops')) / s), threads_stress_device_pages: f('pages'), threads_stress_cpu_ops: f('cpu_ops') };
}
