// The Kernel: one instance's JS-side views of its arena. It owns no kernel state itself.
// Each layer adds the views it keeps through declaration merging on this interface
// (sync adds `lockdep`, later layers add the mm, notifiers and devices), so lower layers
// never import upper ones.

import type { Arena } from '../shm/arena.js';
import type { EventLog } from '../shm/events.js';
import type { Klog } from '../shm/klog.js';
import type { Kmalloc, KmallocConfig } from '../shm/kmalloc.js';
import type { StringTable } from '../shm/strings.js';
import type { Scheduler } from './scheduler.js';
import type { TaskTable } from './task.js';

/** The config fields of the foundation layers; later layers add theirs to KernelConfig. */
export interface BaseKernelConfig {
  /** most tasks alive at once */
  maxTasks: number;
  /** lockdep lock classes */
  lockClasses: number;
  /** lockdep dependency edges remembered with a witness */
  lockdepEdges: number;
  /** lockdep on (off only for speed runs) */
  lockdep: boolean;
  /** event log on, and its ring size in records */
  events: boolean;
  eventRecords: number;
  klogBytes: number;
  strings: number;
  stringBytes: number;
  /** kmalloc size classes: words per object -> count */
  kmalloc: KmallocConfig;
}

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface KernelConfig extends BaseKernelConfig {}

export const defaultKernelConfig: BaseKernelConfig = {
  maxTasks: 64,
  lockClasses: 256,
  lockdepEdges: 4096,
  lockdep: true,
  events: true,
  eventRecords: 1 << 15,
  klogBytes: 1 << 20,
  strings: 1024,
  stringBytes: 32768,
  kmalloc: { 8: 4096, 16: 2048, 32: 1024, 64: 512, 256: 128, 1024: 32 },
};

export interface Kernel {
  readonly config: KernelConfig;
  readonly arena: Arena;
  readonly strings: StringTable;
  readonly events: EventLog;
  readonly klog: Klog;
  readonly tasks: TaskTable;
  readonly kmalloc: Kmalloc;
  /** the scheduler running this thread's tasks */
  sched: Scheduler;
}
