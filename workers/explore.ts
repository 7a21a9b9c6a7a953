// Piscina entry of `shadowmm explore`: each job is one seeded sim run of a scenario.

import { exploreRun, type ExploreJob, type ExploreRunResult } from '../src/run/explore_worker.js';

export default function (job: ExploreJob): Promise<ExploreRunResult> {
  return exploreRun(job);
}
