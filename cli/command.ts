// The shape of a CLI verb: each verb lives in cli/commands/<verb>.ts and is listed in main.ts.
export interface CommandContext {
  values: Record<string, string | boolean | string[] | boolean[] | undefined>;
  positionals: string[];
  /** The verb's arguments as given (for verbs whose options act in command-line order). */
  args?: string[];
  /** Print a line (or block) to stdout. */
  out: (text: string) => void;
  /** Print a diagnostic line to stderr. */
  err: (text: string) => void;
  /** Print text to stdout as it is (no newline added: progress lines end in \r). */
  write: (text: string) => void;
}

export interface Command {
  name: string;
  usage: string;
  options: Record<string, { type: 'boolean' | 'string'; short?: string; multiple?: boolean }>;
  /** The formats its -f accepts (default: qcow2 only). */
  formats?: readonly string[];
  /** Returns the process exit code. */
  run(ctx: CommandContext): Promise<number>;
}

type OptionSpec = Command['options'][string];

/** A verb's boolean switch (`--name`, or `-x` with `short`), for its options table. */
export function flag(short?: string): OptionSpec {
  return short === undefined ? { type: 'boolean' } : { type: 'boolean', short };
}

/** A verb's option that takes a value (`--name V`, or `-x V` with `short`); `multiple` when it may repeat. */
export function valued(short?: string, multiple?: boolean): OptionSpec {
  const spec: OptionSpec = short === undefined ? { type: 'string' } : { type: 'string', short };
  if (multiple) spec.multiple = true;
  return spec;
}

/**
 * getopt's reading of `-x VALUE` when VALUE starts with a dash (qemu-img takes `-r -1` and then
 * refuses the number): such a pair is handed to node's parser as `-x-1`, which it reads alike.
 */
export function joinDashValues(args: string[], options: Command['options']): string[] {
  const valued = new Set(Object.values(options).filter((o) => o.type === 'string' && o.short).map((o) => `-${o.short}`));
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') { out.push(...args.slice(i)); break; }
    const next = args[i + 1];
    if (valued.has(a) && next !== undefined && next.startsWith('-') && next.length > 1) {
      out.push(a + next);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}
