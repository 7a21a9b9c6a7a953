// User memory access from a CPU task, the way a process program touches memory: through the
// page table of the task's mm, faulting as needed and retrying (do_user_addr_fault), with the
// MMU's accessed/dirty bits set on the PTE. The hot path (present PTE, writable when writing)
// takes no lock, allocates nothing and awaits nothing.
//
// Results: put_user and the copy functions return 0 / bytes not copied as the kernel does;
// get_user returns the 32-bit value, or UACCESS_FAULT (not an int32, so never a value).
// After a failed access, uaccess_signal() says what the program got: SIGSEGV (no VMA, or no
// right) or SIGBUS (the fault failed: MMF_UNSTABLE, beyond a shared object, out of memory).
// A task with SIGKILL pending exits (do_exit) at its next user access.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { TaskExit, type Task } from '../sched/task.js';
import { EFAULT } from '../shm/errno.js';
import { FAULT_FLAG_USER, FAULT_FLAG_WRITE, SIGKILL, SIGSEGV, VM_FAULT_SIGSEGV, fault_signal, handle_mm_fault } from './memory.js';
import { TASK_FAULTSIG, TASK_MM, TASK_SIGPENDING, TASK_UACCESS, TASK_WORDS } from './mm_layer.js';
import { mmap_read_lock, mmap_read_unlock } from './mm_inline.js';
import { pte_lookup } from './mm_pt.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY } from './pgtable.js';
import { MmL } from './types.js';
import { vma_lookup } from './vma.js';
import { emitFault, emitFaultDone } from './events.js';

/** get_user's result when the access faulted */
export const UACCESS_FAULT = -(2 ** 32) - EFAULT;


const M_PGD = MmL.pgd;
// present, writable, not PROT_NONE: bits 0, 1 and 6
const OK_READ_MASK = 0x41;
const OK_READ = 0x01;
const OK_WRITE_MASK = 0x43;
const OK_WRITE = 0x03;
const AD = _PAGE_ACCESSED | _PAGE_DIRTY;

function taskWords(k: Kernel, t: Task): number {
  return k.mmLayer.taskBase + t.id * TASK_WORDS;
}

/** The mm current runs in (its process's, or one adopted with kthread_use_mm), 0 if none. */
export function current_mm(): number {
  const t = current;
  return t.k.arena.i32[taskWords(t.k, t) + TASK_MM];
}

/** kthread_use_mm: let current access mm's user memory (the caller holds an mm_users reference). */
export function kthread_use_mm(mm: number): void {
  const t = current;
  const b = taskWords(t.k, t);
  Atomics.store(t.k.arena.i32, b + TASK_MM, mm);
}

export function kthread_unuse_mm(mm: number): void {
  const t = current;
  const w = t.k.arena.i32;
  const b = taskWords(t.k, t);
  if (w[b + TASK_MM] === mm) Atomics.store(w, b + TASK_MM, 0);
}

/** What the last failed user access of current raised: SIGSEGV, SIGBUS, or 0. */
export function uaccess_signal(): number {
  const t = current;
  return t.k.arena.i32[taskWords(t.k, t) + TASK_FAULTSIG];
}

/** fatal_signal_pending(current) */
export function fatal_signal_pending(): boolean {
  const t = current;
  return (t.k.arena.i32[taskWords(t.k, t) + TASK_SIGPENDING] & 1) !== 0;
}

/**
 * The word offset of the frame word holding addr when the PTE allows the access, marking the
 * PTE young (and dirty); -1 to take the fault path. Runs with the task marked in-access.
 */
function fastWord(k: Kernel, w: Int32Array, mm: number, addr: number, write: boolean): number {
  const pgd = w[mm + M_PGD];
  if (pgd === 0) return -1;
  const slot = pte_lookup(k, pgd, addr);
  if (slot < 0) return -1;
  const pte = w[slot];
  if (write ? (pte & OK_WRITE_MASK) !== OK_WRITE : (pte & OK_READ_MASK) !== OK_READ) return -1;
  const want = write ? AD : _PAGE_ACCESSED;
  // the MMU sets accessed/dirty atomically; a changed PTE sends us around again
  if ((pte & want) !== want && Atomics.compareExchange(w, slot, pte, pte | want) !== pte) return -1;
  const ps = k.mmLayer.pageSize;
  const z = k.zone;
  return z.data + (pte >>> 12) * z.pageWords + ((addr % ps) >>> 2);
}

