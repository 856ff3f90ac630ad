// Who uses one host cluster: its refcount, and for the active disk and each snapshot whether the
// cluster is that tree's L1 table, one of its L2 tables, or the data of guest ranges (merged into
// [start, length] byte ranges). What the Inspector shows for a selected cluster.
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { getClusterRefcount } from '../image/refcount.ts';
import { walkTree } from './tree-walk.ts';

/** At most this many guest ranges per tree are listed; `moreRanges` counts the rest. */
const MAX_RANGES = 64;

export interface ClusterUse {
  /** null for the active disk. */
  snapshot: { id: string; name: string } | null;
  /** The cluster holds (part of) this tree's L1 table. */
  l1Table: boolean;
  /** L1 indices whose L2 table is this cluster. */
  l2Tables: number[];
  /** Guest byte ranges stored in this cluster, as [start, length], merged, in guest order. */
  guestRanges: Array<[number, number]>;
  moreRanges: number;
  /** How the guest data is stored there (one tree may mix them). */
  storage: Array<'data' | 'zero-alloc' | 'compressed'>;
}

export interface ClusterUsers {
  cluster: number;
  refcount: number;
  /** Only the trees that reference the cluster: the active disk first, then snapshots in table order. */
  uses: ClusterUse[];
}

export async function clusterUsers(img: Qcow2Image, cluster: number, isCancelled: () => boolean = () => false): Promise<ClusterUsers> {
  const cs = img.clusterSize;
  const guestSpan = img.l2Entries * cs;
  const trees = [
    { snapshot: null, view: img.activeView() },
    ...(await Promise.all(img.snapshots.map(async (sn) => ({ snapshot: { id: sn.idStr, name: sn.name }, view: await img.snapshotView(sn) })))),
  ];
  const uses: ClusterUse[] = [];
  for (const t of trees) {
    if (isCancelled()) break;
    const use: ClusterUse = { snapshot: t.snapshot, l1Table: false, l2Tables: [], guestRanges: [], moreRanges: 0, storage: [] };
    let used = false;
    await walkTree(img, t.view, (c, ref) => {
      if (c !== cluster) return;
      used = true;
      if (ref.kind === 'l1') use.l1Table = true;
      else if (ref.kind === 'l2') use.l2Tables.push(ref.l1Index);
      else {
        if (!use.storage.includes(ref.kind)) use.storage.push(ref.kind);
        const start = ref.l1Index * guestSpan + ref.l2Index * cs;
        const last = use.guestRanges[use.guestRanges.length - 1];
        if (last && last[0] + last[1] === start) last[1] += cs;
        else if (use.guestRanges.length < MAX_RANGES) use.guestRanges.push([start, cs]);
        else use.moreRanges++;
      }
    });
    if (used) uses.push(use);
  }
  return { cluster, refcount: await getClusterRefcount(img, cluster), uses };
}
