// What a snapshot holds alone: the host clusters (its L1 copy, L2 tables, data and compressed
// clusters) whose every reference comes from that snapshot's tree, i.e. what deleting it would
// free, and what it shares with the active disk or other snapshots.
import { getRefcount } from '../format/refcount.ts';
import type { Snapshot } from '../format/snapshot-table.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';
import { loadRefblock, refblockEntriesOf } from '../image/refcount.ts';
import { walkTree } from './tree-walk.ts';

export interface SnapshotSpace {
  id: string;
  name: string;
  /** Host clusters only this snapshot references (freed by deleting it). */
  exclusiveClusters: number;
  /** Host clusters it references that something else references too. */
  sharedClusters: number;
  exclusiveBytes: number;
  /** Exclusive host clusters as sorted [first, count] ranges, for the map. */
  exclusiveRanges: Array<[number, number]>;
}

/** References from one L1 tree: host cluster index → number of references. */
async function treeReferences(img: Qcow2Image, view: L1View, includeL1 = true): Promise<Map<number, number>> {
  const refs = new Map<number, number>();
  await walkTree(img, view, (cluster) => refs.set(cluster, (refs.get(cluster) ?? 0) + 1), includeL1);
  return refs;
}

export async function snapshotSpace(img: Qcow2Image, sn: Snapshot): Promise<SnapshotSpace> {
  const view = await img.snapshotView(sn);
  const refs = await treeReferences(img, view);
  const per = refblockEntriesOf(img);
  const clusters = [...refs.keys()].sort((a, b) => a - b);
  const exclusive: number[] = [];
  let shared = 0;
  for (const c of clusters) {
    const block = await loadRefblock(img, Math.floor(c / per));
    const rc = block ? getRefcount(block, c % per, img.refcountOrder) : 0;
    if (rc <= refs.get(c)!) exclusive.push(c);
    else shared++;
  }
  const ranges: Array<[number, number]> = [];
  for (const c of exclusive) {
    const last = ranges[ranges.length - 1];
    if (last && last[0] + last[1] === c) last[1]++;
    else ranges.push([c, 1]);
  }
  return {
    id: sn.idStr,
    name: sn.name,
    exclusiveClusters: exclusive.length,
    sharedClusters: shared,
    exclusiveBytes: exclusive.length * img.clusterSize,
    exclusiveRanges: ranges,
  };
}
