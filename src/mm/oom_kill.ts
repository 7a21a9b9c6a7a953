// mm/oom_kill.c (reference §5): out_of_memory picks a victim by RSS and SIGKILLs it; the
// oom_reaper kthread then unmaps the victim's private memory without waiting for it to exit,
// under NON-BLOCKABLE UNMAP invalidations (§7), so a driver that cannot invalidate without
// sleeping makes it retry (MAX_OOM_REAP_RETRIES, HZ/10 apart) and, at worst, give up.
// Hooks left for memcg / LRU: `OomControl.memcg` filters candidates; `oom_kill_process` is the
// fault-injection entry ("OOM of a chosen process").
// State shared by every thread lives in the mm layer's header words (MMG_OOM..).

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
import { PROC_RUNNING, ProcL, kill_process } from './process.js';
import { MMF_OOM_REAP_QUEUED, MMF_OOM_SKIP, MMF_UNSTABLE, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL, VM_HUGETLB, VM_PFNMAP, VM_SHARED } from './types.js';
import { unmap_single_vma } from './unmap.js';
import { V_FLAGS, V_NEXT, vma_end, vma_start } from './vma.js';

/** one second of scheduler time (virtual under sim, real under threads), in ns */
export const HZ = 1e9;
export const MAX_OOM_REAP_RETRIES = 10;
/** ≈v5.18+: give the victim time to clean up its robust futexes before reaping */
export const OOM_REAPER_DELAY = 2 * HZ;

/** 'v5.18': the queue_oom_reaper timer (OOM_REAPER_DELAY); 'v4.6': wake the reaper at once */
export type OomReaperPolicy = 'v5.18' | 'v4.6';
const POLICIES: OomReaperPolicy[] = ['v5.18', 'v4.6'];

// header words
const O_LOCK = 0; // oom_lock (trylock only, as __alloc_pages_may_oom takes it)
const O_QLOCK = 1; // oom_reaper_lock
const O_QSEQ = 2; // oom_reaper_wait: bumped on every queue / stop
const O_QHEAD = 3;
const O_QTAIL = 4;
const O_STOP = 5;
const O_POLICY = 6;
const O_KILLS = 7; // victims chosen
const O_WHILE_HELD = 8; // victims chosen while an earlier victim still held memory
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

export function oom_set_reaper_policy(k: Kernel, p: OomReaperPolicy): void {
  k.arena.i32[g(k) + O_POLICY] = POLICIES.indexOf(p);
}

export interface OomStats {
  kills: number;
  victimsWhileHeld: number;
  reapAttempts: number;
  firstAttemptMs: number;
  lastAttemptMs: number;
  unableToReap: number;
  reaped: number;
}

export function oomStats(k: Kernel): OomStats {
  const w = k.arena.i32;
  const b = g(k);
  return { kills: w[b + O_KILLS], victimsWhileHeld: w[b + O_WHILE_HELD], reapAttempts: w[b + O_ATTEMPTS], firstAttemptMs: w[b + O_FIRST_MS], lastAttemptMs: w[b + O_LAST_MS], unableToReap: w[b + O_UNABLE], reaped: w[b + O_REAPED] };
}

// ---- victim selection ----------------------------------------------------------------------

const rss = (w: Int32Array, mm: number, i: number): number => w[mm + MmL.rss_stat + i];
const rssKb = (k: Kernel, mm: number, i: number): number => (rss(k.arena.i32, mm, i) * k.mmLayer.pageSize) >> 10;

/** oom_badness: pages the kill would free; -1 if unkillable or already on its way out. */
export function oom_badness(k: Kernel, pid: number): number {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  const p = pool.at(pid);
  const mm = w[p + ProcL.mm];
  if (w[p + ProcL.state] !== PROC_RUNNING || mm === 0) return -1;
  if ((Atomics.load(w, mm + MmL.flags) & (1 << MMF_OOM_SKIP)) !== 0) return -1;
  // no per-mm page-table counter here: the VMA count stands in for mm_pgtables_bytes
  return rss(w, mm, MM_FILEPAGES) + rss(w, mm, MM_ANONPAGES) + rss(w, mm, MM_SHMEMPAGES) + rss(w, mm, MM_SWAPENTS) + w[mm + MmL.map_count];
}

export interface OomControl {
  /** memcg id to choose within (memcg OOM), undefined for a global OOM */
  memcg?: number;
}

/** An earlier victim whose address space still holds pages (reaper gave up, exit not done). */
function victim_holds_memory(k: Kernel): boolean {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (!pool.inUse(pid)) continue;
    const om = w[pool.at(pid) + ProcL.oom_mm];
    if (om !== 0 && rss(w, om, MM_ANONPAGES) + rss(w, om, MM_FILEPAGES) + rss(w, om, MM_SHMEMPAGES) > 0) return true;
  }
  return false;
}

