// `qcowscope write [-z [-u]] [-d] [-P PATTERN] [--from RAW] IMAGE OFFSET LENGTH`: a guest write on
// the active layer, like qemu-io's `write` (-P fill byte, -z zeroes, -u unmap with -z) and
// `discard` (-d). For interop tests and benchmarks. A dirty image is repaired first (QEMU does
// the same when it opens a dirty image for writing).
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import { Journal } from '../../core/image/journal.ts';
import { discard, writeGuest, writeZeroes } from '../../core/image/write.ts';
import { openImage, repairIfDirty } from '../open.ts';
import type { Command } from '../command.ts';
import { parseSize } from './create.ts';
import { usageError } from './info.ts';

/** Guest bytes written per call when filling a pattern (bounds memory for big writes). */
const CHUNK = 16 * 1024 * 1024;

export const write: Command = {
  name: 'write',
  usage: 'write [-z [-u]] [-d] [-P PATTERN] [--from RAW] [--journal] IMAGE OFFSET LENGTH',
  options: {
    zero: { type: 'boolean', short: 'z' },
    unmap: { type: 'boolean', short: 'u' },
    discard: { type: 'boolean', short: 'd' },
    pattern: { type: 'string', short: 'P' },
    from: { type: 'string' },
    journal: { type: 'boolean' },
  },
  async run({ values, positionals, out }) {
    const [file, offArg, lenArg] = positionals;
    if (!file || offArg === undefined || lenArg === undefined || positionals.length !== 3) {
      throw usageError('write: expecting IMAGE OFFSET LENGTH');
    }
    const offset = parseSize(offArg);
    const length = parseSize(lenArg);
    const pattern = values.pattern === undefined ? 0xcd : Number(values.pattern);
    if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) throw usageError(`write: invalid pattern '${String(values.pattern)}'`);
    await repairIfDirty(file);
    const img = await openImage(file, { writable: true });
    const journal = values.journal ? new Journal('write') : null;
    img.journal = journal;
    try {
      if (values.discard) {
        await discard(img, offset, length);
      } else if (values.zero) {
        await writeZeroes(img, offset, length, { unmap: !!values.unmap });
      } else if (typeof values.from === 'string') {
        const fd = fs.openSync(values.from, 'r');
        try {
          for (let pos = 0; pos < length;) {
            const n = Math.min(CHUNK, length - pos);
            const buf = new Uint8Array(n);
            fs.readSync(fd, buf, 0, n, pos);
            await writeGuest(img, offset + pos, buf);
            pos += n;
          }
        } finally {
          fs.closeSync(fd);
        }
      } else {
        const buf = new Uint8Array(Math.min(CHUNK, length)).fill(pattern);
        for (let pos = 0; pos < length;) {
          const n = Math.min(CHUNK, length - pos);
          await writeGuest(img, offset + pos, n === buf.length ? buf : buf.subarray(0, n));
          pos += n;
        }
      }
      await img.flush('end of write');
    } finally {
      await img.close();
    }
    if (journal) {
      for (const e of journal.entries) {
        out(e.kind === 'flush' ? `flush    ${e.purpose}`
          : e.kind === 'truncate' ? `truncate ${e.offset} ${e.purpose}`
          : `write    0x${e.offset.toString(16)} +${e.length} ${e.purpose}${e.commit ? ' [commit]' : ''}`);
      }
    }
    return 0;
  },
};
