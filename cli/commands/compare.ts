// `qcowscope compare [-f FMT] [-F FMT] [-s] [-q] [-p] IMAGE1 IMAGE2`: whether two images hold the
// same guest disk, with qemu-img compare's messages on stdout and its exit codes (0 identical,
// 1 different, 2 an image could not be opened); qcow2 or raw (-f for the first, -F for the second,
// probed when not given, as qemu-img does); -p prints QEMU's progress (steps of 2%, the same
// chunks as its loop), never with -q. The engine is core/analysis/compare.ts.
import * as fs from 'node:fs';
import { QcowError, isQcowError } from '../../core/errors.ts';
import { compareImages, type CompareSide } from '../../core/analysis/compare.ts';
import type { Layer } from '../../core/image/layer.ts';
import { openImage, openRaw, probeFormat } from '../open.ts';
import { holeMapFor, startSegmentScan } from '../holes.ts';
import { flag, valued, type Command } from '../command.ts';
import { usageExit } from '../qemu-options.ts';
import { Progress } from '../progress.ts';

/** One side as qemu-img opens it with format `fmt`. */
async function openSide(file: string, given: string | undefined): Promise<CompareSide> {
  // no format: probed, as qemu-img probes it (a missing file is reported by the qcow2 open)
  const fmt = given ?? (fs.existsSync(file) ? await probeFormat(file) : 'qcow2');
  if (fmt === 'raw') return { image: openRaw(file) };
  if (fmt !== 'qcow2') throw new QcowError('NOT_SUPPORTED', `compare: only the qcow2 and raw formats are supported, not '${fmt}'`);
  const scan = startSegmentScan(file);
  try {
    const image = await openImage(file);
    return { image, holes: await holeMapFor(image, file, scan) };
  } catch (e) {
    scan.cancel();
    throw e;
  }
}

export const compareCmd: Command = {
  name: 'compare',
  usage: 'compare [-f qcow2|raw] [-F qcow2|raw] [-s] [-q] [-p] IMAGE1 IMAGE2',
  formats: ['qcow2', 'raw'],
  options: {
    'second-format': valued('F'),
    strict: flag('s'),
    quiet: flag('q'),
    progress: flag('p'),
    cache: valued('T'),
  },
  async run({ values, positionals, out, err, write }) {
    if (positionals.length !== 2) throw usageExit('Expecting two image file names');
    const quiet = values.quiet === true;
    // qemu-img: "Progress is not shown in Quiet mode"
    const progress = new Progress(values.progress === true && !quiet, 2, write);
    const second = values['second-format'] as string | undefined;
    const first = values.format as string | undefined;
    const [file1, file2] = positionals as [string, string];
    const opened: Layer[] = [];
    try {
      const sides: CompareSide[] = [];
      for (const [file, fmt] of [[file1, first], [file2, second]] as const) {
        try {
          const side = await openSide(file, fmt);
          opened.push(side.image);
          sides.push(side);
        } catch (e) {
          // qemu-img compare exits 2 when an image cannot be opened
          if (!isQcowError(e)) throw e;
          err(`qcowscope: ${e.message}`);
          progress.end();
          return 2;
        }
      }
      progress.print(0, 100);
      const r = await compareImages(sides[0]!, sides[1]!, {
        strict: values.strict === true,
        onLine: quiet ? undefined : (line) => out(line),
        onChunk: (chunk, base) => progress.step(chunk, base),
      });
      progress.end();
      return r.code;
    } finally {
      for (const img of opened) await img.close();
    }
  },
};
