import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // the suites are CPU bound and the threads tests start their own workers: 2 cores
    maxWorkers: 2,
  },
});
