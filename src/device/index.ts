// The device API: everything a driver (drivers/, or a user's own file) imports. Drivers use
// this module only (DESIGN.md, layers), so it also re-exports the kernel functions a driver
// calls: the notifier read side and callback helpers, locks, GUP, hmm_range_fault, the mmap
// lock and mm references, struct layouts and errno values.

// ---- the device layer ------------------------------------------------------------------------
export * from './types.js';
export { deviceConfig, deviceUsage, DeviceLayer, type DeviceConfig } from './layer.js';
export {
  device_create,
  device_destroy,
  device_by_id,
  devicesOf,
  device_name,
  deviceLabel,
  device_priv,
  device_mm,
  device_owner,
  device_stat_add,
  deviceStats,
  device_engine_attach,
  device_engine_claim,
  device_engine_release,
  device_notifier_seen,
  type DeviceStats,
  type DeviceCreateOpts,
} from './device.js';
export { shadowEntries, type ShadowPte } from './spt.js';
export { device_access_begin, device_access_end, device_tlb_flush, device_fence_busy, device_fence_wait, device_fence_spin, device_fence_fail, device_inflight } from './fence.js';
export { DEV_READ, DEV_WRITE, DEV_ATOMIC, device_access, device_copy, device_access_held, device_miss, device_read_sum } from './access.js';
export { host_pte, mirror_allows, mirror_check, device_check_all, MAX_VIOLATION_RECORDS } from './check.js';
export { device_fault, device_fault_task } from './fault.js';
export {
  defineDriver,
  device_lock_obj,
  device_lock,
  device_lock_read,
  device_trylock,
  device_unlock,
  type Driver,
  type DriverSpec,
  type DriverLockSpec,
  type DriverNotifierSpec,
  type DriverOpenOpts,
  type DriverCommand,
  type NotifierLockKind,
} from './driver.js';
export { shadow_pte_install, shadow_pte_install_range, shadow_pte_zap } from './install.js';
export { device_open, device_ioctl, device_stop, device_close } from './file.js';
export { driverOf, lookupDriver } from './registry.js';
export { device_hmm_fault } from './hmm_fault.js';
export { dev_stream, dev_random, dev_dma_copy, ResL, spawnDeviceProgram, spawnDeviceFaultTask, deviceProgramsModule, type DevProgramArgs, type Spawner } from './programs.js';

// ---- kernel API a driver calls ----------------------------------------------------------------
export { current } from '../sched/current.js';
export type { Kernel } from '../sched/kernel.js';
export type { TaskContext } from '../sched/scheduler.js';
export { splat } from '../sched/splat.js';
export { defineStruct, type Struct, type FieldSpec } from '../shm/layout.js';
export { EPERM, ENOENT, EINTR, EAGAIN, ENOMEM, EFAULT, EBUSY, EEXIST, EINVAL, EDEADLK, EOVERFLOW, errname } from '../shm/errno.js';
export { might_sleep, non_block_start, non_block_end, in_atomic, in_non_block } from '../sync/context.js';
export { lockdep_assert_held, lockdep_assert_held_write, lockdep_is_held, might_lock } from '../sync/lockdep_api.js';
export { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_lock_nested, mutex_trylock, mutex_unlock, mutex_is_locked } from '../sync/mutex.js';
export { RWSEM_WORDS, RwSem, init_rwsem, down_read, down_write, down_read_trylock, down_write_trylock, up_read, up_write } from '../sync/rwsem.js';
export { SPINLOCK_WORDS, Spinlock, spin_lock_init, spin_lock, spin_trylock, spin_unlock } from '../sync/spinlock.js';
export {
  MMU_NOTIFY_UNMAP,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  mmu_notifier_range_blockable,
  type MmuNotifierRange,
  type MmuNotifierEvent,
} from '../notifier/range.js';
export type { MmuNotifierOps, MmuIntervalNotifierOps } from '../notifier/ops.js';
export { MinL, MnL, mmu_notifier_priv } from '../notifier/subscriptions.js';
export {
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_check_retry,
  mmu_interval_set_seq,
} from '../notifier/interval.js';
export { mmap_read_lock, mmap_read_unlock, mmap_assert_locked, mm_flags_test } from '../mm/mm_inline.js';
export { mmget_not_zero, mmput, mmgrab, mmdrop } from '../mm/mm_struct.js';
export { put_page, get_page, set_page_dirty } from '../mm/mm_pt.js';
export { current_mm } from '../mm/uaccess.js';
export { PAGE_ALIGN_DOWN, ULONG_MAX } from '../mm/types.js';
export {
  FOLL_WRITE,
  FOLL_FORCE,
  FOLL_NOFAULT,
  FOLL_LONGTERM,
  get_user_pages,
  get_user_pages_remote,
  get_user_pages_unlocked,
  pin_user_pages,
  pin_user_pages_remote,
  pin_user_pages_unlocked,
  pin_user_pages_fast,
  unpin_user_page,
  unpin_user_pages,
  unpin_user_pages_dirty_lock,
  page_pincount,
  type GupPages,
} from '../mm/gup.js';
export {
  HmmRange,
  hmm_range_fault,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_PFN_ERROR,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  hmm_pfn_to_pfn,
  hmm_pfns_alloc,
} from '../hmm/hmm.js';
