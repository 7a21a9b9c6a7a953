// The oom_reaper (mm/oom_kill.c, reference §5): a kthread that unmaps an OOM victim's private
// memory without waiting for it to exit. Each VMA goes under a NON-BLOCKABLE UNMAP
// invalidation (§7), so a driver that cannot invalidate without sleeping makes it retry
// (MAX_OOM_REAP_RETRIES, HZ/10 apart) and, at worst, report "unable to reap". Victims arrive
// through queue_oom_reaper (oom_kill.ts), once per mm, after OOM_REAPER_DELAY ('v5.18') or at
// once ('v4.6'). The queue and counters live in the mm layer's OOM header words, shared with
// oom_kill.ts (which owns words 0, 7 and 8).

import { fileURLToPath } from 'node:url';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { heldLocksText } from '../sched/report.js';
import { MMU_NOTIFY_UNMAP, MmuNotifierRange, mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start_nonblock, mmu_notifier_range_init } from '../notifier/index.js';
import { MMG_OOM, MMG_OOM_WORDS } from './mm_layer.js';
import { mm_flags_set, mm_flags_test, mm_flags_test_and_set, mmap_read_trylock, mmap_read_unlock, mmdrop, mmgrab } from './mm_inline.js';
import { tlb_finish_mmu, tlb_gather_mmu } from './mm_pt.js';
import { ProcL } from './process.js';
import { MMF_OOM_REAP_QUEUED, MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MmL, VM_HUGETLB, VM_PFNMAP, VM_SHARED } from './types.js';
import { unmap_single_vma } from './unmap.js';
import { MM_EV, REAP_UNABLE, emitReap } from './events.js';
import { V_FLAGS, V_NEXT, vma_end, vma_start } from './vma.js';

/** one second of scheduler time (virtual under sim, real under threads), in ns */
export const HZ = 1e9;
export const MAX_OOM_REAP_RETRIES = 10;
/** ≈v5.18+: give the victim time to clean up its robust futexes before reaping */
export const OOM_REAPER_DELAY = 2 * HZ;

/** 'v5.18': the queue_oom_reaper timer (OOM_REAPER_DELAY); 'v4.6': wake the reaper at once */
export type OomReaperPolicy = 'v5.18' | 'v4.6';
const POLICIES: OomReaperPolicy[] = ['v5.18', 'v4.6'];

// header words (0, 7, 8 belong to oom_kill.ts)
const O_QLOCK = 1; // oom_reaper_lock
const O_QSEQ = 2; // oom_reaper_wait: bumped on every queue / stop
const O_QHEAD = 3;
const O_QTAIL = 4;
const O_STOP = 5;
const O_POLICY = 6;
const O_ATTEMPTS = 9; // oom_reap_task_mm calls, all victims
const O_FIRST_MS = 10; // time of the last victim's first / latest attempt
const O_LAST_MS = 11;
const O_UNABLE = 12; // "unable to reap" reports
const O_REAPED = 13; // successful __oom_reap_task_mm passes
const O_Q = 16; // ring of (mm, pid, due_ms)
const Q_ENT = 3;
const Q_LEN = Math.floor((MMG_OOM_WORDS - O_Q) / Q_ENT);

const g = (k: Kernel): number => k.mmLayer.g + MMG_OOM;

const nowMs = (k: Kernel): number => Math.floor(k.sched.now() / 1e6);

const rssKb = (k: Kernel, mm: number, i: number): number => (k.arena.i32[mm + MmL.rss_stat + i] * k.mmLayer.pageSize) >> 10;

export function oom_set_reaper_policy(k: Kernel, p: OomReaperPolicy): void {
  k.arena.i32[g(k) + O_POLICY] = POLICIES.indexOf(p);
}

/** the reaper's counters, for oomStats */
export function reaperStats(k: Kernel): { reapAttempts: number; firstAttemptMs: number; lastAttemptMs: number; unableToReap: number; reaped: number } {
  const w = k.arena.i32;
  const b = g(k);
  return { reapAttempts: w[b + O_ATTEMPTS], firstAttemptMs: w[b + O_FIRST_MS], lastAttemptMs: w[b + O_LAST_MS], unableToReap: w[b + O_UNABLE], reaped: w[b + O_REAPED] };
}

