// Index pools: fixed-size objects in an arena region, handed out by index from a free list
// guarded by a raw lock. Later layers keep frames, page-table pages, VMAs, rmap nodes and
// notifier entries in these. Index 0 is never handed out, so 0 can mean "none" in a field.

import type { Arena, ArenaPlan } from './arena.js';
import { arch_spin_lock, arch_spin_unlock } from './rawlock.js';

// header words
const LOCK = 0;
const HEAD = 1; // first free index, 0 = empty
const FREE = 2; // free count
const CAP = 3; // capacity (objects, including the reserved index 0)
const HEADER = 4;

export class IndexPool {
  private readonly w: Int32Array;
  private readonly hdr: number;
  private readonly next: number; // base of the next[] links
  /** word offset of object 0; object i is at `base + i * objWords` */
  readonly base: number;

  constructor(arena: Arena, readonly name: string, readonly objWords: number) {
    this.w = arena.i32;
    this.hdr = arena.region(`pool:${name}`);
    this.next = this.hdr + HEADER;
    this.base = this.next + this.capacity + (this.capacity & 1);
  }

  static plan(plan: ArenaPlan, name: string, objWords: number, count: number): void {
    const cap = count + 1;
    plan.region(`pool:${name}`, HEADER + cap + (cap & 1) + cap * objWords);
  }

  get capacity(): number {
    return this.w[this.hdr + CAP] || 0;
  }

  /** Lay out the free list. Called once, at boot, before the arena is shared. */
  static init(arena: Arena, name: string, count: number): void {
    const hdr = arena.region(`pool:${name}`);
    const w = arena.i32;
    const cap = count + 1;
    w[hdr + CAP] = cap;
    w[hdr + HEAD] = cap > 1 ? 1 : 0;
    w[hdr + FREE] = count;
    for (let i = 1; i < cap; i++) w[hdr + HEADER + i] = i + 1 < cap ? i + 1 : 0;
  }

  /** Take an index, or return 0 when the pool is empty. The object's words are zeroed. */
  alloc(): number {
    const w = this.w;
    arch_spin_lock(w, this.hdr + LOCK);
    const i = w[this.hdr + HEAD];
    if (i !== 0) {
      w[this.hdr + HEAD] = w[this.next + i];
      w[this.next + i] = -1; // in use
      w[this.hdr + FREE]--;
    }
    arch_spin_unlock(w, this.hdr + LOCK);
    if (i !== 0) w.fill(0, this.base + i * this.objWords, this.base + (i + 1) * this.objWords);
    return i;
  }

  free(i: number): void {
    const w = this.w;
    if (!(i > 0 && i < this.capacity)) throw new RangeError(`pool ${this.name}: free of bad index ${i}`);
    arch_spin_lock(w, this.hdr + LOCK);
    if (w[this.next + i] !== -1) {
      arch_spin_unlock(w, this.hdr + LOCK);
      throw new Error(`pool ${this.name}: double free of index ${i}`);
    }
    w[this.next + i] = w[this.hdr + HEAD];
    w[this.hdr + HEAD] = i;
    w[this.hdr + FREE]++;
    arch_spin_unlock(w, this.hdr + LOCK);
  }

  inUse(i: number): boolean {
    return i > 0 && i < this.capacity && this.w[this.next + i] === -1;
  }

  /** word offset of object i */
  at(i: number): number {
    return this.base + i * this.objWords;
  }

  get freeCount(): number {
    return this.w[this.hdr + FREE];
  }

  get used(): number {
    return this.capacity - 1 - this.w[this.hdr + FREE];
  }
}
