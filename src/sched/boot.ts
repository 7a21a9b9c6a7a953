// The scheduler of the boot context: kernel setup on the main thread before any run.
// It never switches and cannot sleep; spawning needs a real scheduler.

import type { Scheduler, TaskSpec, WaitResult } from './scheduler.js';
import type { Task } from './task.js';

export class BootScheduler implements Scheduler {
  readonly kind = 'sim' as const;
  now(): number {
    return 0;
  }
  point(): undefined {
    return undefined;
  }
  wait(): WaitResult {
    throw new Error('cannot sleep in the boot context: start a scheduler (sim or threads) and run a task');
  }
  wake(): number {
    return 0;
  }
  sleep(): never {
    throw new Error('cannot sleep in the boot context: start a scheduler (sim or threads) and run a task');
  }
  spawn<A>(spec: TaskSpec<A>): Task {
    throw new Error(`cannot spawn '${spec?.name}' in the boot context: create a SimScheduler or ThreadsScheduler first`);
  }
}
