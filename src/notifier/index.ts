// The notifier layer's public API: what the mm calls (start/end/release), what drivers call
// (register, interval insert/remove, the read side), and the ops registry.

export * from './range.js';
export * from './ops.js';
export {
  MnL,
  MinL,
  SubsL,
  NotifierCore,
  mm_has_notifiers,
  mmu_notifier_priv,
  mmu_notifier_policy,
  set_mmu_notifier_policy,
  mmu_notifier_subscriptions_destroy,
  mmu_notifier_subscriptions_state,
  type NotifierPolicy,
  type SubscriptionsState,
} from './subscriptions.js';
export {
  mmu_notifier_init,
  __mmu_notifier_register,
  mmu_notifier_register,
  mmu_notifier_unregister,
  mmu_notifier_get,
  mmu_notifier_get_locked,
  mmu_notifier_put,
  mmu_notifier_synchronize,
  mmu_notifier_clear_flush_young,
  mmu_notifier_clear_young,
  mmu_notifier_test_young,
  mmu_notifier_arch_invalidate_secondary_tlbs,
} from './mmu_notifier.js';
export {
  mmu_interval_notifier_insert,
  mmu_interval_notifier_insert_locked,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_read_retry,
  mmu_interval_check_retry,
  mmu_interval_set_seq,
  mmu_interval_notifier_range,
} from './interval.js';
export {
  mmu_notifier_invalidate_range_start,
  mmu_notifier_invalidate_range_start_nonblock,
  mmu_notifier_invalidate_range_end,
  mmu_notifier_release,
  __mmu_notifier_release,
} from './invalidate.js';
export { NK } from './report.js';
