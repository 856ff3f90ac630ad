// End-to-end tests in Debian's Chromium against the production build (`npm test` builds first;
// `npm run test:e2e` alone expects dist/web/ to exist). Fixtures are made with qemu-img at test
// time in the OS temp dir, since Playwright empties its output folder at each run (docs/platform.md).
import { defineConfig } from '@playwright/test';

// E2E_PORT lets several checkouts run their e2e tests side by side.
const PORT = Number(process.env.E2E_PORT ?? 4173);

export default defineConfig({
  testDir: 'tests/e2e',
  timeout: 60_000,
  expect: { timeout: 10_000 },
  // Every test has its own browser context (its own OPFS, locks and service worker) and its own
  // temp dir of qemu-made fixtures, so tests run side by side, two at a time (the machine CI runs
  // on has two cores; a third worker only queues for them). E2E_WORKERS overrides.
  fullyParallel: true,
  workers: Number(process.env.E2E_WORKERS ?? 2),
  retries: 0,
  reporter: process.env.CI ? [['list'], ['html', { open: 'never' }]] : 'list',
  use: {
    baseURL: `http://127.0.0.1:${PORT}/`,
    browserName: 'chromium',
    // A failed test keeps its trace (actions, DOM snapshots, console, network). No screencast
    // frames or sources: recording those in every passing test cost about a fifth of the e2e
    // run's CPU (verbs.spec.ts: 25 s -> 21 s; trace off: 19 s). `--trace on` records everything.
    trace: { mode: 'retain-on-failure', screenshots: false, snapshots: true, sources: false },
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
  webServer: {
    command: `npx vite preview --host 127.0.0.1 --port ${PORT} --strictPort`,
    url: `http://127.0.0.1:${PORT}/`,
    reuseExistingServer: false,
    timeout: 30_000,
    stdout: 'ignore',
    stderr: 'pipe',
  },
});
