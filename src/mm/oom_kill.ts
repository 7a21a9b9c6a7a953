// mm/oom_kill.c (reference §5): out_of_memory picks a victim by RSS and SIGKILLs it, then
// queues its mm for the oom_reaper kthread (oom_reaper.ts), which unmaps the victim's private
// memory under non-blockable invalidations without waiting for it to exit.
// A memcg OOM (memcontrol.ts) sets `OomControl.memcg`: only that group's processes are
// candidates. `oom_kill_process` is the fault-injection entry ("OOM of a chosen process").
// State shared by every thread lives in the mm layer's header words (MMG_OOM..).

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { ___ratelimit } from '../sched/ratelimit.js';
import { MMG_OOM } from './mm_layer.js';
import { mmgrab } from './mm_inline.js';
import { PROC_RUNNING, ProcL, kill_process } from './process.js';
import { MMF_OOM_SKIP, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MmL } from './types.js';
import { H_PFOOM_RS, PAGE_ALLOC_COSTLY_ORDER, MEMCG_OOM_GROUP_KILL, MEMCG_OOM_KILL, MemcgL, mem_cgroup_oom_policy, mem_cgroup_path, memcg_memory_event, memcg_memory_event_mm } from './memcontrol.js';
import { allocOomHooks } from './page_alloc.js';
import { fatal_signal_pending } from './uaccess.js';
import { faultHooks } from './memory.js';
import { oomReaperModule, queue_oom_reaper, reaperStats } from './oom_reaper.js';

// the reaper's API, for callers that know it as part of mm/oom_kill.c
export { HZ, MAX_OOM_REAP_RETRIES, OOM_REAPER_DELAY, type OomReaperPolicy, oom_set_reaper_policy, queue_oom_reaper, reapVmas, oom_reap_task_mm, oom_reap_task, oom_reaper, oom_reaper_stop, oomReaperModule } from './oom_reaper.js';

// header words (the rest belong to oom_reaper.ts)
const O_LOCK = 0; // oom_lock (trylock only, as __alloc_pages_may_oom takes it)
const O_KILLS = 7; // victims chosen
const O_WHILE_HELD = 8; // victims chosen while an earlier victim still held memory

const g = (k: Kernel): number => k.mmLayer.g + MMG_OOM;


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
  return { kills: w[b + O_KILLS], victimsWhileHeld: w[b + O_WHILE_HELD], ...reaperStats(k) };
}

// ---- victim selection ----------------------------------------------------------------------

const rss = (w: Int32Array, mm: number, i: number): number => w[mm + MmL.rss_stat + i];
const rssKb = (k: Kernel, mm: number, i: number): number => (rss(k.arena.i32, mm, i) * k.mmLayer.pageSize) >> 10;

export const OOM_SCORE_ADJ_MIN = -1000;
export const OOM_SCORE_ADJ_MAX = 1000;
export const LONG_MIN = -Infinity; // oom_badness: never choose

/** totalram_pages() + total_swap_pages: what a global OOM scales oom_score_adj by */
const totalPages = (k: Kernel): number => k.zone.nrPages + (k.config.swap?.slots ?? 0);

/**
 * oom_badness: pages the kill would free, plus oom_score_adj thousandths of `totalpages`;
 * LONG_MIN if unkillable (OOM_SCORE_ADJ_MIN) or already on its way out.
 */
export function oom_badness(k: Kernel, pid: number, totalpages = totalPages(k)): number {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  const p = pool.at(pid);
  const mm = w[p + ProcL.mm];
  if (w[p + ProcL.state] !== PROC_RUNNING || mm === 0) return LONG_MIN;
  const adj = w[p + ProcL.oom_score_adj];
  if (adj === OOM_SCORE_ADJ_MIN || (Atomics.load(w, mm + MmL.flags) & (1 << MMF_OOM_SKIP)) !== 0) return LONG_MIN;
  // no per-mm page-table counter here: the VMA count stands in for mm_pgtables_bytes
  const points = rss(w, mm, MM_FILEPAGES) + rss(w, mm, MM_ANONPAGES) + rss(w, mm, MM_SHMEMPAGES) + rss(w, mm, MM_SWAPENTS) + w[mm + MmL.map_count];
  return points + adj * Math.floor(totalpages / 1000);
}

