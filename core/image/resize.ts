// Growing a qcow2 image's virtual size as QEMU's qcow2_co_truncate does with preallocation=off
// (what `qemu-img commit` does to a backing file smaller than the overlay): the active L1 table
// grown to exactly the entries the new size needs (qcow2_grow_l1_table with exact_size: a new
// table in fresh clusters, refcounts first, written and flushed), then one header write names the
// new size, L1 size and L1 offset (the commit point), flush, and only then is the old L1 freed.
// A crash before the header write leaves the old image and a leaked table; after it, the grown
// image and at worst the old table leaked. As QEMU's bdrv_co_truncate, when the image's backing
// file is longer than its old size the new area is then zeroed (zero clusters), so the backing
// file does not show through it; a crash between the header write and the zeroing leaves that
// area reading the backing file (QEMU's order has the same window).
import { QcowError } from '../errors.ts';
import { encodeHeader, sizeToL1, type Qcow2Header } from '../format/header.ts';
import * as C from '../format/constants.ts';
import { allocClusters, freeClusters } from './allocator.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { writeZeroes } from './write.ts';

/** Grow `img` to `newSize` bytes of guest disk (a multiple of 512); a smaller or equal size does nothing. */
export async function growImage(img: Qcow2Image, newSize: number): Promise<void> {
  const h = img.header;
  const oldSize = h.size;
  if (newSize <= oldSize) return;
  // persistent bitmaps only while a writer keeps them (marked in use; resized when it stores them)
  if (img.bitmaps.length > 0 && !img.bitmapsTracked) {
    throw new QcowError('NOT_SUPPORTED', 'Growing an image with persistent dirty bitmaps is not supported', {});
  }
  if (h.nbSnapshots > 0 && h.version < 3) {
    throw new QcowError('NOT_SUPPORTED', "Can't resize a v2 image which has snapshots", { reason: 'v2-resize', image: img.store.name });
  }
  const newL1Size = sizeToL1(h, newSize);
  if (newL1Size * 8 > C.MAX_L1_SIZE_BYTES) throw new QcowError('NOT_SUPPORTED', 'File too large', {});
  const next: Qcow2Header = { ...h, size: newSize };
  const oldL1 = { offset: h.l1TableOffset, bytes: h.l1Size * 8 };
  let l1Table: Uint8Array | undefined;
  if (newL1Size > h.l1Size) {
    l1Table = new Uint8Array(newL1Size * 8);
    l1Table.set(img.l1Table.subarray(0, h.l1Size * 8));
    const clusters = Math.ceil(l1Table.length / img.clusterSize);
    const offset = await allocClusters(img, clusters, 'L1 table');
    await img.pwrite(offset, l1Table, 'grown L1 table');
    await img.flush('grown L1 table before the header names it');
    next.l1Size = newL1Size;
    next.l1TableOffset = offset;
  }
  await img.pwrite(0, encodeHeader(next), 'header: virtual size and L1 table', true);
  await img.flush('header: virtual size');
  img.setTables({ header: { size: next.size, l1Size: next.l1Size, l1TableOffset: next.l1TableOffset }, l1Table });
  if (l1Table && oldL1.bytes > 0) {
    await freeClusters(img, oldL1.offset, img.clusterAlign(oldL1.bytes));
    await img.flush('old L1 table freed');
  }
  if (img.backing && img.backing.virtualSize > oldSize) await writeZeroes(img, oldSize, newSize - oldSize);
}
