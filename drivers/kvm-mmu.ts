// kvm-mmu: a secondary MMU on an hlist mmu_notifier, modelled on KVM (virt/kvm/kvm_main.c,
// kvm_mmu_notifier_invalidate_range_start/_end/release and kvm_mmu_invalidate_begin/_end,
// with the vCPU fault path of arch/x86/kvm/mmu/mmu.c reduced to its retry protocol).
// - invalidate_range_start: under mmu_lock, mmu_invalidate_in_progress++ (and the in-progress
//   range widened), then zap the SPTEs of the range and flush the TLB. Never fails, whether
//   blockable or not: this is the "A" of the 2019 A/B thread (reference §1.7).
// - invalidate_range_end: under mmu_lock, mmu_invalidate_seq++, then in_progress--.
// - a vCPU fault reads mmu_invalidate_seq, GUPs the page (FOLL_GET, faulting it in), takes
//   mmu_lock, and retries (RET_PF_RETRY: nothing installed, the vCPU re-enters and faults
//   again) while mmu_invalidate_retry(kvm, seq): the count is non-zero or the seq moved.
// Where it differs from KVM:
// - one memslot, and gfn == hva: the guest's physical address space is the memslot's host
//   virtual range (the device address space is the host's);
// - mmu_lock is a spinlock (x86 KVM has an rwlock);
// - mmu_invalidate_retry is count-only, as in 4.19 (mmu_notifier_retry); current KVM asks only
//   for gfns inside the in-progress range (mmu_invalidate_retry_gfn). The early check before
//   GUP is v6.x kvm_faultin_pfn's, so a vCPU does not fault pages in during an invalidation;
// - the start bumps the count for every range, as 4.19 did (current KVM only for ranges
//   that hit a memslot); no age (young) hooks, no rcuwait for memslot updates;
// - the zap is under mmu_lock; the TLB flush after it waits for in-flight vCPU accesses (they
//   never sleep mid-access, so a non-blockable start spins, as a shootdown IPI would).

import {
  DEV_FAULT_WRITE,
  DEV_STAT,
  DevL,
  EFAULT,
  FOLL_WRITE,
  SPTE_WRITE,
  current,
  defineDriver,
  defineStruct,
  device_fence_spin,
  device_fence_wait,
  device_mm,
  device_open,
  device_priv,
  device_stat_add,
  device_lock,
  device_unlock,
  get_user_pages_remote,
  mmap_read_lock,
  mmap_read_unlock,
  mmget_not_zero,
  mmput,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
  put_page,
  shadow_pte_install,
  shadow_pte_zap,
  splat,
  type MmuNotifierRange,
  type DriverOpenOpts,
  type Kernel,
} from '../src/device/index.js';
import { defineStressAdapter, spawnStressEngines } from '../src/device/stress_adapter.js';

/** struct kvm, the parts the MMU notifier touches */
export const KvmL = defineStruct('kvm', {
  mmu_invalidate_range_start: 2, // f64
  mmu_invalidate_range_end: 2, // f64
  /** the one memslot: userspace_addr and npages */
  slot_base: 2, // f64
  slot_npages: 1,
  /** invalidations between start and end */
  mmu_invalidate_in_progress: 1,
  /** bumped at every end: a fault that read an older value retries */
  mmu_invalidate_seq: 1,
  starts: 1,
  ends: 1,
  released: 1,
});

export interface KvmOpenOpts extends DriverOpenOpts {
  /** the memslot: host virtual start (page aligned) and pages; default none (set it with SET_USER_MEMORY_REGION) */
  slot_base?: number;
  slot_npages?: number;
}

function f64(): Float64Array {
  return current.k.arena.f64;
}

function i32(): Int32Array {
  return current.k.arena.i32;
}

/** mmu_invalidate_retry: the fault read `seq`; retry if an invalidation runs or ran since. */
export function mmu_invalidate_retry(kvm: number, seq: number): boolean {
  const w = i32();
  if (Atomics.load(w, kvm + KvmL.mmu_invalidate_in_progress) !== 0) return true;
  return Atomics.load(w, kvm + KvmL.mmu_invalidate_seq) !== seq;
}

