// The `qcowscope` command line: verbs that mirror qemu-img, one file each in cli/commands/, listed
// (and loaded on demand) in cli/commands/registry.ts.
// Errors print one line, `qcowscope: <message>`, never a stack trace unless QCOWSCOPE_DEBUG=1.
import { parseArgs } from 'node:util';
import { isQcowError, QcowError } from '../core/errors.ts';
import { joinDashValues, type Command } from './command.ts';
import { VERBS } from './commands/registry.ts';

/**
 * Options of qemu-img that every verb takes, so that its command lines work unchanged: `-f qcow2`
 * (the only format read here) and `-U` / `--force-share` (we take no locks: accepted, no effect).
 */
const QEMU_IMG_OPTIONS: Command['options'] = {
  format: { type: 'string', short: 'f' },
  'force-share': { type: 'boolean', short: 'U' },
};

/** The usage of every verb (which loads them all: only for help and mistakes). */
async function usage(): Promise<string> {
  const commands = await Promise.all(VERBS.map((v) => v.load()));
  return ['usage: qcowscope COMMAND [options]', '', ...commands.map((c) => `  qcowscope ${c.usage}`)].join('\n');
}

/** Where a run prints: the process's stdout and stderr, or a test's in-process runner. */
export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const PROCESS_IO: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

/** Run one command line; returns its exit code. Everything it prints goes through `io`. */
export async function main(argv: string[], io: CliIo = PROCESS_IO): Promise<number> {
  const [verb, ...rest] = argv;
  if (!verb || verb === '--help' || verb === '-h' || verb === 'help') {
    io.stdout((await usage()) + '\n');
    return verb ? 0 : 1;
  }
  const cmd = await VERBS.find((v) => v.name === verb)?.load();
  if (!cmd) {
    io.stderr(`qcowscope: unknown command '${verb}'\n${await usage()}\n`);
    return 1;
  }
  try {
    const { values, positionals } = parseArgs({ args: joinDashValues(rest, { ...QEMU_IMG_OPTIONS, ...cmd.options }), options: { ...QEMU_IMG_OPTIONS, ...cmd.options }, allowPositionals: true, strict: true });
    if (values.format !== undefined && !(cmd.formats ?? ['qcow2']).includes(String(values.format))) {
      throw new QcowError('NOT_SUPPORTED', `${verb}: only the qcow2 format is supported, not '${String(values.format)}'`);
    }
    return await cmd.run({
      values: values as Record<string, string | boolean | undefined>,
      positionals,
      args: rest,
      out: (t) => io.stdout(t + '\n'),
      err: (t) => io.stderr(t + '\n'),
      write: io.stdout,
    });
  } catch (e) {
    if (process.env.QCOWSCOPE_DEBUG === '1') io.stderr(((e as Error).stack ?? String(e)) + '\n');
    const msg = isQcowError(e) || (e instanceof Error && (e.name === 'UsageError' || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')))
      ? (e as Error).message
      : `internal error: ${(e as Error).message ?? String(e)}`;
    // one line per error_report of qemu-img's, each prefixed; an error's hint follows its first
    // line unprefixed, as QEMU's error_report_err prints it
    // (written as it is: QEMU's hints end with a newline or not)
    const [first, ...rest] = msg.split('\n');
    const hint = (e as { hint?: unknown }).hint;
    io.stderr(`qcowscope: ${first}\n${typeof hint === 'string' ? hint : ''}${rest.map((l) => `qcowscope: ${l}\n`).join('')}`);
    return 1;
  }
}
