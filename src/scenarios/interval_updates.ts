// interval-updates: reference §2.4 and §9 scenarios 10-13 on a real process. Interval
// notifiers are inserted and removed while munmap's invalidations are in flight. A "gate" hlist
// notifier (interval notifiers run first, then the hlist: §9.29) holds a chosen munmap's
// start until a kthread opens it, so the invalidation is in flight for as long as needed:
// 1. munmap punches a hole in X's interval: X is called (the seq goes odd), then the gate holds
//    the start. Meanwhile Y is inserted (deferred: §9.11, no callback for the in-flight range,
//    its read_begin waits for the final end), Y2 is inserted and removed at once (a still-
//    deferred insert is just unlinked: no wait, §9.13), and X is removed (§9.13: the remove
//    waits for the final end; no callback after it returns). A later munmap in the interval
//    reaches Y and not X.
// 2. munmap of memory no interval covers is held: the seq stays even with a range active;
//    inserting Z forces it odd and puts Z in the tree now (§9.12); Z's read_begin waits.
// The scenario is clean; check() asserts each observable outcome.

import { defineScenario } from '../run/scenario.js';
import type { Kernel } from '../sched/kernel.js';
import type { TaskContext } from '../sched/scheduler.js';
import { defineStruct } from '../shm/layout.js';
import { MUTEX_WORDS, Mutex, mutex_init, mutex_lock, mutex_trylock, mutex_unlock } from '../sync/mutex.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap, vm_munmap } from '../mm/mmap.js';
import { mmget_not_zero, mmput } from '../mm/mm_struct.js';
import type { ProcessContext } from '../mm/process.js';
import { put_user } from '../mm/uaccess.js';
import { MIN_DEFERRED_INSERT, MIN_IN_TREE, MIN_REMOVED } from '../notifier/subscriptions.js';
import { current } from '../sched/current.js';
import {
  MinL,
  MnL,
  defineIntervalNotifierOps,
  defineNotifierOps,
  mmu_interval_notifier_insert,
  mmu_interval_notifier_remove,
  mmu_interval_read_begin,
  mmu_interval_set_seq,
  mmu_notifier_init,
  mmu_notifier_priv,
  mmu_notifier_range_blockable,
  mmu_notifier_register,
  mmu_notifier_subscriptions_state,
  mmu_notifier_unregister,
} from '../notifier/index.js';
import { settle as n, waitAtLeast, raise } from '../run/words.js';

/** a recording interval driver's state, one per subscription */
const RecL = defineStruct('interval_updates_rec', { lock: MUTEX_WORDS, calls: 1 });

/** the control words (control block + the subscriptions and their driver state) */
export const IuL = defineStruct('interval_updates_ctl', {
  R: 2, S: 2, // f64 addresses (Float64 fields first: even offsets)
  gate_addr: 2, // f64: the start of the munmap the gate holds
  X: MinL.$size, Y: MinL.$size, Y2: MinL.$size, Z: MinL.$size, gate: MnL.$size,
  recX: RecL.$size, recY: RecL.$size, recY2: RecL.$size, recZ: RecL.$size,
  mm: 1,
  phase: 1, // 1, 2: which munmap is gated
  inflight: 1, // the gate holds phase N's start
  gate_open: 1, // the gate lets phase N through
  inserted: 1, // phase 1 inserts done: the remover may go
  removing: 1, // the remover is about to call remove(X)
  p1done: 1, p2done: 1, remover_done: 1,
  // observations
  seq_flight1: 1, y_state: 1, y2_ret_sync: 1, y2_state: 1, y2_deferred_after: 1,
  x_remove_blocked: 1, x_remove_ret: 1, x_calls_at_remove: 1, seq_at_remove: 1, x_in_tree_at_remove: 1,
  y_calls_at_begin: 1, seq_at_y_begin: 1, x_calls_end: 1, y_calls_end: 1,
  seq_flight2: 1, active_flight2: 1, z_state: 1, seq_after_z: 1, seq_at_z_begin: 1,
  done: 1,
});

export interface IuArgs {
  /** pages of X's interval */
  pages: number;
  /** ms the remover gets to block before the gate opens */
  settleMs: number;
}

type Ctx = IuArgs & { ctl: number };

