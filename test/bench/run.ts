// `npm run bench`: run every benchmark, each in a fresh Node process (one.ts), and print ONE
// JSON object on stdout with all the figures, the goals they are held to, the Node version and
// the date. Progress goes to stderr. A benchmark that fails or hangs still leaves one JSON
// object: its figures are null, its error is under `errors`, and the exit code is 1.

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { progress } from './measure.js';

/** in run order; each names an entry of one.ts */
const BENCHES = ['mutex', 'mutex_sim', 'mutex_lockdep', 'sim', 'sim_speed', 'threads', 'fault', 'swapin', 'reclaim', 'oom', 'invalidate', 'device_access', 'device_fault', 'invalidate_4dev', 'threads_stress', 'stress', 'explore'];
// per benchmark: a hung one must not hold the whole bench much past 2 minutes
const TIMEOUT_MS = 30_000;
const THREADS_TIMEOUT_MS = 60_000; // its workers hand off ~50k times
const LONG: Record<string, number> = { threads: THREADS_TIMEOUT_MS, threads_stress: 45_000, stress: 90_000 }; // threads_stress runs 10 s by definition

export const GOALS = {
  mutex_uncontended_ns: { max: 25 },
  sim_sched_points_per_s: { min: 2_000_000 },
  cpu_fault_per_s: { min: 500_000 },
  threads_mutex_handoff_ratio: { max: 1.2 },
} as const;

const ONE = fileURLToPath(new URL('./one.js', import.meta.url));

function runOne(name: string): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const timeout = LONG[name] ?? TIMEOUT_MS;
    const child = execFile(process.execPath, [ONE, name], { timeout, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) return reject(new Error(`benchmark '${name}' failed: ${err.killed ? `no result within ${timeout} ms` : err.message}`));
      try {
        const figures = JSON.parse(stdout.trim().split('\n').pop() ?? '') as Record<string, number>;
        progress(`${name}: ${JSON.stringify(figures)} (${Date.now() - t0} ms)`);
        resolve(figures);
      } catch {
        reject(new Error(`benchmark '${name}' printed no JSON: ${JSON.stringify(stdout.slice(0, 200))}`));
      }
    });
    child.stderr?.pipe(process.stderr);
  });
}

/** the keys each benchmark reports, so a failed one still shows up (as null) */
const KEYS: Record<string, string[]> = {
  mutex: ['mutex_uncontended_ns', 'raw_atomics_lock_unlock_ns'],
  mutex_sim: ['mutex_uncontended_sim_ns'],
  mutex_lockdep: ['mutex_uncontended_lockdep_ns'],
  sim: ['sim_sched_points_per_s', 'sim_steps_per_run'],
  sim_speed: ['sim_sched_points_per_s_speed'],
  threads: ['threads_mutex_handoff_p50_us', 'raw_atomics_handoff_p50_us'],
  fault: ['cpu_fault_per_s', 'native_fault_per_s'],
  swapin: ['swapin_fault_per_s'],
  reclaim: ['reclaim_pages_per_s_0mirror', 'reclaim_pages_per_s_4mirror'],
  oom: ['oom_to_free_ms', 'oom_reap_to_free_ms'],
  invalidate: ['invalidate_2mb_us'],
  explore: ['explore_runs_per_s_1job', 'explore_runs_per_s_2jobs', 'explore_run_ms'],
  device_access: ['device_access_per_s_checked', 'device_access_per_s_unchecked'],
  device_fault: ['device_fault_4k_p50_us', 'device_fault_2mb_p50_us'],
  invalidate_4dev: ['invalidate_2mb_4dev_us', 'munmap_2mb_0dev_us'],
  threads_stress: ['threads_stress_ops_per_s', 'threads_stress_device_pages', 'threads_stress_cpu_ops'],
  stress: ['stress_ops_per_s_checked', 'stress_ops_per_s_unchecked', 'stress_cpu_ops_per_s_checked', 'stress_violations_checked'],
};

async function main(): Promise<void> {
  const t0 = Date.now();
  const figures: Record<string, number | null> = {};
  const errors: Record<string, string> = {};
  for (const name of BENCHES) {
    progress(`running ${name}`);
    try {
      Object.assign(figures, await runOne(name));
    } catch (e) {
      errors[name] = e instanceof Error ? e.message : String(e);
      progress(errors[name]);
      for (const key of KEYS[name]) figures[key] ??= null;
    }
  }
  // the hand-off goal is relative: the mutex within 1.2x of the bare Atomics figure, same run
  const hm = figures.threads_mutex_handoff_p50_us;
  const hr = figures.raw_atomics_handoff_p50_us;
  figures.threads_mutex_handoff_ratio = typeof hm === 'number' && typeof hr === 'number' && hr > 0 ? Math.round((hm / hr) * 100) / 100 : null;
  const met: Record<string, boolean | null> = {};
  for (const [key, goal] of Object.entries(GOALS)) {
    const v = figures[key];
    met[key] = typeof v !== 'number' ? null : 'max' in goal ? v <= goal.max : v >= goal.min;
  }
  const failed = Object.keys(errors).length > 0;
  const out = {
    ...figures,
    goals: GOALS,
    goals_met: met,
    ...(failed ? { errors } : {}),
    node: process.version,
    date: new Date().toISOString(),
    bench_wall_s: Math.round((Date.now() - t0) / 100) / 10,
  };
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  if (failed) process.exitCode = 1;
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
