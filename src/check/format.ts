// The human summary of a run: a headline, each violation as the kernel prints it (the lockdep
// and "sleeping function called from invalid context" reports are already in kernel form in
// klog) with the recent events of the tasks it names, the expectation, the counters that
// moved, and the replay command. Plain text, no colour: it goes to logs and CI output.

import type { ReportRun, ReportViolation } from './report.js';

export interface FormatOptions {
  /** violations printed in full per kind (default 3); the rest are counted */
  perKind?: number;
  /** recent events shown per task (default 6) */
  events?: number;
  /** counters line (default true) */
  counters?: boolean;
}

const fmtInt = (n: number): string => n.toLocaleString('en-US');

function fmtTime(ns: number): string {
  if (ns >= 1e9) return `${(ns / 1e9).toFixed(3)} s`;
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(3)} ms`;
  return `${(ns / 1e3).toFixed(1)} us`;
}

export function runTitle(r: Pick<ReportRun, 'scenario' | 'variant' | 'scheduler' | 'seed' | 'strategy' | 'pctDepth'>): string {
  const v = r.variant === null ? '' : ` [${r.variant}]`;
  const how = r.scheduler === 'sim' ? `sim seed ${r.seed}${r.strategy === 'pct' ? ` pct depth ${r.pctDepth}` : ''}` : 'threads';
  return `${r.scenario}${v} · ${how}`;
}

function indent(s: string, pad: string): string {
  return s
    .split('\n')
    .map((l) => pad + l)
    .join('\n');
}

function formatViolation(v: ReportViolation, i: number, of: number, events: number): string {
  const lines = [`------------[ ${v.kind} ${i}/${of}${v.timeNs !== null ? ` at ${fmtTime(v.timeNs)}` : ''} ]------------`, v.message.trimEnd()];
  for (const t of v.tasks) {
    const recent = t.recent.slice(-events);
    if (recent.length === 0) continue;
    lines.push(`  recent events of ${t.name}/${t.id}:`);
    for (const e of recent) lines.push(`    ${fmtTime(e.timeNs).padStart(12)}  #${e.seq} ${e.type} ${e.a} ${e.b} ${e.c}`);
  }
  return lines.join('\n');
}

/** Counters worth a line: the non-zero ones, in group order. */
export function formatCounters(c: Record<string, number>): string {
  const parts = Object.entries(c)
    .filter(([key, v]) => v !== 0 && key !== 'events.ringComplete')
    .map(([key, v]) => `${key} ${Number.isInteger(v) ? fmtInt(v) : v.toFixed(2)}`);
  return parts.join(' · ');
}

/** 'cpu fault p50 1.0 us p99 12 us (40); ...' from the latency.* counters ('' if none). */
function formatLatency(c: Record<string, number>): string {
  const parts: string[] = [];
  for (const kind of ['cpu_fault', 'device_fault', 'invalidation']) {
    const n = c[`latency.${kind}_samples`];
    if (!n) continue;
    parts.push(`${kind.replace('_', ' ')} p50 ${c[`latency.${kind}_p50_us`]} us p99 ${c[`latency.${kind}_p99_us`]} us (${fmtInt(n)})`);
  }
  return parts.join('; ');
}

/** The summary of one run, as `shadowmm run` prints it. */
export function formatRun(r: ReportRun, o: FormatOptions = {}): string {
  const perKind = o.perKind ?? 3;
  const events = o.events ?? 6;
  const out: string[] = [];
  out.push(`== ${runTitle(r)} ==`);
  const time = r.scheduler === 'sim' ? `${fmtTime(r.timeNs)} virtual` : `${fmtTime(r.timeNs)} wall`;
  out.push(`run: ${r.status} after ${fmtInt(r.steps)} steps, ${time}, ${fmtInt(r.events)} events${r.scheduler === 'sim' ? `, event hash ${r.eventHash}` : ''}`);
  if (r.status !== 'done' && r.hungReport && !r.violations.some((v) => v.message === r.hungReport)) out.push(indent(r.hungReport, '  '));
  const shown = new Map<string, number>();
  const total = new Map<string, number>();
  for (const v of r.violations) total.set(v.kind, (total.get(v.kind) ?? 0) + 1);
  for (const v of r.violations) {
    const n = (shown.get(v.kind) ?? 0) + 1;
    shown.set(v.kind, n);
    if (n <= perKind) out.push(formatViolation(v, n, total.get(v.kind)!, events));
  }
  const hidden = [...total].filter(([k, n]) => n > perKind).map(([k, n]) => `${n - perKind} more ${k}`);
  if (hidden.length) out.push(`(${hidden.join(', ')}: see --report)`);
  const found = [...total].map(([k, n]) => `${k} x${n}`).join(', ') || 'none';
  const expected = r.expected.violations.length ? r.expected.violations.join(', ') : 'none';
  out.push(`violations: ${found}; expected: ${expected}${r.expected.status.join() !== 'done' ? `, status ${r.expected.status.join(' or ')}` : ''}`);
  if (o.counters !== false) {
    const c = formatCounters(Object.fromEntries(Object.entries(r.counters).filter(([key]) => !key.startsWith('latency.'))));
    if (c) out.push(`counters: ${c}`);
    const lat = formatLatency(r.counters);
    if (lat) out.push(`latency: ${lat}`);
  }
  for (const note of r.notes) out.push(`note: ${note}`);
  if (r.replay) out.push(`replay: ${r.replay}`);
  out.push(verdictLine(r));
  return out.join('\n');
}

/** One line: as expected or not, and why. */
export function verdictLine(r: ReportRun): string {
  if (r.ok) return 'verdict: OK (as expected)';
  const why: string[] = [];
  const statusOk = r.expected.status.includes(r.status);
  if (!statusOk) why.push(`ended '${r.status}', expected ${r.expected.status.map((s) => `'${s}'`).join(' or ')}`);
  if (r.unexpected.length) why.push(`unexpected: ${r.unexpected.join(', ')}`);
  if (r.missing.length) why.push(`expected but not reported: ${r.missing.join(', ')}`);
  return `verdict: FAIL (${why.join('; ')})`;
}
