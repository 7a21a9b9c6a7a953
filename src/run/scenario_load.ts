// Finding and loading scenarios and drivers: a built-in name (src/scenarios) or a user's
// .ts/.js file, and the driver names a scenario lists (drivers/) or its own driver files. A
// user's .ts file loads through tsx (src/sched/modules.ts registers it in the built command and
// in every worker). Anything wrong is a ScenarioError that names the file and the field.

import { existsSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule } from '../sched/modules.js';
import { ScenarioError, isScenario, validateScenario, type Scenario } from './scenario.js';
import { builtinScenarios } from '../scenarios/index.js';

const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';

/** The reference drivers by name: each module registers its driver (defineDriver) when loaded. */
export const BUILTIN_DRIVERS: Readonly<Record<string, { path: string; description: string }>> = Object.freeze({
  dmirror: { path: `dmirror/index.${ext}`, description: 'lib/test_hmm.c: an interval-notifier mirror with device-private memory, migration and exclusive access' },
  odp: { path: `odp/index.${ext}`, description: 'RDMA on-demand paging (ib_umem_odp): interval notifier, umem_mutex, prefetch and QP engines' },
  gpusvm: { path: `gpusvm/index.${ext}`, description: 'drm_gpusvm (xe SVM): interval notifiers per range, a garbage collector, GPU page faults' },
  'kvm-mmu': { path: `kvm-mmu.${ext}`, description: 'an hlist secondary MMU modelled on KVM: a count and sequence that vCPU faults retry on' },
  userptr: { path: `userptr.${ext}`, description: 'i915-style userptr: an hlist notifier with a trylock, pinned pages and -EAGAIN when not blockable' },
});

/** Absolute path of a built-in driver's module. */
export function builtinDriverPath(name: string): string | null {
  const d = Object.hasOwn(BUILTIN_DRIVERS, name) ? BUILTIN_DRIVERS[name] : undefined;
  return d ? fileURLToPath(new URL(`../../drivers/${d.path}`, import.meta.url)) : null;
}

export interface LoadedScenario {
  scenario: Scenario<unknown, unknown>;
  /** what the user named: a built-in name or the path as given */
  ref: string;
  /** absolute path of the scenario module (the default module of its programs) */
  module: string;
  builtin: boolean;
  /** absolute paths of its driver modules, in order */
  drivers: string[];
}

const looksLikePath = (s: string): boolean => /[/\\]/.test(s) || /\.[cm]?[jt]s$/.test(s);

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0];
}

/** A built-in scenario name, or a path to a user's scenario module (relative to cwd). */
export async function loadScenario(ref: string, cwd = process.cwd()): Promise<LoadedScenario> {
  if (typeof ref !== 'string' || ref === '') throw new ScenarioError('', 'no scenario named (give a built-in name or a file)');
  const builtin = builtinScenarios().find((b) => b.name === ref);
  let file: string;
  if (builtin) file = builtin.path;
  else if (looksLikePath(ref)) {
    file = isAbsolute(ref) ? ref : resolve(cwd, ref);
    if (!existsSync(file)) throw new ScenarioError('', 'no such file', file);
  } else {
    throw new ScenarioError('', `no built-in scenario '${ref}' (built-in: ${builtinScenarios().map((b) => b.name).join(', ')}; a file path must end in .ts or .js)`);
  }
  let mod: Record<string, unknown>;
  try {
    mod = await loadModule(file);
  } catch (e) {
    if (e instanceof ScenarioError) throw e.inFile(file);
    throw new ScenarioError('', `cannot load the module: ${firstLine(e)}`, file);
  }
  const def = mod.default;
  if (def === undefined) throw new ScenarioError('default', 'the module has no default export: write `export default defineScenario({ ... })`', file);
  if (!isScenario(def)) {
    try {
      validateScenario(def);
    } catch (e) {
      if (e instanceof ScenarioError) throw e.inFile(file);
      throw e;
    }
  }
  const scenario = def as Scenario<unknown, unknown>;
  const drivers = (scenario.drivers ?? []).map((d, i) => resolveDriver(d, file, `drivers[${i}]`));
  return { scenario, ref, module: file, builtin: builtin !== undefined, drivers };
}

/** A driver name or a path (relative to the scenario file) to its module. */
export function resolveDriver(d: string, scenarioFile: string, field: string): string {
  const b = builtinDriverPath(d);
  if (b) return b;
  if (!looksLikePath(d)) throw new ScenarioError(field, `no built-in driver '${d}' (built-in: ${Object.keys(BUILTIN_DRIVERS).join(', ')}; a driver file must be a path ending in .ts or .js)`, scenarioFile);
  const p = isAbsolute(d) ? d : resolve(dirname(scenarioFile), d);
  if (!existsSync(p)) throw new ScenarioError(field, `driver file ${p} does not exist`, scenarioFile);
  return p;
}

/** Load driver modules in this thread (their top level registers the driver and its ops). */
export async function loadDrivers(paths: string[], scenarioFile: string): Promise<void> {
  for (const [i, p] of paths.entries()) {
    try {
      await loadModule(p);
    } catch (e) {
      throw new ScenarioError(`drivers[${i}]`, `cannot load driver ${p}: ${firstLine(e)}`, scenarioFile);
    }
  }
}