/**
 * The fault path: mmap_read_lock, find the VMA, handle_mm_fault. 0 to retry the access, or
 * the signal (SIGSEGV/SIGBUS) the access raises.
 */
async function user_fault(k: Kernel, mm: number, addr: number, write: boolean): Promise<number> {
  emitFault(k, mm, addr, FAULT_FLAG_USER | (write ? FAULT_FLAG_WRITE : 0));
  const l = mmap_read_lock(mm);
  if (l !== undefined) await l;
  let ret = VM_FAULT_SIGSEGV;
  try {
    const vma = vma_lookup(k, mm, addr);
    if (vma !== 0) {
      const r = handle_mm_fault(mm, vma, addr, FAULT_FLAG_USER | (write ? FAULT_FLAG_WRITE : 0));
      ret = typeof r === 'number' ? r : await r;
    }
  } finally {
    mmap_read_unlock(mm);
  }
  emitFaultDone(k, mm, addr, ret);
  return fault_signal(ret); // VM_FAULT_SIGSEGV when there is no VMA
}

/** The same, without a promise when nothing sleeps (lock uncontended, no sleeping allocation). */
function user_fault_sync(k: Kernel, mm: number, addr: number, write: boolean): number | Promise<number> {
  emitFault(k, mm, addr, FAULT_FLAG_USER | (write ? FAULT_FLAG_WRITE : 0));
  const l = mmap_read_lock(mm);
  if (l !== undefined) return l.then(() => faultLocked(k, mm, addr, write));
  return faultLocked(k, mm, addr, write);
}

function faultLocked(k: Kernel, mm: number, addr: number, write: boolean): number | Promise<number> {
  let r: number | Promise<number>;
  try {
    const vma = vma_lookup(k, mm, addr);
    r = vma === 0 ? SIGSEGV * 0x10000 : handle_mm_fault(mm, vma, addr, FAULT_FLAG_USER | (write ? FAULT_FLAG_WRITE : 0));
  } catch (e) {
    mmap_read_unlock(mm);
    throw e;
  }
  if (typeof r === 'number') {
    mmap_read_unlock(mm);
    emitFaultDone(k, mm, addr, r === SIGSEGV * 0x10000 ? VM_FAULT_SIGSEGV : r);
    return r === SIGSEGV * 0x10000 ? SIGSEGV : fault_signal(r);
  }
  return r.then(
    (v) => {
      mmap_read_unlock(mm);
      emitFaultDone(k, mm, addr, v);
      return fault_signal(v);
    },
    (e: unknown) => {
      mmap_read_unlock(mm);
      throw e;
    },
  );
}

function checkKill(k: Kernel, w: Int32Array, tb: number): void {
  if ((w[tb + TASK_SIGPENDING] & 1) !== 0) throw new TaskExit(SIGKILL);
}

function failed(w: Int32Array, tb: number, sig: number): void {
  w[tb + TASK_FAULTSIG] = sig;
}

// ---- 32-bit words ----------------------------------------------------------------------------

/** put_user(val, addr) for a 32-bit word at a 4-byte aligned addr: 0 or -EFAULT. */
export function put_user(val: number, addr: number): number | Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const tb = k.mmLayer.taskBase + t.id * TASK_WORDS;
  checkKill(k, w, tb);
  const mm = w[tb + TASK_MM];
  if (mm === 0 || !(addr >= 0) || addr % 4 !== 0) return badAccess(w, tb);
  const threads = k.sched.kind !== 'sim';
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 1);
  const at = fastWord(k, w, mm, addr, true);
  if (at >= 0) {
    w[at] = val;
    if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
    return 0;
  }
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
  return putSlow(k, w, tb, mm, addr, val);
}

function putSlow(k: Kernel, w: Int32Array, tb: number, mm: number, addr: number, val: number): number | Promise<number> {
  for (let tries = 0; tries < 4; tries++) {
    const sig = user_fault_sync(k, mm, addr, true);
    if (typeof sig !== 'number') return sig.then((s) => (s !== 0 ? (failed(w, tb, s), -EFAULT) : putRetry(k, w, tb, mm, addr, val)));
    if (sig !== 0) {
      failed(w, tb, sig);
      return -EFAULT;
    }
    const r = tryPut(k, w, tb, mm, addr, val);
    if (r) return 0;
  }
  return putRetry(k, w, tb, mm, addr, val);
}

function tryPut(k: Kernel, w: Int32Array, tb: number, mm: number, addr: number, val: number): boolean {
  checkKill(k, w, tb);
  const threads = k.sched.kind !== 'sim';
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 1);
  const at = fastWord(k, w, mm, addr, true);
  if (at >= 0) w[at] = val;
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
  return at >= 0;
}