/** queue_oom_reaper: once per mm; 'v5.18' delays the reaper by OOM_REAPER_DELAY. */
export function queue_oom_reaper(k: Kernel, mm: number, pid: number): void {
  if (mm_flags_test_and_set(MMF_OOM_REAP_QUEUED, mm)) return;
  const w = k.arena.i32;
  const b = g(k);
  const delay = POLICIES[w[b + O_POLICY]] === 'v4.6' ? 0 : OOM_REAPER_DELAY / 1e6;
  arch_spin_lock(w, b + O_QLOCK); // the reaper queue: a few stores under it
  const tail = w[b + O_QTAIL];
  if (tail - w[b + O_QHEAD] >= Q_LEN) {
    arch_spin_unlock(w, b + O_QLOCK);
    mm_flags_set(MMF_OOM_SKIP, mm); // no room: behave as if reaped, the victim still exits
    return;
  }
  mmgrab(mm); // the queue's reference (the kernel holds the task)
  const e = b + O_Q + (tail % Q_LEN) * Q_ENT;
  w[e] = mm;
  w[e + 1] = pid;
  w[e + 2] = nowMs(k) + delay;
  w[b + O_QTAIL] = tail + 1;
  arch_spin_unlock(w, b + O_QLOCK);
  Atomics.add(w, b + O_QSEQ, 1);
  k.sched.wake(b + O_QSEQ, Infinity);
}

// ---- the reaper ------------------------------------------------------------------------------

/** __oom_reap_task_mm: true only if no VMA was skipped. */
function __oom_reap_task_mm(k: Kernel, mm: number): boolean {
  // faults that would install anon PTEs now fail (check_stable_address_space)
  mm_flags_set(MMF_UNSTABLE, mm);
  return reapVmas(k, mm);
}

/**
 * The reaper's unmap of every private VMA, each inside a non-blockable UNMAP range over the
 * whole VMA; a VMA whose start is refused is skipped with no end. True only if none was
 * skipped. The caller holds the mmap_lock for read (the driver tests also call this alone,
 * to meet the reaper's invalidations without killing anything).
 */
export function reapVmas(k: Kernel, mm: number): boolean {
  const w = k.arena.i32;
  let ret = true;
  for (let vma = w[mm + MmL.mmap]; vma !== 0; vma = w[vma + V_NEXT]) {
    const f = w[vma + V_FLAGS];
    if ((f & (VM_HUGETLB | VM_PFNMAP)) !== 0) continue;
    if ((f & VM_SHARED) !== 0) continue; // shared pages belong to the file / shmem object, not the victim
    const start = vma_start(k, vma);
    const end = vma_end(k, vma);
    const range = new MmuNotifierRange();
    mmu_notifier_range_init(range, MMU_NOTIFY_UNMAP, 0, mm, start, end);
    const tlb = tlb_gather_mmu(k, mm);
    if (mmu_notifier_invalidate_range_start_nonblock(range) !== 0) {
      tlb_finish_mmu(tlb);
      ret = false; // no end: nothing was started
      continue;
    }
    unmap_single_vma(k, tlb, vma, start, end);
    if (mmu_notifier_invalidate_range_end(range) !== undefined) throw new Error('oom_reaper: a non-blockable range end slept');
    tlb_finish_mmu(tlb);
  }
  return ret;
}

/** oom_reap_task_mm: false means retry. */
export function oom_reap_task_mm(k: Kernel, mm: number, pid: number, name: string): boolean {
  const w = k.arena.i32;
  const b = g(k);
  const t = nowMs(k);
  emitReap(k, MM_EV.REAP_ATTEMPT, mm, pid, 0);
  Atomics.add(w, b + O_ATTEMPTS, 1);
  if (w[b + O_FIRST_MS] < 0) w[b + O_FIRST_MS] = t; // oom_reap_task resets it per victim
  w[b + O_LAST_MS] = t;
  if (!mmap_read_trylock(mm)) return false;
  try {
    // exit_mmap already unmapped everything and set the bit
    if (mm_flags_test(MMF_OOM_SKIP, mm)) return true;
    if (!__oom_reap_task_mm(k, mm)) return false;
    Atomics.add(w, b + O_REAPED, 1);
    k.klog.write('oom_reaper', current.id, k.sched.now(), `oom_reaper: reaped process ${pid} (${name}), now anon-rss:${rssKb(k, mm, MM_ANONPAGES)}kB, file-rss:${rssKb(k, mm, MM_FILEPAGES)}kB, shmem-rss:${rssKb(k, mm, MM_SHMEMPAGES)}kB`);
    return true;
  } finally {
    mmap_read_unlock(mm);
  }
}

