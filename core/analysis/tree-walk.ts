// Every host cluster one L1 tree (the active disk's, or a snapshot's) references, with what
// references it: the L1 table itself, an L2 table (from an L1 entry), a data cluster or the
// clusters a compressed cluster's bytes span (from an L2 entry). Shared by what a snapshot holds
// (snapshot-space.ts) and who uses a cluster (cluster-users.ts).
import { be32 } from '../format/bytes.ts';
import { ClusterType, clusterType, compressedDescriptor, offsetOf } from '../format/entries.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';

export type TreeRef =
  | { kind: 'l1' }
  | { kind: 'l2'; l1Index: number }
  /** Guest cluster `l1Index * l2Entries + l2Index` is stored here (zero-alloc: preallocated, reads as zeros). */
  | { kind: 'data' | 'zero-alloc' | 'compressed'; l1Index: number; l2Index: number };

/**
 * Call `visit` for each host cluster reference of `view`'s tree, in L1 then L2 order. The L2 tables
 * are scanned, not cached (img.scanL2, into this walk's own buffer): a walk over every tree of a
 * 256 GiB image would otherwise fill the image's L2 cache (32 MiB) with tables read once.
 */
export async function walkTree(img: Qcow2Image, view: L1View, visit: (cluster: number, ref: TreeRef) => void, includeL1 = true): Promise<void> {
  const cs = img.clusterSize;
  const buffer = new Uint8Array(cs);
  if (includeL1 && view.size > 0) {
    const first = Math.floor(view.offset / cs);
    const last = Math.floor((view.offset + view.size * 8 - 1) / cs);
    for (let c = first; c <= last; c++) visit(c, { kind: 'l1' });
  }
  for (let i = 0; i < view.size; i++) {
    const l2Offset = offsetOf(be32(view.table, i * 8), be32(view.table, i * 8 + 4));
    if (l2Offset === 0 || l2Offset % cs !== 0) continue;
    visit(l2Offset / cs, { kind: 'l2', l1Index: i });
    const l2 = await img.scanL2(l2Offset, buffer);
    for (let j = 0; j < img.l2Entries; j++) {
      const at = j * img.l2EntrySize;
      const hi = be32(l2, at);
      const lo = be32(l2, at + 4);
      const type = clusterType(hi, lo, img.geometry);
      if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
        const host = offsetOf(hi, lo);
        if (host !== 0 && host % cs === 0) visit(host / cs, { kind: type === ClusterType.Normal ? 'data' : 'zero-alloc', l1Index: i, l2Index: j });
      } else if (type === ClusterType.Compressed) {
        const d = compressedDescriptor(hi, lo, img.clusterBits);
        const a = Math.floor(d.hostOffset / cs);
        const b = Math.floor((d.hostOffset + d.compressedSize - 1) / cs);
        for (let c = a; c <= b; c++) visit(c, { kind: 'compressed', l1Index: i, l2Index: j });
      }
    }
  }
}
