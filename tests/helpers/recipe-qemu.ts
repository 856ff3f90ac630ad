// Run a gallery recipe's command lines (core/gallery/recipes.ts) with QEMU's own tools in a
// directory: the oracle image the engine-built one is compared with (tests/interop/gallery.test.ts,
// tests/e2e/lessons.spec.ts).
import { spawnSync } from 'node:child_process';
import { shellWords } from '../../core/gallery/commands.ts';

/**
 * Run each line in `dir` (qemu-img / qemu-io). A line ending in `sigraise 9` kills qemu-io on
 * purpose (exit by SIGKILL, 137 through a shell); any other non-zero exit throws.
 */
export function runRecipeWithQemu(commands: readonly string[], dir: string): void {
  for (const line of commands) {
    const [cmd, ...args] = shellWords(line);
    const r = spawnSync(cmd!, args, { cwd: dir, encoding: 'utf8' });
    if (r.error) throw r.error;
    const killed = /sigraise 9/.test(line) && r.signal === 'SIGKILL';
    if (r.status !== 0 && !killed) throw new Error(`${line} failed (status ${r.status}, signal ${r.signal}):\n${r.stderr}${r.stdout}`);
  }
}
