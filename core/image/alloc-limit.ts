// How far past the end of the file an allocation may land. The first free cluster lies past the
// end only by clusters whose refcount outlived a crash (a cluster is counted before it is
// written): a few clusters, at most about one operation's worth. Refcounts that count gigabytes
// past the end as in use are not refcounts (a refcount table moved onto a snapshot's L1 table, a
// refcount block pointing at guest data: the fuzz campaign of seed 20261206): QEMU allocates
// there anyway and writes 8 GiB past the end of a 7 MiB file; the allocators here refuse before
// writing (allocator.ts, snapshot-commit.ts, and QEMU's layout in snapshot-settle.ts stops there).
import { QcowError, hex } from '../errors.ts';
import { reftableEntry } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { refblockEntriesOf, reftableSize } from './refcount.ts';

/** Bytes past the end an allocation may skip at least (crash leftovers), whatever the file size. */
const MIN_SLACK_BYTES = 16 * 1024 * 1024;

/**
 * How far past the end of a file of `fileSize` bytes anything may be placed or kept: as far again
 * as the file is long, at least 16 MiB. A repair keeps a refcount block past the end only this
 * close (check.ts; farther, it rebuilds as QEMU does when its file cannot grow).
 */
export function maxBytesPastEnd(fileSize: number): number {
  return Math.max(fileSize, MIN_SLACK_BYTES);
}

/**
 * The last cluster an allocation may start at when the file (or what the operation has placed
 * so far) ends at cluster `endCluster` (maxBytesPastEnd after it). Infinity with an external
 * data file (its refcounts count the data file's clusters).
 */
export function allocationLimit(img: Qcow2Image, endCluster: number): number {
  if (img.hasDataFile) return Infinity;
  const cs = img.clusterSize;
  return endCluster + Math.ceil(maxBytesPastEnd(endCluster * cs) / cs);
}

/**
 * Refuse an allocation of `what` that would start past `limit`: the refcount block covering the
 * first cluster after the end of the file (`endCluster`) counts clusters the file does not have.
 */
export function refuseFarAllocation(img: Qcow2Image, what: string, endCluster: number, limit: number): never {
  const cs = img.clusterSize;
  const r = Math.floor(endCluster / refblockEntriesOf(img));
  const off = r < reftableSize(img) ? reftableEntry(img.reftable, r) : 0;
  const block = off !== 0 ? `refcount block ${r} at ${hex(off)}` : `the refcount blocks`;
  throw new QcowError('METADATA_CORRUPT',
    `Preventing invalid allocation of ${what} past ${hex(limit * cs)}: ${block} counts the clusters after the end of the file (${hex(endCluster * cs)}) as in use; the refcounts are corrupt, run a check with repair`,
    { structure: 'refcount block', offset: off, reftableIndex: r, endOfFile: endCluster * cs });
}
