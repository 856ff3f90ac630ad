#!/usr/bin/env node
// Entry point of the qcowscope command line (bundled to dist/cli/qcowscope.mjs).
import { main } from './main.ts';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`qcowscope: internal error: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
