// Who waits on what, and who holds it. Every waitable object (spinlock, mutex, rwsem, wait
// queue, completion, SRCU) starts with the same four-word header, so this report can name the
// holder of anything a task sleeps on without knowing the primitive's layout.

import type { Kernel } from './kernel.js';
import { HELD_FLAGS, HELD_LOCK, TASK_BLOCKED, TASK_STATE_NAMES, TaskL, WAIT_KINDS, type Task } from './task.js';

/** header of every waitable object */
export const OBJ_STATE = 0;
export const OBJ_OWNER = 1; // owning task id + 1, 0 if none
export const OBJ_CLASS = 2; // lockdep class
export const OBJ_NAME = 3; // string id of the instance name
export const OBJ_HEADER = 4;

export function taskLabel(k: Kernel, id: number): string {
  const t = k.tasks.get(id);
  return `${t.name}/${id}`;
}

export function objLabel(k: Kernel, obj: number): string {
  if (obj <= 0) return '?';
  const name = k.strings.get(k.arena.i32[obj + OBJ_NAME]);
  return `${name || 'anon'}@${obj.toString(16)}`;
}

/** The "N locks held by T:" lines, lockdep style. */
export function heldLocksText(k: Kernel, t: Task): string {
  const w = k.arena.i32;
  const depth = w[t.base + TaskL.depth];
  if (depth === 0) return `no locks held by ${t.name}/${t.id}.`;
  const lines = [`${depth} lock${depth > 1 ? 's' : ''} held by ${t.name}/${t.id}:`];
  for (let i = 0; i < depth; i++) {
    const e = t.base + TaskL.held + i * 3;
    const f = w[e + HELD_FLAGS];
    lines.push(` #${i}: ${objLabel(k, w[e + HELD_LOCK])}${f & 2 ? ' (read)' : ''}${f & 1 ? ' (trylock)' : ''}`);
  }
  return lines.join('\n');
}

export interface BlockedTask {
  task: number;
  name: string;
  waitKind: string;
  waitObj: string | null;
  holder: number | null;
  holderState: string | null;
}

export function blockedTasks(k: Kernel): BlockedTask[] {
  const w = k.arena.i32;
  const out: BlockedTask[] = [];
  for (const t of k.tasks.live()) {
    if (t.state !== TASK_BLOCKED) continue;
    const obj = w[t.base + TaskL.waitObj];
    const owner = obj > 0 ? w[obj + OBJ_OWNER] - 1 : -1;
    out.push({
      task: t.id,
      name: t.name,
      waitKind: WAIT_KINDS[w[t.base + TaskL.waitKind]] ?? 'word',
      waitObj: obj > 0 ? objLabel(k, obj) : null,
      holder: owner >= 0 ? owner : null,
      holderState: owner >= 0 ? (TASK_STATE_NAMES[k.tasks.get(owner).state] ?? '?') : null,
    });
  }
  return out;
}

/** A hung-run report: every blocked task, what it waits on, who holds it, and any wait-for cycle. */
export function blockedReport(k: Kernel, headline: string): string {
  const blocked = blockedTasks(k);
  const lines = [headline];
  for (const b of blocked) {
    let line = `  task ${b.name}/${b.task} blocked in ${b.waitKind}`;
    if (b.waitObj) line += ` on ${b.waitObj}`;
    if (b.holder !== null) line += `, held by ${taskLabel(k, b.holder)} (${b.holderState})`;
    else if (b.waitObj) line += ', no owner recorded';
    lines.push(line);
    lines.push(indent(heldLocksText(k, k.tasks.get(b.task)), 4));
  }
  const cycle = waitForCycle(blocked);
  if (cycle) lines.push(`  wait-for cycle: ${cycle.map((id) => taskLabel(k, id)).join(' -> ')}`);
  if (blocked.length === 0) lines.push('  (no task is blocked)');
  return lines.join('\n');
}

function waitForCycle(blocked: BlockedTask[]): number[] | null {
  const next = new Map<number, number>();
  for (const b of blocked) if (b.holder !== null) next.set(b.task, b.holder);
  for (const start of next.keys()) {
    const path = [start];
    let cur = next.get(start);
    while (cur !== undefined && !path.includes(cur)) {
      path.push(cur);
      cur = next.get(cur);
    }
    if (cur !== undefined) return [...path.slice(path.indexOf(cur)), cur];
  }
  return null;
}

function indent(s: string, n: number): string {
  const pad = ' '.repeat(n);
  return s.split('\n').map((l) => pad + l).join('\n');
}
