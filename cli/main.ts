// The `qcowscope` command line: verbs that mirror qemu-img, one file each in cli/commands/, listed
// (and loaded on demand) in cli/commands/registry.ts.
// Errors print one line, `qcowscope: <message>`, never a stack trace unless QCOWSCOPE_DEBUG=1.
import { parseArgs } from 'node:util';
import { isQcowError, QcowError } from '../core/errors.ts';
import { joinDashValues, type Command } from './command.ts';
import { VERBS } from './commands/registry.ts';
import { setOpenWarningSink } from './open.ts';
import { cliError, usageExit } from './qemu-options.ts';

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
  if (verb === '--help' || verb === '-h' || verb === 'help') {
    io.stdout((await usage()) + '\n');
    return 0;
  }
  try {
    // qemu-img's words for a command line it cannot take
    if (!verb) throw usageExit('Not enough arguments');
    const cmd = await VERBS.find((v) => v.name === verb)?.load();
    if (!cmd) throw usageExit(`Command not found: ${verb}`);
    const options = { ...QEMU_IMG_OPTIONS, ...cmd.options };
    const { values, positionals } = parseCommandLine(rest, options);
    if (cmd.options.output !== undefined && values.output !== undefined && values.output !== 'json' && values.output !== 'human') {
      throw cliError('--output must be used with human or json as argument.');
    }
    if (values.format !== undefined && !(cmd.formats ?? ['qcow2']).includes(String(values.format))) {
      throw new QcowError('NOT_SUPPORTED', `${verb}: only the qcow2 format is supported, not '${String(values.format)}'`);
    }
    setOpenWarningSink(io.stderr);
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

/**
 * parseArgs, its mistakes in qemu-img's words (getopt_long's, as qemu-img reports them): the
 * argument as it was given, then the help hint.
 */
function parseCommandLine(rest: string[], options: Command['options']): ReturnType<typeof parseArgs<{ options: Command['options']; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args: joinDashValues(rest, options), options, allowPositionals: true, strict: true });
  } catch (e) {
    const code = (e as { code?: string }).code;
    const named = /'([^']*)'/.exec((e as Error).message)?.[1] ?? '';
    // a flag given a value (--backing-chain=yes) is an option getopt does not know either
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && /does not take an argument/.test((e as Error).message))) {
      const given = rest.find((a) => a === named || a.startsWith(`${named}=`) || (named.length === 2 && /^-[^-]/.test(a) && a.includes(named[1]!))) ?? named;
      throw usageExit(`unrecognized option '${given}'`);
    }
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && /argument missing/.test((e as Error).message)) {
      // "Option '-f, --format <value>' argument missing": the form that was given
      const forms = named.replace(/ <value>$/, '').split(', ');
      const given = [...rest].reverse().find((a) => forms.includes(a)) ?? forms[forms.length - 1]!;
      throw usageExit(`missing argument for option '${given}'`);
    }
    throw e;
  }
}