/** kvm_mmu_invalidate_begin: mmu_lock held */
function kvm_mmu_invalidate_begin(kvm: number, start: number, end: number): void {
  const w = i32();
  const f = f64();
  const n = Atomics.add(w, kvm + KvmL.mmu_invalidate_in_progress, 1) + 1;
  if (n === 1) {
    f[(kvm + KvmL.mmu_invalidate_range_start) >> 1] = start;
    f[(kvm + KvmL.mmu_invalidate_range_end) >> 1] = end;
  } else {
    // fully tracking multiple concurrent ranges has diminishing returns: keep the union
    f[(kvm + KvmL.mmu_invalidate_range_start) >> 1] = Math.min(start, f[(kvm + KvmL.mmu_invalidate_range_start) >> 1]);
    f[(kvm + KvmL.mmu_invalidate_range_end) >> 1] = Math.max(end, f[(kvm + KvmL.mmu_invalidate_range_end) >> 1]);
  }
}

/** kvm_mmu_invalidate_end: mmu_lock held */
function kvm_mmu_invalidate_end(kvm: number): void {
  const w = i32();
  // the seq moves before the count drops, so a fault that sees count 0 sees the new seq
  Atomics.add(w, kvm + KvmL.mmu_invalidate_seq, 1);
  const n = Atomics.sub(w, kvm + KvmL.mmu_invalidate_in_progress, 1) - 1;
  if (n < 0) {
    Atomics.store(w, kvm + KvmL.mmu_invalidate_in_progress, 0);
    splat(current.k, 'warn', `WARNING: kvm_mmu_invalidate_end: WARN_ON_ONCE(kvm->mmu_invalidate_in_progress < 0): an end without its start`);
  }
}

/** kvm_unmap_gfn_range for the part of [start, end) in the memslot, mmu_lock held: the generation to flush, or -1. */
function kvm_unmap_gfn_range(dev: number, kvm: number, start: number, end: number): number {
  const base = f64()[(kvm + KvmL.slot_base) >> 1];
  const top = base + i32()[kvm + KvmL.slot_npages] * current.k.mmLayer.pageSize;
  const s = Math.max(start, base);
  const e = Math.min(end, top);
  return s < e ? shadow_pte_zap(dev, s, e) : -1;
}

/** kvm_flush_remote_tlbs: wait for the vCPU accesses that may still use a zapped SPTE. */
function kvm_flush_remote_tlbs(dev: number, gen: number, blockable: boolean): Promise<void> | undefined {
  if (gen < 0) return undefined;
  if (blockable) return device_fence_wait(dev, gen);
  if (!device_fence_spin(dev, gen)) {
    splat(current.k, 'warn', 'WARNING: kvm_flush_remote_tlbs: a vCPU access is in flight across a sleep, and a non-blockable invalidation cannot wait for it');
  }
  return undefined;
}

const ops = {
  invalidate_range_start(sub: number, range: MmuNotifierRange): number | Promise<number> {
    const dev = mmu_notifier_priv(sub);
    const kvm = device_priv(dev);
    device_lock(dev); // mmu_lock: a spinlock, never sleeps
    i32()[kvm + KvmL.starts]++;
    kvm_mmu_invalidate_begin(kvm, range.start, range.end);
    const gen = kvm_unmap_gfn_range(dev, kvm, range.start, range.end);
    device_unlock(dev);
    const p = kvm_flush_remote_tlbs(dev, gen, mmu_notifier_range_blockable(range));
    return p === undefined ? 0 : p.then(() => 0);
  },

  invalidate_range_end(sub: number, _range: MmuNotifierRange): void {
    const dev = mmu_notifier_priv(sub);
    const kvm = device_priv(dev);
    device_lock(dev);
    i32()[kvm + KvmL.ends]++;
    kvm_mmu_invalidate_end(kvm);
    device_unlock(dev);
  },

  /** kvm_mmu_notifier_release: kvm_flush_shadow_all */
  release(sub: number, _mm: number): Promise<void> | undefined {
    const dev = mmu_notifier_priv(sub);
    const kvm = device_priv(dev);
    device_lock(dev);
    i32()[kvm + KvmL.released] = 1;
    const gen = shadow_pte_zap(dev, 0, Infinity);
    device_unlock(dev);
    return kvm_flush_remote_tlbs(dev, gen, true);
  },
};

/**
 * The vCPU page fault: one page. 0 = RET_PF_RETRY or RET_PF_FIXED (the access retries either
 * way), -EFAULT for an address outside the memslot or a page GUP cannot take.
 */
