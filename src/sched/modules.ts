// Loading the module that holds a task's function (or a process's program), one way for
// every thread and both schedulers. A module is loaded once per thread and cached, so a task
// spawned later resolves its function without waiting. A `threads` worker started from
// source is CommonJS (tsx; Node 20 gives workers no ESM hooks for .ts): it registers
// `require` so the modules it loads share its instances of `current` and the sync layer.

import { fileURLToPath } from 'node:url';

type ModuleRecord = Record<string, unknown>;

const cache = new Map<string, ModuleRecord>();
let requireLoader: ((id: string) => unknown) | null = null;

/** Called by the threads worker when it was loaded as CommonJS. */
export function loadModulesWithRequire(req: (id: string) => unknown): void {
  requireLoader = req;
}

export function moduleUrl(m: string): string {
  if (/^(file|data|node):/.test(m)) return m;
  if (m.startsWith('/')) return 'file://' + m;
  return m;
}

/** The module if this thread has loaded it already. */
export function cachedModule(m: string): ModuleRecord | undefined {
  return cache.get(moduleUrl(m));
}

export async function loadModule(m: string): Promise<ModuleRecord> {
  const url = moduleUrl(m);
  let mod = cache.get(url);
  if (mod) return mod;
  mod = requireLoader
    ? (requireLoader(url.startsWith('file:') ? fileURLToPath(url) : url) as ModuleRecord)
    : ((await import(url)) as ModuleRecord);
  cache.set(url, mod);
  return mod;
}

/** The named function export of a module, or a clear error naming what is missing. */
export function moduleFunction(mod: ModuleRecord, m: string, name: string, who: string): (...args: never[]) => unknown {
  const f = mod[name];
  if (typeof f !== 'function') throw new TypeError(`${who}: module ${m} has no function export '${name}'`);
  return f as (...args: never[]) => unknown;
}
