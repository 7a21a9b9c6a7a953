// Memory cgroups (mm/memcontrol.c, cgroup v2; reference §5 "memcg OOM", §9 scenario 26).
// config.memcg.groups memory cgroups live in the arena, all children of the root (id 0, no
// limit, not counted). Each has a name, a page counter (memory.current / memory.max /
// memory.peak) and memory.events. A process belongs to one (ProcL.memcg, inherited at fork);
// its mm is charged to its owner's (MmL.memcg mirrors it). struct page's memcg names the group
// a frame is charged to, from mem_cgroup_charge until the last reference is dropped.
//
// A charge over memory.max reclaims inside the group (try_to_free_mem_cgroup_pages, which
// raises the same blockable CLEAR invalidations as global reclaim), and after
// MAX_RECLAIM_RETRIES rounds without progress calls the memcg OOM killer: out_of_memory with
// oc.memcg, the victim only from the group, "Memory cgroup out of memory", then the oom_reaper
// as for a global OOM. Writing memory.max below usage reclaims and OOM-kills down to the limit
// (memcontrol_files.ts: the cgroupfs side, groups, cgroup.procs, memory.max, memory.events).
//
// Not modelled: per-CPU charge stocks (MEMCG_CHARGE_BATCH; drain_all_stock is a no-op but
// its extra retry round is kept), nesting below the root, memory.high/low/min, swap accounting
// (memory.swap.*; a swapped-in page is charged to the faulting mm), cgroup v1
// (oom_kill_disable, mem_cgroup_oom_synchronize always false), rmdir.
//
// Ours: while an earlier victim is still exiting, the kernel's charge and memory.max loops
// spin through reclaim; here a round in which the OOM killer killed nobody sleeps one jiffy
// (TICK_NSEC), as __alloc_pages_may_oom does, so that sim's virtual clock reaches the
// reaper's timer instead of burning scheduling points.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { EINTR, ENOMEM } from '../shm/errno.js';
import { defineStruct } from '../shm/layout.js';
import { current } from '../sched/current.js';
import type { Kernel, KernelConfig } from '../sched/kernel.js';
import { RATELIMIT_STATE_WORDS } from '../sched/ratelimit.js';
import { splat } from '../sched/splat.js';
import { PF_MEMALLOC, TaskL } from '../sched/task.js';
import { __GFP_HIGH, __GFP_NOFAIL, __GFP_NORETRY, __GFP_RETRY_MAYFAIL, gfpflags_allow_blocking } from './gfp.js';
import { __out_of_memory, oom_lock_trylock, oom_unlock } from './oom_kill.js';
import { PageL } from './page.js';
import { memcgHooks } from './page_alloc.js';
import { PAGE_COUNTER_MAX, PAGE_COUNTER_WORDS, PC_MAX, page_counter_charge, page_counter_init, page_counter_margin, page_counter_try_charge, page_counter_uncharge } from './page_counter.js';
import { ProcL, current_pid } from './process.js';
import { MmL } from './types.js';
import { current_mm, fatal_signal_pending } from './uaccess.js';
import { try_to_free_mem_cgroup_pages } from './vmscan.js';

export interface MemcgConfig {
  /** memory cgroups that can be created (below the root) */
  groups: number;
}

declare module '../sched/kernel.js' {
  interface KernelConfig {
    /** memory cgroups; absent = none (every process in the root) */
    memcg?: MemcgConfig;
  }
  interface Kernel {
    readonly memcg: MemCgroups;
  }
}

export const MAX_RECLAIM_RETRIES = 16;
export const PAGE_ALLOC_COSTLY_ORDER = 3;
/** one jiffy (HZ / CONFIG_HZ with CONFIG_HZ=250), in ns */
export const TICK_NSEC = 4e6;

