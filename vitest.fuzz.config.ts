// Vitest for `npm run fuzz` (vitest run tests/fuzz --config vitest.fuzz.config.ts): the same fuzz
// tests as in `npm test`, run long. FUZZ_ITERATIONS sets the iteration count (default here 5000;
// under `npm test` the fuzz tests use their own small bound), FUZZ_SEED a fixed seed to replay,
// FUZZ_OFFSET the first case index (run a long campaign in slices).
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'node',
    include: ['tests/fuzz/**/*.test.ts'],
    exclude: ['**/node_modules/**', 'dist/**'],
    globalSetup: ['tests/helpers/global-setup.ts'],
    env: {
      FUZZ_ITERATIONS: process.env.FUZZ_ITERATIONS ?? '5000',
      ...(process.env.FUZZ_SEED !== undefined ? { FUZZ_SEED: process.env.FUZZ_SEED } : {}),
      ...(process.env.FUZZ_OFFSET !== undefined ? { FUZZ_OFFSET: process.env.FUZZ_OFFSET } : {}),
    },
    // Long runs: no per-test timeout (0 disables it).
    testTimeout: 0,
    hookTimeout: 300_000,
  },
});
