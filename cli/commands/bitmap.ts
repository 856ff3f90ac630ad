// `qcowscope bitmap (--add [-g GRANULARITY] [--disable] | --remove | --clear | --enable |
// --disable)... IMAGE NAME`: qemu-img bitmap's operations on a persistent dirty bitmap, applied in
// command-line order, with its messages; the engine is core/image/bitmap-ops.ts (crash-safe: the
// new directory is published by one header write). Like qemu-img, a dirty image is repaired
// first, and the operations before a refused one still take effect.
import { changeBitmaps, type BitmapOp } from '../../core/image/bitmap-ops.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { cliError, cvtnum } from '../qemu-options.ts';

const ACTIONS = ['add', 'remove', 'clear', 'enable', 'disable'] as const;

export const bitmapCmd: Command = {
  name: 'bitmap',
  usage: 'bitmap (--add [-g GRANULARITY] [--disable] | --remove | --clear | --enable | --disable) IMAGE NAME',
  options: {
    add: { type: 'boolean' },
    remove: { type: 'boolean' },
    clear: { type: 'boolean' },
    enable: { type: 'boolean' },
    disable: { type: 'boolean' },
    granularity: { type: 'string', short: 'g' },
  },
  async run({ values, positionals, args }) {
    // the actions in the order given (qemu-img keeps a list of them)
    const order = (args ?? []).flatMap((a) => ACTIONS.filter((x) => a === `--${x}`));
    if (order.length === 0) throw cliError('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
    const g = values.granularity as string | undefined;
    const granularity = g === undefined ? undefined : cvtnum('granularity', g);
    if (granularity !== undefined && !order.includes('add')) throw cliError('granularity only supported with --add');
    if (positionals.length !== 2) throw cliError('Expecting filename and bitmap name');
    const [file, name] = positionals as [string, string];
    const ops: BitmapOp[] = order.map((op) => (op === 'add' ? { op, name, granularity } : { op, name }));
    if (name === '') throw cliError(`Operation ${order[0]} on bitmap  failed: Bitmap name cannot be empty`);
    const img = await openImage(file, { writable: true, noBacking: true });
    try {
      await changeBitmaps(img, ops);
    } finally {
      await img.close();
    }
    return 0;
  },
};
