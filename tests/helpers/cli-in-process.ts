// The command line run inside the test's own process: cli/main.ts called with a writer that
// collects what it prints, so a test gets the exit code, stdout and stderr a `node qcowscope.mjs`
// process would give, without paying a Node start (~80 ms of CPU) per command. The bulk of the
// CLI-versus-qemu-img comparisons go through here; the bundle and its entry point stay covered by
// the tests that need a real process (exit codes seen by a shell, the crash hook's process death,
// the bundle's own start-up: check-cli, write-cli, snapshot-crash, fuzz/cli, info-encrypted).
//
// Each call is what a fresh process would see: run one at a time (a queue), in the working
// directory asked for (process.chdir: Vitest's default `forks` pool, vitest.config.ts, allows it;
// restored after), without the variables the process runner also strips (QCOWSCOPE_DEBUG, and
// QCOWSCOPE_CRASH_AFTER_WRITES, whose hook would end the test process), and an exception out of
// main() printed as cli/qcowscope.ts prints it. The engine keeps no state between commands (no
// module-level caches: each verb opens its images and closes them).
import { main } from '../../cli/main.ts';

export interface CliRun {
  status: number | null;
  /** Always null here (no process to kill); the field mirrors a spawned run's. */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time of the call, in ms (measured, never asserted). */
  ms: number;
}

const STRIPPED_ENV = ['QCOWSCOPE_DEBUG', 'QCOWSCOPE_CRASH_AFTER_WRITES'] as const;

let queue: Promise<unknown> = Promise.resolve();

/** `qcowscope ARGS` run in this process from `cwd` (default: the current directory). */
export function runCliInProcess(args: string[], opts: { cwd?: string } = {}): Promise<CliRun> {
  const run = queue.then(() => runOnce(args, opts.cwd));
  queue = run.catch(() => undefined);
  return run;
}

/** As runCliInProcess, and throw unless it exits 0 (with its stderr in the message); returns stdout. */
export async function runCliInProcessOk(args: string[], opts: { cwd?: string } = {}): Promise<string> {
  const r = await runCliInProcess(args, opts);
  if (r.status !== 0) throw new Error(`qcowscope ${args.join(' ')} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

async function runOnce(args: string[], cwd: string | undefined): Promise<CliRun> {
  const t0 = performance.now();
  let stdout = '';
  let stderr = '';
  const home = process.cwd();
  const savedEnv = STRIPPED_ENV.map((k) => [k, process.env[k]] as const);
  for (const k of STRIPPED_ENV) delete process.env[k];
  if (cwd !== undefined) process.chdir(cwd);
  let status: number;
  try {
    status = await main([...args], { stdout: (t) => { stdout += t; }, stderr: (t) => { stderr += t; } });
  } catch (e) {
    stderr += `qcowscope: internal error: ${(e as Error).message}\n`;
    status = 1;
  } finally {
    process.chdir(home);
    for (const [k, v] of savedEnv) if (v !== undefined) process.env[k] = v;
  }
  return { status, signal: null, stdout, stderr, ms: performance.now() - t0 };
}
