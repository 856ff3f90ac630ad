// Raw export: the guest disk (active layer or a snapshot) as qemu-img convert -O raw [-l] sees it,
// handed out as the ranges that hold data; everything else (unallocated, zero clusters, holes of a
// metadata-preallocated file) reads as zeros and is left for the caller to skip (the command line
// leaves holes in its output file, the worker fills a Blob with zeros).
import { QcowError } from '../errors.ts';
import type { Extent } from '../image/layer.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';
import type { HoleMap } from '../image/block-status.ts';
import { findSnapshot, type SnapshotRef } from '../image/snapshot.ts';

/** Guest bytes handed out per call: large enough to amortise per-call costs. */
const CHUNK = 4 * 1024 * 1024;
/** Clusters whose extents are gathered before their data is copied (bounds memory). */
const WINDOW_CLUSTERS = 65536;

export interface RawExportOptions {
  /** A snapshot to export instead of the active layer. */
  snapshot?: SnapshotRef;
  /** Data clusters that are holes in the image file (they read as zeros: nothing is read). */
  holes?: HoleMap;
  /** Called after each range: the guest offset reached. */
  onProgress?: (done: number, total: number) => void;
  isCancelled?: () => boolean;
}

/** An export whose refusals are behind it: its size, and the run that hands out the data. */
export interface RawExport {
  /**
   * The disk size: the image's current virtual size even for a snapshot taken before a resize
   * (QEMU's load_tmp keeps it: the snapshot's disk is cut short, or padded with zeros or the
   * backing file past its own size).
   */
  readonly size: number;
  /**
   * `data(pos, bytes)` for each range at `pos` that may hold non-zero bytes, in ascending order,
   * at most CHUNK bytes each (`bytes` is only valid during the call: copy it to keep it).
   */
  run(data: (pos: number, bytes: Uint8Array) => void | Promise<void>): Promise<void>;
}

/**
 * Export `img`'s guest disk (active layer or `opts.snapshot`). Refused, before anything is
 * written anywhere, when the snapshot does not exist or the backing file the disk reads through
 * is not open.
 */
export async function rawExport(img: Qcow2Image, opts: RawExportOptions = {}): Promise<RawExport> {
  if (img.header.backingFile !== undefined && !img.backing) {
    throw new QcowError('NOT_SUPPORTED', `${img.store.name} has a backing file (${img.header.backingFile}), which is not open here: its raw disk cannot be exported`);
  }
  if (img.header.cryptMethod !== 0) {
    throw new QcowError('ENCRYPTED', `${img.store.name} is encrypted: its guest data cannot be exported without the key, which qcowscope never takes`, { structure: 'header', offset: 32 });
  }
  let view = img.activeView();
  if (opts.snapshot !== undefined) {
    const sn = findSnapshot(img, opts.snapshot);
    if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', 'Failed to load snapshot: Can\'t find snapshot', { snapshot: opts.snapshot });
    view = await img.snapshotView(sn);
  }
  const size = img.virtualSize;
  const v = { ...view, virtualSize: size };
  return { size, run: (data) => copyData(img, v, size, opts, data) };
}

async function copyData(
  img: Qcow2Image, view: L1View, size: number, opts: RawExportOptions, data: (pos: number, bytes: Uint8Array) => void | Promise<void>,
): Promise<void> {
  const plain = !img.hasDataFile;
  const window = WINDOW_CLUSTERS * img.clusterSize;
  for (let w = 0; w < size; w += window) {
    const extents: Extent[] = [];
    await img.walkExtents(view, w, Math.min(window, size - w), (e) => {
      if (e.data && !e.zero) extents.push(e); // everything else reads as zeros
    }, opts.holes);
    for (const e of extents) {
      // data at a known host offset of this image: read the host bytes straight (no mapping, no
      // copy); anything else (backing layers, compressed) through readView
      const direct = e.depth === 0 && e.offset !== undefined && !e.compressed && plain;
      for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
        if (opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The export was cancelled');
        const n = Math.min(CHUNK, e.start + e.length - pos);
        await data(pos, direct ? await img.store.read(e.offset! + (pos - e.start), n) : await img.readView(view, pos, n));
        opts.onProgress?.(pos + n, size);
      }
    }
    opts.onProgress?.(Math.min(size, w + window), size);
  }
}
