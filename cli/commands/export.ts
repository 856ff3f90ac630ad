// `qcowscope export [--snapshot ID_OR_NAME | -l snapshot.id=ID,snapshot.name=NAME] IMAGE OUTPUT.raw`: the guest disk (active layer or a
// snapshot, read-only) as a raw file, like `qemu-img convert -O raw [-l snapshot.id=N]`, from the
// engine layer's export (core/ops/export.ts). Zero and unallocated ranges are left as holes, and
// so are data clusters that are holes in the image file (metadata-preallocated images): they read
// as zeros, so nothing is read or written for them.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import type { SnapshotRef } from '../../core/image/snapshot.ts';
import { rawExport } from '../../core/ops/export.ts';
import { openImageScanning } from '../open.ts';
import { holeMapFor } from '../holes.ts';
import type { Command } from '../command.ts';
import { usageError } from './info.ts';

/**
 * qemu-img convert's -l: `snapshot.id=ID,snapshot.name=NAME` (either or both, both must match),
 * or an ID or name on its own (the ID tried first).
 */
export function snapshotParam(text: string): SnapshotRef {
  if (!text.startsWith('snapshot.')) return text;
  const ref: { id?: string; name?: string } = {};
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (key === 'snapshot.id') ref.id = part.slice(eq + 1);
    else if (key === 'snapshot.name') ref.name = part.slice(eq + 1);
    else throw usageError(`Invalid parameter '${key}'`);
  }
  return ref;
}

export const exportCmd: Command = {
  name: 'export',
  usage: 'export [--snapshot ID_OR_NAME | -l snapshot.id=ID,snapshot.name=NAME] [-O raw] IMAGE OUTPUT.raw',
  options: { snapshot: { type: 'string', short: 'l' }, 'output-format': { type: 'string', short: 'O' } },
  async run({ values, positionals }) {
    const [file, output] = positionals;
    if (!file || !output) throw usageError('export: expecting IMAGE and OUTPUT');
    const fmt = values['output-format'];
    if (fmt !== undefined && fmt !== 'raw') throw new QcowError('NOT_SUPPORTED', `export: only raw output is supported, not '${String(fmt)}'`);
    const ref = typeof values.snapshot === 'string' ? snapshotParam(values.snapshot) : undefined;
    const { img, scan } = await openImageScanning(file);
    try {
      const exp = await rawExport(img, { snapshot: ref, holes: await holeMapFor(img, file, scan) });
      const fd = openOutput(output);
      try {
        if (fs.fstatSync(fd).isFile()) {
          fs.ftruncateSync(fd, exp.size);
          await exp.run((pos, bytes) => writeNonZero(fd, bytes, pos));
        } else {
          // a device or a pipe: every byte, zeros too, in guest order (no truncate, no seek)
          let written = 0;
          await exp.run((pos, bytes) => {
            written = writeZeros(fd, written, pos);
            fs.writeSync(fd, bytes);
            written += bytes.length;
          });
          writeZeros(fd, written, exp.size);
        }
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      scan.cancel();
      await img.close();
    }
    return 0;
  },
};

/** The output file opened for writing, or qemu-img's words for why it cannot be. */
function openOutput(output: string): number {
  try {
    return fs.openSync(output, 'w');
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'EISDIR' ? 'Is a directory' : (e as NodeJS.ErrnoException).code === 'EACCES' ? 'Permission denied' : (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message;
    throw new QcowError('IO_ERROR', `${output}: error while converting raw: Could not create '${output}': ${why}`, { path: output });
  }
}

/** Zeros written in sequence from `from` up to `to`; returns `to`. */
function writeZeros(fd: number, from: number, to: number): number {
  const zeros = new Uint8Array(Math.min(ZERO_BLOCK * 16, Math.max(0, to - from)));
  for (let p = from; p < to; p += zeros.length) fs.writeSync(fd, zeros, 0, Math.min(zeros.length, to - p));
  return Math.max(from, to);
}

/** Zero blocks are not written (the output stays sparse, as qemu-img convert's does). */
const ZERO_BLOCK = 64 * 1024;

/** Write `buf` at `pos`, skipping its all-zero ZERO_BLOCK-sized blocks; non-zero blocks in a row go in one write. */
function writeNonZero(fd: number, buf: Uint8Array, pos: number): void {
  let runStart = -1;
  for (let b = 0; b < buf.length; b += ZERO_BLOCK) {
    const end = Math.min(buf.length, b + ZERO_BLOCK);
    if (isZero(buf, b, end)) {
      if (runStart >= 0) fs.writeSync(fd, buf, runStart, b - runStart, pos + runStart);
      runStart = -1;
    } else if (runStart < 0) {
      runStart = b;
    }
  }
  if (runStart >= 0) fs.writeSync(fd, buf, runStart, buf.length - runStart, pos + runStart);
}

function isZero(b: Uint8Array, start: number, end: number): boolean {
  // word compares where the view is 4-aligned, bytes elsewhere
  let i = start;
  while (i < end && (b.byteOffset + i) % 4 !== 0) if (b[i++] !== 0) return false;
  const words = Math.floor((end - i) / 4);
  if (words > 0) {
    const w = new Uint32Array(b.buffer, b.byteOffset + i, words);
    for (let k = 0; k < words; k++) if (w[k] !== 0) return false;
    i += words * 4;
  }
  for (; i < end; i++) if (b[i] !== 0) return false;
  return true;
}
