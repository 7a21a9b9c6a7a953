// The mm layer's arena regions and this thread's views of them: page tables, VMAs, shared
// anonymous objects, rmap nodes and processes, each an index pool, plus a few global words
// (the rmap lock, id counters) and a per-task table (the mm a task runs in, and whether it is
// in the middle of a user access, which TLB flushes wait out under `threads`).
// Sizes come from config.mm, defaulting from the number of frames.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { IndexPool } from '../shm/pool.js';
import type { Kernel, KernelConfig } from '../sched/kernel.js';
import { PageTables } from './pgtable.js';
import { defaultMemConfig, type MemConfig } from './page_alloc.js';
import { ShmL, VmaL } from './vma.js';
import { RmapL } from './rmap.js';
import { ProcL } from './process.js';

export interface MmConfig {
  /** page-table pages (512 entries each) for every mm and shared object */
  pgtables?: number;
  /** vm_area_structs */
  vmas?: number;
  /** rmap nodes: one per PTE that maps a frame */
  rmapNodes?: number;
  /** shared anonymous objects (MAP_SHARED|MAP_ANONYMOUS mappings) */
  shmObjs?: number;
  /** processes */
  procs?: number;
}

declare module '../sched/kernel.js' {
  interface KernelConfig {
    mm?: MmConfig;
  }
  interface Kernel {
    readonly pgtables: PageTables;
    readonly mmLayer: MmLayer;
  }
}

/** config.mm with every default filled in; the same in every thread for the same config */
export function mmConfig(c: KernelConfig): Required<MmConfig> {
  const mem: MemConfig = c.mem ?? defaultMemConfig;
  const m = c.mm ?? {};
  const out: Required<MmConfig> = {
    pgtables: m.pgtables ?? Math.max(256, mem.pages >> 3),
    vmas: m.vmas ?? 1024,
    rmapNodes: m.rmapNodes ?? 2 * mem.pages + 64,
    shmObjs: m.shmObjs ?? 64,
    procs: m.procs ?? Math.max(8, c.maxTasks),
  };
  for (const [key, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`kernel config: mm.${key} must be a whole number >= 1, got ${String(v)}`);
  }
  if ((mem.pageSize & (mem.pageSize - 1)) !== 0) throw new RangeError(`mem.pageSize must be a power of two for the mm layer, got ${mem.pageSize}`);
  return out;
}

// global words
export const MMG_RMAP_LOCK = 0; // raw lock over every page's rmap list
export const MMG_ANON_VMA_SEQ = 1; // anon_vma ids
export const MMG_NEXT_PID = 2;
/** mm/oom_kill.c's globals (oom_kill.ts): counters, the oom_reaper queue and its policy */
export const MMG_OOM = 3;
export const MMG_OOM_WORDS = 40;
const MMG_HEADER = MMG_OOM + MMG_OOM_WORDS;
/**
 * per task: the mm it runs in (0 = none); 1 while it is inside a user access; pending SIGKILL
 * (bit 0); the signal its last failed user access raised
 */
export const TASK_MM = 0;
export const TASK_UACCESS = 1;
export const TASK_SIGPENDING = 2;
export const TASK_FAULTSIG = 3;
export const TASK_WORDS = 4;

export class MmLayer {
  readonly vmas: IndexPool;
  readonly rmap: IndexPool;
  readonly shm: IndexPool;
  readonly procs: IndexPool;
  /** word offset of the global words */
  readonly g: number;
  /** word offset of task 0's per-task words */
  readonly taskBase: number;
  readonly maxTasks: number;
  /** bytes per page and its log2, read from the zone: never a module constant */
  readonly pageSize: number;
  readonly pageShift: number;
  /** top of the user address space: what the 4-level tables can map, as x86-64 does */
  readonly taskSize: number;
  /** the largest address + 1 the page tables index without aliasing */
  readonly vaLimit: number;

  constructor(arena: Arena, c: KernelConfig) {
    this.vmas = new IndexPool(arena, 'vmas', VmaL.$size);
    this.rmap = new IndexPool(arena, 'rmap', RmapL.$size);
    this.shm = new IndexPool(arena, 'shmem', ShmL.$size);
    this.procs = new IndexPool(arena, 'procs', ProcL.$size);
    this.g = arena.region('mm_layer');
    this.taskBase = this.g + MMG_HEADER;
    this.maxTasks = c.maxTasks;
    const mem = c.mem ?? defaultMemConfig;
    this.pageSize = mem.pageSize;
    this.pageShift = Math.log2(mem.pageSize);
    this.vaLimit = 2 ** (this.pageShift + 36);
    this.taskSize = Math.min(2 ** 47, this.vaLimit) - this.pageSize;
  }

  static plan(plan: ArenaPlan, c: KernelConfig): void {
    const m = mmConfig(c);
    PageTables.plan(plan, m.pgtables);
    IndexPool.plan(plan, 'vmas', VmaL.$size, m.vmas);
    IndexPool.plan(plan, 'rmap', RmapL.$size, m.rmapNodes);
    IndexPool.plan(plan, 'shmem', ShmL.$size, m.shmObjs);
    IndexPool.plan(plan, 'procs', ProcL.$size, m.procs);
    plan.region('mm_layer', MMG_HEADER + (c.maxTasks + 1) * TASK_WORDS);
  }

  static init(arena: Arena, c: KernelConfig): void {
    const m = mmConfig(c);
    PageTables.init(arena, m.pgtables);
    IndexPool.init(arena, 'vmas', m.vmas);
    IndexPool.init(arena, 'rmap', m.rmapNodes);
    IndexPool.init(arena, 'shmem', m.shmObjs);
    IndexPool.init(arena, 'procs', m.procs);
    arena.i32[arena.region('mm_layer') + MMG_NEXT_PID] = 1;
  }

  /** word offset of task `id`'s per-task words */
  task(id: number): number {
    return this.taskBase + id * TASK_WORDS;
  }
}

/** The views boot hands to a kernel instance. */
export function mmViews(arena: Arena, c: KernelConfig): { pgtables: PageTables; mmLayer: MmLayer } {
  mmConfig(c);
  return { pgtables: new PageTables(arena, (c.mem ?? defaultMemConfig).pageSize), mmLayer: new MmLayer(arena, c) };
}

/** Frames, tables and objects in use: what a leak check compares before and after. */
export function mmUsage(k: Kernel): { freePages: number; pgtables: number; vmas: number; rmap: number; shm: number; procs: number } {
  const l = k.mmLayer;
  return { freePages: k.zone.nrFree, pgtables: k.pgtables.tablesInUse, vmas: l.vmas.used, rmap: l.rmap.used, shm: l.shm.used, procs: l.procs.used };
}
