// The MR side, after mlx5 (drivers/infiniband/hw/mlx5/odp.c and mr.c): the mkey usecount
// every asynchronous user holds (page faults, prefetch work, our work requests), the page
// fault path (pagefault_mr -> pagefault_real_mr: ib_umem_odp_map_dma_and_lock, then the MTT
// update under umem_mutex), ib_advise_mr prefetch and deregistration, which takes the mkey
// out of reach, drops its own reference and waits for the rest before the umem goes.

import {
  DEV_FAULT_WRITE,
  DevL,
  EFAULT,
  EINVAL,
  ENOENT,
  EPERM,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  SPTE_WRITE,
  current,
  device_close,
  device_fence_wait,
  device_lock,
  device_priv,
  device_unlock,
  mmu_interval_notifier_remove,
  shadow_pte_install,
  shadow_pte_zap,
  type TaskContext,
} from '../../src/device/index.js';
import { HMM_PFN_DMA_MAPPED } from '../../src/hmm/pfn.js';
import { MR_STATE_INVALID, MR_STATE_VALID, OdpL, ib_umem_odp_map_dma_and_lock, ib_umem_odp_unmap_dma_pages, odp_end, odp_start } from './umem_odp.js';

// pagefault_real_mr flags
export const MLX5_PF_FLAGS_DOWNGRADE = 1 << 1;
export const MLX5_PF_FLAGS_SNAPSHOT = 1 << 2;

// enum ib_uverbs_advise_mr_advice
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH = 0;
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE = 1;
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT = 2;
export const IB_UVERBS_ADVISE_MR_FLAG_FLUSH = 1 << 0;

export interface IbSge {
  addr: number;
  length: number;
}

// ---- mmkey.usecount --------------------------------------------------------------------------------

/** find_odp_mkey / get_prefetchable_mr: a reference on a live MR, or false once it is deregistered */
export function odp_mr_get(dev: number): boolean {
  const w = current.k.arena.i32;
  const st = device_priv(dev);
  Atomics.add(w, st + OdpL.usecount, 1);
  if (Atomics.load(w, st + OdpL.mr_state) === MR_STATE_VALID) return true;
  odp_mr_put(dev);
  return false;
}

/** mlx5r_deref_odp_mkey */
export function odp_mr_put(dev: number): void {
  const k = current.k;
  const at = device_priv(dev) + OdpL.usecount;
  if (Atomics.sub(k.arena.i32, at, 1) === 1) k.sched.wake(at, Infinity);
}

/** xa_erase from odp_mkeys, then mlx5r_deref_wait_odp_mkey. Idempotent. */
async function odp_mr_revoke(dev: number): Promise<void> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  if (Atomics.exchange(w, st + OdpL.mr_state, MR_STATE_INVALID) !== MR_STATE_VALID) return;
  odp_mr_put(dev);
  const at = st + OdpL.usecount;
  if (Atomics.load(w, at) !== 0) w[st + OdpL.dereg_waited]++;
  for (let c = Atomics.load(w, at); c !== 0; c = Atomics.load(w, at)) {
    const r = k.sched.wait(at, c);
    if (typeof r !== 'number') await r;
  }
}

// ---- the page fault path -------------------------------------------------------------------------

/** populate_mtt through mlx5r_umr_update_xlt: program np pages of the MTT. umem_mutex held. */
function odp_populate_mtt(dev: number, startIdx: number, np: number, downgrade: boolean): number {
  const k = current.k;
  const w = k.arena.i32;
  const u = k.arena.u32;
  const st = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  const pl = w[st + OdpL.pfn_list];
  const base = odp_start(dev);
  const seq = w[st + OdpL.notifier_seq];
  for (let i = startIdx; i < startIdx + np; i++) {
    const hi = u[pl + 2 * i + 1];
    if ((hi & HMM_PFN_VALID) === 0) continue; // !HMM_PFN_VALID: ODP initialization, nothing there
    if ((hi & HMM_PFN_DMA_MAPPED) === 0) {
      u[pl + 2 * i + 1] = hi | HMM_PFN_DMA_MAPPED; // hmm_dma_map_pfn
      w[st + OdpL.npages]++;
    }
    const flags = (hi & HMM_PFN_WRITE) !== 0 && !downgrade ? SPTE_WRITE : 0;
    const r = shadow_pte_install(dev, base + i * ps, u[pl + 2 * i], flags, seq, dev + DevL.notifier);
    if (r !== 0) return r;
  }
  return 0;
}

/** pagefault_real_mr: map [user_va, +bcnt) and program the MTT. Pages mapped, or -errno. */
export async function pagefault_real_mr(dev: number, user_va: number, bcnt: number, flags: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  const downgrade = (flags & MLX5_PF_FLAGS_DOWNGRADE) !== 0;
  const fault = (flags & MLX5_PF_FLAGS_SNAPSHOT) === 0;
  const write = w[st + OdpL.writable] !== 0 && !downgrade;
  const startIdx = Math.floor((user_va - odp_start(dev)) / k.mmLayer.pageSize);
  const np = await ib_umem_odp_map_dma_and_lock(dev, user_va, bcnt, write, fault);
  if (np < 0) return np;
  let ret: number;
  try {
    ret = odp_populate_mtt(dev, startIdx, np, downgrade);
  } finally {
    device_unlock(dev);
  }
  return ret < 0 ? ret : np;
}

