// The command line under test: cli/qcowscope.ts bundled from the current sources with the settings
// `npm run build` uses (scripts/cli-bundle.mjs), into a private temp file, so test files running in
// parallel (and a concurrent `npm run build`) never read a half-written dist/, and a stale dist/
// can never pass a test. Vitest bundles it once per run (tests/helpers/global-setup.ts) and hands
// the path to every test file; run outside that setup, the first call bundles a copy.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inject } from 'vitest';
import { bundleCli } from '../../scripts/cli-bundle.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Path of the CLI bundle made by tests/helpers/global-setup.ts. */
    cliBundle: string;
  }
}

let built: Promise<string> | null = null;

/** Path of a CLI bundle (an .mjs file to run with `node`). */
export function cliBundle(): Promise<string> {
  built ??= (async () => {
    const provided = inject('cliBundle');
    if (provided && fs.existsSync(provided)) return provided;
    return bundleCli(path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-cli-')), 'qcowscope.mjs'));
  })();
  return built;
}
