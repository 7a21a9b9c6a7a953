// Kernel splats (WARN, BUG, lockdep reports, violations) go to klog with the task and time,
// and leave a VIOLATION event in the event log so traces show where they happened.

import { EV } from '../shm/events.js';
import { current } from './current.js';
import type { Kernel } from './kernel.js';
import { TaskL, type Task } from './task.js';

export function splat(k: Kernel, kind: string, text: string): number {
  const t = current;
  const id = t && t.k === k ? t.id : 0;
  const idx = k.klog.write(kind, id, k.sched.now(), text);
  k.events.emit(EV.VIOLATION, id, idx, 0, 0);
  return idx;
}

/** schedule()'s check, in both schedulers: report (and then allow) a sleep from atomic context. */
export function check_scheduling_while_atomic(k: Kernel, t: Task): void {
  const w = k.arena.i32;
  const pc = w[t.base + TaskL.preempt];
  const nb = w[t.base + TaskL.nonBlock];
  if (pc > 0 || nb > 0) {
    splat(k, 'scheduling_while_atomic', `BUG: scheduling while atomic: ${t.name}/${t.id}/0x${pc.toString(16).padStart(8, '0')} non_block: ${nb}`);
  }
}

/** At the end of a run: a write through a NULL struct pointer hit the arena's guard page. */
export function check_null_guard(k: Kernel): boolean {
  const at = k.arena.nullGuardDamage();
  if (at < 0) return true;
  k.klog.write('null_deref', 0, k.sched.now(), `BUG: kernel NULL pointer dereference, address: word ${at} (0x${(at * 4).toString(16)}) of the arena's guard page holds ${k.arena.i32[at]}: something wrote through a struct offset of 0 plus a field`);
  return false;
}