async function kvm_page_fault(dev: number, addr: number, _npages: number, flags: number): Promise<number> {
  const k = current.k;
  const w = k.arena.i32;
  const kvm = device_priv(dev);
  const ps = k.mmLayer.pageSize;
  const base = k.arena.f64[(kvm + KvmL.slot_base) >> 1];
  const hva = addr - (addr % ps);
  if (hva < base || hva >= base + w[kvm + KvmL.slot_npages] * ps) return -EFAULT;
  device_stat_add(dev, DEV_STAT.fault_rounds);
  const write = (flags & DEV_FAULT_WRITE) !== 0;
  const mmu_seq = Atomics.load(w, kvm + KvmL.mmu_invalidate_seq);
  if (mmu_invalidate_retry(kvm, mmu_seq)) {
    device_stat_add(dev, DEV_STAT.retries);
    return 0;
  }
  const mm = device_mm(dev);
  if (!mmget_not_zero(mm)) return -EFAULT;
  const pages = [0];
  let got: number;
  try {
    const l = mmap_read_lock(mm);
    if (l !== undefined) await l;
    try {
      got = await get_user_pages_remote(mm, hva, 1, write ? FOLL_WRITE : 0, pages);
    } finally {
      mmap_read_unlock(mm);
    }
  } finally {
    const p = mmput(mm);
    if (p !== undefined) await p;
  }
  if (got !== 1) return got < 0 ? got : -EFAULT;
  const pfn = pages[0];
  device_lock(dev);
  let ret = 0;
  if (mmu_invalidate_retry(kvm, mmu_seq)) device_stat_add(dev, DEV_STAT.retries);
  else ret = shadow_pte_install(dev, hva, pfn, write ? SPTE_WRITE : 0, mmu_seq);
  device_unlock(dev);
  put_page(k, pfn); // kvm_release_page_clean: the SPTE holds no reference
  return ret;
}

export const kvmMmuDriver = defineDriver({
  name: 'kvm-mmu',
  state: KvmL,
  lock: { kind: 'spinlock', name: 'kvm->mmu_lock', class: '&kvm->mmu_lock' },
  notifier: { kind: 'hlist', ops },
  fault: kvm_page_fault,
  seq_retry: (dev, seq) => mmu_invalidate_retry(device_priv(dev), seq),
  open(dev, opts: KvmOpenOpts) {
    const kvm = device_priv(dev);
    if (opts.slot_base !== undefined) {
      f64()[(kvm + KvmL.slot_base) >> 1] = opts.slot_base;
      i32()[kvm + KvmL.slot_npages] = opts.slot_npages ?? 0;
    }
    return 0;
  },
  commands: {
    /** KVM_SET_USER_MEMORY_REGION for the one slot: { userspace_addr, npages } */
    SET_USER_MEMORY_REGION(dev: number, arg: { userspace_addr: number; npages: number }): number {
      const kvm = device_priv(dev);
      device_lock(dev);
      f64()[(kvm + KvmL.slot_base) >> 1] = arg.userspace_addr;
      i32()[kvm + KvmL.slot_npages] = arg.npages;
      device_unlock(dev);
      return 0;
    },
  },
  diagnose(dev) {
    const kvm = device_priv(dev);
    const w = i32();
    return (
      `kvm: mmu_invalidate_in_progress ${w[kvm + KvmL.mmu_invalidate_in_progress]}, mmu_invalidate_seq ${w[kvm + KvmL.mmu_invalidate_seq]}, ` +
      `${w[kvm + KvmL.starts]} starts and ${w[kvm + KvmL.ends]} ends: ` +
      (w[kvm + KvmL.mmu_invalidate_in_progress] > 0 ? 'an invalidate_range_start never got its invalidate_range_end, so every fault retries (mmu_invalidate_retry)' : 'no invalidation in progress')
    );
  },
});

/** The kvm state of a device, as tests read it. */
export function kvmState(k: Kernel, dev: number): { in_progress: number; seq: number; starts: number; ends: number; released: number } {
  const w = k.arena.i32;
  const kvm = w[dev + DevL.priv];
  return {
    in_progress: w[kvm + KvmL.mmu_invalidate_in_progress],
    seq: w[kvm + KvmL.mmu_invalidate_seq],
    starts: w[kvm + KvmL.starts],
    ends: w[kvm + KvmL.ends],
    released: w[kvm + KvmL.released],
  };
}

/** Under `shadowmm stress`: one VM whose memslot is the process's window, its vCPUs the device engines. */
export const stress = defineStressAdapter({
  driver: 'kvm-mmu',
  description: 'a VM (one memslot over the window); vCPUs access guest memory through the SPTEs',
  open: ({ mm, name, base, npages }) => device_open('kvm-mmu', { mm, name, slot_base: base, slot_npages: npages }),
  start: spawnStressEngines,
  stats: (k, dev) => {
    const s = kvmState(k, dev);
    return { starts: s.starts, ends: s.ends, in_progress: s.in_progress };
  },
});
