// The scenario runner under `threads` (one Piscina worker per task; from source every worker
// loads the scenario module, its drivers and the runner's tasks through tsx): each built-in
// scenario with its expected outcome, a user's .ts scenario whose driver is a file it names,
// and the runner's services around an OOM kill. (A hung run under threads is the watchdog's
// job, tested in test/threads.test.ts; the runner only carries its report.)

import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadScenario } from '../src/run/scenario_load.js';
import { runScenario, type ScenarioRunOutcome } from '../src/run/scenario_run.js';

const FIX = (f: string): string => fileURLToPath(new URL(`./fixtures/scenarios/${f}`, import.meta.url));
const dump = (o: ScenarioRunOutcome): string => JSON.stringify({ status: o.status, found: o.found, checkFailures: o.checkFailures, leaks: o.leaks, notes: o.notes, v: o.violations.map((v) => v.message.slice(0, 600)) }, null, 1);

async function threads(ref: string, variant: string | null = null): Promise<ScenarioRunOutcome> {
  return runScenario(await loadScenario(ref), { scheduler: 'threads', variant });
}

describe('built-in scenarios (threads)', () => {
  it('smoke (§9 scenarios 1-2) and interval-updates (§2.4, §9 scenarios 10-13): clean, check() holds, nothing leaked', async () => {
    for (const name of ['smoke', 'interval-updates']) {
      const o = await threads(name);
      expect(o.ok, `${name}: ${dump(o)}`).toBe(true);
      expect([o.status, o.leaks, o.checkFailures, o.replay, o.seed]).toEqual(['done', [], [], null, null]);
    }
  }, 60_000);

  it('two-notifiers (§9 scenario 16): v4.19 reports the livelock and the unpaired starts; v5.12 is clean', async () => {
    const old = await threads('two-notifiers', 'v4.19');
    expect(old.ok, dump(old)).toBe(true);
    expect(Object.keys(old.found).sort()).toEqual(['liveness', 'notifier_pairing']);
    const cur = await threads('two-notifiers', 'v5.12');
    expect(cur.ok, dump(cur)).toBe(true);
    expect(cur.found).toEqual({});
  }, 60_000);
});

describe("a user's .ts scenario and the runner's services (threads)", () => {
  it("the scenario's driver file loads in every worker: the device engine and the process both find 'test-mirror'", async () => {
    const o = await threads(FIX('user_mirror.ts'));
    expect(o.ok, dump(o)).toBe(true);
    expect(o.leaks).toEqual([]);
  }, 60_000);

  it('an OOM kill: the oom_reaper worker reaps the stuck victim; the supervisor stops oom_reaper and kswapd once it is gone', async () => {
    const o = await threads(FIX('checks.ts'), 'oom');
    expect(o.ok, dump(o)).toBe(true);
    expect([o.counters['oom.kills'], o.counters['oom.reaped']]).toEqual([1, 1]);
  }, 60_000);
});
