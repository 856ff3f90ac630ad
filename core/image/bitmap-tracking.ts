// Persistent bitmaps kept in step with guest writes, as QEMU keeps them when it writes an image it
// opened (qemu-img commit into a backing file, safe rebase): marked in use before the first write,
// in place as QEMU marks them on open (a crash then leaves them inconsistent, never silently
// stale), and afterwards all stored again as QEMU stores them on close, with every granule
// written set in the enabled ones and in use cleared (bitmap-ops.ts does the storing).
import { QcowError } from '../errors.ts';
import { BME_FLAG_IN_USE } from '../format/bitmaps.ts';
import { changeBitmaps, markInUseInPlace } from './bitmap-ops.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { assertCanWrite } from './write.ts';

/** Refuse, before anything is written, guest writes the bitmaps cannot follow (one already in use) or the image cannot take. */
export function assertCanWriteTracked(img: Qcow2Image): void {
  const inUse = img.bitmaps.find((b) => b.flags & BME_FLAG_IN_USE);
  if (inUse) throw new QcowError('INVALID_ARGUMENT', `Bitmap '${inUse.name}' is inconsistent and cannot be used`, { bitmap: inUse.name });
  const tracked = img.bitmapsTracked;
  img.bitmapsTracked = true;
  try {
    assertCanWrite(img, 0, 0);
  } finally {
    img.bitmapsTracked = tracked;
  }
}

/** Before the first write: every bitmap marked in use, and guest writes allowed while they are. */
export async function beginTrackedWrites(img: Qcow2Image): Promise<void> {
  if (img.bitmaps.length === 0) return;
  if (!(await markInUseInPlace(img))) await changeBitmaps(img, img.bitmaps.map((b) => ({ op: 'in-use', name: b.name })));
  img.bitmapsTracked = true;
}

/** After the data is flushed: the guest ranges written set in the enabled bitmaps, in use cleared. */
export async function finishTrackedWrites(img: Qcow2Image, written: ReadonlyArray<readonly [number, number]>): Promise<void> {
  if (!img.bitmapsTracked) return;
  await changeBitmaps(img, img.bitmaps.map((b) => ({ op: 'written', name: b.name, ranges: written })), { inUseOurs: true });
  img.bitmapsTracked = false;
}
