// `qcowscope compare [-f qcow2] [-F qcow2] [-s] [-q] IMAGE1 IMAGE2`: whether two images hold the
// same guest disk, with qemu-img compare's messages on stdout and its exit codes (0 identical,
// 1 different, 2 an image could not be opened); the engine is core/analysis/compare.ts.
import { QcowError, isQcowError } from '../../core/errors.ts';
import { compareImages } from '../../core/analysis/compare.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { openImage } from '../open.ts';
import { holeMapFor, startSegmentScan } from '../holes.ts';
import { flag, valued, type Command } from '../command.ts';
import { usageExit } from '../qemu-options.ts';

export const compareCmd: Command = {
  name: 'compare',
  usage: 'compare [-f qcow2] [-F qcow2] [-s] [-q] IMAGE1 IMAGE2',
  options: {
    'second-format': valued('F'),
    strict: flag('s'),
    quiet: flag('q'),
    progress: flag('p'),
    cache: valued('T'),
  },
  async run({ values, positionals, out, err }) {
    if (positionals.length !== 2) throw usageExit('Expecting two image file names');
    const second = values['second-format'];
    if (second !== undefined && second !== 'qcow2') {
      throw new QcowError('NOT_SUPPORTED', `compare: only the qcow2 format is supported, not '${String(second)}'`);
    }
    const [file1, file2] = positionals as [string, string];
    const opened: Qcow2Image[] = [];
    try {
      const sides = [];
      for (const file of [file1, file2]) {
        const scan = startSegmentScan(file);
        let image: Qcow2Image;
        try {
          image = await openImage(file);
        } catch (e) {
          scan.cancel();
          // qemu-img compare exits 2 when an image cannot be opened
          if (!isQcowError(e)) throw e;
          err(`qcowscope: ${e.message}`);
          return 2;
        }
        opened.push(image);
        sides.push({ image, holes: await holeMapFor(image, file, scan) });
      }
      const r = await compareImages(sides[0]!, sides[1]!, { strict: values.strict === true });
      if (values.quiet !== true) for (const line of r.lines) out(line);
      return r.code;
    } finally {
      for (const img of opened) await img.close();
    }
  },
};
