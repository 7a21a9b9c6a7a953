// odp: an RDMA on-demand-paging memory region, as ib_umem_odp with mlx5 and rxe on top.
// Read: drivers/infiniband/core/umem_odp.c, drivers/infiniband/sw/rxe/rxe_odp.c,
// drivers/infiniband/hw/mlx5/odp.c and mr.c (v6.16-era, hmm_dma_map_* generation).
// One device per MR: the device's embedded subscription is the MR's interval notifier
// (ib_umem_odp_get inserts it over the MR's pages), its notifier lock is umem_mutex, and its
// shadow page table is the MR's MTT, indexed by virtual address (iova == user address).
// - registration (device_open): the notifier, then mlx5_ib_init_odp_mr's snapshot fault,
//   which maps the pages already present without faulting any;
// - the invalidate callback returns false when the range is not blockable (mlx5, rxe); under
//   the lock it sets the sequence, zaps the MTT, waits for the HCA, unmaps the pages;
// - page faults go through ib_umem_odp_map_dma_and_lock (hmm_range_fault, its retry loop,
//   umem_mutex held on success) and the MTT update under that mutex;
// - ib_advise_mr: PREFETCH (read-only, DOWNGRADE), PREFETCH_WRITE, PREFETCH_NO_FAULT
//   (snapshot: no fault flags), synchronous with FLUSH, else queued as a work item;
// - deregistration takes the mkey out of reach and waits for its usecount (faults, prefetch
//   work, work requests) before the umem and its notifier go;
// - a QP engine (rdma.ts) runs RDMA READ / WRITE / FETCH_AND_ADD work requests.
// Where it differs: no implicit MRs, no huge pages, no dma-buf; the pfn_list is at most
// ODP_MAX_PAGES; "DMA mapping" is the sticky HMM_PFN_DMA_MAPPED bit (no IOMMU; unmapping
// a writable one dirties its page, under umem_mutex, as the kernel does); demand faults
// map reads read-only as rxe does (mlx5 faults a writable MR
// for write); the mkey lookup is the MR's state word, not an xarray; the fault holds the mm
// only across each walk (no mmput_async); ODP_NONBLOCK_TRYLOCK is the v4.19-v5.4 trylock
// behaviour as a policy.

import { fileURLToPath } from 'node:url';
import {
  DevL,
  EINVAL,
  EngL,
  current,
  defineDriver,
  device_lock,
  device_open,
  device_priv,
  device_unlock,
  engine_at,
  mmu_interval_read_retry,
  type Kernel,
  type Spawner,
  type TaskContext,
} from '../../src/device/index.js';
import type { Task } from '../../src/sched/task.js';
import { HMM_PFN_DMA_MAPPED, HMM_PFN_VALID, HMM_PFN_WRITE } from '../../src/hmm/pfn.js';
import { IB_ACCESS_LOCAL_WRITE, IB_ACCESS_ON_DEMAND, IB_ACCESS_REMOTE_ATOMIC, IB_ACCESS_REMOTE_READ, IB_ACCESS_REMOTE_WRITE, MR_STATE_VALID, OdpL, ib_umem_odp_get, odp_end, odp_start } from './umem_odp.js';
import { defineStressAdapter } from '../../src/device/stress_adapter.js';
import { MLX5_PF_FLAGS_SNAPSHOT, ib_umem_odp_release, odp_advise_mr, odp_dereg_mr, odp_device_fault, odp_prefetch_work as prefetchWork, pagefault_real_mr, type IbSge, type PrefetchWorkArgs } from './mr.js';
import { odp_rdma_qp as qp, type RdmaQpArgs } from './rdma.js';

export * from './umem_odp.js';
export { MLX5_PF_FLAGS_DOWNGRADE, MLX5_PF_FLAGS_SNAPSHOT, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, odp_mr_get, odp_mr_put, type IbSge } from './mr.js';
export { IB_WR_RDMA_READ, IB_WR_RDMA_WRITE, IB_WR_ATOMIC_FETCH_AND_ADD, IB_WC_SUCCESS, IB_WC_REM_ACCESS_ERR, IB_WC_WR_FLUSH_ERR, QpResL, type RdmaQpArgs } from './rdma.js';

