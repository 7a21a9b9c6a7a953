// The memory controller's cgroupfs side (mm/memcontrol.c's cftypes, kernel/cgroup's mkdir and
// cgroup.procs), as functions: create a group under the root, move a process into one, read
// and write memory.max, memory.oom.group, and read memory.current / memory.peak /
// memory.events. Errors are the negative errno the file operation would return.

import { EEXIST, EINVAL, ENOENT } from '../shm/errno.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Kernel } from '../sched/kernel.js';
import { GFP_KERNEL } from './gfp.js';
import { H_LOCK, H_NR, MAX_RECLAIM_RETRIES, MEMCG_HIGH, MEMCG_LOW, MEMCG_MAX, MEMCG_NR_MEMORY_EVENTS, MEMCG_OOM, MEMCG_OOM_GROUP_KILL, MEMCG_OOM_KILL, MemcgL, OOM_NONE, killedNobody, mem_cgroup_out_of_memory, memcgCounter, memcgValid, memcg_memory_event } from './memcontrol.js';
import { PAGE_COUNTER_MAX, PC_FAILCNT, PC_MAX, PC_WATERMARK, page_counter_init, page_counter_memparse, page_counter_read, page_counter_xchg_max } from './page_counter.js';
import { PROC_RUNNING, ProcL } from './process.js';
import { MmL } from './types.js';
import { fatal_signal_pending } from './uaccess.js';
import { try_to_free_mem_cgroup_pages } from './vmscan.js';

const ESRCH = 3;
const ENOSPC = 28;

/** cgroup_mkdir under the root: the new memcg's id, or -EINVAL (bad name), -EEXIST, -ENOSPC. */
export function cgroup_mkdir(k: Kernel, name: string): number {
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/') || name.length > 255) return -EINVAL;
  const w = k.arena.i32;
  const mc = k.memcg;
  arch_spin_lock(w, mc.hdr + H_LOCK);
  try {
    if (mem_cgroup_from_name(k, name) > 0) return -EEXIST;
    const id = w[mc.hdr + H_NR] + 1;
    if (id > mc.capacity) return -ENOSPC;
    page_counter_init(w, mc.at(id) + MemcgL.memory);
    w.fill(0, mc.at(id) + MemcgL.memory_events, mc.at(id) + MemcgL.memory_events + MEMCG_NR_MEMORY_EVENTS);
    Atomics.store(w, mc.at(id) + MemcgL.name, k.strings.intern(name));
    w[mc.hdr + H_NR] = id;
    return id;
  } finally {
    arch_spin_unlock(w, mc.hdr + H_LOCK);
  }
}

/** The memcg called `name` ('' or '/' is the root, 0), or -ENOENT. */
export function mem_cgroup_from_name(k: Kernel, name: string): number {
  if (name === '' || name === '/') return 0;
  const w = k.arena.i32;
  for (let id = 1; id <= k.memcg.capacity; id++) {
    const s = Atomics.load(w, k.memcg.at(id) + MemcgL.name);
    if (s !== 0 && k.strings.get(s) === name) return id;
  }
  return -ENOENT;
}

/**
 * Write `pid` to cgroup.procs: the process (all its threads) moves to `memcg` (0 = root), and
 * so does its mm's charging. As in cgroup v2, pages already charged stay with the old group.
 * 0, -ENOENT (no such memcg), -ESRCH (no such live process).
 */
export function cgroup_procs_write(k: Kernel, memcg: number, pid: number): number {
  if (memcg !== 0 && !memcgValid(k, memcg)) return -ENOENT;
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  if (!(Number.isInteger(pid) && pid > 0 && pid < pool.capacity) || !pool.inUse(pid)) return -ESRCH;
  const p = pool.at(pid);
  if (Atomics.load(w, p + ProcL.state) !== PROC_RUNNING) return -ESRCH;
  arch_spin_lock(w, k.memcg.hdr + H_LOCK);
  w[p + ProcL.memcg] = memcg;
  const mm = w[p + ProcL.mm];
  if (mm !== 0) Atomics.store(w, mm + MmL.memcg, memcg); // mm->owner is this process
  arch_spin_unlock(w, k.memcg.hdr + H_LOCK);
  return 0;
}

/** cgroup.procs: the live processes in `memcg`. */
export function cgroup_procs_read(k: Kernel, memcg: number): number[] {
  const pool = k.mmLayer.procs;
  const w = k.arena.i32;
  const out: number[] = [];
  for (let pid = 1; pid < pool.capacity; pid++) {
    if (pool.inUse(pid) && w[pool.at(pid) + ProcL.state] === PROC_RUNNING && w[pool.at(pid) + ProcL.memcg] === memcg) out.push(pid);
  }
  return out;
}

