// qemu-img's command-line words shared by the verbs: option lists (`-o key=value,...`) read as
// QEMU's option parser reads them against a format's typed option list, byte counts read as its
// cvtnum does, and usage errors worded as its error_exit. Errors that QEMU prints with a hint
// carry it in `hint`, written as QEMU writes it (main.ts prints it unprefixed after the first line).

export type OptionType = 'size' | 'number' | 'bool' | 'string';

export interface ParsedOption {
  key: string;
  /** The value as written ('on' for a bare key). */
  text: string;
  /** A size option's bytes. */
  size?: number;
  /** A bool option's value. */
  on?: boolean;
}

/** An error main.ts prints as qemu-img does: one prefixed line per '\n'-separated line, `hint` unprefixed after the first. */
export function cliError(message: string, hint?: string): Error {
  const e = new Error(message);
  e.name = 'UsageError';
  return hint !== undefined ? withHint(e, hint) : e;
}

/** `e` with a hint, printed after its first line as it is written (QEMU's error_append_hint). */
export function withHint<E extends Error>(e: E, hint: string): E {
  (e as E & { hint?: string }).hint = hint;
  return e;
}

/** The same error with `before` in front of its first line and `after` as a further line. */
export function rewordError(e: unknown, before: string, after?: string): unknown {
  if (!(e instanceof Error) || e.name !== 'UsageError') return e;
  return cliError(before + e.message + (after !== undefined ? `\n${after}` : ''), (e as { hint?: string }).hint);
}

/** qemu-img's error_exit: the message, then how to get help. */
export function usageExit(message: string): Error {
  return cliError(message, "Try 'qcowscope --help' for more information\n");
}

const SUFFIXES: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** A byte count with an optional k/M/G/T/P/E suffix (×1024), or undefined when it is not one. */
function bytesOf(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpe]?)\s*$/i.exec(text);
  const v = m ? Number(m[1]) * SUFFIXES[m[2]!.toLowerCase()]! : NaN;
  return Number.isFinite(v) && v >= 0 ? v : undefined;
}

/** qemu-img's cvtnum(name, text): a byte count, or its two-line refusal naming `name`. */
export function cvtnum(name: string, text: string): number {
  const v = bytesOf(text);
  if (v === undefined) {
    throw cliError(`Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\nkilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`);
  }
  // beyond 2^53 the value is the nearest double: callers check it against their own limits
  if (v >= 2 ** 63) throw cliError(`Invalid ${name} specified. Must be between 0 and 9223372036854775807.`);
  return Math.floor(v);
}

/** QEMU's is_valid_option_list: not empty, no leading comma, no odd run of trailing commas. */
export function validOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  const trailing = text.length - text.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

/**
 * `-o` text against a typed option list, as QEMU's qemu_opts_do_parse reads it (',,' is a
 * literal comma, a bare key means 'on'). Throws QEMU's words for an unknown key or a value of
 * the wrong type.
 */
export function parseOptionList(text: string, types: Record<string, OptionType>): ParsedOption[] {
  const out: ParsedOption[] = [];
  const parts = text.replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','));
  for (const part of parts) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? 'on' : part.slice(eq + 1);
    const type = types[key];
    if (type === undefined) throw cliError(`Invalid parameter '${key}'`);
    const o: ParsedOption = { key, text: value };
    if (type === 'size') {
      const v = value.trim() === '' ? undefined : bytesOf(value);
      if (v === undefined || v >= 2 ** 64) {
        throw cliError(`Parameter '${key}' expects a non-negative number below 2^64`,
          'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n');
      }
      o.size = Math.floor(v);
    } else if (type === 'number') {
      if (!/^(0x[0-9a-f]+|\d+)$/i.test(value)) throw cliError(`Parameter '${key}' expects a number`);
    } else if (type === 'bool') {
      if (['on', 'yes', 'true', 'y'].includes(value)) o.on = true;
      else if (['off', 'no', 'false', 'n'].includes(value)) o.on = false;
      else throw cliError(`Parameter '${key}' expects 'on' or 'off'`);
    }
    out.push(o);
  }
  return out;
}

/** file-posix's creation options, which every format's list includes. */
export const FILE_OPTIONS: Record<string, OptionType> = { size: 'size', preallocation: 'string', nocow: 'bool', extent_size_hint: 'size' };

/** qcow2's creation options (block/qcow2.c's qcow2_create_opts) with file-posix's. */
export const QCOW2_OPTIONS: Record<string, OptionType> = {
  ...FILE_OPTIONS, compat: 'string', backing_file: 'string', backing_fmt: 'string', data_file: 'string', data_file_raw: 'bool',
  encryption: 'bool', 'encrypt.format': 'string', cluster_size: 'size', lazy_refcounts: 'bool', refcount_bits: 'number',
  compression_type: 'string', extended_l2: 'bool',
};
