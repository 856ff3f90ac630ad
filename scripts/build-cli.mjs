// Bundles the CLI into one file, dist/cli/qcowscope.mjs (the package's `bin`).
//
// Start-up is part of every command's time (`npm run bench` times whole processes), so the
// bundle avoids two costs that Node charges an ES module before main() runs:
// - `import ... from 'node:fs'` builds the module's ESM facade, which reads every export,
//   including lazy getters (fs.promises, ReadStream...) that load streams and more. Builtins are
//   therefore taken with require() (through createRequire, in the banner), which reads nothing.
// - fflate and fzstd build their tables when their module is evaluated; only compressed
//   clusters need them. They are bundled as CommonJS behind stubs that load them on first call.
// Usage: node scripts/build-cli.mjs [--outfile FILE] [--no-lazy] [--minify]
import { build } from 'esbuild';
import { builtinModules } from 'node:module';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    outfile: { type: 'string', default: 'dist/cli/qcowscope.mjs' },
    'no-lazy': { type: 'boolean', default: false },
    minify: { type: 'boolean', default: false },
  },
});

/** Packages whose evaluation is deferred to their first use. */
const LAZY_PACKAGES = ['fflate', 'fzstd'];

const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

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
      return { contents: lines.join('\n'), loader: 'js', resolveDir: process.cwd() };
    });
  },
};

await build({
  entryPoints: ['cli/qcowscope.ts'],
  outfile: opts.outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: false,
  minify: opts.minify,
  plugins: opts['no-lazy'] ? [] : [lazyPlugin],
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  logLevel: 'warning',
});
