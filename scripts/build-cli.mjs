// Bundles the CLI into one file, dist/cli/qcowscope.mjs (the package's `bin`).
import { build } from 'esbuild';

await build({
  entryPoints: ['cli/qcowscope.ts'],
  outfile: 'dist/cli/qcowscope.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: false,
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  logLevel: 'warning',
});
