// Loading the module that holds a task's function (or a process's program), one way for
// every thread and both schedulers. A module is loaded once per thread and cached, so a task
// spawned later resolves its function without waiting. A `threads` worker started from
// source is CommonJS (tsx; Node 20 gives workers no ESM hooks for .ts): it registers
// `require` so the modules it loads share its instances of `current` and the sync layer.

import { register } from 'node:module';
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
  // from source (vitest, tsx) .ts already loads; the built command registers tsx for it
  if (!requireLoader && !import.meta.url.endsWith('.ts') && /\.[cm]?tsx?$/.test(url)) await registerTsx();
  mod = requireLoader
    ? (requireLoader(url.startsWith('file:') ? fileURLToPath(url) : url) as ModuleRecord)
    : ((await import(url)) as ModuleRecord);
  cache.set(url, mod);
  return mod;
}

let tsxRegistered: Promise<void> | null = null;

/**
 * A user's .ts scenario or driver, loaded by the built (ESM) command: register tsx's ESM hooks
 * in this thread first (Node 20 workers inherit no loader hooks, so every worker does this).
 */
function registerTsx(): Promise<void> {
  return (tsxRegistered ??= import('tsx/esm/api').then(
    (api: { register(): unknown }) => {
      api.register();
      registerDistRedirect();
    },
    (e: unknown) => {
      tsxRegistered = null;
      throw new Error(`loading a .ts module needs the tsx package (npm install tsx): ${(e as Error).message}`);
    },
  ));
}

/**
 * A .ts file that imports this package's own sources (a scenario or driver written inside the
 * repository, `../../src/...`) would get a second copy of the kernel from src/*.ts beside the
 * built one the command runs, with its own unset `current`. Resolve those imports to the built
 * dist/src/*.js instead, so both share one instance. Registered after tsx, so it runs first and
 * rewrites what tsx resolved.
 */
function registerDistRedirect(): void {
  const src = new URL('../../../src/', import.meta.url).href; // dist/src/sched/ -> <root>/src/
  const dist = new URL('../', import.meta.url).href; // <root>/dist/src/
  const hooks = `export async function resolve(s, c, next) {
    const r = await next(s, c);
    const src = ${JSON.stringify(src)};
    if (r.url.startsWith(src) && /\.ts$/.test(r.url)) return { ...r, url: ${JSON.stringify(dist)} + r.url.slice(src.length).replace(/\.ts$/, '.js'), format: 'module' };
    return r;
  }`;
  register('data:text/javascript,' + encodeURIComponent(hooks));
}

/** The named function export of a module, or a clear error naming what is missing. */
export function moduleFunction(mod: ModuleRecord, m: string, name: string, who: string): (...args: never[]) => unknown {
  const f = mod[name];
  if (typeof f !== 'function') throw new TypeError(`${who}: module ${m} has no function export '${name}'`);
  return f as (...args: never[]) => unknown;
}
