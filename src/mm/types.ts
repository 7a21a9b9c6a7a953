// The mm's types: the mm_struct layout, MMF_* and VM_* flags, page-size constants and the
// address convention. Types only, so the notifier core can read an mm without importing the
// mm's logic (DESIGN.md, layers).
//
// Addresses. A user address, a length or a page offset is a JS number holding a non-negative
// integer. Real addresses stay far below 2**53 (TASK_SIZE is 2**47 - PAGE_SIZE), so they are
// exact. In the arena they are Float64 fields: two words at an even word offset, read as
// `arena.f64[(base + L.field) >> 1]`.
//
// ULONG_MAX is the "top of the address space" sentinel (a range end of ULONG_MAX means "to the
// end"). It is written 2**64 - 1, which as a double rounds to 2**64, so ULONG_MAX === 2**64.
// Values at or above 2**53 are not exact: they only appear as ULONG_MAX and as page-aligned
// values near it (2**64 - 4096 is exact), and they still compare correctly with every real
// address. Overflow checks that must be exact (check_add_overflow below) treat the double
// 2**64 as the integer 2**64 - 1 and every other value as the integer it holds, and compute
// in BigInt; they run on registration paths, never on hot paths.

import { defineStruct } from '../shm/layout.js';
import { RWSEM_WORDS } from '../sync/rwsem.js';
import { SPINLOCK_WORDS } from '../sync/spinlock.js';

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;
export const PMD_SHIFT = 21;
export const PMD_SIZE = 2 ** PMD_SHIFT;
/** x86-64 with 4-level paging: TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE */
export const TASK_SIZE = 2 ** 47 - PAGE_SIZE;

/** 2**64 - 1, which is the double 2**64: see the address convention above. */
export const ULONG_MAX = 2 ** 64 - 1;
export const UINT_MAX = 0xffffffff;

/** PAGE_ALIGNED(addr) */
export function PAGE_ALIGNED(addr: number): boolean {
  return addr % PAGE_SIZE === 0;
}

/** `addr & PAGE_MASK`. ULONG_MAX aligns down to 2**64 - PAGE_SIZE, as in C. */
export function PAGE_ALIGN_DOWN(addr: number): number {
  if (addr >= ULONG_MAX) return ULONG_MAX - PAGE_SIZE; // 2**64 - 4096, exact
  return addr - (addr % PAGE_SIZE);
}

/** PAGE_ALIGN(addr): round up to a page boundary. */
export function PAGE_ALIGN(addr: number): number {
  const r = addr % PAGE_SIZE;
  return r === 0 ? addr : addr + (PAGE_SIZE - r);
}

/** An unsigned long value: a non-negative integer no larger than ULONG_MAX. */
export function is_ulong(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= ULONG_MAX;
}

const U64_MAX = (1n << 64n) - 1n;

/** The exact integer a stored unsigned long stands for (ULONG_MAX -> 2**64 - 1). */
export function ulong_big(v: number): bigint {
  return v >= ULONG_MAX ? U64_MAX : BigInt(v);
}

/**
 * check_add_overflow(a, b) for unsigned longs: true when a + b does not fit. Exact; both
 * arguments must satisfy is_ulong().
 */
export function check_add_overflow(a: number, b: number): boolean {
  if (a + b < 2 ** 53) return false; // exact in doubles, and far from the top
  return ulong_big(a) + ulong_big(b) > U64_MAX;
}

/**
 * The last byte of `length` (>= 1) bytes at `start`: start + length - 1, or -1 when that
 * overflows (the kernel's check_add_overflow(start, length - 1, &last)). Exact, unlike
 * `length - 1` in doubles near 2**64. The result is stored as a double, so a last address
 * above 2**53 may round (it then only ever meets sentinels).
 */
export function ulong_last(start: number, length: number): number {
  if (start + length < 2 ** 53) return start + length - 1;
  const last = ulong_big(start) + ulong_big(length) - 1n;
  return last > U64_MAX ? -1 : Number(last);
}

// ---- mm->flags (MMF_*): bit numbers as in include/linux/mm_types.h ----------------------

