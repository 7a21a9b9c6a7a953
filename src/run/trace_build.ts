// Turns a finished run's event ring and klog into Chrome trace events (the JSON that
// ui.perfetto.dev and chrome://tracing open). One track per task incarnation (a task id the
// pool hands out again after an exit gets a new track), grouped into a "process" per task
// kind. Begin/end records become complete ('X') spans through a stack per track: an end
// closes the nearest open span it matches and, first, anything opened after it, so spans on
// a track always nest as the viewer requires. Counter samples and in-flight counts become
// 'C' events; violations, klog lines, spawns, exits, zaps and installs become instants.
// The writer and the metadata are in trace.ts.

import { deviceLabel } from '../device/device.js';
import { DEV_EV, DEV_FAULT_ATOMIC, DEV_FAULT_WRITE } from '../device/types.js';
import { INV_BLOCKABLE, MM_EV, REAP_UNABLE } from '../mm/events.js';
import { mmLabel } from '../mm/types.js';
import { EVENT_NAMES } from '../notifier/report.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_NAME, objLabel } from '../sched/report.js';
import { TASK_KINDS, TASK_STATE_NAMES, TaskL } from '../sched/task.js';
import { EINVAL, errname } from '../shm/errno.js';
import { EV, EV_A, EV_B, EV_C, EV_TASK, EV_THI, EV_TLO, EV_TYPE, EV_WORDS } from '../shm/events.js';
import type { KlogRecord } from '../shm/klog.js';
import { COUNTER_PID, FAULT_FLAGS, KIND_PIDS, VM_FAULTS, bitsText, hex, type TraceEvent } from './trace_event.js';

// span kinds
const S_FAULT = 1;
const S_DEVFAULT = 2;
const S_ACCESS = 3;
const S_FENCE = 4;
const S_INV = 5;
const S_INVSTART = 6;
const S_REAP = 7;
const S_REAPTRY = 8;
const S_BACKOFF = 9;
const S_LOCK = 10;
const S_WAIT = 11;
const S_RECLAIM = 12;

interface Span {
  kind: number;
  name: string;
  cat: string;
  /** what an end must match (mm, device, lock), and the page where it applies */
  a: number;
  b: number;
  ns: number;
  args: Record<string, unknown>;
}

interface Track {
  tid: number;
  pid: number;
  task: number;
  name: string;
  kind: string;
  startNs: number;
  spawned: boolean;
  ended: boolean;
  stack: Span[];
  reapAttempts: number;
  /** the mm of this task's last COUNTERS sample, until the next record says whether a SWAPENTS follows */
  swapMm: number;
}

export class TraceBuilder {
  readonly events: TraceEvent[] = [];
  readonly tracks: Track[] = [];
  spans = 0;
  unmatched = 0;
  firstNs = Infinity;
  lastNs = 0;
  private readonly byTask = new Map<number, Track[]>();
  private readonly counters = new Map<string, number>();
  private readonly inflight = new Map<string, number>();
  private readonly labels = new Map<string, string>();
  private readonly violations = new Set<number>();
  private readonly ps: number;
  private readonly klog: Map<number, KlogRecord>;

  constructor(private readonly k: Kernel) {
    this.ps = k.config.mem.pageSize;
    this.klog = new Map(k.klog.read().map((r) => [r.index, r]));
  }

  /** Feed every record of the ring (oldest first), then the klog lines no VIOLATION named. */
  build(recs: Int32Array, endNs: number): void {
    for (let o = 0; o < recs.length; o += EV_WORDS) this.record(recs, o);
    for (const r of this.klog.values()) {
      if (this.violations.has(r.index)) continue;
      this.instant(this.trackAt(r.task, r.timeNs), r.timeNs, r.kind, 'klog', { text: r.text });
    }
    const end = Math.max(endNs, this.lastNs);
    for (const t of this.tracks) this.closeAll(t, end, 'the run ended with it open');
    this.counter('free', 'pages', end, this.k.zone.nrFree);
    this.lastNs = end;
  }

