// The command line for fuzz and hostile-image tests: bundled from cli/qcowscope.ts with the same
// esbuild options as scripts/build-cli.mjs, but into a private temp file, so test files running
// in parallel (and a concurrent `npm run build`) never read a half-written dist/cli/qcowscope.mjs.
import { build } from 'esbuild';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

let built: Promise<string> | null = null;

export function buildCliCopy(): Promise<string> {
  built ??= (async () => {
    const outfile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-cli-')), 'qcowscope.mjs');
    await build({
      entryPoints: [path.join(ROOT, 'cli/qcowscope.ts')],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      sourcemap: false,
      banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
      logLevel: 'warning',
    });
    return outfile;
  })();
  return built;
}
