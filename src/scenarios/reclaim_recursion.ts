// reclaim-recursion: reference §6.1 ("kswapd vs direct reclaim"), §6.3 and §9 scenario 23 with
// the userptr driver, as the 2020 thread on i915 userptr put it: the object's get_pages worker
// pinned the object's pages one at a time with the object lock held, reasoning that an
// allocation that may fail (__GFP_RETRY_MAYFAIL) is safe there. It is not: any allocation that
// may direct-reclaim can reclaim a page the object itself maps, and reclaim's blockable CLEAR
// invalidation then takes the object lock in the notifier.
// A process maps the object's buffer and, behind it, a bystander buffer it fills until the
// zone is at its min watermark, binds the object, and has the driver's worker (a kthread;
// the process waits for it) get the pages. drivers/userptr.ts pins without its lock (its
// GET_PAGES, the fix); the pin-under-the-lock worker is this module's own (uptrGetPagesLocked).
// - 'buggy': lock held across the pin; the object's pages are not resident, so the direct
//   reclaim of the first pin takes bystander pages and never the object's: lockdep reports
//   the cycle (object lock -> fs_reclaim / mmu_notifier_invalidate_range_start -> object
//   lock) at that first allocation, and the run ends clean otherwise.
// - 'correct': GET_PAGES, no lock held across the pin; the object's pages are resident and
//   the oldest on the LRU, so reclaim does take them: the invalidation takes the free lock,
//   bumps the object's sequence, get_pages retries. Clean; the data survives the swap-out.
// - 'forced': lock held and the object's pages resident: reclaim in the worker's own fault
//   picks one, its invalidation waits for the lock the worker holds. The deadlock is reported
//   with both waits (the worker on its own lock inside reclaim, the process on the worker).
//   Under `threads` the watchdog reports it.

