// What a snapshot holds alone: the host clusters (its L1 copy, L2 tables, data and compressed
// clusters) whose every reference comes from that snapshot's tree, i.e. what deleting it would
// free, and what it shares with the active disk or other snapshots.
import { getRefcount } from '../format/refcount.ts';
import type { Snapshot } from '../format/snapshot-table.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';
import { loadRefblock, refblockEntriesOf } from '../image/refcount.ts';
import { walkTree } from './tree-walk.ts';
import { QcowError } from '../errors.ts';

/** Polled between trees and every 4,096 clusters: true stops the job with a CANCELLED error. */
export type IsCancelled = () => boolean;
const never: IsCancelled = () => false;

function stopIf(isCancelled: IsCancelled): void {
  if (isCancelled()) throw new QcowError('CANCELLED', 'The snapshot space was cancelled');
}

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

/** References from some L1 trees: host cluster index → number of references. */
async function treeReferences(img: Qcow2Image, views: L1View[], isCancelled: IsCancelled): Promise<Map<number, number>> {
  const refs = new Map<number, number>();
  for (const view of views) {
    stopIf(isCancelled);
    await walkTree(img, view, (cluster) => refs.set(cluster, (refs.get(cluster) ?? 0) + 1));
  }
  return refs;
}

/** The clusters of `refs` whose refcount all those references make up (freed if they go), and the rest. */
async function exclusiveOf(img: Qcow2Image, refs: Map<number, number>, isCancelled: IsCancelled): Promise<{ exclusive: number[]; shared: number }> {
  const per = refblockEntriesOf(img);
  const exclusive: number[] = [];
  let shared = 0;
  let n = 0;
  for (const c of [...refs.keys()].sort((a, b) => a - b)) {
    if ((n++ & 4095) === 0) stopIf(isCancelled);
    const block = await loadRefblock(img, Math.floor(c / per));
    const rc = block ? getRefcount(block, c % per, img.refcountOrder) : 0;
    if (rc <= refs.get(c)!) exclusive.push(c);
    else shared++;
  }
  return { exclusive, shared };
}

function toRanges(clusters: number[]): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  for (const c of clusters) {
    const last = ranges[ranges.length - 1];
    if (last && last[0] + last[1] === c) last[1]++;
    else ranges.push([c, 1]);
  }
  return ranges;
}

/**
 * What snapshot `sn` holds alone. Deleting one of several snapshots writes a new snapshot table and
 * frees the old one (no net change); deleting the only one frees the table too, so it is counted.
 */
export async function snapshotSpace(img: Qcow2Image, sn: Snapshot, isCancelled: IsCancelled = never): Promise<SnapshotSpace> {
  if (img.snapshots.length === 1 && img.snapshots[0] === sn) return { ...(await allSnapshotsSpace(img, isCancelled)), id: sn.idStr, name: sn.name };
  const { exclusive, shared } = await exclusiveOf(img, await treeReferences(img, [await img.snapshotView(sn)], isCancelled), isCancelled);
  return {
    id: sn.idStr,
    name: sn.name,
    exclusiveClusters: exclusive.length,
    sharedClusters: shared,
    exclusiveBytes: exclusive.length * img.clusterSize,
    exclusiveRanges: toRanges(exclusive),
  };
}

/**
 * What deleting every snapshot frees: the clusters all snapshot trees together hold and the active
 * disk does not, plus the snapshot table itself (QEMU frees it when the last snapshot goes).
 * Reported as a SnapshotSpace with id and name '*'.
 */
export async function allSnapshotsSpace(img: Qcow2Image, isCancelled: IsCancelled = never): Promise<SnapshotSpace> {
  const views: L1View[] = [];
  for (const sn of img.snapshots) views.push(await img.snapshotView(sn));
  const refs = await treeReferences(img, views, isCancelled);
  const cs = img.clusterSize;
  if (img.snapshots.length > 0 && img.snapshotsSize > 0) {
    const first = Math.floor(img.header.snapshotsOffset / cs);
    const last = Math.floor((img.header.snapshotsOffset + img.snapshotsSize - 1) / cs);
    for (let c = first; c <= last; c++) refs.set(c, (refs.get(c) ?? 0) + 1);
  }
  const { exclusive, shared } = await exclusiveOf(img, refs, isCancelled);
  return {
    id: '*',
    name: '*',
    exclusiveClusters: exclusive.length,
    sharedClusters: shared,
    exclusiveBytes: exclusive.length * cs,
    exclusiveRanges: toRanges(exclusive),
  };
}
