// Folding an overlay into its backing file as `qemu-img commit` does: every range the overlay
// allocates is written into the backing image (data as data, zero clusters as zero writes), the
// backing image flushed, and then, unless kept, the overlay emptied (QEMU's bdrv_make_empty: each
// cluster discarded in full, so it reads its backing file again). Crash-safe by order: while the
// backing image is written the overlay still holds all of its data, so the overlay reads as before
// whatever the backing image has received; the overlay is emptied only after the backing image is
// flushed, each L2 table's discard being a crash-safe guest-level change (write.ts), and then its
// file reset as QEMU's make_completely_empty leaves it where that applies (make-empty.ts).
import { growImage } from './grow.ts';
import { resetEmptied } from './make-empty.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { assertCanWrite, discard, writeGuest, writeZeroes } from './write.ts';

/** Bytes copied per write into the backing image. */
const CHUNK = 2 * 1024 * 1024;

export interface CommitOptions {
  /** qemu-img commit -d: leave the overlay as it is. */
  keep?: boolean;
  onProgress?: (done: number) => void;
}

/**
 * Commit `overlay` into `base`, its backing image opened for writing. `overlay` must be opened
 * without its backing chain (what it does not allocate then reads as absent). A backing image
 * smaller than the overlay is grown first, as qemu-img does (grow.ts).
 */
export async function commitInto(overlay: Qcow2Image, base: Qcow2Image, opts: CommitOptions = {}): Promise<void> {
  // what a guest write would refuse (persistent bitmaps, ...) is refused before anything is written
  assertCanWrite(base, 0, 0);
  if (!opts.keep) assertCanWrite(overlay, 0, 0);
  const size = overlay.virtualSize;
  // QEMU's commit job grows a smaller backing file first (bdrv_co_truncate, preallocation off)
  if (base.virtualSize < size) await growImage(base, size);
  for (let pos = 0; pos < size; pos += CHUNK) {
    const n = Math.min(CHUNK, size - pos);
    for (const e of await overlay.extents(pos, n)) {
      if (e.depth !== 0 || !e.present) continue;
      if (e.zero) await writeZeroes(base, e.start, e.length);
      else await writeGuest(base, e.start, await overlay.read(e.start, e.length));
    }
    opts.onProgress?.(pos + n);
  }
  await base.flush('committed data before the overlay is emptied');
  if (!opts.keep) {
    await discard(overlay, 0, overlay.virtualSize, { full: true });
    await overlay.flush('overlay emptied');
    await resetEmptied(overlay);
  }
}