// enum memcg_memory_event (memory.events)
export const MEMCG_LOW = 0;
export const MEMCG_HIGH = 1;
export const MEMCG_MAX = 2;
export const MEMCG_OOM = 3;
export const MEMCG_OOM_KILL = 4;
export const MEMCG_OOM_GROUP_KILL = 5;
export const MEMCG_NR_MEMORY_EVENTS = 6;

/** struct mem_cgroup */
export const MemcgL = defineStruct('mem_cgroup', {
  memory: PAGE_COUNTER_WORDS, // struct page_counter memory
  name: 1, // string id, 0 = not created
  oom_group: 1, // memory.oom.group
  memory_events: MEMCG_NR_MEMORY_EVENTS,
});

/** 'v5.16' (newest): a dying task's charge fails, the #PF handler only warns and retries.
 *  'v5.15': dying tasks and failed memcg OOMs force the charge past memory.max, and the #PF
 *  handler runs a global out_of_memory. */
export type MemcgOomPolicy = 'v5.16' | 'v5.15';
const POLICIES: MemcgOomPolicy[] = ['v5.16', 'v5.15'];

// header words
/** cgroup_mutex (mkdir, cgroup.procs): a few stores under it */
export const H_LOCK = 0;
/** groups created so far: ids 1..nr */
export const H_NR = 1;
const H_POLICY = 2;
/** pagefault_out_of_memory's ratelimit_state (oom_kill.ts) */
export const H_PFOOM_RS = 4;
const HEADER = H_PFOOM_RS + RATELIMIT_STATE_WORDS + 4;

const groupsOf = (c: KernelConfig): number => c.memcg?.groups ?? 0;

/** This thread's view of the memcg region. */
export class MemCgroups {
  readonly hdr: number;
  private readonly base: number;
  /** groups that can be created: ids 1..capacity */
  readonly capacity: number;

  constructor(arena: Arena, c: KernelConfig) {
    this.hdr = arena.region('memcg');
    this.base = this.hdr + HEADER;
    this.capacity = groupsOf(c);
  }

  static plan(plan: ArenaPlan, c: KernelConfig): void {
    const n = groupsOf(c);
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`kernel config: memcg.groups must be a whole number >= 0, got ${String(n)}`);
    plan.region('memcg', HEADER + (n + 1) * MemcgL.$size);
  }

  static init(arena: Arena, c: KernelConfig): void {
    const w = arena.i32;
    const base = arena.region('memcg') + HEADER;
    for (let id = 0; id <= groupsOf(c); id++) page_counter_init(w, base + id * MemcgL.$size + MemcgL.memory);
  }

  /** word offset of memcg `id`'s struct */
  at(id: number): number {
    return this.base + id * MemcgL.$size;
  }
}

export function mem_cgroup_set_oom_policy(k: Kernel, p: MemcgOomPolicy): void {
  k.arena.i32[k.memcg.hdr + H_POLICY] = POLICIES.indexOf(p);
}

export function mem_cgroup_oom_policy(k: Kernel): MemcgOomPolicy {
  return POLICIES[k.arena.i32[k.memcg.hdr + H_POLICY]];
}

/** word offset of memcg's page counter (memory.current, memory.max, ...) */
export const memcgCounter = (k: Kernel, memcg: number): number => k.memcg.at(memcg) + MemcgL.memory;
const counter = memcgCounter;

/** A created, non-root memcg id? */
export function memcgValid(k: Kernel, memcg: number): boolean {
  return Number.isInteger(memcg) && memcg >= 1 && memcg <= k.memcg.capacity && k.arena.i32[k.memcg.at(memcg) + MemcgL.name] !== 0;
}

/** cgroup_name as the OOM report prints the path: "/" for the root. */
export function mem_cgroup_path(k: Kernel, memcg: number): string {
  return memcg === 0 ? '/' : `/${k.strings.get(k.arena.i32[k.memcg.at(memcg) + MemcgL.name])}`;
}

/** memcg_memory_event: count an event in memory.events (no parents to propagate to below the root). */
export function memcg_memory_event(k: Kernel, memcg: number, event: number): void {
  if (memcg === 0) return;
  Atomics.add(k.arena.i32, k.memcg.at(memcg) + MemcgL.memory_events + event, 1);
}