/** Write /proc/<pid>/oom_score_adj: 0, -EINVAL out of range, -ESRCH no such process. */
export function oom_score_adj_write(k: Kernel, pid: number, adj: number): number {
  const pool = k.mmLayer.procs;
  if (!(Number.isInteger(pid) && pid > 0 && pid < pool.capacity) || !pool.inUse(pid)) return -3;
  if (!Number.isInteger(adj) || adj < OOM_SCORE_ADJ_MIN || adj > OOM_SCORE_ADJ_MAX) return -22;
  k.arena.i32[pool.at(pid) + ProcL.oom_score_adj] = adj;
  return 0;
}

export interface OomControl {
  /** memcg id to choose within (memcg OOM), undefined for a global OOM */
  memcg?: number;
  gfp?: number;
  order?: number;
  /** oom_score_adj's scale: mem_cgroup_get_max for a memcg OOM, else all RAM and swap */
  totalpages?: number;
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
  const totalpages = oc.totalpages ?? totalPages(k);
  let chosen = 0;
  let best = LONG_MIN;
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (!pool.inUse(pid)) continue;
    const p = pool.at(pid);
    // mem_cgroup_scan_tasks: the group's members only
    if (oc.memcg !== undefined && w[p + ProcL.memcg] !== oc.memcg) continue;
    // oom_evaluate_task: a victim not yet done (no MMF_OOM_SKIP) means wait, do not kill more
    const om = w[p + ProcL.oom_mm];
    if (om !== 0 && w[p + ProcL.state] === PROC_RUNNING && (Atomics.load(w, om + MmL.flags) & (1 << MMF_OOM_SKIP)) === 0) return -1;
    const points = oom_badness(k, pid, totalpages);
    if (points !== LONG_MIN && (chosen === 0 || points >= best)) {
      best = points;
      chosen = pid;
    }
  }
  return chosen;
}

/** mutex_trylock(&oom_lock) */
export function oom_lock_trylock(k: Kernel): boolean {
  return Atomics.compareExchange(k.arena.i32, g(k) + O_LOCK, 0, 1) === 0;
}

export function oom_unlock(k: Kernel): void {
  Atomics.store(k.arena.i32, g(k) + O_LOCK, 0);
}

/** out_of_memory from a task: true if a victim was killed or one is still on its way out. */
export function out_of_memory(k: Kernel, oc: OomControl = {}): boolean | number {
  if (!oom_lock_trylock(k)) return true; // someone else is killing
  try {
    return __out_of_memory(k, oc);
  } finally {
    oom_unlock(k);
  }
}

/** The kernel's out_of_memory, oom_lock held: the victim's pid, true (a victim is still exiting), false (none). */
export function __out_of_memory(k: Kernel, oc: OomControl): boolean | number {
  const pid = select_bad_process(k, oc);
  if (pid === -1) return true;
  if (pid === 0) {
    // a global OOM panics here ("System is deadlocked on memory"); a memcg OOM just fails
    if (oc.memcg !== undefined) k.klog.write('oom_kill', current.id, k.sched.now(), `Memory cgroup out of memory: ${mem_cgroup_path(k, oc.memcg)}: Out of memory and no killable processes...`);
    return false;
  }
  oom_kill_process(k, pid, oc.memcg === undefined ? 'Out of memory' : 'Memory cgroup out of memory', oc.memcg);
  return pid;
}

