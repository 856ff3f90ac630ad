// `qcowscope snapshot -l [--json] IMAGE`, and -c/-a/-d NAME IMAGE... (group operations).
import { formatSnapshotList, snapshotInfo } from '../../core/analysis/info.ts';
import { openImage } from '../open.ts';
import { flag, valued, type Command } from '../command.ts';
import { isJson } from './info.ts';
import { usageExit } from '../qemu-options.ts';
import { externalSnapshots, snapshotOps } from './snapshot-ops.ts';

export const snapshot: Command = {
  name: 'snapshot',
  usage: 'snapshot -l [--json] IMAGE | [--journal] -c NAME IMAGE... | -a ID_OR_NAME IMAGE... | -d ID_OR_NAME IMAGE... | --external OVERLAY [--external OVERLAY...] IMAGE...',
  options: {
    list: flag('l'),
    create: valued('c'),
    apply: valued('a'),
    delete: valued('d'),
    json: flag(),
    output: valued(),
    quiet: flag('q'),
    journal: flag(),
    external: valued('e', true),
  },
  async run(ctx) {
    const { values, positionals, out } = ctx;
    const modes = ['list', 'create', 'apply', 'delete', 'external'].filter((k) => values[k] !== undefined && values[k] !== false);
    if (modes.length > 1) throw usageExit("Cannot mix '-l', '-a', '-c', '-d', '--external'");
    if (positionals.length === 0) throw usageExit('Expecting one image file name');
    if (modes[0] === 'external') return externalSnapshots(values.external as string[], positionals, ctx);
    if (modes.length === 0 || modes[0] === 'list') {
      if (positionals.length !== 1) throw usageExit('Expecting one image file name');
      const img = await openImage(positionals[0]!); // with its chain, as qemu-img snapshot -l opens it
      try {
        const list = img.snapshots.map(snapshotInfo);
        if (isJson(values)) out(JSON.stringify(list, null, 4));
        else if (list.length > 0) out(formatSnapshotList(list));
      } finally {
        await img.close();
      }
      return 0;
    }
    return snapshotOps(modes[0] as 'create' | 'apply' | 'delete', String(values[modes[0]!]), positionals, ctx);
  },
};
