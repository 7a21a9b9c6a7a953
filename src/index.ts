// The package entry (`import ... from 'shadowmm'`): what a user's scenario file, a CI script or
// a later subcommand needs. Scenarios: defineScenario and its types. Running: loadScenario,
// runScenario, runSeeded (serializable inputs, for worker pools). Checks: violation records,
// teardown and counter sources, the report type and its builder. Kernel functions a program
// calls come from their own modules ('shadowmm/dist/src/mm/mmap.js', ...); a driver's API is
// 'shadowmm/device'.

export {
  defineScenario,
  isScenario,
  registerConfigKeys,
  ScenarioError,
  SCHEDULER_KINDS,
  SERVICE_NAMES,
  type Expectation,
  type Scenario,
  type ScenarioConfig,
  type ScenarioContext,
  type ScenarioEnd,
  type ScenarioLimits,
  type ScenarioProcess,
  type ScenarioSpec,
  type ScenarioTask,
  type SchedulerKind,
  type ServiceName,
  type VariantSpec,
} from './run/scenario.js';
export { BUILTIN_DRIVERS, loadScenario, type LoadedScenario } from './run/scenario_load.js';
export { replayCommand, runScenario, runSeeded, type RunHooks, type ScenarioRunOptions, type ScenarioRunOutcome, type SeededRunInput } from './run/scenario_run.js';
export { builtinScenarios, type BuiltinScenario } from './scenarios/index.js';
export { INFO_KINDS, RUN_KINDS, collectViolations, type Violation, type ViolationEvent, type ViolationTask } from './check/violation.js';
export { kernelUsage, registerUsageSource, teardownLeaks, type Usage } from './check/teardown.js';
export { collectCounters, registerCounterSource, type CounterSource } from './check/counters.js';
export { REPORT_SCHEMA, buildReport, reportRun, type Report, type ReportEvent, type ReportRun, type ReportViolation } from './check/report.js';
export { formatRun, formatCounters, verdictLine } from './check/format.js';
export type { ProcessContext } from './mm/process.js';
export type { TaskContext, RunResult, RunStatus } from './sched/scheduler.js';
export type { Kernel } from './sched/kernel.js';
export { defineStruct } from './shm/layout.js';
export { raise, settle, waitAtLeast } from './run/words.js';
