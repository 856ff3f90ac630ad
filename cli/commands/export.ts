// `qcowscope export [--snapshot ID_OR_NAME] IMAGE OUTPUT.raw`: the guest disk (active layer or a
// snapshot, read-only) as a raw file, like `qemu-img convert -O raw [-l snapshot.id=N]`. Zero
// and unallocated ranges are left as holes, and so are data clusters that are holes in the image
// file (metadata-preallocated images): they read as zeros, so nothing is read or written for them.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import type { Extent } from '../../core/image/layer.ts';
import { openImage } from '../open.ts';
import { holeMapFor, startSegmentScan } from '../holes.ts';
import type { Command } from '../command.ts';
import { usageError } from './info.ts';

/** Guest bytes copied per read: large enough to amortise per-call costs. */
const CHUNK = 4 * 1024 * 1024;
/** Clusters whose extents are gathered before their data is copied (bounds memory). */
const WINDOW_CLUSTERS = 65536;

export const exportCmd: Command = {
  name: 'export',
  usage: 'export [--snapshot ID_OR_NAME] IMAGE OUTPUT.raw',
  options: { snapshot: { type: 'string', short: 'l' } },
  async run({ values, positionals }) {
    const [file, output] = positionals;
    if (!file || !output) throw usageError('export: expecting IMAGE and OUTPUT');
    const scan = startSegmentScan(file);
    let img;
    try {
      img = await openImage(file);
    } catch (e) {
      scan.cancel();
      throw e;
    }
    try {
      let view = img.activeView();
      if (typeof values.snapshot === 'string') {
        const sn = img.findSnapshot(values.snapshot);
        if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', `Snapshot '${values.snapshot}' not found`, { snapshot: values.snapshot });
        view = await img.snapshotView(sn);
      }
      const holes = await holeMapFor(img, file, scan);
      // qemu-img convert -l (QEMU's load_tmp) swaps in the snapshot's L1 but keeps the image's
      // current virtual size: a snapshot taken before a resize is exported at today's size,
      // cut short or padded (with zeros, or the backing file) past its own disk size.
      const size = img.virtualSize;
      view = { ...view, virtualSize: size };
      const fd = fs.openSync(output, 'w');
      try {
        fs.ftruncateSync(fd, size);
        const window = WINDOW_CLUSTERS * img.clusterSize;
        for (let w = 0; w < size; w += window) {
          const extents: Extent[] = [];
          await img.walkExtents(view, w, Math.min(window, size - w), (e) => {
            if (e.data && !e.zero) extents.push(e); // everything else stays a hole
          }, holes);
          for (const e of extents) {
            for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
              const n = Math.min(CHUNK, e.start + e.length - pos);
              const buf = await img.readView(view, pos, n);
              if (!isZero(buf)) fs.writeSync(fd, buf, 0, n, pos);
            }
          }
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

function isZero(b: Uint8Array): boolean {
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  for (let i = w.length * 4; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
