// lockdep: lock classes, per-task held stacks, and one dependency graph shared by every task
// (it lives in the arena, so under `threads` all workers build one graph). A new edge that
// closes a cycle is reported from a run that did not deadlock, like the kernel's validator;
// unlike the kernel, reporting goes on after the first report.
//
// The graph is a class x class matrix of edge witnesses: 0 = no edge, else 1 + the index of
// the record {from, to, task, event seq} that first added it. The hot path reads one word per
// held lock; only a new edge takes the graph lock and searches for a path back.

import { EV } from '../shm/events.js';
import { arch_spin_lock, arch_spin_unlock } from '../shm/rawlock.js';
import type { Arena, ArenaPlan } from '../shm/arena.js';
import type { Kernel } from '../sched/kernel.js';
import { OBJ_CLASS, OBJ_HEADER, OBJ_NAME, OBJ_OWNER, OBJ_STATE, heldLocksText, objLabel } from '../sched/report.js';
import { splat } from '../sched/splat.js';
import { HELD_CLASS, HELD_FLAGS, HELD_LOCK, HELD_WORDS, MAX_LOCK_DEPTH, TaskL, type Task } from '../sched/task.js';

declare module '../sched/kernel.js' {
  interface Kernel {
    readonly lockdep: Lockdep;
  }
}

/** held-lock flags */
export const LD_TRYLOCK = 1;
export const LD_READ = 2; // a read acquisition (rwsem down_read)
export const LD_RECURSIVE = 4; // a recursive read (SRCU/RCU readers): never blocks, adds no edge to itself
export const LD_SUBCLASS_SHIFT = 8; // mutex_lock_nested / down_read_nested subclass

const H_LOCK = 0;
const H_CLASSES = 1;
const H_EDGES = 2;
const H_ENABLED = 3;
const H_MAXC = 4;
const H_MAXE = 5;
const H_FS_RECLAIM = 8; // the two pseudo-lock maps live in the header region
const H_INV_START = 8 + OBJ_HEADER;
const HEADER = 8 + 2 * OBJ_HEADER;
const EDGE_WORDS = 4; // from, to, task, event seq

// TaskL has more fields than V8 keeps in fast mode, so `TaskL.x` is a dictionary lookup:
// the per-acquire paths read the offsets once, here.
const T_DEPTH = TaskL.depth;
const T_HELD = TaskL.held;

export class Lockdep {
  private readonly w: Int32Array;
  private readonly hdr: number;
  private readonly classNames: number; // class -> string id
  private readonly matrix: number;
  private readonly edges: number;
  private readonly maxClasses: number;
  private readonly maxEdges: number;
  private readonly classCache = new Map<string, number>();
  /** might_sleep reports already made from this thread (task, site, held top) */
  readonly reported = new Set<string>();
  /** `__fs_reclaim_map`: a pseudo-lock held while an allocation may direct-reclaim */
  readonly fs_reclaim_map: number;
  /** `__mmu_notifier_invalidate_range_start_map` */
  readonly invalidate_start_map: number;

  constructor(
    private readonly k: Kernel,
    arena: Arena,
  ) {
    this.w = arena.i32;
    this.hdr = arena.region('lockdep');
    this.maxClasses = this.w[this.hdr + H_MAXC];
    this.maxEdges = this.w[this.hdr + H_MAXE];
    this.classNames = this.hdr + HEADER;
    this.matrix = this.classNames + this.maxClasses;
    this.edges = this.matrix + this.maxClasses * this.maxClasses;
    this.fs_reclaim_map = this.hdr + H_FS_RECLAIM;
    this.invalidate_start_map = this.hdr + H_INV_START;
    this.on = this.w[this.hdr + H_ENABLED] !== 0;
  }

  static plan(plan: ArenaPlan, maxClasses: number, maxEdges: number): void {
    plan.region('lockdep', HEADER + maxClasses + maxClasses * maxClasses + maxEdges * EDGE_WORDS);
  }