/** memcg_memory_event_mm: the event on the memcg `mm` is charged to. */
export function memcg_memory_event_mm(k: Kernel, mm: number, event: number): void {
  if (mm !== 0) memcg_memory_event(k, Atomics.load(k.arena.i32, mm + MmL.memcg), event);
}

/** mem_cgroup_margin: pages that can be charged before memory.max. */
export function mem_cgroup_margin(k: Kernel, memcg: number): number {
  return page_counter_margin(k.arena.i32, counter(k, memcg));
}

/** mem_cgroup_get_max: memory.max plus the swap the group may use (swap.max is "max"). */
export function mem_cgroup_get_max(k: Kernel, memcg: number): number {
  const max = k.arena.i32[counter(k, memcg) + PC_MAX];
  return Math.min(PAGE_COUNTER_MAX, max + (k.config.swap?.slots ?? 0));
}

/** After a memcg OOM that found a victim still exiting, wait a jiffy for it (ours, see the header). */
export function killedNobody(k: Kernel, oom: number): Promise<void> | undefined {
  return oom === OOM_WAITING ? k.sched.sleep(TICK_NSEC) : k.sched.point();
}

// ---- charging ------------------------------------------------------------------------------------

/** get_mem_cgroup_from_mm: mm's memcg; with no mm, current's mm's; else the root. */
function get_mem_cgroup_from_mm(k: Kernel, mm: number): number {
  const m = mm !== 0 ? mm : current_mm();
  return m === 0 ? 0 : Atomics.load(k.arena.i32, m + MmL.memcg);
}

/** task_is_dying: an OOM victim, or SIGKILL pending (PF_EXITING has no equivalent here). */
function task_is_dying(k: Kernel): boolean {
  if (fatal_signal_pending()) return true;
  const pid = current_pid();
  return pid !== 0 && k.arena.i32[k.mmLayer.procs.at(pid) + ProcL.oom_mm] !== 0;
}

function pf_memalloc(): boolean {
  const t = current;
  return (t.k.arena.i32[t.base + TaskL.flags] & PF_MEMALLOC) !== 0;
}

/** commit_charge: the frame now belongs to memcg. */
function commit_charge(k: Kernel, pfn: number, memcg: number): void {
  const at = k.zone.page(pfn) + PageL.memcg;
  const old = Atomics.exchange(k.arena.i32, at, memcg);
  if (old !== 0) splat(k, 'bug', `BUG: commit_charge: pfn ${pfn} was already charged to memcg ${old}`);
}

/**
 * mem_cgroup_charge: charge the new frame `pfn` to the memcg of `mm` (0: current's) before it
 * is mapped or put in the page cache. 0, or -ENOMEM (the caller frees the frame and fails the
 * fault with VM_FAULT_OOM). A number when it did not sleep.
 */
export function mem_cgroup_charge(k: Kernel, pfn: number, mm: number, gfp: number): number | Promise<number> {
  const memcg = get_mem_cgroup_from_mm(k, mm);
  if (memcg === 0) return 0; // the root: try_charge succeeds without counting
  const r = try_charge_memcg(k, memcg, gfp, 1);
  if (r === 0) {
    commit_charge(k, pfn, memcg);
    return 0;
  }
  if (typeof r === 'number') return r;
  return r.then((ret) => {
    if (ret === 0) commit_charge(k, pfn, memcg);
    return ret;
  });
}

/**
 * mem_cgroup_swapin_charge_folio: a page read in from swap, charged to the faulting mm's memcg
 * (the kernel prefers the memcg recorded with the swap entry; no swap_cgroup records here).
 */
export function mem_cgroup_swapin_charge_folio(k: Kernel, pfn: number, mm: number, gfp: number): number | Promise<number> {
  return mem_cgroup_charge(k, pfn, mm, gfp);
}