import { defineScenario } from '../run/scenario.js';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { defineStruct } from '../shm/layout.js';
import { MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { do_madvise } from '../mm/madvise.js';
import { vm_mmap, vm_munmap } from '../mm/mmap.js';
import type { ProcessContext } from '../mm/process.js';
import { get_user, put_user } from '../mm/uaccess.js';
import { vmstat } from '../mm/vmscan.js';
import {
  EFAULT,
  FOLL_WRITE,
  SPTE_WRITE,
  device_close,
  device_ioctl,
  device_lock,
  device_mm,
  device_open,
  device_priv,
  device_unlock,
  mmap_read_lock,
  mmap_read_unlock,
  mmget_not_zero,
  mmput,
  pin_user_pages_remote,
  shadow_pte_install,
  unpin_user_pages,
} from '../device/index.js';
import { UptrObjL, UserptrL, userptrObj, userptrStats } from '../../drivers/userptr.js';
import { settle as n, waitAtLeast, raise } from '../run/words.js';

export const RrL = defineStruct('reclaim_recursion_ctl', {
  obj: 2, // f64: the object's buffer (Float64 fields first: even offsets)
  setup: 1, // 0 ok, else the failing step's errno
  dev: 1,
  handle: 1,
  bystander: 1, // bystander pages touched to reach the min watermark
  go: 1, // the worker may get the pages
  worker_ret: 1,
  worker_done: 1,
  // observations
  allocstall: 1, // direct reclaims during the get_pages
  pgsteal_direct: 1,
  invalidations: 1, // the userptr's invalidations overlapping an object, during the get_pages
  retries: 1, // get_pages collisions
  pinned: 1,
  gets: 1,
  obj_bad: 1, // object pages whose word 0 is not what the CPU wrote
  bys_bad: 1,
  done: 1,
});

export interface RrArgs {
  /** pages of the object */
  pages: number;
  /** pages the bystander buffer may take */
  bystander: number;
  /** 'locked': this module's worker pins with the object lock held; 'unlocked': the driver's GET_PAGES */
  pattern: 'locked' | 'unlocked';
  /** the object's pages but the first are resident (and the oldest on the LRU) when the pin starts */
  resident: boolean;
}

type Ctx = RrArgs & { ctl: number };

const objWord = (i: number): number => 0x0b1e0000 + i;
const bysWord = (i: number): number => 0x0b5d0000 + i;

export default defineScenario<RrArgs, { ctl: number }>({
  name: 'reclaim-recursion',
  description: "userptr pins an object's pages under its object lock while direct reclaim can pick the object's own pages: lockdep's cycle, the fix, the real deadlock (§9.23)",
  config: {
    maxTasks: 16,
    lockClasses: 128,
    lockdepEdges: 2048,
    eventRecords: 1 << 15,
    klogBytes: 1 << 18,
    strings: 512,
    stringBytes: 16384,
    kmalloc: { 8: 256, 16: 128, 32: 128, 64: 64, 256: 32, 1024: 16 },
    mem: { pages: 128, pageSize: 4096, reclaim: true },
    swap: { slots: 128 },
    mm: { pgtables: 32, vmas: 32, procs: 4 },
    device: { devices: 2, sptDirs: 8, sptLeaves: 8 },
  },
  drivers: ['userptr'],
  args: { pages: 8, bystander: 128, pattern: 'locked', resident: false },
  variants: {
    buggy: {
      description: 'lock held across the pin, reclaim takes bystander pages only: lockdep reports the cycle at the first allocation; no hang',
      args: { pattern: 'locked', resident: false },
      expect: { violations: ['lockdep_circular'] },
    },
    correct: {
      description: "the driver's GET_PAGES (no lock across the pin): reclaim takes the object's pages, the invalidation bumps its sequence, get_pages retries; clean",
      args: { pattern: 'unlocked', resident: true },
    },
    forced: {
      description: "lock held across the pin and reclaim picks the object's own page: the worker waits on its own lock, the process on the worker: deadlock",
      args: { pattern: 'locked', resident: true },
      expect: { status: 'deadlock', violations: ['deadlock', 'lockdep_circular', 'lockdep_recursive'] },
    },
  },
  limits: { watchdogMs: 1000, threadsTimeMs: 30_000 },
  start(ctx) {
    const ctl = ctx.alloc(RrL.$size);
    const args: Ctx = { ...ctx.args, ctl };
    ctx.process({ name: 'app', fn: 'rrApp', args });
    ctx.spawn({ name: 'userptr-worker', fn: 'rrWorker', args });
    return { ctl };
  },
  check(end) {
    const g = (f: keyof typeof RrL.$fields): number => end.word(end.state.ctl + RrL[f]);
    const out: string[] = [];
    if (g('setup') !== 0) return [`setup failed with ${g('setup')}`];
    if (g('bystander') < 1) out.push('the bystander buffer did not take the zone down to its min watermark');
    if (end.variant === 'forced') {
      if (end.result.status !== 'deadlock') return [`forced: the run ended ${end.result.status}, expected a deadlock`];
      const rep = end.result.report ?? '';
      const self = /task (userptr-worker\/\d+) blocked in mutex on userptr->lock@[0-9a-f]+, held by (userptr-worker\/\d+)/.exec(rep);
      if (!self || self[1] !== self[2]) out.push(`forced: the report does not show the worker waiting for the object lock it holds itself:\n${rep}`);
      if (!/task app:\d+\.\d+\/\d+ blocked in word/.test(rep)) out.push(`forced: the report does not show the process waiting for the worker:\n${rep}`);
      if (!/#\d+: userptr->lock[\s\S]*#\d+: fs_reclaim[\s\S]*#\d+: mmu_notifier_invalidate_range_start[\s\S]*#\d+: userptr->lock/.test(rep)) out.push(`forced: the worker's held locks should read object lock, fs_reclaim, the invalidation map, object lock:\n${rep}`);
      if (g('worker_done') !== 0) out.push('forced: the worker finished');
      return out;
    }
    if (g('done') !== 1) return ['the app did not finish'];
    if (g('worker_ret') !== 0) out.push(`get_pages returned ${g('worker_ret')}`);
    if (g('allocstall') < 1 || g('pgsteal_direct') < 1) out.push(`the pin did not direct-reclaim (allocstall ${g('allocstall')}, pgsteal_direct ${g('pgsteal_direct')})`);
    if (g('pinned') !== 1 || g('gets') !== 1) out.push(`the object is ${g('pinned') ? '' : 'not '}pinned after ${g('gets')} get(s)`);
    if (g('obj_bad') !== 0) out.push(`${g('obj_bad')} object page(s) lost what the CPU wrote`);
    if (g('bys_bad') !== 0) out.push(`${g('bys_bad')} bystander page(s) lost what the CPU wrote`);
    if (end.variant === 'buggy') {
      if (g('invalidations') !== 0) out.push(`buggy: reclaim reached the object (${g('invalidations')} invalidations of it during the pin); it should take bystander pages only`);
      const ld = end.log.find((x) => x.kind === 'lockdep_circular');
      if (!ld || !/userptr->lock|i915_mmu_notifier->lock/.test(ld.text) || !/fs_reclaim|mmu_notifier_invalidate_range_start/.test(ld.text)) out.push(`buggy: lockdep's report should name the object lock and fs_reclaim / the invalidation map:\n${ld?.text}`);
    } else {
      if (g('invalidations') < 1 || g('retries') < 1) out.push(`correct: reclaim should have invalidated the object (${g('invalidations')}) and get_pages retried (${g('retries')})`);
    }
    return out;
  },
});

/** The process: the object, the bystander filling memory, the bind; then it waits for the worker. */
export async function rrApp({ k, mm, args }: ProcessContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const N = args.pages;
  const obj = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  const bys = await n(vm_mmap(mm, 0, args.bystander * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (obj < 0 || bys < 0) return raise(k, c + RrL.setup, Math.min(obj, bys));
  // the object's pages first: the oldest on the LRU
  for (let i = 0; i < N; i++) await n(put_user(objWord(i), obj + i * ps));
  const dev = await device_open('userptr', { name: 'gpu0' });
  if (dev < 0) return raise(k, c + RrL.setup, dev);
  const handle = await device_ioctl(dev, 'USERPTR', { addr: obj, npages: N });
  if (typeof handle !== 'number' || handle < 1) return raise(k, c + RrL.setup, typeof handle === 'number' ? handle : -1);
  // the app recycles (part of) the buffer: the invalidation takes the object lock inside the
  // notifier's map, which lockdep remembers
  const drop = args.resident ? 1 : N;
  const r = await n(do_madvise(mm, obj, drop * ps, MADV_DONTNEED));
  if (r !== 0) return raise(k, c + RrL.setup, r);
  // fill memory down to the min watermark, no further: the next fault must reclaim
  let b = 0;
  while (b < args.bystander && k.zone.nrFree > k.zone.min) {
    await n(put_user(bysWord(b), bys + b * ps));
    b++;
  }
  w[c + RrL.bystander] = k.zone.nrFree <= k.zone.min ? b : 0;
  k.arena.f64[(c + RrL.obj) >> 1] = obj;
  w[c + RrL.dev] = dev;
  w[c + RrL.handle] = handle;
  const vm0 = vmstat(k);
  const st0 = userptrStats(k, dev);
  raise(k, c + RrL.go, 1);
  await waitAtLeast(k, c + RrL.worker_done, 1);
  const vm1 = vmstat(k);
  const st1 = userptrStats(k, dev);
  w[c + RrL.allocstall] = vm1.allocstall - vm0.allocstall;
  w[c + RrL.pgsteal_direct] = vm1.pgsteal_direct - vm0.pgsteal_direct;
  w[c + RrL.invalidations] = st1.invalidations - st0.invalidations;
  w[c + RrL.retries] = st1.retries - st0.retries;
  const o = userptrObj(k, dev, handle);
  w[c + RrL.pinned] = o.pinned ? 1 : 0;
  w[c + RrL.gets] = o.gets;
  let bad = 0;
  for (let i = 0; i < N; i++) if ((await n(get_user(obj + i * ps))) !== (i < drop ? 0 : objWord(i))) bad++;
  w[c + RrL.obj_bad] = bad;
  bad = 0;
  for (let i = 0; i < b; i++) if ((await n(get_user(bys + i * ps))) !== bysWord(i)) bad++;
  w[c + RrL.bys_bad] = bad;
  await device_close(dev);
  await n(vm_munmap(mm, obj, N * ps));
  await n(vm_munmap(mm, bys, args.bystander * ps));
  raise(k, c + RrL.done, 1);
}

/** The driver's get_pages worker: the object's pages pinned and bound, one way or the other. */
export async function rrWorker({ k, args }: TaskContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  await waitAtLeast(k, c + RrL.go, 1);
  if (w[c + RrL.setup] !== 0) return;
  const dev = w[c + RrL.dev];
  const handle = w[c + RrL.handle];
  const r = args.pattern === 'unlocked' ? await device_ioctl(dev, 'GET_PAGES', { handle }) : await uptrGetPagesLocked(k, dev, handle);
  w[c + RrL.worker_ret] = typeof r === 'number' ? r : -1;
  raise(k, c + RrL.worker_done, 1);
}

/**
 * The pattern the thread warned about: with the object lock held, pin the pages one at a time
 * (each pin may fault, and the fault's allocation may direct-reclaim), then bind them. The
 * object is userptr's (UptrObjL); its release unpins what this pinned. 0 or -errno.
 */
export async function uptrGetPagesLocked(k: Kernel, dev: number, handle: number): Promise<number> {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const obj = device_priv(dev) + UserptrL.objs + (handle - 1) * UptrObjL.$size;
  const npages = w[obj + UptrObjL.npages];
  const start = k.arena.f64[(obj + UptrObjL.start) >> 1];
  const mm = device_mm(dev);
  if (!mmget_not_zero(mm)) return -EFAULT;
  const got = new Int32Array(npages);
  let pinned = 0;
  let ret = 0;
  try {
    await n(mmap_read_lock(mm));
    try {
      await n(device_lock(dev));
      try {
        for (; pinned < npages; pinned++) {
          const r = await pin_user_pages_remote(mm, start + pinned * ps, 1, FOLL_WRITE, got.subarray(pinned, pinned + 1));
          if (r !== 1) {
            ret = r < 0 ? r : -EFAULT;
            break;
          }
        }
        if (ret === 0) {
          w.set(got, w[obj + UptrObjL.pages]);
          w[obj + UptrObjL.pinned] = 1;
          w[obj + UptrObjL.gets]++;
          const seq = Atomics.load(w, obj + UptrObjL.seq);
          for (let i = 0; i < npages && ret === 0; i++) ret = shadow_pte_install(dev, start + i * ps, got[i], SPTE_WRITE, seq);
        }
      } finally {
        device_unlock(dev);
      }
    } finally {
      mmap_read_unlock(mm);
    }
  } finally {
    await n(mmput(mm));
  }
  if (ret !== 0 && w[obj + UptrObjL.pinned] === 0) unpin_user_pages(got, pinned);
  return ret;
}
