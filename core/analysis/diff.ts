// Snapshot diff: which guest clusters differ between two views (a snapshot and another, or the
// active disk). Structural and fast: L2 tables shared by both sides are skipped whole; entries
// are compared by what they map to (type and host cluster), ignoring the COPIED bit. The host
// clusters behind each changed guest cluster, on either side, come with the result (the web app
// outlines them on the cluster map).
import { be32 } from '../format/bytes.ts';
import { ClusterType, clusterType, compressedDescriptor, offsetOf } from '../format/entries.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';
import { QcowError } from '../errors.ts';

export interface DiffRange {
  /** First guest cluster index of the range and how many clusters. */
  cluster: number;
  count: number;
}

export interface DiffResult {
  clusterSize: number;
  ranges: DiffRange[];
  changedClusters: number;
  /**
   * Host cluster indices (sorted, unique) that hold the changed guest clusters in either view:
   * data clusters, preallocated zero clusters, and every cluster compressed data spans.
   */
  hostClusters: number[];
}

/** The host clusters one L2 entry points at (none for unallocated and plain zero entries). */
function hostClustersOf(img: Qcow2Image, l2: Uint8Array | null, index: number, into: Set<number>): void {
  if (!l2) return;
  const at = index * img.l2EntrySize;
  const hi = be32(l2, at);
  const lo = be32(l2, at + 4);
  const type = clusterType(hi, lo, img.geometry);
  if (type === ClusterType.Compressed) {
    const c = compressedDescriptor(hi, lo, img.clusterBits);
    const first = Math.floor(c.hostOffset / img.clusterSize);
    const last = Math.floor((c.hostOffset + c.compressedSize - 1) / img.clusterSize);
    for (let k = first; k <= last; k++) into.add(k);
  } else if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) {
    const off = offsetOf(hi, lo);
    if (off) into.add(Math.floor(off / img.clusterSize));
  }
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

export interface DiffOptions {
  /** Called as L1 entries are compared (phase, done, total). */
  onProgress?: (phase: string, done: number, total: number) => void;
  /** Polled between L2 tables: true stops the diff with a CANCELLED error. */
  isCancelled?: () => boolean;
}

export async function diffViews(img: Qcow2Image, a: L1View, b: L1View, opts: DiffOptions = {}): Promise<DiffResult> {
  const ranges: DiffRange[] = [];
  let changed = 0;
  const hosts = new Set<number>();
  const clusters = Math.ceil(Math.max(a.virtualSize, b.virtualSize) / img.clusterSize);
  const l1Count = Math.ceil(clusters / img.l2Entries);
  const push = (cluster: number): void => {
    changed++;
    const last = ranges[ranges.length - 1];
    if (last && last.cluster + last.count === cluster) last.count++;
    else ranges.push({ cluster, count: 1 });
  };
  for (let i = 0; i < l1Count; i++) {
    if (i % 64 === 0) {
      if (opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The diff was cancelled');
      opts.onProgress?.('Comparing L2 tables', i, l1Count);
    }
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
      if (ga !== gb) {
        push(first + j);
        hostClustersOf(img, la, j, hosts);
        hostClustersOf(img, lb, j, hosts);
      }
    }
  }
  opts.onProgress?.('Comparing L2 tables', l1Count, l1Count);
  return { clusterSize: img.clusterSize, ranges, changedClusters: changed, hostClusters: [...hosts].sort((x, y) => x - y) };
}
