// `qcowscope info [--json] IMAGE`: qemu-img info's fields and layout.
import { buildInfo, formatInfo, readEncryptInfo } from '../../core/analysis/info.ts';
import { toQemuJson } from '../../core/analysis/qemu-json.ts';
import { actualSize, openImage, resolveBackingPath } from '../open.ts';
import type { Command } from '../command.ts';

export const info: Command = {
  name: 'info',
  usage: 'info [--json] IMAGE',
  options: { json: { type: 'boolean' }, output: { type: 'string' } },
  async run({ values, positionals, out }) {
    const file = positionals[0];
    if (!file) throw usageError('info: expecting an image file name');
    const img = await openImage(file, { noBacking: true });
    try {
      const h = img.header;
      const infoObj = buildInfo(img, {
        filename: file,
        actualSize: actualSize(file),
        fullBackingFilename: h.backingFile !== undefined ? resolveBackingPath(file, h.backingFile) : undefined,
        encrypt: await readEncryptInfo(img),
      });
      out(isJson(values) ? toQemuJson(infoObj) : formatInfo(infoObj));
    } finally {
      await img.close();
    }
    return 0;
  },
};

export function isJson(values: Record<string, unknown>): boolean {
  return values.json === true || values.output === 'json';
}

export function usageError(message: string): Error {
  const e = new Error(message);
  e.name = 'UsageError';
  return e;
}