/** The retry loop when faults keep racing with other tasks: yields between attempts. */
async function putRetry(k: Kernel, w: Int32Array, tb: number, mm: number, addr: number, val: number): Promise<number> {
  for (;;) {
    if (tryPut(k, w, tb, mm, addr, val)) return 0;
    const sig = await user_fault(k, mm, addr, true);
    if (sig !== 0) {
      failed(w, tb, sig);
      return -EFAULT;
    }
    const p = k.sched.point();
    if (p !== undefined) await p;
  }
}

/** get_user of a 32-bit word at a 4-byte aligned addr: the value, or UACCESS_FAULT. */
export function get_user(addr: number): number | Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const tb = k.mmLayer.taskBase + t.id * TASK_WORDS;
  checkKill(k, w, tb);
  const mm = w[tb + TASK_MM];
  if (mm === 0 || !(addr >= 0) || addr % 4 !== 0) {
    badAccess(w, tb);
    return UACCESS_FAULT;
  }
  const threads = k.sched.kind !== 'sim';
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 1);
  const at = fastWord(k, w, mm, addr, false);
  if (at >= 0) {
    const v = w[at];
    if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
    return v;
  }
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
  return getSlow(k, w, tb, mm, addr);
}

function tryGet(k: Kernel, w: Int32Array, tb: number, mm: number, addr: number): number {
  checkKill(k, w, tb);
  const threads = k.sched.kind !== 'sim';
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 1);
  const at = fastWord(k, w, mm, addr, false);
  const v = at >= 0 ? w[at] : UACCESS_FAULT;
  if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
  return v;
}

async function getSlow(k: Kernel, w: Int32Array, tb: number, mm: number, addr: number): Promise<number> {
  for (;;) {
    const sig = await user_fault(k, mm, addr, false);
    if (sig !== 0) {
      failed(w, tb, sig);
      return UACCESS_FAULT;
    }
    const v = tryGet(k, w, tb, mm, addr);
    if (v !== UACCESS_FAULT) return v;
    const p = k.sched.point();
    if (p !== undefined) await p;
  }
}

function badAccess(w: Int32Array, tb: number): number {
  failed(w, tb, SIGSEGV);
  return -EFAULT;
}

// ---- byte ranges --------------------------------------------------------------------------------

/**
 * copy_to_user: copy `n` bytes of `src` to user memory at `addr`. Returns the number of bytes
 * NOT copied (0 on success), as the kernel does.
 */
export async function copy_to_user(addr: number, src: Uint8Array, n = src.length): Promise<number> {
  return copyUser(addr, src, n, true);
}

/** copy_from_user: copy `n` bytes at `addr` into `dst`; returns the bytes not copied. */
export async function copy_from_user(dst: Uint8Array, addr: number, n = dst.length): Promise<number> {
  return copyUser(addr, dst, n, false);
}

async function copyUser(addr: number, buf: Uint8Array, n: number, write: boolean): Promise<number> {
  const t = current;
  const k = t.k;
  const w = k.arena.i32;
  const u8 = k.arena.u8;
  const tb = k.mmLayer.taskBase + t.id * TASK_WORDS;
  const mm = w[tb + TASK_MM];
  if (!(n >= 0) || n > buf.length) throw new RangeError(`copy ${write ? 'to' : 'from'} user: length ${n} does not fit a buffer of ${buf.length} bytes`);
  if (mm === 0 || !(addr >= 0)) {
    badAccess(w, tb);
    return n;
  }
  const ps = k.mmLayer.pageSize;
  let done = 0;
  while (done < n) {
    checkKill(k, w, tb);
    const a = addr + done;
    const chunk = Math.min(n - done, ps - (a % ps));
    const threads = k.sched.kind !== 'sim';
    if (threads) Atomics.store(w, tb + TASK_UACCESS, 1);
    const at = fastWord(k, w, mm, a - (a % 4), write);
    if (at >= 0) {
      const byte = (at << 2) + (a % 4);
      if (write) u8.set(buf.subarray(done, done + chunk), byte);
      else buf.set(u8.subarray(byte, byte + chunk), done);
      if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
      done += chunk;
      continue;
    }
    if (threads) Atomics.store(w, tb + TASK_UACCESS, 0);
    const sig = await user_fault(k, mm, a, write);
    if (sig !== 0) {
      failed(w, tb, sig);
      return n - done;
    }
  }
  return 0;
}
