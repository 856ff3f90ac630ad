// Vitest's global setup (vitest.config.ts, vitest.fuzz.config.ts): bundles the CLI once for the
// whole run and provides its path to the test files (tests/helpers/cli.ts), instead of one bundle
// per file; removes it at the end.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestProject } from 'vitest/node';
import { bundleCli } from '../../scripts/cli-bundle.mjs';

export default async function setup(project: TestProject): Promise<() => void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-cli-'));
  project.provide('cliBundle', await bundleCli(path.join(dir, 'qcowscope.mjs')));
  return () => fs.rmSync(dir, { recursive: true, force: true });
}
