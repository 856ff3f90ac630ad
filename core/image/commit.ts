// Folding an overlay into its backing file as `qemu-img commit` does: a backing file smaller than
// the overlay is first grown to the overlay's size (QEMU's mirror truncates its target up: a qcow2
// image through resize.ts, a raw file by extending it), then every range the overlay allocates is
// written into it (data as data, zero clusters as zero writes), the backing file flushed, and
// then, unless kept, the overlay emptied (make-empty.ts, QEMU's bdrv_make_empty). Crash-safe by
// order: while the backing file is written the overlay still holds all of its data, so the overlay
// reads as before whatever the backing file has received; the overlay is emptied only after the
// backing file is flushed, each step of that a crash-safe change of its own. Persistent bitmaps
// of a qcow2 backing file are kept as QEMU keeps them (bitmap-tracking.ts).
import { QcowError } from '../errors.ts';
import type { ImageStore } from '../io/store.ts';
import { assertCanWriteTracked, beginTrackedWrites, finishTrackedWrites } from './bitmap-tracking.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { writeGuest, writeZeroes } from './write.ts';
import { growImage } from './resize.ts';
import { makeEmpty } from './make-empty.ts';

/** Bytes copied per write into the backing file. */
const CHUNK = 2 * 1024 * 1024;

export interface CommitOptions {
  /** qemu-img commit -d: leave the overlay as it is. */
  keep?: boolean;
  /** How many links of `overlay`'s chain lie above the target (1: the target is its backing file). */
  depth?: number;
  onProgress?: (done: number, total: number) => void;
}

/** What a commit writes into: a qcow2 image or a raw file. */
export interface CommitTarget {
  readonly virtualSize: number;
  /** Refuse, before anything is written, what the target cannot take. */
  precheck(): void;
  grow(size: number): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Before the first write: persistent bitmaps marked in use (QEMU's order). */
  begin(): Promise<void>;
  /** After the data is flushed: the guest ranges written, set in the enabled bitmaps. */
  finish(written: ReadonlyArray<readonly [number, number]>): Promise<void>;
}

export function qcow2Target(img: Qcow2Image): CommitTarget {
  return {
    get virtualSize() { return img.virtualSize; },
    precheck: () => assertCanWriteTracked(img),
    grow: (size) => growImage(img, size),
    write: (offset, data) => writeGuest(img, offset, data),
    writeZeroes: (offset, length) => writeZeroes(img, offset, length),
    flush: () => img.flush('committed data before the overlay is emptied'),
    begin: () => beginTrackedWrites(img),
    finish: (written) => finishTrackedWrites(img, written),
  };
}

/** A raw backing file: guest offset = file offset. */
export function rawTarget(store: ImageStore): CommitTarget {
  return {
    get virtualSize() { return store.size(); },
    precheck: () => undefined,
    grow: async (size) => { if (size > store.size()) await store.truncate(size); },
    write: (offset, data) => store.write(offset, data),
    writeZeroes: async (offset, length) => {
      for (let pos = 0; pos < length; pos += CHUNK) await store.write(offset + pos, new Uint8Array(Math.min(CHUNK, length - pos)));
    },
    flush: () => store.flush(),
    begin: async () => undefined,
    finish: async () => undefined,
  };
}

function isTarget(t: Qcow2Image | CommitTarget): t is CommitTarget {
  return typeof (t as Partial<CommitTarget>).grow === 'function';
}

/**
 * Commit `overlay` into `base`, its backing file opened for writing (or, with `depth` > 1, the
 * link that many levels down). `overlay` is opened without its backing chain, or with the links
 * above the target: what they do not allocate is left alone.
 */
export async function commitInto(overlay: Qcow2Image, base: Qcow2Image | CommitTarget, opts: CommitOptions = {}): Promise<void> {
  const target = isTarget(base) ? base : qcow2Target(base);
  // what a guest write would refuse (persistent bitmaps, ...) is refused before anything is written
  target.precheck();
  // the overlay's own bitmaps: kept in use while it is emptied, their bits unchanged (QEMU's
  // qcow2_make_empty discards below the layer that marks bitmaps)
  const emptied = opts.keep ? undefined : qcow2Target(overlay);
  emptied?.precheck();
  const size = overlay.virtualSize;
  const depth = opts.depth ?? 1;
  await target.begin();
  if (target.virtualSize < size) await target.grow(size);
  const written: Array<[number, number]> = [];
  for (let pos = 0; pos < size; pos += CHUNK) {
    const n = Math.min(CHUNK, size - pos);
    for (const e of await overlay.extents(pos, n)) {
      // a link above the target that is shorter than the offset reads zeros there: QEMU counts
      // them as allocated in that link (bdrv_co_common_block_status_above), so they are written
      const pastShortLink = !e.present && e.depth + 1 < depth;
      if (e.depth >= depth || (!e.present && !pastShortLink)) continue;
      // as QEMU's mirror: zeros are written as zeros only where the range holds no data
      written.push([e.start, e.length]);
      if (e.zero && !e.data) await target.writeZeroes(e.start, e.length);
      else await target.write(e.start, await overlay.read(e.start, e.length));
    }
    opts.onProgress?.(pos + n, size);
  }
  await target.flush();
  await target.finish(written);
  if (emptied) {
    await emptied.begin();
    await makeEmpty(overlay);
    await emptied.finish([]);
  }
}
