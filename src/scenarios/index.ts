// The built-in scenarios: `shadowmm list` shows them, `shadowmm run <name>` runs them. Each is
// one module in this folder (a default export made by defineScenario, its programs as named
// exports); this list only maps names to files, so listing loads nothing else.

import { fileURLToPath } from 'node:url';

const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';

const FILES: readonly (readonly [name: string, file: string])[] = [
  ['smoke', 'smoke'],
  ['two-notifiers', 'two_notifiers'],
  ['interval-updates', 'interval_updates'],
  ['oom-reap', 'oom_reap'],
  ['reclaim-recursion', 'reclaim_recursion'],
  ['swap-roundtrip', 'swap_roundtrip'],
];

export interface BuiltinScenario {
  name: string;
  /** absolute path of its module */
  path: string;
}

export function builtinScenarios(): BuiltinScenario[] {
  return FILES.map(([name, file]) => ({ name, path: fileURLToPath(new URL(`./${file}.${ext}`, import.meta.url)) }));
}
