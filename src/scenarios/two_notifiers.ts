// two-notifiers: reference §9 scenario 16 and §1.7 (the 2019 "A/B" thread) with real drivers.
// One mm mirrored by two hlist notifiers: kvm-mmu ("A": a count raised in start, lowered in
// end, never fails) registered first, and userptr ("B": a trylock that fails when the range is
// not blockable, and no end) registered second, so B's start runs first (§9.29: C, B, A).
// A vCPU streams the memslot. The OOM reaper's invalidation pattern (the real per-VMA loop,
// non-blockable UNMAP starts, HZ/10 retries) runs while another task holds B's lock:
// - 'v4.19': the core runs every start and the caller skips every end, so A's count stays
//   raised: the vCPU retries forever and the device layer reports the livelock; each start
//   without an end is a pairing violation. Expected: both reported.
// - 'v5.12': the core calls A's end for a start that succeeded before B failed: clean.

import { defineScenario } from '../run/scenario.js';
import type { TaskContext } from '../sched/scheduler.js';
import type { Kernel } from '../sched/kernel.js';
import { defineStruct } from '../shm/layout.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap } from '../mm/mmap.js';
import { mmap_read_trylock, mmap_read_unlock } from '../mm/mm_inline.js';
import { HZ, MAX_OOM_REAP_RETRIES, reapVmas } from '../mm/oom_kill.js';
import type { ProcessContext } from '../mm/process.js';
import { put_user } from '../mm/uaccess.js';
import { ResL, deviceStats, device_close, device_ioctl, device_open, spawnDeviceProgram } from '../device/index.js';
import { kvmState } from '../../drivers/kvm-mmu.js';
import { userptrObj, userptr_lock, userptr_unlock } from '../../drivers/userptr.js';
import { settle as n, waitAtLeast, raise } from '../run/words.js';

export const AbL = defineStruct('two_notifiers_ctl', {
  res: ResL.$size, // the vCPU's result words
  mm: 1,
  gpu: 1,
  phase: 1, // 1: the holder may take B's lock; 2: the reaper may start
  held: 1, // the holder has B's lock
  release: 1, // the holder may drop it
  stop: 1, // the vCPU stops
  attempts: 1, // the reaper's attempts (-1: unable to reap)
  reaped: 1,
  in_progress: 1, // kvm at the end
  starts: 1,
  ends: 1,
  pinned_after: 1,
  setup: 1, // 0 ok, else the failing step's errno
  done: 1,
});

export interface AbArgs {
  pages: number;
  /** ms the holder keeps B's lock while the reaper retries */
  holdMs: number;
}

const sleep = async (k: Kernel, ns: number): Promise<void> => void (await k.sched.sleep(ns));

export default defineScenario<AbArgs, { ctl: number }>({
  name: 'two-notifiers',
  description: "kvm-mmu (A) and userptr (B) on one mm meet the OOM reaper's non-blockable UNMAP while B's lock is held (§9.16)",
  config: {
    maxTasks: 24,
    lockClasses: 128,
    lockdepEdges: 2048,
    eventRecords: 1 << 15,
    klogBytes: 1 << 18,
    strings: 512,
    stringBytes: 16384,
    kmalloc: { 8: 512, 16: 256, 32: 256, 64: 128, 256: 64, 1024: 16 },
    mem: { pages: 512, pageSize: 4096 },
    device: { devices: 4, sptDirs: 32, sptLeaves: 32 },
  },
  drivers: ['kvm-mmu', 'userptr'],
  args: { pages: 8, holdMs: 150 },
  variants: {
    'v4.19': {
      description: "the caller skips every end after a failed start: A's count stays raised and its vCPU livelocks",
      config: { notifierPolicy: 'v4.19' },
      expect: { violations: ['liveness', 'notifier_pairing'] },
    },
    'v5.12': {
      description: "the core calls A's end for the start that succeeded before B failed: clean",
      config: { notifierPolicy: 'v5.12' },
    },
  },
  start(ctx) {
    const ctl = ctx.alloc(AbL.$size);
    const args = { ...ctx.args, ctl };
    ctx.process({ name: 'vm', fn: 'abVm', args });
    ctx.spawn({ name: 'holder', fn: 'abHolder', args });
    ctx.spawn({ name: 'oom_reaper', fn: 'abReaper', args });
    return { ctl };
  },
  check(end) {
    const get = (f: keyof typeof AbL.$fields): number => end.word(end.state.ctl + AbL[f]);
    const out: string[] = [];
    if (get('setup') !== 0) return [`setup failed with ${get('setup')}`];
    if (get('done') !== 1) return ['the vm process did not finish'];
    const attempts = get('attempts');
    // at least one attempt while B's lock was held failed; one after it was dropped reaped
    if (!(attempts >= 2)) out.push(`the reaper needed ${attempts} attempt(s): expected a failed one while B's lock was held, then success`);
    if (get('pinned_after') !== 0) out.push("userptr still holds its pages after the reaper's successful attempt");
    const livelock = end.word(end.state.ctl + AbL.res + ResL.livelock);
    if (end.variant === 'v4.19') {
      if (get('in_progress') < 1) out.push(`v4.19: kvm's mmu_invalidate_in_progress is ${get('in_progress')}; expected it stuck raised (a start without its end)`);
      if (livelock !== 1) out.push('v4.19: the vCPU did not livelock');
    } else {
      if (get('in_progress') !== 0 || get('starts') !== get('ends')) out.push(`v5.12: kvm has ${get('starts')} starts, ${get('ends')} ends and in_progress ${get('in_progress')}; expected every start paired`);
      if (livelock !== 0) out.push('v5.12: the vCPU livelocked');
      if (end.word(end.state.ctl + AbL.res + ResL.errors) !== 0) out.push('v5.12: the vCPU saw fault errors');
    }
    return out;
  },
});

