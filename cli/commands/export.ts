// `qcowscope export [--snapshot ID_OR_NAME] IMAGE OUTPUT.raw`: the guest disk (active layer or a
// snapshot, read-only) as a raw file, like `qemu-img convert -O raw [-l snapshot.id=N]`. Zero
// and unallocated ranges are left as holes.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import { openImage } from '../open.ts';
import type { Command } from '../command.ts';
import { usageError } from './info.ts';

/** Guest bytes copied per read: large enough to amortise per-call costs. */
const CHUNK = 4 * 1024 * 1024;

export const exportCmd: Command = {
  name: 'export',
  usage: 'export [--snapshot ID_OR_NAME] IMAGE OUTPUT.raw',
  options: { snapshot: { type: 'string', short: 'l' } },
  async run({ values, positionals }) {
    const [file, output] = positionals;
    if (!file || !output) throw usageError('export: expecting IMAGE and OUTPUT');
    const img = await openImage(file);
    try {
      let view = img.activeView();
      if (typeof values.snapshot === 'string') {
        const sn = img.findSnapshot(values.snapshot);
        if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', `Snapshot '${values.snapshot}' not found`, { snapshot: values.snapshot });
        view = await img.snapshotView(sn);
      }
      // qemu-img convert -l (QEMU's load_tmp) swaps in the snapshot's L1 but keeps the image's
      // current virtual size: a snapshot taken before a resize is exported at today's size,
      // cut short or padded (with zeros, or the backing file) past its own disk size.
      const size = img.virtualSize;
      view = { ...view, virtualSize: size };
      const fd = fs.openSync(output, 'w');
      try {
        fs.ftruncateSync(fd, size);
        const extents = await img.extentsView(view, 0, size);
        for (const e of extents) {
          if (!e.data && e.zero) continue; // hole
          for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
            const n = Math.min(CHUNK, e.start + e.length - pos);
            const buf = await img.readView(view, pos, n);
            if (!isZero(buf)) fs.writeSync(fd, buf, 0, n, pos);
          }
        }
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      await img.close();
    }
    return 0;
  },
};

function isZero(b: Uint8Array): boolean {
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  for (let i = w.length * 4; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
