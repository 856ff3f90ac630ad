// `qcowscope write [-z [-u]] [-d] [-P PATTERN] [--from RAW] IMAGE OFFSET LENGTH`: a guest write on
// the active layer, like qemu-io's `write` (-P fill byte, -z zeroes, -u unmap with -z) and
// `discard` (-d), through the engine layer (core/ops/write.ts). For interop tests and benchmarks.
// A dirty image is repaired when it is opened (QEMU does the same when it opens one for writing).
import * as fs from 'node:fs';
import type { Journal } from '../../core/image/journal.ts';
import { guestWrite, type GuestWriteRequest } from '../../core/ops/write.ts';
import { openImage } from '../open.ts';
import { flag, valued, type Command } from '../command.ts';
import { parseSize } from './create.ts';
import { usageError } from './info.ts';

export const write: Command = {
  name: 'write',
  usage: 'write [-z [-u]] [-d] [-P PATTERN] [--from RAW] [--journal] IMAGE OFFSET LENGTH',
  options: {
    zero: flag('z'),
    unmap: flag('u'),
    discard: flag('d'),
    pattern: valued('P'),
    from: valued(),
    journal: flag(),
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
    // --from: the raw file is opened on the first read, and closed when the write is done
    let fd: number | undefined;
    const readFrom = (from: string) => (pos: number, n: number): Uint8Array => {
      fd ??= fs.openSync(from, 'r');
      const buf = new Uint8Array(n);
      fs.readSync(fd, buf, 0, n, pos);
      return buf;
    };
    const req: GuestWriteRequest = values.discard ? { kind: 'discard', offset, length }
      : values.zero ? { kind: 'zeroes', offset, length, unmap: !!values.unmap }
      : typeof values.from === 'string' ? { kind: 'data', offset, length, read: readFrom(values.from) }
      : { kind: 'pattern', offset, length, pattern };
    const img = await openImage(file, { writable: true });
    let journal: Journal | null;
    try {
      journal = await guestWrite(img, req, values.journal ? { journal: 'write' } : {});
    } finally {
      await img.close();
      if (fd !== undefined) fs.closeSync(fd);
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
