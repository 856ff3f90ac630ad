// `qcowscope export [--snapshot ID_OR_NAME | -l snapshot.id=ID,snapshot.name=NAME] IMAGE OUTPUT.raw`: the guest disk (active layer or a
// snapshot, read-only) as a raw file, like `qemu-img convert -O raw [-l snapshot.id=N]`. Zero
// and unallocated ranges are left as holes, and so are data clusters that are holes in the image
// file (metadata-preallocated images): they read as zeros, so nothing is read or written for them.
import * as fs from 'node:fs';
import { QcowError } from '../../core/errors.ts';
import type { Extent } from '../../core/image/layer.ts';
import { findSnapshot, type SnapshotRef } from '../../core/image/snapshot.ts';
import { openImage } from '../open.ts';
import { holeMapFor, startSegmentScan } from '../holes.ts';
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

/** Guest bytes copied per read: large enough to amortise per-call costs. */
const CHUNK = 4 * 1024 * 1024;
/** Clusters whose extents are gathered before their data is copied (bounds memory). */
const WINDOW_CLUSTERS = 65536;

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
      if (ref !== undefined) {
        const sn = findSnapshot(img, ref);
        if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', 'Failed to load snapshot: Can\'t find snapshot', { snapshot: ref });
        view = await img.snapshotView(sn);
      }
      const holes = await holeMapFor(img, file, scan);
      // qemu-img convert -l (QEMU's load_tmp) swaps in the snapshot's L1 but keeps the image's
      // current virtual size: a snapshot taken before a resize is exported at today's size,
      // cut short or padded (with zeros, or the backing file) past its own disk size.
      const size = img.virtualSize;
      view = { ...view, virtualSize: size };
      const plain = !img.hasDataFile && img.header.cryptMethod === 0;
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
            // data at a known host offset of this image: read the host bytes straight (no
            // mapping, no copy); anything else (backing layers, compressed) through readView
            const direct = e.depth === 0 && e.offset !== undefined && !e.compressed && plain;
            for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
              const n = Math.min(CHUNK, e.start + e.length - pos);
              const buf = direct ? await img.store.read(e.offset! + (pos - e.start), n) : await img.readView(view, pos, n);
              writeNonZero(fd, buf, pos);
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