let modPath: string | null = null;
/** this module: workers load it to find the driver, the work items and the QP program */
export function odpModule(): string {
  return (modPath ??= fileURLToPath(import.meta.url));
}

// Task entry points live here, in the module that defines the driver, so a worker running
// them always knows the driver and its notifier ops.
export function odp_prefetch_work(ctx: TaskContext<PrefetchWorkArgs>): Promise<void> {
  return prefetchWork(ctx);
}

export function odp_rdma_qp(ctx: TaskContext<RdmaQpArgs>): Promise<void> {
  return qp(ctx);
}

export interface OdpRegOpts {
  addr: number;
  length: number;
  /** IB_ACCESS_*, IB_ACCESS_ON_DEMAND included */
  access: number;
  /** ODP_* policy bits */
  odpFlags?: number;
  name?: string;
  mm?: number;
}

export const odpDriver = defineDriver({
  name: 'odp',
  state: OdpL,
  lock: { kind: 'mutex', name: 'umem_odp->umem_mutex', class: '&umem_odp->umem_mutex' },
  // ib_umem_odp_get inserts the MR's own notifier, over the MR's pages only
  notifier: { kind: 'none' },
  fault: odp_device_fault,
  seq_retry: (dev, seq) => mmu_interval_read_retry(dev + DevL.notifier, seq),
  async open(dev, opts) {
    const o = opts as unknown as OdpRegOpts;
    const w = current.k.arena.i32;
    const st = device_priv(dev);
    w[st + OdpL.flags] = o.odpFlags ?? 0;
    const r = await ib_umem_odp_get(dev, o.addr, o.length, o.access);
    if (r !== 0) return r;
    // mlx5r_store_odp_mkey: the registration's reference; the mkey is now findable
    w[st + OdpL.usecount] = 1;
    Atomics.store(w, st + OdpL.mr_state, MR_STATE_VALID);
    // mlx5_ib_init_odp_mr: map what is already present, fault nothing
    const np = await pagefault_real_mr(dev, odp_start(dev), odp_end(dev) - odp_start(dev), MLX5_PF_FLAGS_SNAPSHOT);
    if (np < 0) {
      await ib_umem_odp_release(dev);
      return np;
    }
    return 0;
  },
  release: ib_umem_odp_release,
  commands: {
    /** { advice, flags?, sg: [{ addr, length }] } */
    ADVISE_MR(dev: number, arg: { advice: number; flags?: number; sg: IbSge[] }): Promise<number> | number {
      if (!arg) return -EINVAL;
      return odp_advise_mr(dev, arg.advice, arg.flags ?? 0, arg.sg, odpModule());
    },
    DEREG_MR(dev: number): Promise<number> {
      return odp_dereg_mr(dev);
    },
  },
  diagnose(dev) {
    const s = odpStats(current.k, dev);
    return `odp MR: ${s.invalidations} invalidations, ${s.nonblock_refused} non-blockable refused, ${s.page_faults} page faults (${s.fault_pages} pages), npages ${s.npages}, usecount ${s.usecount}`;
  },
});

// ---- the verbs a process (a thread of the owning mm) calls -------------------------------------------

/** ibv_reg_mr(..., IBV_ACCESS_ON_DEMAND): the MR (its device), or -errno. */
export function ib_reg_mr(o: OdpRegOpts): Promise<number> {
  return device_open('odp', { ...o, name: o.name ?? 'mlx5_0' });
}

/** ibv_dereg_mr: waits for every user of the MR, then releases it. */
export function ib_dereg_mr(dev: number): Promise<number> {
  return odp_dereg_mr(dev);
}

/** ibv_advise_mr on sges of this MR. */
export function ib_advise_mr(dev: number, advice: number, flags: number, sg: IbSge[]): Promise<number> {
  return odp_advise_mr(dev, advice, flags, sg, odpModule());
}

