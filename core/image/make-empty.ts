// Emptying an image's active layer after a commit, as QEMU's qcow2_make_empty does: a qcow2 v3
// image without snapshots, bitmaps, encryption or data file is reset to its header, a one-cluster
// refcount table at cluster 1, one refcount block at cluster 2 and a zeroed L1 table from cluster
// 3, and the file cut after them (QEMU's make_completely_empty); any other image has every active
// cluster discarded in full. QEMU resets under the dirty bit (refcounts broken until it is
// cleared); here the reset is done only when the image already has that layout (as qemu-img
// create lays it out), in an order where every step leaves at worst leaks: the L1 zeroed (every
// cluster below it leaked), flush; the refcount table reduced to its first block, flush; that
// block rewritten to count only the header, the tables and the L1, flush; then the file cut.
// An image laid out otherwise takes the discard path (the same guest view, a larger file).
import * as C from '../format/constants.ts';
import { reftableEntry, refblockEntries, setRefcount } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { discard } from './write.ts';

/** Whether QEMU would reset `img` completely, and its layout lets us do it leak-safe. */
function canResetCompletely(img: Qcow2Image): boolean {
  const h = img.header;
  const cs = img.clusterSize;
  const l1Clusters = Math.ceil(h.l1Size / (cs / 8));
  return h.version >= 3 && h.nbSnapshots === 0 && img.bitmaps.length === 0 && h.cryptMethod === 0 &&
    (h.incompatibleFeatures & (C.INCOMPAT_DATA_FILE | C.INCOMPAT_DIRTY | C.INCOMPAT_CORRUPT)) === 0n &&
    3 + l1Clusters <= refblockEntries(h.clusterBits, h.refcountOrder) &&
    h.l1Size > 0 && h.l1TableOffset === 3 * cs &&
    h.refcountTableOffset === cs && h.refcountTableClusters === 1 && reftableEntry(img.reftable, 0) === 2 * cs;
}

/** Make every cluster of the active layer unallocated, so the image reads its backing file again. */
export async function makeEmpty(img: Qcow2Image): Promise<void> {
  if (!canResetCompletely(img)) {
    await discard(img, 0, img.virtualSize, { full: true });
    await img.flush('overlay emptied');
    return;
  }
  const h = img.header;
  const cs = img.clusterSize;
  const l1Clusters = Math.ceil(h.l1Size / (cs / 8));
  await img.pwrite(h.l1TableOffset, new Uint8Array(l1Clusters * cs), 'L1 table emptied', true);
  await img.flush('L1 table emptied before the refcounts are reset');
  const reftable = new Uint8Array(cs);
  reftable.set(img.reftable.subarray(0, 8));
  await img.pwrite(cs, reftable, 'refcount table: only the first block');
  await img.flush('refcount table reduced');
  const block = new Uint8Array(cs);
  for (let i = 0; i < 3 + l1Clusters; i++) setRefcount(block, i, h.refcountOrder, 1);
  await img.pwrite(2 * cs, block, 'refcount block: header, tables and L1 only');
  await img.flush('refcount block reset');
  await img.truncate((3 + l1Clusters) * cs, 'file cut after the L1 table');
  await img.flush('file cut');
  await img.reload();
}
