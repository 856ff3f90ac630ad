// `qcowscope info [--json] [--backing-chain] IMAGE`: qemu-img info's fields and layout, for the
// image or for every image of its backing chain.
import * as fs from 'node:fs';
import { buildInfo, formatInfo, readEncryptInfo, sizeToStr, type ImageInfo } from '../../core/analysis/info.ts';
import { QcowError } from '../../core/errors.ts';
import { toQemuJson } from '../../core/analysis/qemu-json.ts';
import { actualSize, openImage, probeFormat, resolveBackingPath } from '../open.ts';
import type { Command } from '../command.ts';
import { cliError, usageExit } from '../qemu-options.ts';

export const info: Command = {
  name: 'info',
  usage: 'info [--json] [--backing-chain] IMAGE',
  options: { json: { type: 'boolean' }, output: { type: 'string' }, 'backing-chain': { type: 'boolean' } },
  async run({ values, positionals, out }) {
    const file = positionals[0];
    if (positionals.length !== 1) throw usageExit('Expecting one image file name');
    const chain = values['backing-chain'] === true;
    const infos: Array<ImageInfo | RawInfo> = [];
    const seen = new Set<string>();
    // each link is opened on its own (without its backing file), as qemu-img does
    for (let link: { file: string; format: string } | undefined = { file, format: 'qcow2' }; link;) {
      const key = fs.existsSync(link.file) ? fs.realpathSync(link.file) : link.file;
      if (seen.has(key)) throw new QcowError('INVALID_ARGUMENT', `Backing file '${link.file}' creates an infinite loop.`, { path: link.file });
      seen.add(key);
      if (link.format !== 'qcow2') {
        infos.push(rawInfo(link.file));
        break;
      }
      const { info: i, next } = await qcow2Info(link.file);
      infos.push(i);
      link = chain ? next : undefined;
    }
    if (isJson(values)) out(toQemuJson(chain ? infos : infos[0]));
    else out(infos.map((i) => (i.format === 'raw' ? formatRawInfo(i) : formatInfo(i))).join('\n\n'));
    return 0;
  },
};

/** One qcow2 image's info, and the next link of its backing chain (the file qemu-img opens). */
async function qcow2Info(file: string): Promise<{ info: ImageInfo; next?: { file: string; format: string } }> {
  const img = await openImage(file, { noBacking: true, dataFileOptional: true });
  try {
    const h = img.header;
    const full = h.backingFile !== undefined ? resolveBackingPath(file, h.backingFile) : undefined;
    const info = buildInfo(img, { filename: file, actualSize: actualSize(file), fullBackingFilename: full, encrypt: await readEncryptInfo(img) });
    if (full === undefined) return { info };
    // a missing backing file is reported by the qcow2 open, in qemu-img's words
    return { info, next: { file: full, format: h.backingFormat ?? (fs.existsSync(full) ? await probeFormat(full) : 'qcow2') } };
  } finally {
    await img.close();
  }
}

/** qemu-img info of a raw file (a backing file at the end of a chain), in its key order. */
interface RawInfo {
  'virtual-size': number;
  filename: string;
  format: 'raw';
  'actual-size'?: number;
  'dirty-flag': false;
}

function rawInfo(file: string): RawInfo {
  if (!fs.existsSync(file)) throw new QcowError('IO_ERROR', `Could not open '${file}': Could not open '${file}': No such file or directory`, { path: file });
  const r = { 'virtual-size': fs.statSync(file).size, filename: file, format: 'raw' } as RawInfo;
  const a = actualSize(file);
  if (a !== undefined) r['actual-size'] = a;
  r['dirty-flag'] = false;
  return r;
}

function formatRawInfo(i: RawInfo): string {
  const lines = [`image: ${i.filename}`, 'file format: raw', `virtual size: ${sizeToStr(i['virtual-size'])} (${i['virtual-size']} bytes)`];
  if (i['actual-size'] !== undefined) lines.push(`disk size: ${sizeToStr(i['actual-size'])}`);
  return lines.join('\n');
}

export function isJson(values: Record<string, unknown>): boolean {
  return values.json === true || values.output === 'json';
}

export function usageError(message: string): Error {
  return cliError(message);
}
