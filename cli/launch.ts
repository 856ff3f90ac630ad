#!/usr/bin/env node
// The command line's first code (bundled to dist/cli/qcowscope.mjs): it runs the engine bundle
// beside it (cli/qcowscope.ts as one CommonJS script, scripts/cli-bundle.mjs) through V8's code
// cache, so that a run deserializes the code the last run of the same verb compiled instead of
// parsing and compiling it again (Node 20 has no module compile cache of its own).
//
// The cache is one file per verb, in $QCOWSCOPE_CODE_CACHE (a directory; "0" turns the cache
// off), else $XDG_CACHE_HOME/qcowscope or ~/.cache/qcowscope: never a shared temp directory, as a
// code cache is code. Its name holds the engine's hash, Node's version and the architecture; V8
// also checks the source and its flags and rejects a cache that does not match, and then the
// script compiles as it would without one. A run without a usable cache writes one when the
// process exits (to a temp name, then renamed: runs in parallel never read half a file) and
// removes the caches of other builds. Nothing here ever makes a command fail.
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vm from 'node:vm';

/** File name of the engine bundle beside this one, and its content hash (defined by the bundler). */
declare const QCOWSCOPE_ENGINE: string;
declare const QCOWSCOPE_ENGINE_HASH: string;
/** The verbs of cli/commands/registry.ts. */
declare const QCOWSCOPE_VERBS: string[];

const engine = path.join(path.dirname(fileURLToPath(import.meta.url)), QCOWSCOPE_ENGINE);

function cacheDir(): string | null {
  const env = process.env;
  if (env.QCOWSCOPE_CODE_CACHE === '0') return null;
  if (env.QCOWSCOPE_CODE_CACHE) return env.QCOWSCOPE_CODE_CACHE;
  const base = env.XDG_CACHE_HOME || (env.HOME ? path.join(env.HOME, '.cache') : env.LOCALAPPDATA);
  return base ? path.join(base, 'qcowscope') : null;
}

/** The verb a run names (the cache key: each verb's run compiles its own code), or "none". */
function verbOf(argv: string[]): string {
  const v = argv[0];
  return v !== undefined && QCOWSCOPE_VERBS.includes(v) ? v : 'none';
}

const dir = cacheDir();
const prefix = `${QCOWSCOPE_ENGINE_HASH}-`;
const cacheFile = dir && path.join(dir, `${prefix}${process.version}-${process.arch}-${verbOf(process.argv.slice(2))}.v8cache`);

let cachedData: Buffer | undefined;
if (cacheFile) {
  try {
    cachedData = fs.readFileSync(cacheFile);
  } catch {
    // none yet
  }
}

// CommonJS's wrapper, on the script's first line so that stack traces keep the bundle's lines
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${fs.readFileSync(engine, 'utf8')}\n})`, {
  filename: engine,
  cachedData,
});

if (dir && cacheFile && (!cachedData || script.cachedDataRejected)) {
  process.once('exit', () => {
    try {
      fs.mkdirSync(dir, { recursive: true });
      for (const f of fs.readdirSync(dir)) {
        if (f.endsWith('.v8cache') && !f.startsWith(prefix)) fs.rmSync(path.join(dir, f), { force: true });
      }
      const tmp = `${cacheFile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, script.createCachedData());
      fs.renameSync(tmp, cacheFile);
    } catch {
      // a cache that cannot be written is only a slower next start
    }
  });
}

const module = { exports: {} };
(script.runInThisContext() as (...a: unknown[]) => void)(module.exports, createRequire(engine), module, engine, path.dirname(engine));
