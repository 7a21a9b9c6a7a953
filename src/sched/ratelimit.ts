// lib/ratelimit.c: __ratelimit over a ratelimit_state kept in the arena (RATELIMIT_STATE_WORDS
// words the caller owns), so every thread shares one state. At most `burst` callers pass per
// `interval`; when a new interval starts with callers suppressed in the last one, the kernel's
// "<func>: N callbacks suppressed" line goes to the klog under the caller's kind.
// Like the kernel's, a caller that finds the state's lock taken is simply suppressed.

import type { Kernel } from './kernel.js';
import { current } from './current.js';

/** DEFAULT_RATELIMIT_INTERVAL (5 * HZ) in ns, DEFAULT_RATELIMIT_BURST */
export const DEFAULT_RATELIMIT_INTERVAL = 5e9;
export const DEFAULT_RATELIMIT_BURST = 10;

// words: lock, begin (ms + 1, 0 = not started), printed, missed
const RS_LOCK = 0;
const RS_BEGIN = 1;
const RS_PRINTED = 2;
const RS_MISSED = 3;
export const RATELIMIT_STATE_WORDS = 4;

/** ___ratelimit: true if this caller may print. `rs` is the word offset of the state. */
export function ___ratelimit(k: Kernel, rs: number, func: string, kind: string, interval = DEFAULT_RATELIMIT_INTERVAL, burst = DEFAULT_RATELIMIT_BURST): boolean {
  const w = k.arena.i32;
  if (Atomics.compareExchange(w, rs + RS_LOCK, 0, 1) !== 0) return false; // raw_spin_trylock
  try {
    const now = Math.floor(k.sched.now() / 1e6) + 1;
    if (w[rs + RS_BEGIN] === 0) w[rs + RS_BEGIN] = now;
    if (now - w[rs + RS_BEGIN] >= interval / 1e6) {
      const missed = w[rs + RS_MISSED];
      if (missed > 0) {
        const t = current;
        k.klog.write(kind, t && t.k === k ? t.id : 0, k.sched.now(), `${func}: ${missed} callbacks suppressed`);
        w[rs + RS_MISSED] = 0;
      }
      w[rs + RS_BEGIN] = now;
      w[rs + RS_PRINTED] = 0;
    }
    if (burst > w[rs + RS_PRINTED]) {
      w[rs + RS_PRINTED]++;
      return true;
    }
    w[rs + RS_MISSED]++;
    return false;
  } finally {
    Atomics.store(w, rs + RS_LOCK, 0);
  }
}