/** mem_cgroup_uncharge: the frame's last reference is gone (called from __free_page). */
export function mem_cgroup_uncharge(k: Kernel, pfn: number): void {
  const w = k.arena.i32;
  const memcg = Atomics.exchange(w, k.zone.page(pfn) + PageL.memcg, 0);
  if (memcg === 0) return;
  if (!page_counter_uncharge(w, counter(k, memcg), 1)) splat(k, 'warn', `WARNING: page_counter underflow: memcg ${mem_cgroup_path(k, memcg)} nr_pages=1 (pfn ${pfn})`);
}

/** mem_cgroup_migrate: the charge moves from the old frame to its replacement. */
export function mem_cgroup_migrate(k: Kernel, oldPfn: number, newPfn: number): void {
  const w = k.arena.i32;
  const memcg = Atomics.exchange(w, k.zone.page(oldPfn) + PageL.memcg, 0);
  if (memcg !== 0) commit_charge(k, newPfn, memcg);
}

/** The memcg a frame is charged to, 0 if none (folio_memcg). */
export function folio_memcg(k: Kernel, pfn: number): number {
  return Atomics.load(k.arena.i32, k.zone.page(pfn) + PageL.memcg);
}

/** try_charge_memcg: 0, or -ENOMEM. A number when it did not reclaim. */
export function try_charge_memcg(k: Kernel, memcg: number, gfp: number, nr: number): number | Promise<number> {
  const w = k.arena.i32;
  // no per-CPU stock and so no batch: the first try is for nr pages
  if (page_counter_try_charge(w, counter(k, memcg), nr)) return 0;
  const v515 = mem_cgroup_oom_policy(k) === 'v5.15';
  if (v515 && ((gfp & __GFP_HIGH) !== 0 || task_is_dying(k))) return force(k, memcg, nr, false); // __GFP_ATOMIC, should_force_charge
  // unbounded recursion when reclaim itself allocates: let it exceed the limit for now
  if (pf_memalloc()) return force(k, memcg, nr, false);
  if (!gfpflags_allow_blocking(gfp)) return nomem(k, memcg, gfp, nr, false);
  return try_charge_reclaim(k, memcg, gfp, nr, v515);
}

async function try_charge_reclaim(k: Kernel, memcg: number, gfp: number, nr: number, v515: boolean): Promise<number> {
  const w = k.arena.i32;
  let nr_retries = MAX_RECLAIM_RETRIES;
  let passed_oom = false;
  let drained = false;
  for (let first = true; ; first = false) {
    // retry:
    if (!first) {
      if (page_counter_try_charge(w, counter(k, memcg), nr)) return 0;
      if (v515 && task_is_dying(k)) return force(k, memcg, nr, true);
      if (pf_memalloc()) return force(k, memcg, nr, true);
    }
    memcg_memory_event(k, memcg, MEMCG_MAX);
    const r = try_to_free_mem_cgroup_pages(k, memcg, nr, gfp);
    const nr_reclaimed = typeof r === 'number' ? r : await r;
    if (mem_cgroup_margin(k, memcg) >= nr) continue;
    if (!drained) {
      drained = true; // drain_all_stock: nothing cached per CPU here, one more round all the same
      continue;
    }
    if ((gfp & __GFP_NORETRY) !== 0) return nomem(k, memcg, gfp, nr, true);
    // reclaim made progress: the charge may fit now (small charges only)
    if (nr_reclaimed > 0 && nr <= 1 << PAGE_ALLOC_COSTLY_ORDER) continue;
    if (nr_retries-- > 0) {
      const p = k.sched.point(); // cond_resched between reclaim rounds
      if (p !== undefined) await p;
      continue;
    }
    if ((gfp & __GFP_RETRY_MAYFAIL) !== 0) return nomem(k, memcg, gfp, nr, true);
    if (v515 && fatal_signal_pending()) return force(k, memcg, nr, true);
    // avoid an endless loop for a task the OOM killer passed over
    if (!v515 && passed_oom && task_is_dying(k)) return nomem(k, memcg, gfp, nr, true);
    const oom = await mem_cgroup_oom(k, memcg, gfp, order_of(nr));
    if (oom === OOM_KILLED || oom === OOM_WAITING) {
      // keep retrying while the OOM killer makes progress
      passed_oom = true;
      nr_retries = MAX_RECLAIM_RETRIES;
      const p = killedNobody(k, oom);
      if (p !== undefined) await p;
      continue;
    }
    if (v515 && oom === OOM_NONE) return force(k, memcg, nr, true); // OOM_FAILED; OOM_SKIPPED is nomem
    return nomem(k, memcg, gfp, nr, true);
  }
}