const f64get = (k: Kernel, at: number): number => k.arena.f64[at >> 1];
const f64set = (k: Kernel, at: number, v: number): void => void (k.arena.f64[at >> 1] = v);

// ---- the drivers --------------------------------------------------------------------------------

/** Records each call; sets the seq under its mutex (trylock when not blockable), as §2.1 asks. */
const recOps = defineIntervalNotifierOps('interval-updates-rec', {
  invalidate(sub, range, cur_seq) {
    const k = current.k;
    const st = mmu_notifier_priv(sub);
    const m = new Mutex(k, st + RecL.lock);
    const body = (): boolean => {
      Atomics.add(k.arena.i32, st + RecL.calls, 1);
      mmu_interval_set_seq(sub, cur_seq);
      mutex_unlock(m);
      return true;
    };
    if (!mmu_notifier_range_blockable(range)) return mutex_trylock(m) ? body() : false;
    const p = mutex_lock(m);
    return p ? p.then(body) : body();
  },
});

/** Holds the start of the munmap at gate_addr until gate_open reaches the phase. */
const gateOps = defineNotifierOps('interval-updates-gate', {
  invalidate_range_start(sub, range) {
    const k = current.k;
    const c = mmu_notifier_priv(sub);
    const w = k.arena.i32;
    const phase = Atomics.load(w, c + IuL.phase);
    if (!mmu_notifier_range_blockable(range) || range.start !== f64get(k, c + IuL.gate_addr) || Atomics.load(w, c + IuL.gate_open) >= phase) return 0;
    raise(k, c + IuL.inflight, phase);
    return waitAtLeast(k, c + IuL.gate_open, phase).then(() => 0);
  },
});

// ---- the scenario -------------------------------------------------------------------------------

export default defineScenario<IuArgs, { ctl: number }>({
  name: 'interval-updates',
  description: 'interval notifiers inserted and removed while munmap invalidations are in flight, a hole punched in an interval (§2.4, §9.10-13)',
  config: {
    maxTasks: 16,
    lockClasses: 96,
    lockdepEdges: 1024,
    eventRecords: 1 << 13,
    klogBytes: 1 << 16,
    strings: 256,
    stringBytes: 8192,
    kmalloc: { 8: 256, 16: 128, 32: 64, 64: 32, 256: 16, 1024: 8 },
    mem: { pages: 128, pageSize: 4096 },
    mm: { pgtables: 32, vmas: 64, procs: 8 },
    device: { devices: 2, sptDirs: 4, sptLeaves: 4 },
  },
  args: { pages: 16, settleMs: 2 },
  start(ctx) {
    const { k } = ctx;
    const ctl = ctx.alloc(IuL.$size);
    for (const r of ['recX', 'recY', 'recY2', 'recZ'] as const) mutex_init(k, ctl + IuL[r] + RecL.lock, `${r}->lock`, '&rec->lock');
    const args: Ctx = { ...ctx.args, settleMs: scaled(ctx.scheduler, ctx.args.settleMs), ctl };
    ctx.process({ name: 'cpu', fn: 'iuCpu', args });
    ctx.spawn({ name: 'inserter', fn: 'iuInserter', args });
    ctx.spawn({ name: 'remover', fn: 'iuRemover', args });
    return { ctl };
  },
  check(end) {
    const g = (f: keyof typeof IuL.$fields): number => end.word(end.state.ctl + IuL[f]);
    const out: string[] = [];
    if (g('done') !== 1) return ['the cpu process did not finish'];
    const f1 = g('seq_flight1');
    if ((f1 & 1) !== 1) out.push(`§9.10: the seq during the hole's invalidation is ${f1}, expected odd (X overlaps it)`);
    if (g('y_state') !== MIN_DEFERRED_INSERT) out.push(`§9.11: Y inserted mid-invalidation is in state ${g('y_state')}, expected deferred (${MIN_DEFERRED_INSERT})`);
    if (g('y_calls_at_begin') !== 0) out.push(`§9.11: the deferred Y got ${g('y_calls_at_begin')} callback(s) for the in-flight range`);
    if (g('seq_at_y_begin') === f1) out.push("§9.11: Y's read_begin returned before the final end (the seq had not moved)");
    if (g('y2_ret_sync') !== 1 || g('y2_state') !== MIN_REMOVED || g('y2_deferred_after') !== 0) out.push(`§9.13: removing the still-deferred Y2 should unlink it with no wait (sync ${g('y2_ret_sync')}, state ${g('y2_state')}, still deferred ${g('y2_deferred_after')})`);
    if (g('x_remove_ret') !== 0) out.push(`§9.13: remove(X) returned ${g('x_remove_ret')}`);
    if (end.scheduler === 'sim' && g('x_remove_blocked') !== 1) out.push('§9.13: remove(X) mid-invalidation did not wait');
    if (g('seq_at_remove') === f1 || g('x_in_tree_at_remove') !== 0) out.push(`§9.13: remove(X) returned before the final end (seq ${g('seq_at_remove')}, in the tree ${g('x_in_tree_at_remove')})`);
    if (g('x_calls_at_remove') < 1) out.push('the hole punched in X did not reach X');
    if (g('x_calls_end') !== g('x_calls_at_remove')) out.push(`§9.13: X was called ${g('x_calls_end') - g('x_calls_at_remove')} time(s) after remove returned`);
    if (g('y_calls_end') < 1) out.push('a munmap in the interval after the deferred insert did not reach Y');
    if ((g('seq_flight2') & 1) !== 0 || g('active_flight2') < 1) out.push(`§9.12: expected an even seq with a range active before Z, got seq ${g('seq_flight2')}, active ${g('active_flight2')}`);
    if (g('z_state') !== MIN_IN_TREE || (g('seq_after_z') & 1) !== 1) out.push(`§9.12: Z should be in the tree at once with the seq forced odd (state ${g('z_state')}, seq ${g('seq_after_z')})`);
    if (g('seq_at_z_begin') === g('seq_after_z')) out.push("§9.12: Z's read_begin returned before every active range ended");
    return out;
  },
});