/**
 * pagefault_out_of_memory: a user fault ended in VM_FAULT_OOM and will be retried. The failed
 * allocation or charge already ran the OOM killer: a task with SIGKILL pending goes on to die,
 * else a ratelimited warning ('v5.15' memcg policy: a global out_of_memory, if oom_lock is free).
 * mem_cgroup_oom_synchronize is always false here (cgroup v1's oom_kill_disable only).
 */
export function pagefault_out_of_memory(k: Kernel): void {
  if (fatal_signal_pending()) return;
  if (mem_cgroup_oom_policy(k) === 'v5.15') {
    out_of_memory(k, {});
    return;
  }
  if (___ratelimit(k, k.memcg.hdr + H_PFOOM_RS, 'pagefault_out_of_memory', 'pagefault_oom')) splat(k, 'pagefault_oom', 'Huh VM_FAULT_OOM leaked out to the #PF handler. Retrying PF');
}

faultHooks.pagefault_out_of_memory = pagefault_out_of_memory;

/**
 * __alloc_pages_may_oom for the allocator's slow path: a task already killed fails its
 * allocation and goes on to die (the kernel lets it dip into reserves first); otherwise
 * out_of_memory, whose true means "retry" (a victim was chosen or is still exiting).
 */
function alloc_may_oom(k: Kernel, gfp: number, order: number): boolean {
  if (fatal_signal_pending()) return false;
  if (order > PAGE_ALLOC_COSTLY_ORDER) return false;
  return out_of_memory(k, { gfp, order }) !== false;
}

allocOomHooks.may_oom = alloc_may_oom;

/** oom_kill_process: kill `pid` (also the fault-injection entry); `memcg` for a memcg OOM. */
export function oom_kill_process(k: Kernel, pid: number, message = 'Out of memory', memcg?: number): void {
  const w = k.arena.i32;
  if (victim_holds_memory(k)) Atomics.add(w, g(k) + O_WHILE_HELD, 1);
  Atomics.add(w, g(k) + O_KILLS, 1);
  // mem_cgroup_get_oom_group: memory.oom.group on the victim's group kills all of it
  const vcg = w[k.mmLayer.procs.at(pid) + ProcL.memcg];
  const group = vcg !== 0 && w[k.memcg.at(vcg) + MemcgL.oom_group] !== 0 ? vcg : 0;
  __oom_kill_process(k, pid, message, memcg);
  if (group === 0) return;
  memcg_memory_event(k, group, MEMCG_OOM_GROUP_KILL);
  k.klog.write('oom_kill', current.id, k.sched.now(), `Tasks in ${mem_cgroup_path(k, group)} are going to be killed due to memory.oom.group set`);
  const pool = k.mmLayer.procs;
  for (let q = 1; q < pool.capacity; q++) {
    if (!pool.inUse(q) || w[pool.at(q) + ProcL.memcg] !== group) continue;
    const qp = pool.at(q);
    // oom_kill_memcg_member: not the unkillable, not victims already
    if (w[qp + ProcL.state] !== PROC_RUNNING || w[qp + ProcL.oom_mm] !== 0 || w[qp + ProcL.oom_score_adj] === OOM_SCORE_ADJ_MIN || w[qp + ProcL.mm] === 0) continue;
    __oom_kill_process(k, q, message, memcg);
  }
}

function __oom_kill_process(k: Kernel, pid: number, message: string, memcg?: number): void {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  const p = pool.at(pid);
  const mm = w[p + ProcL.mm];
  const name = k.strings.get(w[p + ProcL.name]);
  memcg_memory_event_mm(k, mm, MEMCG_OOM_KILL);
  if (memcg !== undefined) message = `oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=${mem_cgroup_path(k, memcg)},task_memcg=${mem_cgroup_path(k, w[p + ProcL.memcg])},task=${name},pid=${pid}\n${message}`;
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

/** The module holding the `oom_reaper` kthread, for spawning it under threads. */
export const oomKillModule = oomReaperModule;
