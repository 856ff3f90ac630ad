// `qcowscope map [--json] IMAGE`: qemu-img map's extents (start, length, depth, present, zero,
// data, offset), through the backing chain. Extents are printed as the walk finds them, so
// memory stays bounded whatever the number of extents.
import { QcowError } from '../../core/errors.ts';
import { RawLayer, type Extent, type Layer } from '../../core/image/layer.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { openImageScanning } from '../open.ts';
import { holeMapFor } from '../holes.ts';
import type { Command } from '../command.ts';
import { isJson } from './info.ts';
import { cvtnum, usageExit } from '../qemu-options.ts';

function extentJson(e: Extent): string {
  // qemu-img 7.2's line format: `{ "start": 0, "length": 65536, "depth": 0, ... }`
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return s + '}';
}

/**
 * Output held back until this many characters: a map that fails part-way (a corrupt entry, a
 * compressed cluster in human form) prints nothing, as before streaming; bigger maps stream.
 */
const HOLD_BACK_CHARS = 1 << 20;
/** Once streaming, write in chunks of about this size. */
const CHUNK_CHARS = 1 << 16;

export const map: Command = {
  name: 'map',
  usage: 'map [--json] [--start-offset OFFSET] [--max-length LENGTH] IMAGE',
  options: { json: { type: 'boolean' }, output: { type: 'string' }, 'start-offset': { type: 'string' }, 'max-length': { type: 'string' } },
  async run({ values, positionals, out }) {
    const file = positionals[0];
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const startArg = values['start-offset'] as string | undefined;
    const lengthArg = values['max-length'] as string | undefined;
    const from = startArg === undefined ? 0 : parseOffset(startArg, 'start offset');
    const maxLength = lengthArg === undefined ? Infinity : parseOffset(lengthArg, 'max length');
    const { img, scan } = await openImageScanning(file);
    try {
      const holes = await holeMapFor(img, file, scan);
      // `out` ends each call with a newline: `buf` holds whole lines minus the last newline.
      let buf = '';
      let streaming = false;
      // Written out only when another line follows, so the last line keeps its closing text.
      const add = (line: string, sep: string): void => {
        if (buf.length >= (streaming ? CHUNK_CHARS : HOLD_BACK_CHARS)) {
          streaming = true;
          out(buf + sep.slice(0, -1));
          buf = line;
        } else {
          buf = buf.length === 0 ? line : buf + sep + line;
        }
      };
      if (isJson(values)) {
        // qemu-img's form: `[` line `,\n` line ... `]`
        let first = true;
        await img.walkExtents(img.activeView(), from, Math.max(0, Math.min(img.virtualSize - from, maxLength)), (e) => {
          add((first ? '[' : '') + extentJson(e), ',\n');
          first = false;
        }, holes);
        // qemu-img map always prints its last entry, which for an empty disk is its initial one
        if (first) out(`[${extentJson({ start: from, length: 0, depth: 0, present: false, zero: false, data: false, compressed: false })}]`);
        else out(buf + ']');
      } else {
        // qemu-img 7.2's human form: extents with data that are not zeros, each with the file
        // that holds it; the lines before a compressed cluster are printed, then the error
        add(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File`, '\n');
        const files = layerFiles(img);
        try {
          await img.walkExtents(img.activeView(), from, Math.max(0, Math.min(img.virtualSize - from, maxLength)), (e) => {
            if (!e.data) return;
            if (e.offset === undefined) {
              throw new QcowError('NOT_SUPPORTED', 'File contains external, encrypted or compressed clusters.', {});
            }
            if (e.zero) return;
            add(`${hx(e.start).padEnd(16)}${hx(e.length).padEnd(16)}${hx(e.offset).padEnd(16)}${files[e.depth] ?? ''}`, '\n');
          }, holes);
        } finally {
          if (buf.length > 0) out(buf);
        }
      }
    } finally {
      scan.cancel();
      await img.close();
    }
    return 0;
  },
};

/** The file holding each depth's data, as qemu-img names it: the image or its external data file. */
function layerFiles(img: Qcow2Image): string[] {
  const names: string[] = [];
  for (let layer: Layer | null = img; layer; layer = layer instanceof Qcow2Image ? layer.backing : null) {
    if (layer instanceof Qcow2Image) names.push(layer.dataFile ? layer.dataFile.name : layer.store.name);
    else if (layer instanceof RawLayer) names.push(layer.store.name);
  }
  return names;
}

/** --start-offset and --max-length: a byte count with qemu-img's k/M/G/T/P/E suffixes. */
function parseOffset(text: string, what: string): number {
  return cvtnum(what, text);
}

function hx(n: number): string {
  return n === 0 ? '0' : '0x' + n.toString(16);
}
