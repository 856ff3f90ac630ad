// Vitest's global setup (vitest.config.ts, vitest.fuzz.config.ts): one temp dir for the whole run,
// removed at its end (test workers can be stopped without running their exit handlers, so
// per-process caches live in it: QCOWSCOPE_TEST_RUN_DIR, inherited by the workers), and the CLI
// bundled once into it, its path provided to the test files (tests/helpers/cli.ts).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestProject } from 'vitest/node';
import { bundleCli } from '../../scripts/cli-bundle.mjs';

export default async function setup(project: TestProject): Promise<() => void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-run-'));
  process.env.QCOWSCOPE_TEST_RUN_DIR = dir;
  project.provide('cliBundle', await bundleCli(path.join(dir, 'qcowscope.mjs')));
  return () => fs.rmSync(dir, { recursive: true, force: true });
}
