// klog: the kernel log (dmesg) in the arena. Every WARN, BUG splat, lockdep report and
// violation from any thread lands here as a record {kind, task, time, text}, so nothing is
// lost when a worker hangs or is aborted; the check layer reads it into violation records.

import type { Arena, ArenaPlan } from './arena.js';
import { arch_spin_lock, arch_spin_unlock } from './rawlock.js';

const LOCK = 0;
const CURSOR = 1; // bytes used
const COUNT = 2;
const DROPPED = 3;
const HEADER = 4;
const REC_HDR = 20; // task, tlo, thi, kindLen, textLen (u32 each)

export interface KlogRecord {
  index: number;
  kind: string;
  task: number;
  timeNs: number;
  text: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export class Klog {
  private readonly w: Int32Array;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly hdr: number;
  private readonly byteOff: number;
  private readonly byteCap: number;

  constructor(arena: Arena) {
    this.w = arena.i32;
    this.u8 = arena.u8;
    this.dv = new DataView(arena.sab);
    this.hdr = arena.region('klog');
    this.byteOff = (this.hdr + HEADER) * 4;
    this.byteCap = (arena.regionWords('klog') - HEADER) * 4;
  }

  static plan(plan: ArenaPlan, bytes: number): void {
    plan.region('klog', HEADER + Math.ceil(bytes / 4));
  }

  get count(): number {
    return Atomics.load(this.w, this.hdr + COUNT);
  }

  get dropped(): number {
    return Atomics.load(this.w, this.hdr + DROPPED);
  }

  /** Append a record; returns its index, or -1 if the log is full (counted as dropped). */
  write(kind: string, task: number, timeNs: number, text: string): number {
    const k = enc.encode(kind);
    let t = enc.encode(text);
    if (t.length > 16384) t = t.subarray(0, 16384);
    const size = (REC_HDR + k.length + t.length + 3) & ~3;
    const w = this.w;
    arch_spin_lock(w, this.hdr + LOCK);
    try {
      const cur = w[this.hdr + CURSOR];
      if (cur + size > this.byteCap) {
        w[this.hdr + DROPPED]++;
        return -1;
      }
      const at = this.byteOff + cur;
      this.dv.setUint32(at, task, true);
      this.dv.setUint32(at + 4, timeNs % 4294967296, true);
      this.dv.setUint32(at + 8, Math.floor(timeNs / 4294967296), true);
      this.dv.setUint32(at + 12, k.length, true);
      this.dv.setUint32(at + 16, t.length, true);
      this.u8.set(k, at + REC_HDR);
      this.u8.set(t, at + REC_HDR + k.length);
      w[this.hdr + CURSOR] = cur + size;
      const idx = w[this.hdr + COUNT];
      Atomics.store(w, this.hdr + COUNT, idx + 1);
      return idx;
    } finally {
      arch_spin_unlock(w, this.hdr + LOCK);
    }
  }

  /** All records from index `from` on. */
  read(from = 0): KlogRecord[] {
    const out: KlogRecord[] = [];
    const n = this.count;
    let at = this.byteOff;
    for (let i = 0; i < n; i++) {
      const task = this.dv.getUint32(at, true);
      const timeNs = this.dv.getUint32(at + 4, true) + this.dv.getUint32(at + 8, true) * 4294967296;
      const kl = this.dv.getUint32(at + 12, true);
      const tl = this.dv.getUint32(at + 16, true);
      if (i >= from) {
        const kind = dec.decode(this.u8.slice(at + REC_HDR, at + REC_HDR + kl));
        const text = dec.decode(this.u8.slice(at + REC_HDR + kl, at + REC_HDR + kl + tl));
        out.push({ index: i, kind, task, timeNs, text });
      }
      at += (REC_HDR + kl + tl + 3) & ~3;
    }
    return out;
  }
}
