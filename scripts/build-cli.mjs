// Bundles the CLI into one file, dist/cli/qcowscope.mjs (the package's `bin`), with the settings
// in scripts/cli-bundle.mjs (which says why the bundle is built the way it is).
// Usage: node scripts/build-cli.mjs [--outfile FILE] [--no-lazy] [--minify]
import { parseArgs } from 'node:util';
import { bundleCli } from './cli-bundle.mjs';

const { values: opts } = parseArgs({
  options: {
    outfile: { type: 'string', default: 'dist/cli/qcowscope.mjs' },
    'no-lazy': { type: 'boolean', default: false },
    minify: { type: 'boolean', default: false },
  },
});

await bundleCli(opts.outfile, { lazy: !opts['no-lazy'], minify: opts.minify });
