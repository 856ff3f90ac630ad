// A temp dir per test for Vitest files (kept apart from qemu.ts so scripts can use those helpers
// without importing Vitest).
import { afterEach, beforeEach } from 'vitest';
import * as path from 'node:path';
import { makeTempDir, removeDir } from './qemu.ts';

/**
 * A temp dir per test: call at the top of a describe block (or file); `tmp.dir` is a new empty
 * directory inside each test and is removed after it. `tmp.file('a.qcow2')` joins a name.
 * Set QCOWSCOPE_KEEP_TMP=1 to keep the directories for inspection.
 */
export function useTempDir(prefix = 'qcowscope-'): { readonly dir: string; file(name: string): string } {
  let current = '';
  beforeEach(() => {
    current = makeTempDir(prefix);
  });
  afterEach(() => {
    if (current && !process.env.QCOWSCOPE_KEEP_TMP) removeDir(current);
    current = '';
  });
  return {
    get dir() {
      if (!current) throw new Error('useTempDir: only available inside a test');
      return current;
    },
    file(name: string) {
      return path.join(this.dir, name);
    },
  };
}
