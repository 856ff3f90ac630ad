// The one set of esbuild settings for the CLI bundle: used by scripts/build-cli.mjs for
// dist/cli/qcowscope.mjs and by the tests, which bundle the current sources into a private temp
// directory (tests/helpers/cli.ts), so they run what `npm run build` ships.
//
// Start-up is part of every command's time (`npm run bench` times whole processes), so the
// bundle avoids the costs that Node charges before main() runs:
// - Node's ES module loader resolves, reads and links each module, and compiles it again in every
//   process (Node 20 has no compile cache). The engine is therefore one CommonJS script,
//   `<name>.engine.cjs`, run by a small launcher (cli/launch.ts, the `.mjs` file) through V8's
//   code cache, one per verb: a run deserializes what the last run of its verb compiled. Each
//   verb stays a dynamic import (cli/commands/registry.ts), which the bundle turns into a module
//   evaluated on first use.
// - `import ... from 'node:fs'` builds the module's ESM facade, which reads every export,
//   including lazy getters (fs.promises, ReadStream...) that load streams and more. Builtins are
//   therefore taken with require() (the launcher's through createRequire, in the banner).
// - fflate and fzstd build their tables when their module is evaluated; only compressed
//   clusters need them. They are bundled as CommonJS behind stubs that load them on first call.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
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
 * Bundle the command line into `outfile` (the launcher, cli/launch.ts) and `<name>.engine.cjs`
 * beside it (cli/qcowscope.ts and everything it uses, one CommonJS script that the launcher runs
 * through V8's code cache). `lazy: false` leaves builtins and the decompressors as plain imports
 * (to measure what the start-up plugin saves); `minify` shrinks the files.
 */
export async function bundleCli(outfile, { lazy = true, minify = false } = {}) {
  const outdir = path.dirname(path.resolve(outfile));
  const name = path.basename(outfile).replace(/\.m?js$/, '');
  const engineName = `${name}.engine.cjs`;
  const engine = path.join(outdir, engineName);
  fs.rmSync(path.join(outdir, 'chunks'), { recursive: true, force: true }); // the split bundle of earlier builds
  fs.mkdirSync(outdir, { recursive: true });
  const common = { bundle: true, platform: 'node', target: 'node20', sourcemap: false, minify, logLevel: 'warning', plugins: lazy ? [lazyPlugin] : [] };
  const built = await build({ ...common, entryPoints: [path.join(ROOT, 'cli/qcowscope.ts')], outfile: engine, format: 'cjs', write: false });
  // the launcher wraps it in a function: no hashbang line inside
  const source = built.outputFiles[0].text.replace(/^#!.*\n/, '');
  writeWhole(engine, source);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  // the verbs, for the launcher's cache names (a mistyped verb shares the cache of none)
  const verbs = [...fs.readFileSync(path.join(ROOT, 'cli/commands/registry.ts'), 'utf8').matchAll(/name: '([a-z]+)'/g)].map((m) => m[1]);
  const launcher = await build({
    ...common,
    entryPoints: [path.join(ROOT, 'cli/launch.ts')],
    outfile: path.resolve(outfile),
    format: 'esm',
    banner: { js: REQUIRE_BANNER },
    define: { QCOWSCOPE_ENGINE: JSON.stringify(engineName), QCOWSCOPE_ENGINE_HASH: JSON.stringify(hash), QCOWSCOPE_VERBS: JSON.stringify(verbs) },
    write: false,
  });
  writeWhole(path.resolve(outfile), launcher.outputFiles[0].text, 0o755);
  return outfile;
}

/** Write a file under a temporary name, then rename it: a command run meanwhile reads the old file or the new one, never part of one. */
function writeWhole(file, text, mode = 0o644) {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode });
  fs.renameSync(tmp, file);
}
