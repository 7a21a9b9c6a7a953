// arch_spin_lock: the raw word lock under the shm data structures (pool free lists, the
// lockdep graph, the log rings). It is not a kernel lock: no lockdep, no context checks.
// Critical sections under it are a few stores long and never await, so under `sim` it is
// never contended; under `threads` it spins, then parks briefly so a preempted holder can run.

export function arch_spin_lock(w: Int32Array, idx: number): void {
  if (Atomics.compareExchange(w, idx, 0, 1) === 0) return;
  for (let spins = 0; ; spins++) {
    if (w[idx] === 0 && Atomics.compareExchange(w, idx, 0, 1) === 0) return;
    // A worker may park; the main thread (never a kernel task under threads) only spins.
    if (spins > 64 && canPark) Atomics.wait(w, idx, 1, 0.05);
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
