// Reading refcounts through the refcount table and the refblock cache (qcow2-reference.md §1.5).
// Updates, allocation and refcount-table growth are built on these in image/allocator.ts.
import { QcowError, hex } from '../errors.ts';
import { getRefcount, refblockEntries, reftableEntry } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';

/** Refcount entries per refcount block of this image. */
export function refblockEntriesOf(img: Qcow2Image): number {
  return refblockEntries(img.clusterBits, img.refcountOrder);
}

/** Reftable entries (refcount_table_clusters · CS / 8). */
export function reftableSize(img: Qcow2Image): number {
  return img.reftable.length / 8;
}

/** The refcount block holding cluster `clusterIndex`'s refcount, or null if absent. */
export async function loadRefblock(img: Qcow2Image, reftableIndex: number): Promise<Uint8Array | null> {
  if (reftableIndex >= reftableSize(img)) return null;
  const off = reftableEntry(img.reftable, reftableIndex);
  if (off === 0) return null;
  if (off % img.clusterSize !== 0) {
    throw new QcowError('METADATA_CORRUPT', `Refblock offset ${hex(off)} unaligned (reftable index: ${hex(reftableIndex)})`, {
      structure: 'refcount table', offset: img.header.refcountTableOffset + reftableIndex * 8, reftableIndex, refblockOffset: off,
    });
  }
  let b = img.refblockCache.get(off);
  if (!b) {
    b = (await img.store.read(off, img.clusterSize)).slice();
    img.refblockCache.set(off, b);
  }
  return b;
}

/** The refcount of host cluster `clusterIndex` (0 where no refblock covers it). */
export async function getClusterRefcount(img: Qcow2Image, clusterIndex: number): Promise<number> {
  const per = refblockEntriesOf(img);
  const block = await loadRefblock(img, Math.floor(clusterIndex / per));
  return block ? getRefcount(block, clusterIndex % per, img.refcountOrder) : 0;
}
