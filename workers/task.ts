// Piscina entry of the `threads` scheduler: each job is one task, run to its end.

import { runTaskInWorker, type TaskPayload } from '../src/run/worker.js';

export default function (payload: TaskPayload): Promise<void> {
  return runTaskInWorker(payload);
}
