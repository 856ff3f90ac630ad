// Vitest for `npm test` / `npx vitest run`: unit, interop (qemu-img/qemu-io as the oracle), crash
// and bounded fuzz tests, all in Node. Kept apart from vite.config.ts (the web app's build): when
// both exist, `vitest` picks this file. Playwright's e2e tests (tests/e2e) are not Vitest's.
import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'node',
    include: [
      'tests/unit/**/*.test.ts',
      'tests/interop/**/*.test.ts',
      'tests/crash/**/*.test.ts',
      'tests/fuzz/**/*.test.ts',
    ],
    exclude: ['**/node_modules/**', 'dist/**', 'tests/e2e/**'],
    // Bundles the CLI once for the run (tests/helpers/cli.ts hands its path to the test files).
    globalSetup: ['tests/helpers/global-setup.ts'],
    // Interop tests shell out to qemu-img/qemu-io many times per test; on a 2-core machine
    // running files in parallel that adds up. Timing is never a pass/fail criterion here.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: true,
    // Two files at a time even on 2 cores (Vitest's default is cores - 1, one file at a time
    // there): a test file spends much of its time waiting on the qemu-img and qemu-io processes
    // it starts, and the other file uses that core meanwhile. VITEST_WORKERS overrides.
    maxWorkers: Number(process.env.VITEST_WORKERS ?? Math.max(2, availableParallelism() - 1)),
    // Fuzz tests read FUZZ_ITERATIONS; under `npm test` they stay bounded (their own default).
    reporters: ['default'],
  },
});