/** memory.oom.group: 1 makes a memcg OOM kill every member, not just the chosen victim. */
export function memory_oom_group_write(k: Kernel, memcg: number, v: number): number {
  if (!memcgValid(k, memcg)) return -ENOENT;
  if (v !== 0 && v !== 1) return -EINVAL;
  Atomics.store(k.arena.i32, k.memcg.at(memcg) + MemcgL.oom_group, v);
  return 0;
}

export function memory_oom_group_read(k: Kernel, memcg: number): number {
  return memcgValid(k, memcg) ? k.arena.i32[k.memcg.at(memcg) + MemcgL.oom_group] : -ENOENT;
}

export interface MemcgStats {
  name: string;
  /** memory.current, memory.max ('max' = none) and memory.peak, in pages */
  current: number;
  max: number | 'max';
  peak: number;
  failcnt: number;
  events: { low: number; high: number; max: number; oom: number; oom_kill: number; oom_group_kill: number };
  procs: number[];
}

/** memory.current, memory.max, memory.peak and memory.events of one memcg, or null if none. */
export function memcgStats(k: Kernel, memcg: number): MemcgStats | null {
  if (!memcgValid(k, memcg)) return null;
  const w = k.arena.i32;
  const b = k.memcg.at(memcg);
  const e = b + MemcgL.memory_events;
  const max = w[b + MemcgL.memory + PC_MAX];
  return {
    name: k.strings.get(w[b + MemcgL.name]),
    current: page_counter_read(w, b + MemcgL.memory),
    max: max === PAGE_COUNTER_MAX ? 'max' : max,
    peak: w[b + MemcgL.memory + PC_WATERMARK],
    failcnt: w[b + MemcgL.memory + PC_FAILCNT],
    events: { low: w[e + MEMCG_LOW], high: w[e + MEMCG_HIGH], max: w[e + MEMCG_MAX], oom: w[e + MEMCG_OOM], oom_kill: w[e + MEMCG_OOM_KILL], oom_group_kill: w[e + MEMCG_OOM_GROUP_KILL] },
    procs: cgroup_procs_read(k, memcg),
  };
}

// ---- memory.max ----------------------------------------------------------------------------------

/**
 * memory_max_write: set memory.max (`buf` as the file takes it: bytes with an optional K/M/G
 * suffix, or "max"; a number is taken as pages), then reclaim down to it, MAX_RECLAIM_RETRIES
 * rounds without progress, then memcg OOM-kill until usage fits or nothing is killable.
 * 0, -ENOENT (no such memcg, or the root, which has no memory.max) or -EINVAL. Sleeps: call
 * it from a task unless usage is already within the new limit.
 */
export function memory_max_write(k: Kernel, memcg: number, buf: string | number): number | Promise<number> {
  if (!memcgValid(k, memcg)) return -ENOENT;
  let max: number;
  if (typeof buf === 'number') max = Number.isInteger(buf) && buf >= 0 ? Math.min(buf, PAGE_COUNTER_MAX) : -EINVAL;
  else max = typeof buf === 'string' ? page_counter_memparse(buf, 'max', k.mmLayer.pageSize) : -EINVAL;
  if (max < 0) return max;
  const w = k.arena.i32;
  page_counter_xchg_max(w, memcgCounter(k, memcg), max);
  if (page_counter_read(w, memcgCounter(k, memcg)) <= max) return 0;
  return memory_max_reclaim(k, memcg, max);
}

async function memory_max_reclaim(k: Kernel, memcg: number, max: number): Promise<number> {
  const w = k.arena.i32;
  let nr_reclaims = MAX_RECLAIM_RETRIES;
  let drained = false;
  for (;;) {
    const nr_pages = page_counter_read(w, memcgCounter(k, memcg));
    if (nr_pages <= max) break;
    if (fatal_signal_pending()) break; // signal_pending(current)
    if (!drained) {
      drained = true; // drain_all_stock: no per-CPU stocks here
      continue;
    }
    if (nr_reclaims > 0) {
      const r = try_to_free_mem_cgroup_pages(k, memcg, nr_pages - max, GFP_KERNEL);
      if ((typeof r === 'number' ? r : await r) === 0) nr_reclaims--;
      const p = k.sched.point(); // reclaim's cond_resched
      if (p !== undefined) await p;
      continue;
    }
    memcg_memory_event(k, memcg, MEMCG_OOM);
    const oom = await mem_cgroup_out_of_memory(k, memcg, GFP_KERNEL, 0);
    if (oom === OOM_NONE) break;
    const p = killedNobody(k, oom);
    if (p !== undefined) await p;
  }
  return 0;
}
