// `qcowscope commit [-f qcow2] [-q] [-d] IMAGE`: qemu-img commit into the image's backing file
// (qcow2), grown first when smaller: the overlay's clusters are written into it and, unless -d, the overlay is emptied;
// "Image committed." as qemu-img prints it. Engine: core/image/commit.ts.
import { QcowError, isQcowError } from '../../core/errors.ts';
import { commitInto } from '../../core/image/commit.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { openImage, resolveBackingPath } from '../open.ts';
import { flag, valued, type Command } from '../command.ts';
import { cliError, usageExit } from '../qemu-options.ts';

export const commitCmd: Command = {
  name: 'commit',
  usage: 'commit [-f qcow2] [-q] [-d] IMAGE',
  options: {
    'keep-overlay': flag('d'),
    quiet: flag('q'),
    cache: valued('t'),
  },
  async run({ values, positionals, out }) {
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const file = positionals[0]!;
    // opened whole first, as qemu-img opens it: a missing or broken backing chain is refused here
    const chain = await openImage(file);
    const backingFile = chain.header.backingFile;
    const backingIsQcow2 = chain.backing instanceof Qcow2Image;
    await chain.close();
    if (backingFile === undefined) throw cliError('Image does not have a backing file');
    if (!backingIsQcow2) throw new QcowError('NOT_SUPPORTED', 'commit: only a qcow2 backing file is supported');
    const basePath = resolveBackingPath(file, backingFile);
    const overlay = await openImage(file, { writable: true, noBacking: true });
    try {
      const base = await openImage(basePath, { writable: true });
      try {
        try {
          await commitInto(overlay, base, { keep: values['keep-overlay'] === true });
        } catch (e) {
          // qemu-img reports the commit job's failure by its errno only
          if (isQcowError(e) && e.details.reason === 'v2-resize') throw cliError('Block job failed: Operation not supported');
          throw e;
        }
      } finally {
        await base.close();
      }
    } finally {
      await overlay.close();
    }
    if (values.quiet !== true) out('Image committed.');
    return 0;
  },
};