/** select_bad_process: the pid with the highest badness, 0 if none, -1 to abort (a victim still exiting). */
export function select_bad_process(k: Kernel, oc: OomControl = {}): number {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  let chosen = 0;
  let best = -1;
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (!pool.inUse(pid)) continue;
    const p = pool.at(pid);
    const mm = w[p + ProcL.mm];
    if (oc.memcg !== undefined && (mm === 0 || w[mm + MmL.memcg] !== oc.memcg)) continue;
    // oom_evaluate_task: a victim not yet done (no MMF_OOM_SKIP) means wait, do not kill more
    const om = w[p + ProcL.oom_mm];
    if (om !== 0 && w[p + ProcL.state] === PROC_RUNNING && (Atomics.load(w, om + MmL.flags) & (1 << MMF_OOM_SKIP)) === 0) return -1;
    const points = oom_badness(k, pid);
    if (points > best) {
      best = points;
      chosen = pid;
    }
  }
  return chosen;
}

/** out_of_memory from a task: true if a victim was killed or one is still on its way out. */
export function out_of_memory(k: Kernel, oc: OomControl = {}): boolean | number {
  const w = k.arena.i32;
  const lock = g(k) + O_LOCK;
  if (Atomics.compareExchange(w, lock, 0, 1) !== 0) return true; // someone else is killing
  try {
    const pid = select_bad_process(k, oc);
    if (pid === -1) return true;
    if (pid === 0) return false; // the kernel panics here ("no killable processes")
    oom_kill_process(k, pid, oc.memcg === undefined ? 'Out of memory' : 'Memory cgroup out of memory');
    return pid;
  } finally {
    Atomics.store(w, lock, 0);
  }
}

/** oom_kill_process: kill `pid` (also the fault-injection entry). */
export function oom_kill_process(k: Kernel, pid: number, message = 'Out of memory'): void {
  const w = k.arena.i32;
  if (victim_holds_memory(k)) Atomics.add(w, g(k) + O_WHILE_HELD, 1);
  Atomics.add(w, g(k) + O_KILLS, 1);
  __oom_kill_process(k, pid, message);
}

function __oom_kill_process(k: Kernel, pid: number, message: string): void {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  const p = pool.at(pid);
  const mm = w[p + ProcL.mm];
  const name = k.strings.get(w[p + ProcL.name]);
  // mark_oom_victim: signal->oom_mm pins the struct until the process is freed
  if (w[p + ProcL.oom_mm] === 0) {
    mmgrab(mm);
    w[p + ProcL.oom_mm] = mm;
  }
  kill_process(k, pid);
  k.klog.write('oom_kill', current.id, k.sched.now(), `${message}: Killed process ${pid} (${name}) total-vm:${(w[mm + MmL.total_vm] * k.mmLayer.pageSize) >> 10}kB, anon-rss:${rssKb(k, mm, MM_ANONPAGES)}kB, file-rss:${rssKb(k, mm, MM_FILEPAGES)}kB, shmem-rss:${rssKb(k, mm, MM_SHMEMPAGES)}kB`);
  // other processes sharing the mm die too (threads of one process are already covered)
  for (let q = 1; q < pool.capacity; q++) {
    if (q === pid || !pool.inUse(q) || w[pool.at(q) + ProcL.mm] !== mm) continue;
    const qp = pool.at(q);
    if (w[qp + ProcL.state] !== PROC_RUNNING) continue;
    k.klog.write('oom_kill', current.id, k.sched.now(), `oom killer: Killed process ${q} (${k.strings.get(w[qp + ProcL.name])}) sharing same memory`);
    kill_process(k, q);
  }
  queue_oom_reaper(k, mm, pid);
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
  while (attempts++ < MAX_OOM_REAP_RETRIES && !oom_reap_task_mm(k, mm, pid, name)) {
    const p = k.sched.sleep(HZ / 10); // schedule_timeout_idle
    if (p !== undefined) await p;
  }
  if (attempts > MAX_OOM_REAP_RETRIES && !mm_flags_test(MMF_OOM_SKIP, mm)) {
    Atomics.add(w, g(k) + O_UNABLE, 1);
    k.klog.write('oom_unable_to_reap', current.id, k.sched.now(), `oom_reaper: unable to reap pid:${pid} (${name})\n${show_all_locks(k)}`);
  }
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
export function oomKillModule(): string {
  return fileURLToPath(import.meta.url);
}
