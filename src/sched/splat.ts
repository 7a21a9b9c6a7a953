// Kernel splats (WARN, BUG, lockdep reports, violations) go to klog with the task and time,
// and leave a VIOLATION event in the event log so traces show where they happened.

import { EV } from '../shm/events.js';
import { current } from './current.js';
import type { Kernel } from './kernel.js';

export function splat(k: Kernel, kind: string, text: string): number {
  const t = current;
  const id = t && t.k === k ? t.id : 0;
  const idx = k.klog.write(kind, id, k.sched.now(), text);
  k.events.emit(EV.VIOLATION, id, idx, 0, 0);
  return idx;
}