export const MMF_VM_MERGEABLE = 16;
export const MMF_VM_HUGEPAGE = 17;
export const MMF_HAS_UPROBES = 19;
/** the OOM killer ignores this mm (reaped, or exit_mmap is past unmapping) */
export const MMF_OOM_SKIP = 21;
/** the OOM reaper started: faults that install anon PTEs fail with SIGBUS */
export const MMF_UNSTABLE = 22;
export const MMF_HUGE_ZERO_FOLIO = 23;
export const MMF_DISABLE_THP = 24;
/** queued for the OOM reaper once */
export const MMF_OOM_REAP_QUEUED = 25;
export const MMF_MULTIPROCESS = 26;
export const MMF_HAS_PINNED = 27;

// ---- vma->vm_flags (VM_*): values as in include/linux/mm.h -------------------------------
// VM_MERGEABLE is bit 31: stored in an Int32 field it reads back negative, so test flags with
// `(f & VM_X) !== 0`, never `> 0`.

export const VM_NONE = 0;
export const VM_READ = 0x1;
export const VM_WRITE = 0x2;
export const VM_EXEC = 0x4;
export const VM_SHARED = 0x8;
export const VM_MAYREAD = 0x10;
export const VM_MAYWRITE = 0x20;
export const VM_MAYEXEC = 0x40;
export const VM_MAYSHARE = 0x80;
export const VM_GROWSDOWN = 0x100;
export const VM_PFNMAP = 0x400;
export const VM_UFFD_WP = 0x1000;
export const VM_LOCKED = 0x2000;
export const VM_IO = 0x4000;
export const VM_DONTCOPY = 0x20000;
export const VM_DONTEXPAND = 0x40000;
export const VM_LOCKONFAULT = 0x80000;
export const VM_ACCOUNT = 0x100000;
export const VM_NORESERVE = 0x200000;
export const VM_HUGETLB = 0x400000;
export const VM_WIPEONFORK = 0x2000000;
export const VM_DONTDUMP = 0x4000000;
export const VM_SOFTDIRTY = 0x8000000;
export const VM_MIXEDMAP = 0x10000000;
export const VM_HUGEPAGE = 0x20000000;
export const VM_NOHUGEPAGE = 0x40000000;
export const VM_MERGEABLE = 0x80000000;

export const VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC;

// ---- struct mm_struct ----------------------------------------------------------------------

/** rss counters (mm->rss_stat), in pages */
export const MM_FILEPAGES = 0;
export const MM_ANONPAGES = 1;
export const MM_SWAPENTS = 2;
export const MM_SHMEMPAGES = 3;
export const NR_MM_COUNTERS = 4;

/**
 * struct mm_struct in the arena. Float64 fields come first so they sit at even offsets.
 * Fields marked "mm layer" are reserved for the rest of the mm (page tables, VMAs, rss,
 * memcg, OOM) and are zero until it fills them.
 */
export const MmL = defineStruct('mm_struct', {
  task_size: 2, // f64
  mmap_base: 2, // f64, mm layer
  highest_vm_end: 2, // f64, mm layer
  /** users of the address space (threads, get_task_mm, mmget); the last mmput tears it down */
  mm_users: 1,
  /** references to the struct itself; mm_users > 0 holds one. The last mmdrop frees it. */
  mm_count: 1,
  /** MMF_* bits */
  flags: 1,
  /** struct mmu_notifier_subscriptions *, 0 until the first registration */
  notifier_subscriptions: 1,
  /** page-table root (mm layer) */
  pgd: 1,
  /** first VMA of the VMA list (mm layer) */
  mmap: 1,
  map_count: 1,
  /** owning task id + 1, 0 if none (mm layer, memcg/OOM) */
  owner: 1,
  /** memcg id, 0 = root (mm layer) */
  memcg: 1,
  total_vm: 1,
  locked_vm: 1,
  pinned_vm: 1,
  rss_stat: NR_MM_COUNTERS,
  /** struct rw_semaphore mmap_lock (lockdep class '&mm->mmap_lock') */
  mmap_lock: RWSEM_WORDS,
  /** spinlock_t page_table_lock (mm layer) */
  page_table_lock: SPINLOCK_WORDS,
});

/** Float64 fields of MmL, checked for alignment below. */
const MM_F64_FIELDS = ['task_size', 'mmap_base', 'highest_vm_end'] as const;
for (const f of MM_F64_FIELDS) {
  if ((MmL[f] & 1) !== 0) throw new Error(`MmL.${f} must sit at an even word offset`);
}

/** "mm@1a2b0": how reports name an mm */
export function mmLabel(mm: number): string {
  return `mm@${mm.toString(16)}`;
}
