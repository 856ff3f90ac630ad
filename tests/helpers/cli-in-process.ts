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
//
// A command that never ends (a loop on a hostile image) cannot be stopped inside the process, and
// a test timeout cannot interrupt synchronous code: a small watchdog process, armed for each call,
// kills this test process after WATCHDOG_MS, so the run fails (Vitest reports the worker's death)
// instead of hanging.
import { spawn, type ChildProcess } from 'node:child_process';
import { main } from '../../cli/main.ts';

/** Longer than any command of the tests takes on a loaded machine; a hang, not a slow run. */
const WATCHDOG_MS = Number(process.env.QCOWSCOPE_CLI_WATCHDOG_MS ?? 5 * 60_000);

const WATCHDOG = `
let t;
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  for (const line of d.split('\\n')) {
    if (line === 'arm') { clearTimeout(t); t = setTimeout(() => { process.stderr.write('qcowscope tests: a CLI call ran ${WATCHDOG_MS / 1000} s; killing the test process\\n'); process.kill(${process.pid}, 'SIGKILL'); process.exit(1); }, ${WATCHDOG_MS}); }
    else if (line === 'disarm') clearTimeout(t);
  }
});
process.stdin.on('end', () => process.exit(0));
`;

let watchdog: ChildProcess | undefined;
function signalWatchdog(what: 'arm' | 'disarm'): void {
  if (!watchdog) {
    watchdog = spawn(process.execPath, ['-e', WATCHDOG], { stdio: ['pipe', 'ignore', 'inherit'] });
    watchdog.unref();
    (watchdog.stdin as unknown as { unref(): void }).unref();
  }
  watchdog.stdin!.write(`${what}\n`);
}

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
  signalWatchdog('arm');
  try {
    status = await main([...args], { stdout: (t) => { stdout += t; }, stderr: (t) => { stderr += t; } });
  } catch (e) {
    stderr += `qcowscope: internal error: ${(e as Error).message}\n`;
    status = 1;
  } finally {
    signalWatchdog('disarm');
    process.chdir(home);
    for (const [k, v] of savedEnv) if (v !== undefined) process.env[k] = v;
  }
  return { status, signal: null, stdout, stderr, ms: performance.now() - t0 };
}
