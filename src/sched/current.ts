// `current`: the task running now on this JS thread. Under `sim` the scheduler sets it at
// every switch (only one task runs at a time); under `threads` each worker runs one task.

import type { Task } from './task.js';

export let current: Task = undefined as unknown as Task;

export function setCurrent(t: Task): void {
  current = t;
}