/** pagefault_mr for an explicit MR: clip to the MR (permissive) or -EFAULT. */
export function pagefault_mr(dev: number, io_virt: number, bcnt: number, flags: number, permissive: boolean): Promise<number> | number {
  const start = odp_start(dev);
  const end = odp_end(dev);
  if (permissive) {
    io_virt = Math.max(io_virt, start);
    bcnt = Math.min(io_virt + bcnt, end) - io_virt;
    if (bcnt <= 0) return -EFAULT;
  } else if (io_virt < start || io_virt >= end || end - io_virt < bcnt) return -EFAULT;
  return pagefault_real_mr(dev, io_virt, bcnt, flags);
}

/**
 * The HCA missed in the MTT (the RDMA responder's page fault): fault the op's pages, with the
 * mkey held. Reads fault read-only, as rxe's RXE_PAGEFAULT_RDONLY does.
 */
export async function odp_device_fault(dev: number, addr: number, npages: number, flags: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  if (!odp_mr_get(dev)) return -EFAULT; // the mkey is gone: resume the fault with an error
  try {
    w[st + OdpL.page_faults]++;
    const ps = k.mmLayer.pageSize;
    const pf = (flags & DEV_FAULT_WRITE) !== 0 ? 0 : MLX5_PF_FLAGS_DOWNGRADE;
    const ret = await pagefault_mr(dev, addr, npages * ps, pf, true);
    if (ret < 0) return ret;
    w[st + OdpL.fault_pages] += ret;
    return 0;
  } finally {
    odp_mr_put(dev);
  }
}

// ---- ib_advise_mr --------------------------------------------------------------------------------

function pfFlagsOf(advice: number): number {
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH) return MLX5_PF_FLAGS_DOWNGRADE;
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT) return MLX5_PF_FLAGS_SNAPSHOT;
  return 0;
}

export interface PrefetchWorkArgs {
  dev: number;
  pf_flags: number;
  sg: IbSge[];
}

/** mlx5_ib_prefetch_mr_work: a work item holding one mkey reference per sge. */
export async function odp_prefetch_work(ctx: TaskContext<PrefetchWorkArgs>): Promise<void> {
  const { dev, pf_flags, sg } = ctx.args;
  const w = current.k.arena.i32;
  const st = device_priv(dev);
  try {
    for (const s of sg) {
      const ret = await pagefault_mr(dev, s.addr, s.length, pf_flags, false);
      if (ret <= 0) continue;
      w[st + OdpL.prefetch]++;
      w[st + OdpL.prefetch_pages] += ret;
    }
  } finally {
    for (let i = 0; i < sg.length; i++) odp_mr_put(dev);
  }
}

/**
 * mlx5_ib_advise_mr_prefetch for sges of this MR: with IB_UVERBS_ADVISE_MR_FLAG_FLUSH in the
 * caller, else queued as a work item (a 'driver' task from `workModule`). 0 or -errno.
 */
export async function odp_advise_mr(dev: number, advice: number, flags: number, sg: IbSge[], workModule: string): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  if (advice < IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH || advice > IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT || !Array.isArray(sg) || sg.length === 0) return -EINVAL;
  // prefetch with write access must be supported by the MR
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE && w[st + OdpL.writable] === 0) return -EPERM;
  const pf = pfFlagsOf(advice);
  if ((flags & IB_UVERBS_ADVISE_MR_FLAG_FLUSH) !== 0) {
    for (const s of sg) {
      if (!odp_mr_get(dev)) return -ENOENT;
      try {
        const ret = await pagefault_mr(dev, s.addr, s.length, pf, false);
        if (ret < 0) return ret;
        w[st + OdpL.prefetch]++;
        w[st + OdpL.prefetch_pages] += ret;
      } finally {
        odp_mr_put(dev);
      }
    }
    return 0;
  }
  let got = 0;
  for (; got < sg.length; got++) if (!odp_mr_get(dev)) break;
  if (got < sg.length) {
    for (let i = 0; i < got; i++) odp_mr_put(dev);
    return -ENOENT;
  }
  const args: PrefetchWorkArgs = { dev, pf_flags: pf, sg: sg.map((s) => ({ addr: s.addr, length: s.length })) };
  k.sched.spawn({ name: `odp_prefetch@${dev.toString(16)}`, kind: 'driver', module: workModule, fn: 'odp_prefetch_work', args });
  return 0;
}

// ---- deregistration ---------------------------------------------------------------------------------

/**
 * ib_umem_odp_free with the HCA fenced first (the mkey is revoked): zap the whole MTT, wait
 * for the HCA, unmap every page, then remove the notifier: no callback runs after.
 */
export async function ib_umem_odp_release(dev: number): Promise<void> {
  const k = current.k;
  const w = k.arena.i32;
  const st = device_priv(dev);
  await odp_mr_revoke(dev);
  const pl = w[st + OdpL.pfn_list];
  if (pl === 0) return; // registration failed before the notifier went in
  const p = device_lock(dev);
  if (p !== undefined) await p;
  try {
    const f = device_fence_wait(dev, shadow_pte_zap(dev, odp_start(dev), odp_end(dev)));
    if (f !== undefined) await f;
    ib_umem_odp_unmap_dma_pages(dev, odp_start(dev), odp_end(dev));
  } finally {
    device_unlock(dev);
  }
  const r = mmu_interval_notifier_remove(dev + DevL.notifier);
  if (typeof r !== 'number') await r;
  k.kmalloc.kfree(pl);
  w[st + OdpL.pfn_list] = 0;
}

/**
 * ib_dereg_mr: no new user can find the MR; wait for every fault, prefetch and work request
 * holding it; then close the device (its engines stop) and release the umem.
 */
export async function odp_dereg_mr(dev: number): Promise<number> {
  await odp_mr_revoke(dev);
  return device_close(dev);
}

export { MR_STATE_VALID, MR_STATE_INVALID };