  private record(r: Int32Array, o: number): void {
    const ns = (r[o + EV_TLO] >>> 0) + (r[o + EV_THI] >>> 0) * 4294967296;
    const type = r[o + EV_TYPE];
    const task = r[o + EV_TASK];
    const a = r[o + EV_A];
    const b = r[o + EV_B];
    const c = r[o + EV_C];
    if (ns < this.firstNs) this.firstNs = ns;
    if (ns > this.lastNs) this.lastNs = ns;
    const t = type === EV.SPAWN ? this.spawn(task, ns, a, b, c) : this.current(task, ns);
    if (t.swapMm !== 0) {
      // a COUNTERS sample with no SWAPENTS after it: the mm has no swap entries (any more)
      if (type !== MM_EV.SWAPENTS) this.counter(`swap ${mmLabel(t.swapMm)}`, 'entries', ns, 0, true);
      t.swapMm = 0;
    }
    switch (type) {
      case EV.EXIT:
      case EV.ABORT:
        this.closeAll(t, ns, 'the task ended');
        this.instant(t, ns, type === EV.EXIT ? 'exit' : 'abort', 'task', type === EV.EXIT ? { state: TASK_STATE_NAMES[a] ?? a } : {});
        t.ended = true;
        return;
      case EV.BLOCK:
        return this.open(t, S_WAIT, a === -1 ? 'sleep' : 'blocked', 'sched', ns, a, 0, a === -1 ? {} : { word: a });
      case EV.WAKE:
      case EV.TIMEOUT:
        return this.close(t, S_WAIT, ns, -2, -1, type === EV.TIMEOUT ? { timed_out: true } : undefined);
      case EV.CONTENDED:
        return this.open(t, S_LOCK, `contended ${this.lockName(a)}`, 'lock', ns, a, 0, { lock: this.lockLabel(a), holder: b >= 0 ? this.taskName(b, ns) : 'none', ...(c === 1 ? { mode: 'write' } : {}) });
      case EV.ACQUIRED:
        return this.close(t, S_LOCK, ns, a, -1);
      case EV.VIOLATION: {
        this.violations.add(a);
        const rec = this.klog.get(a);
        return this.instant(t, ns, rec?.kind ?? 'violation', 'violation', { text: rec?.text ?? `klog record ${a} (not found)` });
      }
      case MM_EV.FAULT:
        this.bump('page faults', ns, 1);
        return this.open(t, S_FAULT, (c & (1 << 6)) !== 0 ? 'cpu fault' : 'handle_mm_fault', 'mm', ns, a, b, { mm: mmLabel(a), address: this.addr(b), flags: bitsText(c, FAULT_FLAGS, 'FAULT_FLAG_') });
      case MM_EV.FAULT_DONE:
        return this.close(t, S_FAULT, ns, a, b, { result: bitsText(c, VM_FAULTS, 'VM_FAULT_') });
      case MM_EV.COUNTERS:
        this.counter('free', 'pages', ns, b);
        if (a > 0) {
          this.counter(`rss ${mmLabel(a)}`, 'pages', ns, c);
          if (this.counters.get(`swap ${mmLabel(a)} entries`)) t.swapMm = a;
        }
        return;
      case MM_EV.SWAPENTS:
        return this.counter(`swap ${mmLabel(a)}`, 'entries', ns, b);
      case MM_EV.INV_START:
        this.bump('invalidations', ns, 1);
        this.open(t, S_INV, 'invalidation', 'notifier', ns, a, 0, { mm: mmLabel(a), start: this.addr(b), end: c === -1 ? 'ULONG_MAX' : this.addr(c) });
        return this.open(t, S_INVSTART, 'invalidate_range_start', 'notifier', ns, a, 0, {});
      case MM_EV.INV_STARTED: {
        const blockable = (b & INV_BLOCKABLE) !== 0;
        this.close(t, S_INVSTART, ns, a, -1, { result: c === 0 ? 0 : errname(c) });
        const inv = this.find(t, S_INV, a, -1);
        if (inv) {
          inv.name = `MMU_NOTIFY_${EVENT_NAMES[b & 0xff] ?? b & 0xff}`;
          Object.assign(inv.args, { blockable, result: c === 0 ? 0 : errname(c) });
        }
        // no end follows a failed non-blockable start, nor a refused range
        if (c !== 0 && (!blockable || c === -EINVAL)) this.close(t, S_INV, ns, a, -1);
        return;
      }
      case MM_EV.INV_END:
        return this.close(t, S_INV, ns, a, -1);
      case MM_EV.REAP_BEGIN:
        t.reapAttempts = 0;
        return this.open(t, S_REAP, 'oom_reap_task', 'oom', ns, a, 0, { mm: mmLabel(a), pid: b });
      case MM_EV.REAP_ATTEMPT:
        this.close(t, S_BACKOFF, ns, a, -1);
        return this.open(t, S_REAPTRY, 'oom_reap_task_mm', 'oom', ns, a, 0, { pid: b, attempt: ++t.reapAttempts });
      case MM_EV.REAP_RETRY:
        this.close(t, S_REAPTRY, ns, a, -1, { result: 'retry' });
        return this.open(t, S_BACKOFF, 'reaper retry sleep', 'oom', ns, a, 0, { pid: b, attempt: c });
      case MM_EV.REAP_END: {
        const unable = (c & REAP_UNABLE) !== 0;
        this.close(t, S_BACKOFF, ns, a, -1);
        this.close(t, S_REAPTRY, ns, a, -1, { result: unable ? 'unable to reap' : 'reaped' });
        return this.close(t, S_REAP, ns, a, -1, { attempts: c & 0xffff, result: unable ? 'unable to reap' : 'reaped' });
      }
      case MM_EV.RECLAIM:
        return this.open(t, S_RECLAIM, c === 1 ? 'kswapd shrink' : 'direct reclaim', 'reclaim', ns, a, 0, { memcg: a, wanted: b });
      case MM_EV.RECLAIM_DONE:
        return this.close(t, S_RECLAIM, ns, a, -1, { reclaimed: b });
      case MM_EV.SWAPIN:
        return this.instant(t, ns, 'swap-in read', 'swap', { mm: mmLabel(a), address: this.addr(b), slot: c });
      case MM_EV.SWAPOUT:
        return this.instant(t, ns, 'swap-out', 'swap', { pfn: a, slot: b });
      case MM_EV.SWAP_USAGE:
        this.counter('swap slots', 'used', ns, a);
        return this.counter('swap cache', 'pages', ns, b);
      case DEV_EV.ACCESS_BEGIN:
        return this.open(t, S_ACCESS, 'device access', 'device', ns, a, 0, { device: this.devName(a), engine: b });
      case DEV_EV.ACCESS_END:
        return this.close(t, S_ACCESS, ns, a, -1, { pages: c });
      case DEV_EV.FAULT:
        this.bump('device faults', ns, 1);
        return this.open(t, S_DEVFAULT, 'device fault', 'device', ns, a, b, {
          device: this.devName(a),
          address: this.addr(b),
          access: (c & DEV_FAULT_ATOMIC) !== 0 ? 'atomic' : (c & DEV_FAULT_WRITE) !== 0 ? 'write' : 'read',
        });
      case DEV_EV.FAULT_DONE:
        return this.close(t, S_DEVFAULT, ns, a, b, { result: c === 0 ? 0 : errname(c) });
      case DEV_EV.FENCE_WAIT:
        return this.open(t, S_FENCE, 'fence wait', 'device', ns, a, 0, { device: this.devName(a), engine: b, generation: c });
      case DEV_EV.FENCE_DONE:
        return this.close(t, S_FENCE, ns, a, -1);
      case DEV_EV.FENCE_FAIL:
        return this.instant(t, ns, 'fence fail', 'device', { device: this.devName(a), engine: b, generation: c });
      case DEV_EV.ZAP:
        return this.instant(t, ns, 'zap', 'device', { device: this.devName(a), entries: c, tlb_gen: b });
      case DEV_EV.INSTALL:
        return this.instant(t, ns, 'install', 'device', { device: this.devName(a), address: this.addr(b), pages: c });
      default:
        return;
    }
  }

