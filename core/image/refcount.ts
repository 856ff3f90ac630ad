// Reading refcounts through the refcount table and the refblock cache (qcow2-reference.md §1.5).
// Updates, allocation and refcount-table growth are built on these in image/allocator.ts.
import { QcowError, hex } from '../errors.ts';
import { getRefcount, refblockEntries, refcountMax, reftableEntry } from '../format/refcount.ts';
import { readInto } from '../io/store.ts';
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
  const off = refblockOffset(img, reftableIndex);
  if (off === 0) return null;
  let b = img.refblockCache.get(off);
  if (!b) {
    b = new Uint8Array(img.clusterSize);
    await readInto(img.store, off, b);
    img.refblockCache.set(off, b);
  }
  return b;
}

/**
 * Refcount block `reftableIndex` as the image holds it, into `out` (a cluster) for a caller that
 * will change its copy before the image does (the snapshot commit's overlay): the cache's bytes
 * if it holds the block, else the file's, without filling the cache. False (out untouched) if
 * the block is absent.
 */
export async function readRefblockInto(img: Qcow2Image, reftableIndex: number, out: Uint8Array): Promise<boolean> {
  const off = refblockOffset(img, reftableIndex);
  if (off === 0) return false;
  const cached = img.refblockCache.get(off);
  if (cached) out.set(cached);
  else await readInto(img.store, off, out);
  return true;
}

/** The host offset of refcount block `reftableIndex` (0: none), which must be cluster aligned. */
function refblockOffset(img: Qcow2Image, reftableIndex: number): number {
  if (reftableIndex >= reftableSize(img)) return 0;
  const off = reftableEntry(img.reftable, reftableIndex);
  if (off !== 0 && off % img.clusterSize !== 0) {
    throw new QcowError('METADATA_CORRUPT', `Refblock offset ${hex(off)} unaligned (reftable index: ${hex(reftableIndex)})`, {
      structure: 'refcount table', offset: img.header.refcountTableOffset + reftableIndex * 8, reftableIndex, refblockOffset: off,
    });
  }
  return off;
}

/** The refcount of host cluster `clusterIndex` (0 where no refblock covers it). */
export async function getClusterRefcount(img: Qcow2Image, clusterIndex: number): Promise<number> {
  const per = refblockEntriesOf(img);
  const block = await loadRefblock(img, Math.floor(clusterIndex / per));
  return block ? getRefcount(block, clusterIndex % per, img.refcountOrder) : 0;
}

// ---- checks before an update (nothing is written) ----------------------------------------------

/** Largest refcount this image's width can hold (2^refcount_bits − 1). */
function refcountMaxOf(img: Qcow2Image): number {
  return refcountMax(img.refcountOrder);
}

/** Refcount changes keyed by host cluster index (cluster offset / cluster size). */
export type RefcountDeltas = Map<number, number>;

/**
 * Throw QcowError('REFCOUNT_OVERFLOW') if applying `deltas` would take any refcount below 0 or
 * above the width's maximum (QEMU's update_refcount returns EINVAL in both cases). Reads only,
 * so a caller can refuse an operation before it allocates anything (DESIGN.md: refuse what
 * cannot succeed, e.g. a snapshot on refcount_bits=1).
 */
export async function checkRefcountDeltas(img: Qcow2Image, deltas: RefcountDeltas | ReadonlyArray<readonly [number, number]>): Promise<void> {
  const max = refcountMaxOf(img);
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const entries = (Array.isArray(deltas) ? [...deltas] : [...(deltas as RefcountDeltas)]).sort((a, b) => a[0] - b[0]);
  let region = -1;
  let block: Uint8Array | null = null;
  for (const [cluster, addend] of entries) {
    if (addend === 0) continue;
    const r = Math.floor(cluster / per);
    if (r !== region) {
      region = r;
      block = await loadRefblock(img, r);
    }
    const old = block ? getRefcount(block, cluster - r * per, order) : 0;
    const next = old + addend;
    if (next < 0 || next > max) {
      const offset = cluster * img.clusterSize;
      throw new QcowError('REFCOUNT_OVERFLOW',
        `Refcount of cluster ${cluster} (host offset ${hex(offset)}) would ${next < 0 ? 'drop below 0' : `exceed ${max}`}: refcount=${old} addend=${addend} (refcount_bits=${2 ** order})`,
        { structure: 'refcount block', cluster, offset, refcount: old, addend, refcountBits: 2 ** order });
    }
  }
}

/**
 * Whether every host cluster in `hostOffsets` (byte offsets, any alignment; a cluster listed k
 * times counts k times) can take `addend` more references without overflowing the refcount
 * width. For the snapshot engine: call it on the clusters a snapshot would share before
 * allocating anything.
 */
export async function canIncrement(img: Qcow2Image, hostOffsets: Iterable<number>, addend = 1): Promise<boolean> {
  const deltas: RefcountDeltas = new Map();
  for (const off of hostOffsets) {
    const c = Math.floor(off / img.clusterSize);
    deltas.set(c, (deltas.get(c) ?? 0) + addend);
  }
  try {
    await checkRefcountDeltas(img, deltas);
    return true;
  } catch (e) {
    if (e instanceof QcowError && e.code === 'REFCOUNT_OVERFLOW') return false;
    throw e;
  }
}
