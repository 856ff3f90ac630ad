// Vitest for `npm test` / `npx vitest run`: unit, interop (qemu-img/qemu-io as the oracle), crash
// and bounded fuzz tests, all in Node. Kept apart from vite.config.ts (the web app's build): when
// both exist, `vitest` picks this file. Playwright's e2e tests (tests/e2e) are not Vitest's.
import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The files that took longest in a measured run, longest first. With two files at a time, a long
 * file that starts last makes the whole run wait for it; on a clean clone Vitest has no timings
 * yet and would start larger files first, which are not the slow ones. Re-measure
 * (`npx vitest run --reporter=json --outputFile=times.json`) when this list grows stale.
 */
const SLOW_FIRST = [
  'tests/crash/snapshot-crash.test.ts',
  'tests/interop/read-varieties.test.ts',
  'tests/interop/hostile.test.ts',
  'tests/interop/check-damages.test.ts',
  'tests/crash/rebase-commit-crash.test.ts',
  'tests/interop/create.test.ts',
  'tests/interop/exact-answers.test.ts',
  'tests/fuzz/fuzz.test.ts',
  'tests/interop/rebase-commit.test.ts',
  'tests/interop/bitmap.test.ts',
  'tests/interop/snapshot.test.ts',
  'tests/interop/snapshot-layout.test.ts',
  'tests/interop/open-errors.test.ts',
  'tests/crash/write-crash.test.ts',
  'tests/interop/read-snapshots.test.ts',
];

/** Vitest's order, with SLOW_FIRST's files moved to the front in that order. */
class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification): number => {
      const i = SLOW_FIRST.findIndex((s) => f.moduleId.endsWith(s));
      return i < 0 ? SLOW_FIRST.length : i;
    };
    return sorted.map((f, i) => ({ f, i })).sort((a, b) => rank(a.f) - rank(b.f) || a.i - b.i).map(({ f }) => f);
  }
}

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
    // Child processes, Vitest's default, said here because tests/helpers/cli-in-process.ts needs
    // them: it runs the CLI from a test's working directory with process.chdir, which worker
    // threads do not allow.
    pool: 'forks',
    // Two files at a time even on 2 cores (Vitest's default is cores - 1, one file at a time
    // there): a test file spends much of its time waiting on the qemu-img and qemu-io processes
    // it starts, and the other file uses that core meanwhile. VITEST_WORKERS overrides.
    maxWorkers: Number(process.env.VITEST_WORKERS ?? Math.max(2, availableParallelism() - 1)),
    // Fuzz tests read FUZZ_ITERATIONS; under `npm test` they stay bounded (their own default).
    sequence: { sequencer: SlowFirstSequencer },
    reporters: ['default'],
  },
});
