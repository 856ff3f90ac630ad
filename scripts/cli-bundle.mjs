// The one set of esbuild settings for the CLI bundle (cli/qcowscope.ts to one .mjs file): used by
// scripts/build-cli.mjs for dist/cli/qcowscope.mjs and by the tests, which bundle the current
// sources into a private temp file (tests/helpers/cli.ts), so they run what `npm run build` ships.
//
// Start-up is part of every command's time (`npm run bench` times whole processes), so the
// bundle avoids two costs that Node charges an ES module before main() runs:
// - `import ... from 'node:fs'` builds the module's ESM facade, which reads every export,
//   including lazy getters (fs.promises, ReadStream...) that load streams and more. Builtins are
//   therefore taken with require() (through createRequire, in the banner), which reads nothing.
// - fflate and fzstd build their tables when their module is evaluated; only compressed
//   clusters need them. They are bundled as CommonJS behind stubs that load them on first call.
// - Compiling code costs about 4 ms per 100 kB: each verb is a dynamic import
//   (cli/commands/registry.ts), split into its own chunk (chunks/ beside the entry file), so a
//   command compiles its own code and what it shares, not every other verb's.
import { build } from 'esbuild';
import * as fs from 'node:fs';
import { builtinModules } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Packages whose evaluation is deferred to their first use. */
const LAZY_PACKAGES = ['fflate', 'fzstd'];

const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Node builtins through require() in the bundle's ESM scope (the banner defines it). */
export const REQUIRE_BANNER = "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);";

const lazyPlugin = {
  name: 'qcowscope-startup',
  setup(b) {
    // builtins imported with `import`: a CommonJS module that require()s them
    b.onResolve({ filter: /^[a-z_:/]+$/ }, (a) => {
      if (a.kind !== 'import-statement' || !builtins.has(a.path)) return undefined;
      return { path: a.path.replace(/^node:/, ''), namespace: 'builtin-require' };
    });
    b.onLoad({ filter: /.*/, namespace: 'builtin-require' }, (a) => ({
      contents: `module.exports = require(${JSON.stringify(`node:${a.path}`)});`,
      loader: 'js',
    }));
    // lazy packages imported with `import`: stubs; the stub's own require() bundles the package
    // as CommonJS, which esbuild evaluates on the first call only
    const filter = new RegExp(`^(${LAZY_PACKAGES.join('|')})$`);
    b.onResolve({ filter }, (a) => (a.kind === 'import-statement' ? { path: a.path, namespace: 'lazy-package' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'lazy-package' }, async (a) => {
      const mod = await import(a.path);
      const lines = [`let m; const load = () => (m ??= require(${JSON.stringify(a.path)}));`];
      for (const [name, value] of Object.entries(mod)) {
        if (name === 'default') continue;
        if (typeof value === 'function') {
          // works for plain calls and for `new` (classes)
          lines.push(`export function ${name}(...args) { const f = load().${name}; return new.target ? new f(...args) : f.apply(this, args); }`);
        } else {
          lines.push(`export const ${name} = ${JSON.stringify(value)};`);
        }
      }
      return { contents: lines.join('\n'), loader: 'js', resolveDir: ROOT };
    });
  },
};

/**
 * Bundle cli/qcowscope.ts into `outfile`, its chunks into `chunks/` beside it (replaced). `lazy:
 * false` leaves builtins and the decompressors as plain imports (to measure what the start-up
 * plugin saves); `minify` shrinks the files.
 */
export async function bundleCli(outfile, { lazy = true, minify = false } = {}) {
  const outdir = path.dirname(path.resolve(outfile));
  const name = path.basename(outfile).replace(/\.m?js$/, '');
  fs.rmSync(path.join(outdir, 'chunks'), { recursive: true, force: true });
  await build({
    entryPoints: { [name]: path.join(ROOT, 'cli/qcowscope.ts') },
    outdir,
    splitting: true,
    chunkNames: 'chunks/[name]-[hash]',
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    sourcemap: false,
    minify,
    plugins: lazy ? [lazyPlugin] : [],
    banner: { js: REQUIRE_BANNER },
    logLevel: 'warning',
  });
  return outfile;
}