  static init(arena: Arena, maxClasses: number, maxEdges: number, enabled: boolean): void {
    const h = arena.region('lockdep');
    arena.i32[h + H_MAXC] = maxClasses;
    arena.i32[h + H_MAXE] = maxEdges;
    arena.i32[h + H_CLASSES] = 1; // class 0 = none
    arena.i32[h + H_ENABLED] = enabled ? 1 : 0;
  }

  /** Name the two pseudo-locks (at boot, once the string table is up). */
  initMaps(): void {
    initObj(this.k, this.fs_reclaim_map, 'fs_reclaim', 'fs_reclaim');
    initObj(this.k, this.invalidate_start_map, 'mmu_notifier_invalidate_range_start', 'mmu_notifier_invalidate_range_start');
  }

  /**
   * Lockdep is switched at boot (config.lockdep). Every lock operation tests this, so it is a
   * plain field, read from the arena when a thread attaches; the setter writes both, so a
   * switch in the boot context reaches workers started after it (not ones already running).
   */
  private on = false;

  get enabled(): boolean {
    return this.on;
  }

  set enabled(on: boolean) {
    this.on = on;
    this.w[this.hdr + H_ENABLED] = on ? 1 : 0;
  }

  /** The class for a lock class name (the kernel's static lock_class_key at an init site). */
  classFor(name: string): number {
    const hit = this.classCache.get(name);
    if (hit !== undefined) return hit;
    const sid = this.k.strings.intern(name);
    const w = this.w;
    arch_spin_lock(w, this.hdr + H_LOCK);
    try {
      const n = w[this.hdr + H_CLASSES];
      for (let c = 1; c < n; c++) {
        if (w[this.classNames + c] === sid) {
          this.classCache.set(name, c);
          return c;
        }
      }
      if (n >= this.maxClasses) throw new Error(`lockdep: more than ${this.maxClasses - 1} lock classes (raise config.lockClasses)`);
      w[this.classNames + n] = sid;
      Atomics.store(w, this.hdr + H_CLASSES, n + 1);
      this.classCache.set(name, n);
      return n;
    } finally {
      arch_spin_unlock(w, this.hdr + H_LOCK);
    }
  }

  className(c: number): string {
    return this.k.strings.get(this.w[this.classNames + c]);
  }

  get classCount(): number {
    return this.w[this.hdr + H_CLASSES] - 1;
  }

  get edgeCount(): number {
    return this.w[this.hdr + H_EDGES];
  }

  // ---- acquire / release -----------------------------------------------------------------

  /** lock_acquire: validate and push. Called before a lock may block, so an inversion is
   *  reported even when this run would have deadlocked right after. */
  acquire(t: Task, lock: number, flags: number): void {
    // small enough for V8 to inline into every lock's fast path; the body stays out of line
    if (this.on) this.__lock_acquire(t, lock, flags);
  }

  private __lock_acquire(t: Task, lock: number, flags: number): void {
    const w = this.w;
    const b = t.base;
    const depth = w[b + T_DEPTH];
    const cls = w[lock + OBJ_CLASS];
    // a trylock cannot deadlock: it adds no dependency and is not checked for recursion
    if ((flags & LD_TRYLOCK) === 0) {
      for (let i = depth - 1; i >= 0; i--) {
        const e = b + T_HELD + i * HELD_WORDS;
        if (w[e + HELD_CLASS] !== cls) continue;
        const hf = w[e + HELD_FLAGS];
        const bothRecursive = (flags & LD_RECURSIVE) !== 0 && (hf & LD_READ) !== 0;
        if (!bothRecursive && hf >> LD_SUBCLASS_SHIFT === flags >> LD_SUBCLASS_SHIFT) this.reportRecursion(t, lock, w[e + HELD_LOCK]);
      }
      // check_prevs_add: an edge from the top held lock, and on down through trylocked ones
      // and recursive readers (neither added edges of its own when taken); the first lock
      // taken normally already has edges to everything below it.
      // A recursive reader never waits, so nothing orders before it.
      if ((flags & LD_RECURSIVE) === 0) {
        for (let i = depth - 1; i >= 0; i--) {
          const e = b + T_HELD + i * HELD_WORDS;
          const hc = w[e + HELD_CLASS];
          if (hc !== cls && w[this.matrix + hc * this.maxClasses + cls] === 0) this.addEdge(t, hc, cls, w[e + HELD_LOCK], lock);
          if ((w[e + HELD_FLAGS] & (LD_TRYLOCK | LD_RECURSIVE)) === 0) break;
        }
      }
    }
    if (depth >= MAX_LOCK_DEPTH) {
      splat(this.k, 'lockdep_depth', `BUG: MAX_LOCK_DEPTH too low! ${t.name}/${t.id} holds ${depth} locks`);
      return;
    }
    const e = b + T_HELD + depth * HELD_WORDS;
    w[e + HELD_LOCK] = lock;
    w[e + HELD_CLASS] = cls;
    w[e + HELD_FLAGS] = flags;
    w[b + T_DEPTH] = depth + 1;
    this.k.events.emit(EV.LOCK, t.id, lock, cls, flags);
  }

