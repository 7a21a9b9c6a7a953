// DESIGN check 1, the mirror invariant: every device access through a shadow PTE must be
// allowed by the host PTE at that instant: the same frame (present and not PROT_NONE, or a
// device-private / device-exclusive entry of that frame), and writable if the access writes.
// A violation is a 'mirror_invariant' record naming both sides: the device's task with its
// recent events, and the task that last invalidated this device with its own.

import { current } from '../sched/current.js';
import type { Kernel } from '../sched/kernel.js';
import { heldLocksText, objLabel, taskLabel } from '../sched/report.js';
import { splat } from '../sched/splat.js';
import { EV, EV_A, EV_B, EV_C, EV_NAMES, EV_TASK, EV_THI, EV_TLO, EV_TYPE } from '../shm/events.js';
import { pte_lookup, pte_protnone } from '../mm/mm_pt.js';
import { is_device_exclusive_entry, is_device_private_entry, is_writable_swp_entry, pte_pfn, pte_present, pte_write, swp_offset } from '../mm/pgtable.js';
import { MmL } from '../mm/types.js';
import { deviceLabel, device_stat_add } from './device.js';
import { SPT_LEAF_ENTRIES, SPTE_VALID } from './types.js';
import { spt_walk_leaves, vpn_range } from './spt.js';
import { DEV_EV, DEV_STAT, DevL, SPTE_PFN_SHIFT, SPTE_WRITE } from './types.js';

/** records written per device; the count goes on in the 'violations' statistic */
export const MAX_VIOLATION_RECORDS = 8;
/** recent events per side in a record */
const RECENT = 12;

/** The host PTE of addr in mm now, 0 if none. */
export function host_pte(k: Kernel, mm: number, addr: number): number {
  const w = k.arena.i32;
  const pgd = w[mm + MmL.pgd];
  const slot = pgd === 0 ? -1 : pte_lookup(k, pgd, addr);
  return slot < 0 ? 0 : Atomics.load(w, slot);
}

/** Does host PTE `pte` allow an access through shadow entry `e` (write or not)? */
export function mirror_allows(pte: number, e: number, write: boolean): boolean {
  const pfn = e >>> SPTE_PFN_SHIFT;
  if ((pte & 1) !== 0) return !pte_protnone(pte) && pte_pfn(pte) === pfn && (!write || pte_write(pte));
  if (is_device_private_entry(pte) || is_device_exclusive_entry(pte)) return swp_offset(pte) === pfn && (!write || is_writable_swp_entry(pte));
  return false;
}

/** The mirror check of one access; false (and a record) when it fails. */
export function mirror_check(k: Kernel, dev: number, mm: number, addr: number, e: number, seq: number, write: boolean): boolean {
  const pte = host_pte(k, mm, addr);
  if (mirror_allows(pte, e, write)) return true;
  mirror_violation(k, dev, addr, e, seq, write, pte);
  return false;
}

function hostText(pte: number): string {
  if (pte === 0) return 'none';
  const hex = `0x${(pte >>> 0).toString(16)}`;
  if (pte_present(pte)) return `${hex} (pfn ${pte_pfn(pte)}, ${pte_write(pte) ? 'write' : 'read-only'}${pte_protnone(pte) ? ', PROT_NONE' : ''})`;
  if (is_device_private_entry(pte)) return `${hex} (device-private pfn ${swp_offset(pte)})`;
  if (is_device_exclusive_entry(pte)) return `${hex} (device-exclusive pfn ${swp_offset(pte)})`;
  return `${hex} (not present)`;
}

/** Recent events of a task as text lines, oldest first. */
export function recentEventsText(k: Kernel, task: number, max = RECENT): string {
  if (task <= 0) return '    (no task)';
  const recs = k.events.recentOf(task, max);
  if (recs.length === 0) return '    (no events in the ring)';
  return recs
    .map((r) => {
      const ns = (r[EV_TLO] >>> 0) + (r[EV_THI] >>> 0) * 4294967296;
      const type = r[EV_TYPE];
      const name = EV_NAMES[type] ?? `event ${type}`;
      // name the object an event is about: a lock, a device
      const a = type === EV.LOCK || type === EV.UNLOCK || type === EV.CONTENDED ? objLabel(k, r[EV_A]) : type >= DEV_EV.ACCESS_BEGIN && type <= DEV_EV.INSTALL ? deviceLabel(k, r[EV_A]) : String(r[EV_A]);
      return `    ${ns}ns ${taskLabel(k, r[EV_TASK])} ${name} ${a} ${r[EV_B]} ${r[EV_C]}`;
    })
    .join('\n');
}

export function mirror_violation(k: Kernel, dev: number, addr: number, e: number, seq: number, write: boolean, pte: number): void {
  const w = k.arena.i32;
  device_stat_add(dev, DEV_STAT.violations);
  if (Atomics.add(w, dev + DevL.violation_records, 1) >= MAX_VIOLATION_RECORDS) return;
  const t = current;
  const inv = w[dev + DevL.last_inval_task];
  splat(
    k,
    'mirror_invariant',
    [
      `BUG: mirror invariant: device ${deviceLabel(k, dev)} ${write ? 'writes' : 'reads'} 0x${addr.toString(16)} through a shadow PTE ` +
        `(pfn ${e >>> SPTE_PFN_SHIFT}${(e & SPTE_WRITE) !== 0 ? ', write' : ', read-only'}, installed from seq ${seq}), but the host PTE is ${hostText(pte)}: ` +
        'an invalidation did not reach the shadow page table, or an entry was installed from a stale result',
      `device side: ${taskLabel(k, t.id)}`,
      heldLocksText(k, t),
      recentEventsText(k, t.id),
      `invalidation side: ${inv > 0 ? taskLabel(k, inv) : 'no invalidation reached this device'}`,
      recentEventsText(k, inv),
    ].join('\n'),
  );
}

/**
 * Check every shadow PTE of the device against the host page table now, as an access of the
 * entry's own rights would; returns how many fail (each is a violation). Nothing may install
 * or zap meanwhile: hold the notifier lock, or stop the device first.
 */
export function device_check_all(k: Kernel, dev: number): number {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const mm = w[dev + DevL.mm];
  const [first, last] = vpn_range(k, 0, Infinity);
  let bad = 0;
  spt_walk_leaves(k, w[dev + DevL.root], first, last, (leaf, v0) => {
    for (let i = 0; i < SPT_LEAF_ENTRIES; i++) {
      const e = w[leaf + 2 * i];
      if ((e & SPTE_VALID) === 0) continue;
      if (!mirror_check(k, dev, mm, (v0 + i) * ps, e, w[leaf + 2 * i + 1], (e & SPTE_WRITE) !== 0)) bad++;
    }
  });
  return bad;
}
