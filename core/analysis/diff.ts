// Snapshot diff: which guest clusters differ between two views (a snapshot and another, or the
// active disk). Structural and fast: L2 tables shared by both sides are skipped whole; entries
// are compared by what they map to (type and host cluster), ignoring the COPIED bit.
import { be32 } from '../format/bytes.ts';
import { ClusterType, clusterType, compressedDescriptor, offsetOf } from '../format/entries.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';

export interface DiffRange {
  /** First guest cluster index of the range and how many clusters. */
  cluster: number;
  count: number;
}

export interface DiffResult {
  clusterSize: number;
  ranges: DiffRange[];
  changedClusters: number;
}

/** A comparable key for one L2 entry: type + target, COPIED ignored; ext-L2 bitmaps included. */
function entryKey(img: Qcow2Image, l2: Uint8Array | null, index: number): string {
  if (!l2) return 'u';
  const at = index * img.l2EntrySize;
  const hi = be32(l2, at);
  const lo = be32(l2, at + 4);
  const type = clusterType(hi, lo, img.geometry);
  const bm = img.geometry.extendedL2 ? `/${be32(l2, at + 8)}/${be32(l2, at + 12)}` : '';
  switch (type) {
    case ClusterType.Unallocated: return 'u' + bm;
    case ClusterType.ZeroPlain: return 'z';
    case ClusterType.Compressed: return 'c' + compressedDescriptor(hi, lo, img.clusterBits).hostOffset;
    case ClusterType.ZeroAlloc: return 'z';
    default: return 'd' + offsetOf(hi, lo) + bm;
  }
}

export async function diffViews(img: Qcow2Image, a: L1View, b: L1View): Promise<DiffResult> {
  const ranges: DiffRange[] = [];
  let changed = 0;
  const clusters = Math.ceil(Math.max(a.virtualSize, b.virtualSize) / img.clusterSize);
  const l1Count = Math.ceil(clusters / img.l2Entries);
  const push = (cluster: number): void => {
    changed++;
    const last = ranges[ranges.length - 1];
    if (last && last.cluster + last.count === cluster) last.count++;
    else ranges.push({ cluster, count: 1 });
  };
  for (let i = 0; i < l1Count; i++) {
    const oa = i < a.size ? img.l2OffsetAt(a, i) : 0;
    const ob = i < b.size ? img.l2OffsetAt(b, i) : 0;
    if (oa === ob) continue; // same L2 table (or both unallocated): identical mappings
    const la = oa ? await img.readL2(oa) : null;
    const lb = ob ? await img.readL2(ob) : null;
    const first = i * img.l2Entries;
    const n = Math.min(img.l2Entries, clusters - first);
    for (let j = 0; j < n; j++) {
      const ga = (first + j) * img.clusterSize < a.virtualSize ? entryKey(img, la, j) : 'u';
      const gb = (first + j) * img.clusterSize < b.virtualSize ? entryKey(img, lb, j) : 'u';
      if (ga !== gb) push(first + j);
    }
  }
  return { clusterSize: img.clusterSize, ranges, changedClusters: changed };
}
