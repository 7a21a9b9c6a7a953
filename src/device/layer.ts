// The device layer's arena regions and this thread's views of them: the device pool, the
// shadow page-table pools (512-word directories and 1024-word leaves) and a few global words
// (the mirror-check switch, the liveness bound, the next pgmap owner id). Sizes come from
// config.device; every thread computes the same layout from the same config.

import type { Arena, ArenaPlan } from '../shm/arena.js';
import { IndexPool } from '../shm/pool.js';
import type { Kernel, KernelConfig } from '../sched/kernel.js';
import { DevL, SPT_DIR_ENTRIES, SPT_LEAF_WORDS } from './types.js';

export interface DeviceConfig {
  /** device instances alive at once */
  devices?: number;
  /** shadow page-table directories (512 entries) for every device */
  sptDirs?: number;
  /** shadow page-table leaves (512 entries of 2 words) for every device */
  sptLeaves?: number;
  /** check the mirror invariant at every device access (off only for speed runs) */
  mirrorCheck?: boolean;
  /** a device fault streak with no progress for this many rounds and livenessMs is a livelock */
  livenessRounds?: number;
  /** ms: virtual under sim, wall under threads */
  livenessMs?: number;
}

declare module '../sched/kernel.js' {
  interface KernelConfig {
    device?: DeviceConfig;
  }
  interface Kernel {
    readonly devices: DeviceLayer;
  }
}

export function deviceConfig(c: KernelConfig): Required<DeviceConfig> {
  const d = c.device ?? {};
  const out: Required<DeviceConfig> = {
    devices: d.devices ?? 16,
    sptDirs: d.sptDirs ?? 192,
    sptLeaves: d.sptLeaves ?? 128,
    mirrorCheck: d.mirrorCheck ?? true,
    livenessRounds: d.livenessRounds ?? 1000,
    livenessMs: d.livenessMs ?? 1,
  };
  for (const key of ['devices', 'sptDirs', 'sptLeaves', 'livenessRounds'] as const) {
    const v = out[key];
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`kernel config: device.${key} must be a whole number >= 1, got ${String(v)}`);
  }
  if (!(out.livenessMs > 0)) throw new RangeError(`kernel config: device.livenessMs must be > 0, got ${String(out.livenessMs)}`);
  return out;
}

// global words
const G_CHECK = 0; // mirror check on
const G_LIVE_ROUNDS = 1;
const G_NEXT_OWNER = 2;
const G_LIVE_NS = 4; // f64
const G_WORDS = 8;

export class DeviceLayer {
  readonly devices: IndexPool;
  readonly dirs: IndexPool;
  readonly leaves: IndexPool;
  private readonly w: Int32Array;
  private readonly f64: Float64Array;
  /** word offset of the global words */
  readonly g: number;

  constructor(arena: Arena) {
    this.devices = new IndexPool(arena, 'devices', DevL.$size);
    this.dirs = new IndexPool(arena, 'spt_dirs', SPT_DIR_ENTRIES);
    this.leaves = new IndexPool(arena, 'spt_leaves', SPT_LEAF_WORDS);
    this.w = arena.i32;
    this.f64 = arena.f64;
    this.g = arena.region('device_layer');
  }

  static plan(plan: ArenaPlan, c: KernelConfig): void {
    const d = deviceConfig(c);
    IndexPool.plan(plan, 'devices', DevL.$size, d.devices);
    IndexPool.plan(plan, 'spt_dirs', SPT_DIR_ENTRIES, d.sptDirs);
    IndexPool.plan(plan, 'spt_leaves', SPT_LEAF_WORDS, d.sptLeaves);
    plan.region('device_layer', G_WORDS);
  }

  static init(arena: Arena, c: KernelConfig): void {
    const d = deviceConfig(c);
    IndexPool.init(arena, 'devices', d.devices);
    IndexPool.init(arena, 'spt_dirs', d.sptDirs);
    IndexPool.init(arena, 'spt_leaves', d.sptLeaves);
    const g = arena.region('device_layer');
    arena.i32[g + G_CHECK] = d.mirrorCheck ? 1 : 0;
    arena.i32[g + G_LIVE_ROUNDS] = d.livenessRounds;
    arena.i32[g + G_NEXT_OWNER] = 0;
    arena.f64[(g + G_LIVE_NS) >> 1] = d.livenessMs * 1e6;
  }

  /** the mirror invariant is checked at every device access */
  get mirrorCheck(): boolean {
    return Atomics.load(this.w, this.g + G_CHECK) !== 0;
  }

  /** Switch the mirror check (speed runs only); every thread sees the change. */
  set mirrorCheck(on: boolean) {
    Atomics.store(this.w, this.g + G_CHECK, on ? 1 : 0);
  }

  get checkWord(): number {
    return this.g + G_CHECK;
  }

  get livenessRounds(): number {
    return this.w[this.g + G_LIVE_ROUNDS];
  }

  get livenessNs(): number {
    return this.f64[(this.g + G_LIVE_NS) >> 1];
  }

  /** a fresh device-private pgmap owner id (never 0, which means NULL) */
  nextOwner(): number {
    return Atomics.add(this.w, this.g + G_NEXT_OWNER, 1) + 1;
  }

  /** shadow tables in use: what a leak check compares */
  usage(): { devices: number; sptDirs: number; sptLeaves: number } {
    return { devices: this.devices.used, sptDirs: this.dirs.used, sptLeaves: this.leaves.used };
  }
}

/** The view boot hands to a kernel instance. */
export function deviceViews(arena: Arena, c: KernelConfig): DeviceLayer {
  deviceConfig(c);
  return new DeviceLayer(arena);
}

export function deviceUsage(k: Kernel): { devices: number; sptDirs: number; sptLeaves: number } {
  return k.devices.usage();
}
