// arch_spin_lock: the raw word lock under the shm data structures (pool free lists, the
// lockdep graph, the log rings). It is not a kernel lock: no lockdep, no context checks.
// Critical sections under it are a few stores long and never await, so under `sim` it is
// never contended; under `threads` it spins, then parks briefly so a preempted holder can run.

/** How long the main thread spins before deciding the holder died (an aborted worker). */
const MAIN_THREAD_SPIN_MS = 1000;

export class RawLockDeadError extends Error {}

export function arch_spin_lock(w: Int32Array, idx: number): void {
  if (Atomics.compareExchange(w, idx, 0, 1) === 0) return;
  let deadline = 0;
  for (let spins = 0; ; spins++) {
    if (w[idx] === 0 && Atomics.compareExchange(w, idx, 0, 1) === 0) return;
    if (spins <= 64) continue;
    // A worker may park; the main thread (never a kernel task under threads) only spins, and
    // gives up rather than hang when the holder was a worker that was unplugged mid-section.
    if (canPark) Atomics.wait(w, idx, 1, 0.05);
    else if ((spins & 1023) === 0) {
      const now = performance.now();
      if (deadline === 0) deadline = now + MAIN_THREAD_SPIN_MS;
      else if (now > deadline) throw new RawLockDeadError(`raw lock @${idx.toString(16)} held for over ${MAIN_THREAD_SPIN_MS} ms: its holder died inside the critical section`);
    }
  }
}

export function arch_spin_unlock(w: Int32Array, idx: number): void {
  Atomics.store(w, idx, 0);
}

let canPark = false;
/** Called by worker threads, where Atomics.wait is allowed. */
export function allowParking(): void {
  canPark = true;
}