function order_of(nr: number): number {
  return Math.max(0, Math.ceil(Math.log2(nr)));
}

/** nomem: -ENOMEM unless the allocation may not fail or is high priority. */
function nomem(k: Kernel, memcg: number, gfp: number, nr: number, raised: boolean): number {
  if ((gfp & (__GFP_NOFAIL | __GFP_HIGH)) === 0) return -ENOMEM;
  return force(k, memcg, nr, raised);
}

/** force: charge past memory.max, for a moment (the allocation cannot fail, or frees memory soon). */
function force(k: Kernel, memcg: number, nr: number, raised: boolean): number {
  if (!raised) memcg_memory_event(k, memcg, MEMCG_MAX);
  page_counter_charge(k.arena.i32, counter(k, memcg), nr);
  return 0;
}

// ---- memcg OOM -----------------------------------------------------------------------------------

/** mem_cgroup_out_of_memory results: nobody killable, a victim killed, a victim still exiting (or no need) */
export const OOM_NONE = 0;
export const OOM_KILLED = 1;
export const OOM_WAITING = 2;
/** mem_cgroup_oom did not run: a costly order */
const OOM_SKIPPED = 3;

/** mem_cgroup_oom: skipped for costly orders; counts MEMCG_OOM and runs the memcg OOM killer. */
async function mem_cgroup_oom(k: Kernel, memcg: number, gfp: number, order: number): Promise<number> {
  if (order > PAGE_ALLOC_COSTLY_ORDER) return OOM_SKIPPED;
  memcg_memory_event(k, memcg, MEMCG_OOM);
  // cgroup v1's oom_kill_disable (wait for a userspace handler) is not modelled
  return mem_cgroup_out_of_memory(k, memcg, gfp, order);
}

/** mutex_lock_killable(&oom_lock): 0, or -EINTR once a fatal signal is pending. */
async function oom_lock_killable(k: Kernel): Promise<number> {
  while (!oom_lock_trylock(k)) {
    if (fatal_signal_pending()) return -EINTR;
    const p = k.sched.sleep(TICK_NSEC); // ours: poll rather than queue on the mutex
    if (p !== undefined) await p;
  }
  return 0;
}

/** mem_cgroup_out_of_memory: out_of_memory with oc.memcg, under oom_lock. */
export async function mem_cgroup_out_of_memory(k: Kernel, memcg: number, gfp: number, order: number): Promise<number> {
  if ((await oom_lock_killable(k)) !== 0) return OOM_WAITING;
  try {
    if (mem_cgroup_margin(k, memcg) >= 1 << order) return OOM_WAITING; // someone freed memory meanwhile
    // a few threads that were not waiting on oom_lock may fail to bail out: check again
    if (task_is_dying(k)) return OOM_WAITING;
    const r = __out_of_memory(k, { memcg, gfp, order, totalpages: mem_cgroup_get_max(k, memcg) || 1 });
    return r === false ? OOM_NONE : r === true ? OOM_WAITING : OOM_KILLED;
  } finally {
    oom_unlock(k);
  }
}

// every thread with a kernel charges new frames and uncharges freed ones through these
memcgHooks.charge = mem_cgroup_charge;
memcgHooks.uncharge = mem_cgroup_uncharge;
