// Interned strings in the arena (lock class names, task names), so a report written by any
// thread can name things that another thread created.

import type { Arena, ArenaPlan } from './arena.js';
import { arch_spin_lock, arch_spin_unlock } from './rawlock.js';

const LOCK = 0;
const COUNT = 1;
const CURSOR = 2; // bytes used
const HEADER = 4;

const enc = new TextEncoder();
const dec = new TextDecoder();

export class StringTable {
  private readonly w: Int32Array;
  private readonly u8: Uint8Array;
  private readonly hdr: number;
  private readonly maxStrings: number;
  private readonly bytesOff: number; // byte offset of the byte area
  private readonly bytesCap: number;
  private readonly cache = new Map<string, number>();

  constructor(arena: Arena) {
    this.w = arena.i32;
    this.u8 = arena.u8;
    this.hdr = arena.region('strings');
    this.maxStrings = this.w[this.hdr + 3];
    this.bytesOff = (this.hdr + HEADER + 2 * this.maxStrings) * 4;
    this.bytesCap = (arena.regionWords('strings') - HEADER - 2 * this.maxStrings) * 4;
  }

  static plan(plan: ArenaPlan, maxStrings: number, bytes: number): void {
    plan.region('strings', HEADER + 2 * maxStrings + Math.ceil(bytes / 4));
  }

  static init(arena: Arena, maxStrings: number): void {
    arena.i32[arena.region('strings') + 3] = maxStrings;
  }

  /** The id of `s`, adding it if new. Id 0 is the empty string. */
  intern(s: string): number {
    if (s === '') return 0;
    const hit = this.cache.get(s);
    if (hit !== undefined) return hit;
    const w = this.w;
    const bytes = enc.encode(s);
    arch_spin_lock(w, this.hdr + LOCK);
    try {
      const n = w[this.hdr + COUNT];
      for (let i = 0; i < n; i++) {
        if (this.equals(i, bytes)) {
          this.cache.set(s, i + 1);
          return i + 1;
        }
      }
      const cur = w[this.hdr + CURSOR];
      if (n >= this.maxStrings || cur + bytes.length > this.bytesCap) {
        throw new Error(`string table full (${n} strings, ${cur} bytes): raise config.strings`);
      }
      this.u8.set(bytes, this.bytesOff + cur);
      w[this.hdr + HEADER + 2 * n] = cur;
      w[this.hdr + HEADER + 2 * n + 1] = bytes.length;
      w[this.hdr + CURSOR] = cur + bytes.length;
      Atomics.store(w, this.hdr + COUNT, n + 1);
      this.cache.set(s, n + 1);
      return n + 1;
    } finally {
      arch_spin_unlock(w, this.hdr + LOCK);
    }
  }

  get(id: number): string {
    if (id <= 0 || id > Atomics.load(this.w, this.hdr + COUNT)) return id === 0 ? '' : `?str${id}`;
    const off = this.w[this.hdr + HEADER + 2 * (id - 1)];
    const len = this.w[this.hdr + HEADER + 2 * (id - 1) + 1];
    return dec.decode(this.u8.slice(this.bytesOff + off, this.bytesOff + off + len));
  }

  private equals(i: number, bytes: Uint8Array): boolean {
    const off = this.w[this.hdr + HEADER + 2 * i];
    const len = this.w[this.hdr + HEADER + 2 * i + 1];
    if (len !== bytes.length) return false;
    const base = this.bytesOff + off;
    for (let j = 0; j < len; j++) if (this.u8[base + j] !== bytes[j]) return false;
    return true;
  }
}