  // ---- tracks --------------------------------------------------------------------------------

  /** A SPAWN: a new track, unless the task's current one is still live (its events came first). */
  private spawn(task: number, ns: number, parent: number, name: number, kind: number): Track {
    const list = this.byTask.get(task);
    const cur = list?.[list.length - 1];
    const t = cur && !cur.ended && !cur.spawned ? cur : this.newTrack(task, ns);
    t.spawned = true;
    if (name > 0) t.name = this.k.strings.get(name);
    this.setKind(t, TASK_KINDS[kind] ?? t.kind);
    this.instant(t, ns, 'spawn', 'task', { parent: this.taskName(parent, ns) });
    return t;
  }

  private newTrack(task: number, ns: number): Track {
    const list = this.byTask.get(task) ?? [];
    if (list.length === 0) this.byTask.set(task, list);
    const rec = this.k.tasks.pool.at(task);
    const w = this.k.arena.i32;
    const kind = TASK_KINDS[w[rec + TaskL.kind]] ?? 'test';
    const t: Track = {
      tid: task + 1 + list.length * 100000,
      pid: 0,
      task,
      name: task === 0 ? 'swapper' : this.k.strings.get(w[rec + TaskL.name]) || `task ${task}`,
      kind,
      startNs: ns,
      spawned: false,
      ended: false,
      stack: [],
      reapAttempts: 0,
      swapMm: 0,
    };
    this.setKind(t, kind);
    list.push(t);
    this.tracks.push(t);
    return t;
  }

  private setKind(t: Track, kind: string): void {
    t.kind = kind;
    t.pid = KIND_PIDS[kind] ?? KIND_PIDS.test;
  }

  /**
   * The track of a ring record's task: its latest one, or a new one if that one ended (the id
   * was handed out again and the SPAWN, written by the parent's thread, comes later in the ring).
   */
  private current(task: number, ns: number): Track {
    const list = this.byTask.get(task);
    const cur = list?.[list.length - 1];
    return cur && !cur.ended ? cur : this.newTrack(task, ns);
  }

