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
}

export interface Command {
  name: string;
  usage: string;
  options: Record<string, { type: 'boolean' | 'string'; short?: string; multiple?: boolean }>;
  /** Returns the process exit code. */
  run(ctx: CommandContext): Promise<number>;
}