/** Start a QP engine on slot `engine` of the MR's device. */
export function spawnRdmaQp(k: Kernel, spawner: Spawner, args: RdmaQpArgs): Task {
  const eng = args.engine ?? 0;
  const t = spawner.spawn({ name: `qp${eng}@${args.dev.toString(16)}`, kind: 'device', module: odpModule(), fn: 'odp_rdma_qp', args: { ...args, engine: eng } });
  // recorded now, so a device_close before the task runs still waits for it
  Atomics.store(k.arena.i32, engine_at(args.dev, eng) + EngL.task, t.id);
  return t;
}

/** Hold / drop umem_mutex (a test standing in for a fault that holds it). */
export function odp_lock(dev: number): Promise<void> | undefined {
  return device_lock(dev);
}

export function odp_unlock(dev: number): void {
  device_unlock(dev);
}

export interface OdpStats {
  npages: number;
  usecount: number;
  state: number;
  invalidations: number;
  nonblock_refused: number;
  page_faults: number;
  fault_pages: number;
  prefetch: number;
  prefetch_pages: number;
  dereg_waited: number;
}

export function odpStats(k: Kernel, dev: number): OdpStats {
  const w = k.arena.i32;
  const st = w[dev + DevL.priv];
  return {
    npages: w[st + OdpL.npages],
    usecount: Atomics.load(w, st + OdpL.usecount),
    state: Atomics.load(w, st + OdpL.mr_state),
    invalidations: w[st + OdpL.invalidations],
    nonblock_refused: w[st + OdpL.nonblock_refused],
    page_faults: w[st + OdpL.page_faults],
    fault_pages: w[st + OdpL.fault_pages],
    prefetch: w[st + OdpL.prefetch],
    prefetch_pages: w[st + OdpL.prefetch_pages],
    dereg_waited: w[st + OdpL.dereg_waited],
  };
}

/** The pfn_list as tests read it: one entry per page of the MR. */
export function odpPfnList(k: Kernel, dev: number): { valid: boolean; write: boolean; dmaMapped: boolean; pfn: number }[] {
  const w = k.arena.i32;
  const u = k.arena.u32;
  const st = w[dev + DevL.priv];
  const pl = w[st + OdpL.pfn_list];
  const out = [];
  for (let i = 0; i < w[st + OdpL.nr_entries]; i++) {
    const hi = u[pl + 2 * i + 1];
    out.push({ valid: (hi & HMM_PFN_VALID) !== 0, write: (hi & HMM_PFN_WRITE) !== 0, dmaMapped: (hi & HMM_PFN_DMA_MAPPED) !== 0, pfn: u[pl + 2 * i] });
  }
  return out;
}

/** Under `shadowmm stress`: one ODP MR over the window, its QPs posting RDMA READ/WRITE/atomics until told to stop. */
export const stress = defineStressAdapter({
  driver: 'odp',
  description: 'an on-demand-paging MR over the window; QPs run RDMA READ, WRITE and FETCH_AND_ADD',
  open: ({ mm, name, base, npages, k }) =>
    ib_reg_mr({ mm, name, addr: base, length: npages * k.mmLayer.pageSize, access: IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ | IB_ACCESS_REMOTE_ATOMIC }),
  start(a) {
    for (let e = 0; e < a.engines; e++) spawnRdmaQp(a.k, a.spawner, { dev: a.dev, engine: e, start: a.base, npages: a.npages, wrs: 1 << 30, wrPages: 3, duty: a.duty, word: 1 + e, seed: a.seed * 31 + e, stopWord: a.stopWord });
  },
  close: (dev) => ib_dereg_mr(dev),
  stats: (k, dev) => {
    const s = odpStats(k, dev);
    return { invalidations: s.invalidations, nonblock_refused: s.nonblock_refused, page_faults: s.page_faults, fault_pages: s.fault_pages };
  },
});