/** Virtual time is free; under threads give the remover longer to reach its wait. */
function scaled(s: 'sim' | 'threads', ms: number): number {
  return s === 'threads' ? Math.max(ms, 50) : ms;
}

// ---- the programs -------------------------------------------------------------------------------

/** The process: X over R, the gate, and the munmaps the others race against. */
export async function iuCpu({ k, mm, args }: ProcessContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const N = args.pages;
  const R = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  const S = await n(vm_mmap(mm, 0, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (R < 0 || S < 0) throw new Error(`mmap failed: ${R}, ${S}`);
  for (let i = 0; i < N; i++) await n(put_user(i, R + i * ps));
  for (let i = 0; i < 4; i++) await n(put_user(i, S + i * ps));
  f64set(k, c + IuL.R, R);
  f64set(k, c + IuL.S, S);
  w[c + IuL.mm] = mm;
  if (mmu_notifier_init(c + IuL.gate, gateOps, c) !== 0 || (await n(mmu_notifier_register(c + IuL.gate, mm))) !== 0) throw new Error('gate registration failed');
  if ((await n(mmu_interval_notifier_insert(c + IuL.X, mm, R, N * ps, recOps, c + IuL.recX))) !== 0) throw new Error('insert X failed');
  // 1: punch a hole in X; the gate holds the start
  f64set(k, c + IuL.gate_addr, R + 4 * ps);
  raise(k, c + IuL.phase, 1);
  await n(vm_munmap(mm, R + 4 * ps, 4 * ps));
  await waitAtLeast(k, c + IuL.p1done, 1);
  await waitAtLeast(k, c + IuL.remover_done, 1);
  // after remove(X) returned: a munmap in the interval reaches Y only
  await n(vm_munmap(mm, R, ps));
  w[c + IuL.x_calls_end] = w[c + IuL.recX + RecL.calls];
  w[c + IuL.y_calls_end] = w[c + IuL.recY + RecL.calls];
  // 2: memory no interval covers; the gate holds it again
  f64set(k, c + IuL.gate_addr, S);
  raise(k, c + IuL.phase, 2);
  await n(vm_munmap(mm, S, 4 * ps));
  await waitAtLeast(k, c + IuL.p2done, 1);
  // teardown: no flight now, so these return at once
  for (const s of [IuL.Y, IuL.Z] as const) if ((await n(mmu_interval_notifier_remove(c + s))) !== 0) throw new Error('remove failed');
  if ((await mmu_notifier_unregister(c + IuL.gate, mm)) !== 0) throw new Error('gate unregister failed');
  await n(vm_munmap(mm, R + ps, 3 * ps));
  await n(vm_munmap(mm, R + 8 * ps, (N - 8) * ps));
  raise(k, c + IuL.done, 1);
}

/** Inserts and removes while each gated munmap is in flight, then opens the gate. */
export async function iuInserter({ k, args }: TaskContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  await waitAtLeast(k, c + IuL.inflight, 1);
  const mm = w[c + IuL.mm];
  const R = f64get(k, c + IuL.R);
  if (!mmget_not_zero(mm)) throw new Error('the mm is gone');
  w[c + IuL.seq_flight1] = mmu_notifier_subscriptions_state(mm)!.invalidate_seq;
  if ((await n(mmu_interval_notifier_insert(c + IuL.Y, mm, R, args.pages * ps, recOps, c + IuL.recY))) !== 0) throw new Error('insert Y failed');
  w[c + IuL.y_state] = w[c + IuL.Y + MinL.state];
  if ((await n(mmu_interval_notifier_insert(c + IuL.Y2, mm, R, ps, recOps, c + IuL.recY2))) !== 0) throw new Error('insert Y2 failed');
  const r2 = mmu_interval_notifier_remove(c + IuL.Y2);
  w[c + IuL.y2_ret_sync] = r2 === 0 ? 1 : 0;
  await n(r2);
  w[c + IuL.y2_state] = w[c + IuL.Y2 + MinL.state];
  w[c + IuL.y2_deferred_after] = mmu_notifier_subscriptions_state(mm)!.deferred.includes(c + IuL.Y2) ? 1 : 0;
  raise(k, c + IuL.inserted, 1);
  await waitAtLeast(k, c + IuL.removing, 1);
  await n(k.sched.sleep(args.settleMs * 1e6)); // the remover reaches its wait
  raise(k, c + IuL.gate_open, 1);
  await n(mmu_interval_read_begin(c + IuL.Y));
  w[c + IuL.y_calls_at_begin] = w[c + IuL.recY + RecL.calls];
  w[c + IuL.seq_at_y_begin] = mmu_notifier_subscriptions_state(mm)!.invalidate_seq;
  raise(k, c + IuL.p1done, 1);
  // 2: a range active that overlaps no node: the seq is even
  await waitAtLeast(k, c + IuL.inflight, 2);
  const st = mmu_notifier_subscriptions_state(mm)!;
  w[c + IuL.seq_flight2] = st.invalidate_seq;
  w[c + IuL.active_flight2] = st.active_invalidate_ranges;
  if ((await n(mmu_interval_notifier_insert(c + IuL.Z, mm, R, ps, recOps, c + IuL.recZ))) !== 0) throw new Error('insert Z failed');
  w[c + IuL.z_state] = w[c + IuL.Z + MinL.state];
  w[c + IuL.seq_after_z] = mmu_notifier_subscriptions_state(mm)!.invalidate_seq;
  raise(k, c + IuL.gate_open, 2);
  await n(mmu_interval_read_begin(c + IuL.Z));
  w[c + IuL.seq_at_z_begin] = mmu_notifier_subscriptions_state(mm)!.invalidate_seq;
  await n(mmput(mm));
  raise(k, c + IuL.p2done, 1);
}

/** Removes X while the hole's invalidation is in flight. */
export async function iuRemover({ k, args }: TaskContext<Ctx>): Promise<void> {
  const c = args.ctl;
  const w = k.arena.i32;
  await waitAtLeast(k, c + IuL.inserted, 1);
  raise(k, c + IuL.removing, 1);
  const r = mmu_interval_notifier_remove(c + IuL.X);
  w[c + IuL.x_remove_blocked] = typeof r === 'number' ? 0 : 1;
  w[c + IuL.x_remove_ret] = await n(r);
  w[c + IuL.x_calls_at_remove] = w[c + IuL.recX + RecL.calls];
  const st = mmu_notifier_subscriptions_state(w[c + IuL.mm])!;
  w[c + IuL.seq_at_remove] = st.invalidate_seq;
  w[c + IuL.x_in_tree_at_remove] = st.itree.includes(c + IuL.X) ? 1 : 0;
  raise(k, c + IuL.remover_done, 1);
}