/** The process: memory, both devices, the vCPU; then it lets the holder and reaper go. */
export async function abVm({ k, mm, args }: ProcessContext<AbArgs & { ctl: number }>): Promise<void> {
  const w = k.arena.i32;
  const c = args.ctl;
  const N = args.pages;
  const ps = k.mmLayer.pageSize;
  const a = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (a < 0) return raise(k, c + AbL.setup, a);
  for (let i = 0; i < N; i++) await n(put_user(i + 1, a + i * ps));
  const kvm = await device_open('kvm-mmu', { name: 'vm0', slot_base: a, slot_npages: N });
  const gpu = await device_open('userptr', { name: 'gpu0' });
  if (kvm < 0 || gpu < 0) return raise(k, c + AbL.setup, Math.min(kvm, gpu));
  const bound = await device_ioctl(gpu, 'USERPTR', { addr: a, npages: N });
  const got = await device_ioctl(gpu, 'GET_PAGES', { handle: 1 });
  if (bound !== 1 || got !== 0) return raise(k, c + AbL.setup, -1);
  spawnDeviceProgram(k, k.sched, 'dev_stream', { dev: kvm, start: a, npages: N, iters: 1e9, burst: 4, duty: 0.5, pageNs: 10_000, stopWord: c + AbL.stop, resultAt: c + AbL.res });
  // the vCPU is running: it mapped the whole memslot
  while (deviceStats(k, kvm).installs < N) await sleep(k, 10_000);
  w[c + AbL.mm] = mm;
  w[c + AbL.gpu] = gpu;
  raise(k, c + AbL.phase, 1);
  await waitAtLeast(k, c + AbL.held, 1);
  raise(k, c + AbL.phase, 2);
  await sleep(k, args.holdMs * 1e6);
  raise(k, c + AbL.release, 1);
  await waitAtLeast(k, c + AbL.reaped, 1);
  // let the vCPU run on the reaped memory (it faults it back in), or livelock
  const seen = deviceStats(k, kvm).accesses;
  for (let t = 0; t < 2000 && Atomics.load(w, c + AbL.res + ResL.done) === 0 && deviceStats(k, kvm).accesses < seen + 4 * N; t++) await sleep(k, 1e6);
  raise(k, c + AbL.stop, 1);
  await waitAtLeast(k, c + AbL.res + ResL.done, 1);
  const st = kvmState(k, kvm);
  w[c + AbL.in_progress] = st.in_progress;
  w[c + AbL.starts] = st.starts;
  w[c + AbL.ends] = st.ends;
  w[c + AbL.pinned_after] = userptrObj(k, gpu, 1).pinned ? 1 : 0;
  await device_close(gpu);
  await device_close(kvm);
  raise(k, c + AbL.done, 1);
}

/** Another path of the userptr driver holding its object lock (B's lock) for a while. */
export async function abHolder({ k, args }: TaskContext<AbArgs & { ctl: number }>): Promise<void> {
  const c = args.ctl;
  await waitAtLeast(k, c + AbL.phase, 1);
  if (Atomics.load(k.arena.i32, c + AbL.setup) !== 0) return;
  const gpu = k.arena.i32[c + AbL.gpu];
  await n(userptr_lock(gpu));
  raise(k, c + AbL.held, 1);
  await waitAtLeast(k, c + AbL.release, 1);
  userptr_unlock(gpu);
}

/**
 * oom_reap_task's loop over the real per-VMA reap (reapVmas: a non-blockable UNMAP start per
 * private VMA, skipped with no end when refused), MAX_OOM_REAP_RETRIES attempts HZ/10 apart,
 * without the kill: the process and its devices keep running on the reaped memory.
 */
export async function abReaper({ k, args }: TaskContext<AbArgs & { ctl: number }>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  await waitAtLeast(k, c + AbL.phase, 2);
  const mm = w[c + AbL.mm];
  let attempts = -1;
  for (let i = 1; i <= MAX_OOM_REAP_RETRIES; i++) {
    let ok = false;
    if (mmap_read_trylock(mm)) {
      try {
        ok = reapVmas(k, mm);
      } finally {
        mmap_read_unlock(mm);
      }
    }
    if (ok) {
      attempts = i;
      break;
    }
    await sleep(k, HZ / 10);
  }
  w[c + AbL.attempts] = attempts;
  raise(k, c + AbL.reaped, 1);
}
