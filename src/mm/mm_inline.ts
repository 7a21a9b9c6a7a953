// The part of the mm API that the kernel keeps in headers (include/linux/sched/mm.h,
// mmap_lock.h, mm_flags): mm_count references, the mmap_lock wrappers and MMF_* bit helpers.
// The notifier core calls these; it must not import the mm's logic (mm_struct.ts), so the
// one step that is logic, __mmdrop, is reached through a hook that mm_struct.ts installs when
// it loads (boot.ts imports it, so every thread with a kernel has it).
// Every function works on the kernel of `current`, as kernel code does.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { splat } from '../sched/splat.js';
import { RwSem, down_read, down_read_trylock, down_write, down_write_trylock, rwsem_is_locked, rwsem_is_write_locked, up_read, up_write } from '../sync/rwsem.js';
import { lockdep_assert_held, lockdep_assert_held_write } from '../sync/lockdep_api.js';
import { MmL, mmLabel } from './types.js';

// ---- mm_count: mmgrab / mmdrop ---------------------------------------------------------------

let mmdropHook: ((k: Kernel, mm: number) => void) | null = null;

/** mm_struct.ts installs __mmdrop here when it loads. */
export function set_mmdrop_hook(fn: (k: Kernel, mm: number) => void): void {
  mmdropHook = fn;
}

/** mmgrab: pin the struct (not the address space). */
export function mmgrab(mm: number): void {
  const k = current.k;
  const old = Atomics.add(k.arena.i32, mm + MmL.mm_count, 1);
  if (old <= 0) splat(k, 'bug', `BUG: mmgrab of ${mmLabel(mm)} with mm_count ${old}: the struct is already freed`);
}

/** mmdrop: drop a struct reference; the last one frees the mm (__mmdrop). Never sleeps. */
export function mmdrop(mm: number): void {
  mmdrop_k(current.k, mm);
}

/** mmdrop outside a task (the boot context releasing a zombie). */
export function mmdrop_k(k: Kernel, mm: number): void {
  const w = k.arena.i32;
  const old = Atomics.sub(w, mm + MmL.mm_count, 1);
  if (old > 1) return;
  if (old <= 0) {
    Atomics.add(w, mm + MmL.mm_count, 1); // leave the freed struct alone
    splat(k, 'bug', `BUG: mmdrop of ${mmLabel(mm)} with mm_count ${old}: one mmdrop too many (use after free)`);
    return;
  }
  if (!mmdropHook) throw new Error('mmdrop: the mm layer (src/mm/mm_struct.ts) is not loaded in this thread');
  mmdropHook(k, mm);
}

// ---- MMF_* bits --------------------------------------------------------------------------------

export function mm_flags_test(bit: number, mm: number): boolean {
  return (Atomics.load(current.k.arena.i32, mm + MmL.flags) & (1 << bit)) !== 0;
}

export function mm_flags_set(bit: number, mm: number): void {
  Atomics.or(current.k.arena.i32, mm + MmL.flags, 1 << bit);
}

export function mm_flags_clear(bit: number, mm: number): void {
  Atomics.and(current.k.arena.i32, mm + MmL.flags, ~(1 << bit));
}

/** test_and_set_bit: true if the bit was already set */
export function mm_flags_test_and_set(bit: number, mm: number): boolean {
  return (Atomics.or(current.k.arena.i32, mm + MmL.flags, 1 << bit) & (1 << bit)) !== 0;
}

// ---- mmap_lock ---------------------------------------------------------------------------------

// A handle is only (kernel, offset); keep one per mm so lock paths allocate nothing.
const handles = new WeakMap<Kernel, Map<number, RwSem>>();

/** &mm->mmap_lock as a handle. */
export function mmap_lock_of(mm: number): RwSem {
  const k = current.k;
  let m = handles.get(k);
  if (!m) handles.set(k, (m = new Map()));
  let s = m.get(mm);
  if (!s) m.set(mm, (s = new RwSem(k, mm + MmL.mmap_lock)));
  return s;
}

export function mmap_read_lock(mm: number): Promise<void> | undefined {
  return down_read(mmap_lock_of(mm));
}

export function mmap_read_trylock(mm: number): boolean {
  return down_read_trylock(mmap_lock_of(mm));
}

export function mmap_read_unlock(mm: number): void {
  up_read(mmap_lock_of(mm));
}

export function mmap_write_lock(mm: number): Promise<void> | undefined {
  return down_write(mmap_lock_of(mm));
}

export function mmap_write_trylock(mm: number): boolean {
  return down_write_trylock(mmap_lock_of(mm));
}

export function mmap_write_unlock(mm: number): void {
  up_write(mmap_lock_of(mm));
}

/** lockdep_assert_held, and with lockdep off at least "someone holds it" (VM_BUG_ON_MM). */
export function mmap_assert_locked(mm: number): void {
  const s = mmap_lock_of(mm);
  if (s.k.lockdep.enabled) lockdep_assert_held(s);
  else if (!rwsem_is_locked(s)) splat(s.k, 'lockdep_assert', `WARNING: mmap_assert_locked(${mmLabel(mm)}) failed: the mmap_lock is not held`);
}

export function mmap_assert_write_locked(mm: number): void {
  const s = mmap_lock_of(mm);
  if (s.k.lockdep.enabled) lockdep_assert_held_write(s);
  else if (!rwsem_is_write_locked(s)) splat(s.k, 'lockdep_assert', `WARNING: mmap_assert_write_locked(${mmLabel(mm)}) failed: the mmap_lock is not write-locked`);
}