  /** lock_release: pop the entry (in any order, as the kernel allows). */
  release(t: Task, lock: number): void {
    if (this.on) this.__lock_release(t, lock);
  }

  private __lock_release(t: Task, lock: number): void {
    const w = this.w;
    const b = t.base;
    const depth = w[b + T_DEPTH];
    for (let i = depth - 1; i >= 0; i--) {
      const e = b + T_HELD + i * HELD_WORDS;
      if (w[e + HELD_LOCK] !== lock) continue;
      w.copyWithin(e, e + HELD_WORDS, b + T_HELD + depth * HELD_WORDS);
      w[b + T_DEPTH] = depth - 1;
      this.k.events.emit(EV.UNLOCK, t.id, lock, w[lock + OBJ_CLASS], 0);
      return;
    }
    splat(
      this.k,
      'lockdep_bad_unlock',
      `=====================================\nWARNING: bad unlock balance detected!\n-------------------------------------\n` +
        `${t.name}/${t.id} is trying to release lock (${objLabel(this.k, lock)}) at:\nbut there are no more locks to release!\n\n${heldLocksText(this.k, t)}`,
    );
  }

  /** Is `lock` in t's held stack? (false when lockdep is off: callers treat that as unknown) */
  held(t: Task, lock: number, readOk = true): boolean {
    const w = this.w;
    const depth = w[t.base + T_DEPTH];
    for (let i = 0; i < depth; i++) {
      const e = t.base + T_HELD + i * HELD_WORDS;
      if (w[e + HELD_LOCK] === lock && (readOk || (w[e + HELD_FLAGS] & LD_READ) === 0)) return true;
    }
    return false;
  }

  // ---- the graph ---------------------------------------------------------------------------

  private addEdge(t: Task, from: number, to: number, fromLock: number, toLock: number): void {
    const w = this.w;
    const N = this.maxClasses;
    let path: number[] | null = null;
    arch_spin_lock(w, this.hdr + H_LOCK);
    try {
      if (w[this.matrix + from * N + to] !== 0) return;
      path = this.findPath(to, from);
      const n = w[this.hdr + H_EDGES];
      if (n < this.maxEdges) {
        const r = this.edges + n * EDGE_WORDS;
        w[r] = from;
        w[r + 1] = to;
        w[r + 2] = t.id;
        w[r + 3] = this.k.events.count;
        w[this.hdr + H_EDGES] = n + 1;
        Atomics.store(w, this.matrix + from * N + to, n + 1);
      } else {
        Atomics.store(w, this.matrix + from * N + to, -1); // known, no witness
      }
    } finally {
      arch_spin_unlock(w, this.hdr + H_LOCK);
    }
    if (path) this.reportCycle(t, fromLock, toLock, path);
  }

  /** BFS over the matrix: a class path src -> ... -> dst, or null. */
  private findPath(src: number, dst: number): number[] | null {
    const w = this.w;
    const N = this.maxClasses;
    const n = w[this.hdr + H_CLASSES];
    const prev = new Int32Array(n).fill(-1);
    const queue = [src];
    prev[src] = src;
    while (queue.length) {
      const c = queue.shift()!;
      if (c === dst) {
        const path = [c];
        for (let x = c; x !== src; ) path.unshift((x = prev[x]));
        return path;
      }
      const row = this.matrix + c * N;
      for (let d = 1; d < n; d++) {
        if (w[row + d] !== 0 && prev[d] < 0) {
          prev[d] = c;
          queue.push(d);
        }
      }
    }
    return null;
  }