  /** The track of `task` at time ns (klog records): its latest incarnation that began by then. */
  private trackAt(task: number, ns: number): Track {
    const list = this.byTask.get(task);
    if (!list) return this.newTrack(task, ns);
    for (let i = list.length - 1; i > 0; i--) if (list[i].startNs <= ns) return list[i];
    return list[0];
  }

  private taskName(task: number, ns: number): string {
    const list = this.byTask.get(task);
    if (!list) return `${task === 0 ? 'swapper' : this.k.strings.get(this.k.arena.i32[this.k.tasks.pool.at(task) + TaskL.name])}/${task}`;
    return `${this.trackAt(task, ns).name}/${task}`;
  }

  // ---- spans ---------------------------------------------------------------------------------

  private open(t: Track, kind: number, name: string, cat: string, ns: number, a: number, b: number, args: Record<string, unknown>): void {
    t.stack.push({ kind, name, cat, a, b, ns, args });
  }

  /** The nearest open span of `kind` matching a (and b unless -1); a = -2 matches any. */
  private find(t: Track, kind: number, a: number, b: number): Span | null {
    for (let i = t.stack.length - 1; i >= 0; i--) {
      const s = t.stack[i];
      if (s.kind === kind && (a === -2 || s.a === a) && (b === -1 || s.b === b)) return s;
    }
    return null;
  }

  private close(t: Track, kind: number, ns: number, a: number, b: number, extra?: Record<string, unknown>): void {
    const s = this.find(t, kind, a, b);
    if (!s) {
      // its begin was overwritten (the ring wrapped) or never written
      if (kind !== S_WAIT && kind !== S_BACKOFF) this.unmatched++;
      return;
    }
    while (t.stack.length > 0) {
      const top = t.stack.pop()!;
      if (top === s) break;
      this.emitSpan(t, top, ns, { unfinished: `closed by the end of its enclosing ${s.name}` });
    }
    this.emitSpan(t, s, ns, extra);
  }

  private closeAll(t: Track, ns: number, why: string): void {
    while (t.stack.length > 0) this.emitSpan(t, t.stack.pop()!, ns, { unfinished: why });
  }

  private emitSpan(t: Track, s: Span, ns: number, extra?: Record<string, unknown>): void {
    if (extra) Object.assign(s.args, extra);
    if (s.kind === S_FAULT) this.bump('page faults', ns, -1);
    else if (s.kind === S_DEVFAULT) this.bump('device faults', ns, -1);
    else if (s.kind === S_INV) this.bump('invalidations', ns, -1);
    this.spans++;
    this.events.push({ name: s.name, ph: 'X', cat: s.cat, pid: t.pid, tid: t.tid, ts: s.ns / 1000, dur: Math.max(0, ns - s.ns) / 1000, args: s.args });
  }

  private instant(t: Track, ns: number, name: string, cat: string, args: Record<string, unknown>): void {
    this.events.push({ name, ph: 'i', s: 't', cat, pid: t.pid, tid: t.tid, ts: ns / 1000, args });
  }

  // ---- counters ------------------------------------------------------------------------------

  /**
   * A sample of the counter track "<name> <key>" (the name Perfetto gives it; one key per
   * track, so the legacy viewer never reads a missing series as 0). Repeats are dropped.
   */
  counter(name: string, key: string, ns: number, value: number, ifKnown = false): void {
    const track = `${name} ${key}`;
    const last = this.counters.get(track);
    if (last === value || (ifKnown && last === undefined)) return;
    this.counters.set(track, value);
    this.events.push({ name, ph: 'C', pid: COUNTER_PID, ts: ns / 1000, args: { [key]: value } });
  }

  /** "<what> in flight" */
  private bump(what: string, ns: number, d: number): void {
    const v = Math.max(0, (this.inflight.get(what) ?? 0) + d);
    this.inflight.set(what, v);
    this.counter(what, 'in flight', ns, v);
  }

  // ---- labels --------------------------------------------------------------------------------

  private addr(page: number): string {
    return hex((page >>> 0) * this.ps);
  }

  private devName(dev: number): string {
    return this.label(`d${dev}`, () => deviceLabel(this.k, dev));
  }

  private lockLabel(obj: number): string {
    return this.label(`l${obj}`, () => objLabel(this.k, obj));
  }

  private lockName(obj: number): string {
    return this.label(`n${obj}`, () => (obj > 0 && this.k.strings.get(this.k.arena.i32[obj + OBJ_NAME])) || 'lock');
  }

  private label(key: string, make: () => string): string {
    let v = this.labels.get(key);
    if (v === undefined) {
      try {
        v = make();
      } catch {
        v = key;
      }
      this.labels.set(key, v);
    }
    return v;
  }
}
