// `qcowscope bitmap (--merge SOURCE | --add [-g GRANULARITY] [--disable] | --remove | --clear |
// --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] IMAGE NAME`: qemu-img bitmap's
// operations on a persistent dirty bitmap, applied in command-line order, with its messages;
// --merge takes SOURCE from SOURCE_FILE when -b names one, else from IMAGE. The engine is
// core/image/bitmap-ops.ts (crash-safe: the new directory is published by one header write).
// Like qemu-img, a dirty image is repaired first, and the operations before a refused one still
// take effect.
import { changeBitmaps, type BitmapOp } from '../../core/image/bitmap-ops.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { cliError, cvtnum } from '../qemu-options.ts';

const ACTIONS = ['add', 'remove', 'clear', 'enable', 'disable', 'merge'] as const;
type Action = (typeof ACTIONS)[number];

/** The actions in command-line order, each --merge with its source name. */
function actionsOf(args: string[]): Array<{ op: Action; from?: string }> {
  const out: Array<{ op: Action; from?: string }> = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') break;
    if (a.startsWith('--merge=')) out.push({ op: 'merge', from: a.slice('--merge='.length) });
    else if (a === '--merge') out.push({ op: 'merge', from: args[++i] });
    else if (['-g', '-b', '-F', '-f', '-t', '-T'].includes(a)) i++;
    else {
      const op = ACTIONS.find((x) => a === `--${x}`);
      if (op) out.push({ op });
    }
  }
  return out;
}

export const bitmapCmd: Command = {
  name: 'bitmap',
  usage: 'bitmap (--merge SOURCE | --add [-g GRANULARITY] [--disable] | --remove | --clear | --enable | --disable)... [-b SOURCE_FILE [-F qcow2]] IMAGE NAME',
  options: {
    add: { type: 'boolean' },
    remove: { type: 'boolean' },
    clear: { type: 'boolean' },
    enable: { type: 'boolean' },
    disable: { type: 'boolean' },
    merge: { type: 'string', multiple: true },
    granularity: { type: 'string', short: 'g' },
    'source-file': { type: 'string', short: 'b' },
    'source-format': { type: 'string', short: 'F' },
  },
  async run({ values, positionals, args }) {
    const order = actionsOf(args ?? []);
    if (order.length === 0) throw cliError('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
    const g = values.granularity as string | undefined;
    const granularity = g === undefined ? undefined : cvtnum('granularity', g);
    if (granularity !== undefined && !order.some((a) => a.op === 'add')) throw cliError('granularity only supported with --add');
    const srcFile = values['source-file'] as string | undefined;
    const srcFmt = values['source-format'] as string | undefined;
    if (srcFmt !== undefined && srcFile === undefined) throw cliError('-F only supported with -b');
    if (srcFile !== undefined && !order.some((a) => a.op === 'merge')) throw cliError('Merge bitmap source file only supported with --merge');
    if (positionals.length !== 2) throw cliError('Expecting filename and bitmap name');
    const [file, name] = positionals as [string, string];
    if (name === '') throw cliError(`Operation ${order[0]!.op} on bitmap  failed: Bitmap name cannot be empty`);
    const img = await openImage(file, { writable: true, noBacking: true });
    let source: Qcow2Image | undefined;
    try {
      const ops: BitmapOp[] = order.map(({ op, from }) => {
        if (op === 'add') return { op, name, granularity };
        if (op === 'merge') return { op, name, from: from ?? '', source: srcFmt === 'raw' ? null : source };
        return { op, name };
      });
      if (srcFile !== undefined && srcFmt !== 'raw') {
        // a raw source file has no bitmaps: every --merge from it finds none
        try {
          source = await openImage(srcFile, { noBacking: true });
        } catch (e) {
          // qemu-img opens it at the first --merge: the operations before it take effect, and
          // closing the image stores its bitmaps again all the same
          await changeBitmaps(img, ops.slice(0, ops.findIndex((o) => o.op === 'merge')));
          throw e;
        }
        for (const o of ops) if (o.op === 'merge') o.source = source;
      }
      await changeBitmaps(img, ops);
    } finally {
      await source?.close();
      await img.close();
    }
    return 0;
  },
};
