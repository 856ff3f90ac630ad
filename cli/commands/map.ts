// `qcowscope map [--json] IMAGE`: qemu-img map's extents (start, length, depth, present, zero,
// data, offset), through the backing chain.
import { QcowError } from '../../core/errors.ts';
import type { Extent } from '../../core/image/layer.ts';
import { openImage } from '../open.ts';
import { holeQueryFor } from '../holes.ts';
import type { Command } from '../command.ts';
import { isJson, usageError } from './info.ts';

export function extentJson(e: Extent): string {
  // qemu-img 7.2's line format: `{ "start": 0, "length": 65536, "depth": 0, ... }`
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return s + '}';
}

export const map: Command = {
  name: 'map',
  usage: 'map [--json] IMAGE',
  options: { json: { type: 'boolean' }, output: { type: 'string' } },
  async run({ values, positionals, out }) {
    const file = positionals[0];
    if (!file) throw usageError('map: expecting an image file name');
    const img = await openImage(file);
    try {
      const holes = await holeQueryFor(img, file);
      const extents = await img.extentsView(img.activeView(), 0, img.virtualSize, holes);
      if (isJson(values)) {
        out('[' + extents.map(extentJson).join(',\n') + ']');
      } else {
        const lines = [`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File`];
        for (const e of extents) {
          if (!e.data) continue;
          if (e.offset === undefined) {
            throw new QcowError('NOT_SUPPORTED', 'File contains external, encrypted or compressed clusters.', {});
          }
          lines.push(`${hx(e.start).padEnd(16)}${hx(e.length).padEnd(16)}${hx(e.offset).padEnd(16)}${file}`);
        }
        out(lines.join('\n'));
      }
    } finally {
      await img.close();
    }
    return 0;
  },
};

function hx(n: number): string {
  return n === 0 ? '0' : '0x' + n.toString(16);
}
