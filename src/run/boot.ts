// Boot: plan the arena from the config (every layer asks for its regions), create it,
// initialise each layer, and build the Kernel views. Workers attach to the same arena with
// the same layout and get views over the same memory.

import { Arena, ArenaPlan, type ArenaLayout } from '../shm/arena.js';
import { EventLog } from '../shm/events.js';
import { Klog } from '../shm/klog.js';
import { Kmalloc } from '../shm/kmalloc.js';
import { StringTable } from '../shm/strings.js';
import { BootScheduler } from '../sched/boot.js';
import { setCurrent } from '../sched/current.js';
import { defaultKernelConfig, type Kernel, type KernelConfig } from '../sched/kernel.js';
import type { Scheduler } from '../sched/scheduler.js';
import { planSim } from '../sched/sim.js';
import { planThreads } from '../sched/threads.js';
import { TaskTable } from '../sched/task.js';
import { Lockdep } from '../sync/lockdep.js';
import { NotifierCore } from '../notifier/subscriptions.js';
import '../mm/mm_struct.js'; // installs __mmdrop behind mmdrop() in every thread with a kernel
import { Zone, defaultMemConfig } from '../mm/page_alloc.js';
import { MmLayer, mmViews } from '../mm/mm_layer.js';
import type { PageTables } from '../mm/pgtable.js';
import '../mm/process.js'; // the mm layer's process entry, loadable in every worker
import { SwapInfo } from '../mm/swapfile.js';
import '../mm/vmscan.js'; // fills the zone's reclaim hooks in every thread with a kernel
import '../mm/swap_fault.js'; // installs do_swap_page and the swap hooks in every thread with a kernel
import { MemCgroups } from '../mm/memcontrol.js'; // also installs the memcg charge hooks in every thread with a kernel
import { DeviceLayer, deviceViews } from '../device/layer.js';

export type BootConfig = Partial<KernelConfig>;

class KernelInstance implements Kernel {
  readonly strings: StringTable;
  readonly events: EventLog;
  readonly klog: Klog;
  readonly tasks: TaskTable;
  readonly kmalloc: Kmalloc;
  readonly lockdep: Lockdep;
  readonly notifier: NotifierCore;
  readonly zone: Zone;
  readonly pgtables: PageTables;
  readonly mmLayer: MmLayer;
  readonly swap: SwapInfo;
  readonly memcg: MemCgroups;
  readonly devices: DeviceLayer;
  sched: Scheduler = new BootScheduler();

  constructor(
    readonly config: KernelConfig,
    readonly arena: Arena,
  ) {
    this.strings = new StringTable(arena);
    this.events = new EventLog(arena);
    this.klog = new Klog(arena);
    this.tasks = new TaskTable(this, arena, this.strings);
    this.kmalloc = new Kmalloc(arena, config.kmalloc);
    this.lockdep = new Lockdep(this, arena);
    this.notifier = new NotifierCore(this, arena);
    this.zone = new Zone(arena, config.mem);
    ({ pgtables: this.pgtables, mmLayer: this.mmLayer } = mmViews(arena, config));
    this.swap = new SwapInfo(arena, config);
    this.memcg = new MemCgroups(arena, config);
    this.devices = deviceViews(arena, config);
  }
}

export function resolveConfig(cfg: BootConfig = {}): KernelConfig {
  const c = { ...defaultKernelConfig, mem: defaultMemConfig, ...cfg };
  for (const key of ['maxTasks', 'lockClasses', 'lockdepEdges', 'eventRecords', 'klogBytes', 'strings', 'stringBytes'] as const) {
    const v = c[key];
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`kernel config: ${key} must be a whole number >= 1, got ${String(v)}`);
  }
  return c;
}

export function planKernel(c: KernelConfig): ArenaLayout {
  const plan = new ArenaPlan();
  StringTable.plan(plan, c.strings, c.stringBytes);
  EventLog.plan(plan, c.eventRecords);
  Klog.plan(plan, c.klogBytes);
  TaskTable.plan(plan, c.maxTasks);
  Kmalloc.plan(plan, c.kmalloc);
  Lockdep.plan(plan, c.lockClasses + 1, c.lockdepEdges);
  planSim(plan);
  NotifierCore.plan(plan);
  planThreads(plan);
  Zone.plan(plan, c.mem);
  MmLayer.plan(plan, c);
  SwapInfo.plan(plan, c);
  MemCgroups.plan(plan, c);
  DeviceLayer.plan(plan, c);
  return plan.layout();
}

/** Build a fresh kernel; the calling thread becomes its boot context. */
export function bootKernel(cfg: BootConfig = {}): Kernel {
  const c = resolveConfig(cfg);
  const arena = Arena.create(planKernel(c));
  StringTable.init(arena, c.strings);
  EventLog.init(arena, c.eventRecords, c.events);
  TaskTable.init(arena, c.maxTasks);
  Kmalloc.init(arena, c.kmalloc);
  Lockdep.init(arena, c.lockClasses + 1, c.lockdepEdges, c.lockdep);
  Zone.init(arena, c.mem);
  MmLayer.init(arena, c);
  SwapInfo.init(arena, c);
  MemCgroups.init(arena, c);
  DeviceLayer.init(arena, c);
  const k = new KernelInstance(c, arena);
  k.lockdep.initMaps();
  NotifierCore.init(k, c.notifierPolicy);
  setCurrent(k.tasks.boot());
  return k;
}

/** Views over an existing kernel's arena (a worker, or a restored snapshot). */
export function attachKernel(sab: SharedArrayBuffer, layout: ArenaLayout, config: KernelConfig): Kernel {
  return new KernelInstance(config, Arena.attach(sab, layout));
}

/** A kernel restored from an arena snapshot: identical state, fresh views. */
export function restoreKernel(snapshot: Uint8Array, layout: ArenaLayout, config: KernelConfig): Kernel {
  const k = new KernelInstance(config, Arena.restore(snapshot, layout));
  setCurrent(k.tasks.get(0));
  return k;
}