  /** edges in the path, for reports: "A -> B first by task at event seq" */
  private witness(from: number, to: number): string {
    const r = this.w[this.matrix + from * this.maxClasses + to];
    if (r <= 0) return '';
    const e = this.edges + (r - 1) * EDGE_WORDS;
    const task = this.w[e + 2];
    return ` (first taken by ${this.k.tasks.get(task).name}/${task} at event ${this.w[e + 3]})`;
  }

  // ---- reports -------------------------------------------------------------------------------

  private reportCycle(t: Task, heldLock: number, newLock: number, path: number[]): void {
    // path runs new -> ... -> held: the chain that already exists
    const k = this.k;
    const name = (c: number) => `(${this.className(c)})`;
    const newC = path[0];
    const heldC = path[path.length - 1];
    const lines = [
      '======================================================',
      'WARNING: possible circular locking dependency detected',
      '------------------------------------------------------',
      `${t.name}/${t.id} is trying to acquire lock:`,
      ` ${objLabel(k, newLock)} ${name(newC)}`,
      '',
      'but task is already holding lock:',
      ` ${objLabel(k, heldLock)} ${name(heldC)}`,
      '',
      'which lock already depends on the new lock.',
      '',
      'the existing dependency chain (in reverse order) is:',
    ];
    for (let i = path.length - 1, n = 0; i >= 1; i--, n++) {
      lines.push('', `-> #${n} ${name(path[i])}: acquired after ${name(path[i - 1])}${this.witness(path[i - 1], path[i])}`);
    }
    lines.push('', `-> #${path.length - 1} ${name(newC)}: now taken after ${name(heldC)} by ${t.name}/${t.id}`);
    lines.push('', 'other info that might help us debug this:', '');
    if (path.length > 2) {
      lines.push('Chain exists of:', `  ${path.map(name).join(' --> ')} --> ${name(newC)}`, '');
    }
    const parent = path[path.length - 2]; // the lock the held one is taken after, on the other CPU
    lines.push(
      ' Possible unsafe locking scenario:',
      '',
      '       CPU0                    CPU1',
      '       ----                    ----',
      `  lock${name(heldC)};`,
      `                               lock${name(parent)};`,
      `                               lock${name(heldC)};`,
      `  lock${name(newC)};`,
      '',
      ' *** DEADLOCK ***',
      '',
      heldLocksText(k, t),
    );
    splat(k, 'lockdep_circular', lines.join('\n'));
  }

  private reportRecursion(t: Task, lock: number, prev: number): void {
    const k = this.k;
    const cls = this.className(this.w[lock + OBJ_CLASS]);
    splat(
      k,
      'lockdep_recursive',
      [
        '============================================',
        'WARNING: possible recursive locking detected',
        '--------------------------------------------',
        `${t.name}/${t.id} is trying to acquire lock:`,
        ` ${objLabel(k, lock)} (${cls})`,
        '',
        'but task is already holding lock:',
        ` ${objLabel(k, prev)} (${cls})`,
        '',
        ' Possible unsafe locking scenario:',
        '',
        '       CPU0',
        '       ----',
        `  lock(${cls});`,
        `  lock(${cls});`,
        '',
        ' *** DEADLOCK ***',
        '',
        ' May be due to missing lock nesting notation',
        '',
        heldLocksText(k, t),
      ].join('\n'),
    );
  }
}

/** Write the common object header: state 0, no owner, lockdep class, instance name. */
export function initObj(k: Kernel, at: number, name: string, className?: string): void {
  const w = k.arena.i32;
  w[at + OBJ_STATE] = 0;
  w[at + OBJ_OWNER] = 0;
  w[at + OBJ_CLASS] = k.lockdep.classFor(className ?? name);
  w[at + OBJ_NAME] = k.strings.intern(name);
}
