// The device layer's arena structs and constants: the device struct (one instance = one
// device address space bound to one mm), its engines (the in-flight access slots and fault
// slots of the tasks that run device programs), shadow PTE bits, statistics and event types.
// Types only, so every file of the layer (and a driver) can read them without the logic.

import { EV_NAMES } from '../shm/events.js';
import { defineStruct } from '../shm/layout.js';
import { MinL, MnL } from '../notifier/subscriptions.js';

/** engines per device: tasks that may access memory through one device at the same time */
export const DEV_ENGINES = 4;

// ---- shadow page table -------------------------------------------------------------------------
// Four levels like the host's: three levels of 512-entry directories (pool indices), then a
// leaf of 512 entries of SPTE_WORDS words each: the entry, and the notifier sequence it was
// installed from. Entry: pfn << SPTE_PFN_SHIFT | SPTE_* bits; 0 = none.

export const SPT_DIR_ENTRIES = 512;
export const SPT_LEAF_ENTRIES = 512;
export const SPTE_WORDS = 2;
export const SPT_LEAF_WORDS = SPT_LEAF_ENTRIES * SPTE_WORDS;

export const SPTE_VALID = 1 << 0;
export const SPTE_WRITE = 1 << 1;
/** the device may do atomics on the page (an exclusive entry, make_device_exclusive) */
export const SPTE_ATOMIC = 1 << 2;
/** the frame is device-private memory of this device */
export const SPTE_DEVICE_PRIVATE = 1 << 3;
export const SPTE_PFN_SHIFT = 4;
/** largest pfn an entry holds */
export const SPTE_PFN_MAX = 2 ** (31 - SPTE_PFN_SHIFT) - 1;

// ---- device faults -------------------------------------------------------------------------------

/** flags of a device fault (what the access that missed wanted) */
export const DEV_FAULT_WRITE = 1 << 0;
export const DEV_FAULT_ATOMIC = 1 << 1;

/** fault slot states */
export const FQ_IDLE = 0;
export const FQ_QUEUED = 1;
export const FQ_BUSY = 2;
export const FQ_DONE = 3;

/** per engine: the in-flight slot, the fault slot, the liveness bookkeeping */
export const EngL = defineStruct('device_engine', {
  fault_addr: 2, // f64
  live_since: 2, // f64: ns of the first fault of the current no-progress streak
  /** 0 = no access in flight, else 1 + the TLB generation the access began at */
  inflight: 1,
  /** the engine's task id, 0 if none */
  task: 1,
  /** pages this engine accessed (its progress) */
  accesses: 1,
  fault_npages: 1,
  fault_flags: 1,
  fault_status: 1, // FQ_*
  fault_result: 1,
  /** the page of the last fault (low 32 bits of the vpn) and the streak length */
  live_vpn: 1,
  live_rounds: 1,
  /** accesses when the streak's last fault was raised */
  live_acc: 1,
});
if ((EngL.$size & 1) !== 0) throw new Error('EngL must have an even size');

// ---- statistics -----------------------------------------------------------------------------------

export const DEV_STAT_NAMES = [
  'accesses', // pages accessed through shadow PTEs
  'faults', // device faults raised
  'fault_rounds', // rounds of a fault loop (read_begin ... retry check)
  'invalidations', // invalidation callbacks of the device's notifier
  'retries', // the retry check (read_retry / mmu_invalidate_retry) said retry
  'ebusy', // hmm_range_fault returned -EBUSY
  'eagain', // non-blockable invalidations refused (-EAGAIN, false)
  'installs', // shadow PTEs installed
  'zapped', // shadow PTEs zapped
  'violations', // mirror-invariant and retry-protocol failures
  'fault_errors', // faults that returned an error
  'livelocks', // fault streaks ended by the liveness bound
] as const;
export type DevStatName = (typeof DEV_STAT_NAMES)[number];
export const DEV_STAT: { readonly [K in DevStatName]: number } = Object.fromEntries(DEV_STAT_NAMES.map((n, i) => [n, i])) as never;

/** Words the device struct reserves for the embedded subscription (either kind). */
export const DEV_NOTIFIER_WORDS = Math.max(MinL.$size, MnL.$size);

/** a notifier lock: a mutex, rwsem or spinlock (the largest is the rwsem) */
export const DEV_LOCK_WORDS = 8;

/** struct device (one address space). Float64 and embedded structs first, at even offsets. */
export const DevL = defineStruct('device', {
  /** the embedded struct mmu_interval_notifier / mmu_notifier, at offset 0 */
  notifier: DEV_NOTIFIER_WORDS + (DEV_NOTIFIER_WORDS & 1),
  engines: DEV_ENGINES * EngL.$size,
  /** the driver's notifier lock */
  lock: DEV_LOCK_WORDS,
  /** a wait object (header only) that fence waiters sleep on, so hung-run reports name it */
  fence: 4,
  state: 1, // DEV_*
  id: 1, // pool index
  name: 1, // string id
  driver: 1, // string id of the driver's name
  priv: 1, // driver state (kmalloc), 0 if none
  mm: 1,
  owner: 1, // device-private pgmap owner id
  flags: 1, // DEVF_*
  root: 1, // shadow page table root (directory pool index)
  /** bumped at every zap (Atomics.add) */
  tlb_gen: 1,
  /** tasks parked in device_fence_wait */
  fence_waiters: 1,
  /** bumped when a fault is queued for the fault task */
  fq_seq: 1,
  fault_task: 1, // task id servicing the fault slots, 0 = faults are serviced by the engine
  stop: 1, // engines and the fault task end at their next look
  last_inval_task: 1,
  violation_records: 1, // violation records written (capped)
  stats: DEV_STAT_NAMES.length,
});
if ((DevL.engines & 1) !== 0 || (DevL.notifier & 1) !== 0) throw new Error('DevL: engines and notifier must sit at even offsets');

export const DEV_FREE = 0;
export const DEV_LIVE = 1;
export const DEV_CLOSING = 2;

/** the device's atomics need SPTE_ATOMIC (an exclusive entry), not just SPTE_WRITE */
export const DEVF_ATOMIC_EXCLUSIVE = 1 << 0;

/** word offset of engine `e` of device `dev` */
export function engine_at(dev: number, e: number): number {
  return dev + DevL.engines + e * EngL.$size;
}

// ---- events (after EV.USER; the mm and notifier layers' block, 96..127, is in src/mm/events.ts) ----

export const DEV_EV = {
  ACCESS_BEGIN: 80, // task = engine's task; a = dev, b = engine, c = TLB generation
  ACCESS_END: 81, // a = dev, b = engine, c = pages accessed
  FAULT: 82, // a = dev, b = vpn (low 32 bits), c = DEV_FAULT_* flags
  FAULT_DONE: 83, // a = dev, b = vpn, c = result
  ZAP: 84, // a = dev, b = the new TLB generation, c = entries zapped
  FENCE_WAIT: 85, // a = dev, b = engine waited for, c = generation
  FENCE_DONE: 86, // a = dev, b = generation
  FENCE_FAIL: 87, // a = dev, b = engine in flight, c = generation (a non-blockable invalidation that cannot wait)
  INSTALL: 88, // a = dev, b = vpn, c = pages
} as const;

for (const [k, v] of Object.entries(DEV_EV)) EV_NAMES[v] = `dev_${k.toLowerCase()}`;