/** debug_show_all_locks: who holds what, every live task. */
function show_all_locks(k: Kernel): string {
  const lines = ['Showing all locks held in the system:'];
  for (const t of k.tasks.live()) {
    const s = heldLocksText(k, t);
    if (!s.startsWith('no locks')) lines.push(s);
  }
  return lines.join('\n');
}

/** oom_reap_task: up to MAX_OOM_REAP_RETRIES attempts HZ/10 apart; always ends with MMF_OOM_SKIP. */
export async function oom_reap_task(k: Kernel, mm: number, pid: number, name: string): Promise<void> {
  const w = k.arena.i32;
  w[g(k) + O_FIRST_MS] = -1; // per victim
  let attempts = 0;
  emitReap(k, MM_EV.REAP_BEGIN, mm, pid, 0);
  while (attempts++ < MAX_OOM_REAP_RETRIES && !oom_reap_task_mm(k, mm, pid, name)) {
    emitReap(k, MM_EV.REAP_RETRY, mm, pid, attempts);
    const p = k.sched.sleep(HZ / 10); // schedule_timeout_idle
    if (p !== undefined) await p;
  }
  const unable = attempts > MAX_OOM_REAP_RETRIES && !mm_flags_test(MMF_OOM_SKIP, mm);
  if (unable) {
    Atomics.add(w, g(k) + O_UNABLE, 1);
    k.klog.write('oom_unable_to_reap', current.id, k.sched.now(), `oom_reaper: unable to reap pid:${pid} (${name})\n${show_all_locks(k)}`);
  }
  emitReap(k, MM_EV.REAP_END, mm, pid, Math.min(attempts, MAX_OOM_REAP_RETRIES) | (unable ? REAP_UNABLE : 0));
  mm_flags_set(MMF_OOM_SKIP, mm); // the OOM killer may now pick another victim
}

/** Pop the next due victim, or the ms to wait (Infinity if none queued). */
function dequeue(k: Kernel): { mm: number; pid: number } | number {
  const w = k.arena.i32;
  const b = g(k);
  arch_spin_lock(w, b + O_QLOCK); // the reaper queue: a few stores under it
  try {
    const head = w[b + O_QHEAD];
    if (head === w[b + O_QTAIL]) return Infinity;
    const e = b + O_Q + (head % Q_LEN) * Q_ENT;
    const wait = w[e + 2] - nowMs(k);
    if (wait > 0) return wait;
    w[b + O_QHEAD] = head + 1;
    return { mm: w[e], pid: w[e + 1] };
  } finally {
    arch_spin_unlock(w, b + O_QLOCK);
  }
}

/** The oom_reaper kthread (spawn as kind 'kthread'; module export for threads). Runs until oom_reaper_stop. */
export async function oom_reaper(ctx: TaskContext<unknown>): Promise<void> {
  const k = ctx.k;
  const w = k.arena.i32;
  const b = g(k);
  for (;;) {
    const seq = Atomics.load(w, b + O_QSEQ);
    const next = dequeue(k);
    if (typeof next === 'number') {
      if (Atomics.load(w, b + O_STOP) !== 0 && next === Infinity) return;
      const r = k.sched.wait(b + O_QSEQ, seq, next === Infinity ? undefined : next * 1e6);
      if (typeof r !== 'number') await r;
      continue;
    }
    // the timer's check: a victim that already exited needs no reaping
    if (!mm_flags_test(MMF_OOM_SKIP, next.mm)) {
      const p = procOf(k, next.pid, next.mm);
      const name = p === 0 ? '?' : k.strings.get(w[p + ProcL.name]);
      await oom_reap_task(k, next.mm, next.pid, name);
    }
    mmdrop(next.mm);
  }
}

function procOf(k: Kernel, pid: number, mm: number): number {
  const pool = k.mmLayer.procs;
  return pool.inUse(pid) && k.arena.i32[pool.at(pid) + ProcL.mm] === mm ? pool.at(pid) : 0;
}

/** kthread_stop for the reaper: it returns once its queue is empty. */
export function oom_reaper_stop(k: Kernel): void {
  const w = k.arena.i32;
  Atomics.store(w, g(k) + O_STOP, 1);
  Atomics.add(w, g(k) + O_QSEQ, 1);
  k.sched.wake(g(k) + O_QSEQ, Infinity);
}

/** This module's path, for spawning `oom_reaper` under threads. */
export function oomReaperModule(): string {
  return fileURLToPath(import.meta.url);
}
