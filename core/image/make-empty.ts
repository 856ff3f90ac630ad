// The file of an emptied image as QEMU leaves it: qcow2_make_empty (what `qemu-img commit` runs on
// the overlay it folded, unless -d) resets a v3 image without snapshots or bitmaps completely
// (make_completely_empty): header, a one-cluster refcount table at cluster 1, one refcount block at
// cluster 2, the zeroed L1 table from cluster 3, and the file cut right after it. QEMU gets there
// through the dirty bit; we get there from an image already emptied guest-visibly (every cluster
// discarded in full, write.ts) when its refcount table, first refcount block and L1 table already
// sit where QEMU puts them (as in any image qemu-img created whose tables never moved), by steps
// that each leave at worst leaks: the L1 entries zeroed in place (they point at empty L2 tables),
// flushed; the refcount block rewritten to count only header, tables and L1 (dropping only
// clusters nothing references any more), flushed; the file cut. Otherwise the file stays as the
// discards left it (as QEMU's fallback for images with snapshots leaves it).
import { reftableEntry, setRefcount } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { refblockEntriesOf } from './refcount.ts';

/** After a full discard of the whole disk: QEMU's completely empty file where it applies. True if done. */
export async function resetEmptied(img: Qcow2Image): Promise<boolean> {
  const h = img.header;
  const cs = img.clusterSize;
  const l1Clusters = Math.ceil((h.l1Size * 8) / cs);
  const per = refblockEntriesOf(img);
  if (h.version < 3 || h.nbSnapshots > 0 || h.bitmaps || h.cryptMethod !== 0 || img.hasDataFile) return false;
  if (3 + l1Clusters > per) return false;
  if (h.refcountTableOffset !== cs || h.refcountTableClusters !== 1 || reftableEntry(img.reftable, 0) !== 2 * cs) return false;
  for (let k = 1; k < img.reftable.length / 8; k++) if (reftableEntry(img.reftable, k) !== 0) return false;
  if (h.l1TableOffset !== 3 * cs && h.l1Size > 0) return false;
  if (img.l1Table.some((b) => b !== 0)) {
    await img.pwrite(h.l1TableOffset, new Uint8Array(h.l1Size * 8), 'active L1 table zeroed (its L2 tables hold nothing after the discard)');
    await img.flush('L1 entries gone before the L2 tables are freed');
    img.l1Table.fill(0);
  }
  const block = new Uint8Array(cs);
  for (let c = 0; c < 3 + l1Clusters; c++) setRefcount(block, c, img.refcountOrder, 1);
  await img.pwrite(2 * cs, block, 'refcount block: only the header, refcount table, this block and the L1 table remain');
  await img.flush('refcounts before the file is cut');
  img.refblockCache.clear();
  img.l2Cache.clear();
  img.allocation.forget();
  const end = (3 + l1Clusters) * cs;
  if (img.store.size() > end) {
    await img.truncate(end, 'cut after the L1 table, as QEMU leaves an emptied image');
    await img.flush('cut durable');
  }
  return true;
}
