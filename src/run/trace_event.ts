// The Chrome trace-event format as shadowmm writes it (trace.ts, trace_build.ts): the event
// shape, the "process" each task kind is grouped under, and the flag names spans carry.

export interface TraceEvent {
  name: string;
  ph: 'X' | 'i' | 'C' | 'M';
  pid: number;
  tid?: number;
  /** µs */
  ts?: number;
  dur?: number;
  cat?: string;
  s?: 'g' | 'p' | 't';
  args?: Record<string, unknown>;
}

/** pid of each task kind's group, and of the counters */
export const KIND_PIDS: Record<string, number> = { boot: 1, cpu: 2, kthread: 3, device: 4, driver: 5, test: 6 };
export const KIND_GROUPS: Record<string, string> = { boot: 'boot', cpu: 'CPU tasks', kthread: 'kernel threads', device: 'device engines', driver: 'driver tasks', test: 'test tasks' };
export const COUNTER_PID = 7;

export const FAULT_FLAGS = ['WRITE', 'MKWRITE', 'ALLOW_RETRY', 'RETRY_NOWAIT', 'KILLABLE', 'TRIED', 'USER', 'REMOTE', 'INSTRUCTION', 'INTERRUPTIBLE', 'UNSHARE'];
export const VM_FAULTS: [number, string][] = [[0x1, 'OOM'], [0x2, 'SIGBUS'], [0x4, 'MAJOR'], [0x10, 'HWPOISON'], [0x20, 'HWPOISON_LARGE'], [0x40, 'SIGSEGV'], [0x100, 'NOPAGE'], [0x200, 'LOCKED'], [0x400, 'RETRY'], [0x800, 'FALLBACK'], [0x1000, 'DONE_COW'], [0x4000, 'COMPLETED']];

export function bitsText(v: number, names: (string | [number, string])[], prefix: string): string {
  const out: string[] = [];
  names.forEach((n, i) => {
    const [bit, name] = typeof n === 'string' ? [1 << i, n] : n;
    if ((v & bit) !== 0) out.push(prefix + name);
  });
  return out.length ? out.join('|') : '0';
}

export const hex = (v: number): string => `0x${v.toString(16)}`;
