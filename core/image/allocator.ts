// Host cluster management (QEMU's qcow2-refcount.c, docs/qcow2-format.md §1.5, §3.8): refcount
// updates over byte ranges, batched per refcount block, all-or-nothing; refcount blocks allocated
// where they describe themselves; growth of the refcount table; first-fit cluster allocation from
// a free-cluster index; freeing. Every write goes through img.pwrite/flush (the journal).
//
// Crash-safety contract of this module (docs/architecture.md §3):
// - A new refcount block is written (and flushed) before the reftable entry that publishes it.
// - Reftable growth builds a new table and the refblocks describing it past everything the old
//   table covers, flushes, then commits with one 12-byte header write at offset 48, and only then
//   frees the old table. A crash before the commit leaves unreferenced, unrefcounted bytes.
// - updateRefcount validates the whole range before changing anything, so an overflow or an
//   underflow leaves no partial change behind (better than QEMU, which rolls back per call).
// Callers keep the rest of the order: increment before they publish a reference, flush, publish,
// flush, and decrement only after the old reference is gone.
import { QcowError, hex } from '../errors.ts';
import { put32, put64 } from '../format/bytes.ts';
import { MAX_CLUSTER_OFFSET, MAX_REFTABLE_SIZE_BYTES } from '../format/constants.ts';
import { encodeL1Entry, putEntry } from '../format/entries.ts';
import { getRefcount, reftableEntry, setRefcount } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import type { AllocatorState } from './allocator-state.ts';
import { allocationLimit, refuseFarAllocation } from './alloc-limit.ts';
import { MetadataClusters } from './metadata.ts';
import {
  checkRefcountDeltas, loadRefblock, refblockEntriesOf, reftableSize, type RefcountDeltas,
} from './refcount.ts';

/** What the allocator knows about `img` (kept by the image, dropped when its tables change). */
function stateOf(img: Qcow2Image): AllocatorState {
  return img.allocation;
}

/** A half-open range of host cluster indices that must not be handed out (being allocated). */
type Reserved = Array<readonly [number, number]>;

function inReserved(reserved: Reserved, c: number): boolean {
  for (const [a, b] of reserved) if (c >= a && c < b) return true;
  return false;
}

// ---- refcount updates ---------------------------------------------------------------------------

/**
 * Add `addend` to the refcount of every host cluster touched by [hostOffset, hostOffset+length)
 * (QEMU's update_refcount). Validates the whole range first: an overflow or underflow throws
 * QcowError('REFCOUNT_OVERFLOW') and changes nothing. Missing refcount blocks are allocated (and
 * the refcount table grown) for increments. Each refcount block is written once.
 */
export async function updateRefcount(img: Qcow2Image, hostOffset: number, length: number, addend: number): Promise<void> {
  if (length <= 0 || addend === 0) return;
  const cs = img.clusterSize;
  const first = Math.floor(hostOffset / cs);
  const last = Math.floor((hostOffset + length - 1) / cs);
  const deltas: RefcountDeltas = new Map();
  for (let c = first; c <= last; c++) deltas.set(c, addend);
  await updateClusterRefcounts(img, deltas);
}

/**
 * Apply many refcount changes at once (cluster index → addend), all-or-nothing as to validation,
 * each refcount block read-modified-written once. The batch form of updateRefcount, for walks
 * that touch many clusters (snapshots, repair).
 */
export async function updateClusterRefcounts(img: Qcow2Image, deltas: RefcountDeltas): Promise<void> {
  await applyDeltas(img, deltas, []);
}

async function applyDeltas(img: Qcow2Image, deltas: RefcountDeltas, reserved: Reserved): Promise<void> {
  const entries = [...deltas].filter(([, a]) => a !== 0).sort((x, y) => x[0] - y[0]);
  if (entries.length === 0) return;
  await checkRefcountDeltas(img, entries);
  const per = refblockEntriesOf(img);
  // Clusters about to get their first reference must not be handed out as refcount blocks.
  const ownReserved: Reserved = [...reserved];
  for (const [c, a] of entries) if (a > 0) ownReserved.push([c, c + 1]);
  // Make sure every refcount block an increment needs exists (publishing new ones first).
  let lastRegion = -1;
  for (const [c, a] of entries) {
    const r = Math.floor(c / per);
    if (r === lastRegion || a <= 0) continue;
    lastRegion = r;
    await ensureRefblock(img, r, ownReserved);
  }
  // Apply, one write per refcount block (the changed byte span).
  const order = img.refcountOrder;
  const entryBits = 2 ** order;
  const s = stateOf(img);
  let i = 0;
  while (i < entries.length) {
    const r = Math.floor(entries[i]![0] / per);
    const block = await loadRefblock(img, r);
    if (!block) throw new QcowError('INTERNAL', `refcount block ${r} missing after allocation`, { reftableIndex: r });
    let lo = Infinity;
    let hi = -1;
    for (; i < entries.length && Math.floor(entries[i]![0] / per) === r; i++) {
      const [c, a] = entries[i]!;
      const idx = c - r * per;
      const next = getRefcount(block, idx, order) + a;
      setRefcount(block, idx, order, next);
      lo = Math.min(lo, idx);
      hi = Math.max(hi, idx);
      if (next === 0) {
        if (c < s.freeClusterIndex) s.freeClusterIndex = c;
        dropCached(img, c * img.clusterSize);
      }
    }
    const byteLo = Math.floor((lo * entryBits) / 8);
    const byteHi = Math.ceil(((hi + 1) * entryBits) / 8);
    const blockOffset = reftableEntry(img.reftable, r);
    await img.pwrite(blockOffset + byteLo, block.slice(byteLo, byteHi), `refcount block ${r}`);
  }
  if (entries.some(([, a]) => a < 0)) s.metadata = null;
}

/** A freed cluster may come back as anything: drop every cached copy of it (QEMU does too). */
function dropCached(img: Qcow2Image, offset: number): void {
  img.l2Cache.delete(offset);
  img.refblockCache.delete(offset);
}

// ---- refcount blocks and the refcount table ------------------------------------------------------

function regionPresent(img: Qcow2Image, r: number): boolean {
  return r < reftableSize(img) && reftableEntry(img.reftable, r) !== 0;
}

/**
 * Make sure refcount block `r` exists (QEMU's alloc_refcount_block). The block goes to the first
 * free cluster (not in `reserved`); if that cluster lies in the region the block describes, the
 * block describes itself; otherwise its refcount is set in the block covering it first (and if
 * that region has no block either, that one is made first and the search starts over, like
 * QEMU's -EAGAIN). The block is written and flushed before the reftable entry publishing it
 * (written and flushed too). When `r` is beyond the refcount table, the block is published by a
 * new, larger table instead (refcountArea). `clusterIndex` is the cluster whose refcount is
 * wanted (it places the grown table as QEMU does). With `oneStep`, returns after one block was
 * placed (allocClusters retries like QEMU).
 */
async function ensureRefblock(img: Qcow2Image, r: number, reserved: Reserved, oneStep = false, clusterIndex = -1): Promise<void> {
  const per = refblockEntriesOf(img);
  const cs = img.clusterSize;
  const s = stateOf(img);
  for (let guard = 0; !regionPresent(img, r); guard++) {
    if (guard > 64) throw new QcowError('INTERNAL', `could not place refcount block ${r}`, { reftableIndex: r });
    const x = await findFree(img, 1, reserved, `refcount block ${r}`);
    s.freeClusterIndex = x + 1;
    const rx = Math.floor(x / per);
    if (rx !== r && !regionPresent(img, rx)) {
      // The first free cluster is in another region without a block: that region gets its
      // block first, then the search starts over.
      await ensureRefblock(img, rx, reserved, true, x);
      if (oneStep) return;
      continue;
    }
    assertNotMetadata(img, x, 1, 'refcount block');
    const block = new Uint8Array(cs);
    if (rx === r) {
      setRefcount(block, x - r * per, img.refcountOrder, 1);
    } else {
      await applyDeltas(img, new Map([[x, 1]]), reserved);
    }
    const offset = x * cs;
    await img.pwrite(offset, block, `refcount block ${r} (new)`);
    await img.flush(`refcount block ${r} before it is published`);
    img.refblockCache.set(offset, block);
    s.metadata?.addRange(x, x + 1, 'refcount block');
    if (r < reftableSize(img)) {
      const entry = new Uint8Array(8);
      putEntry(entry, 0, ...encodeL1Entry(offset, false));
      await img.pwrite(img.header.refcountTableOffset + r * 8, entry, `refcount table entry ${r}`);
      await img.flush(`refcount table entry ${r}`);
      img.reftable.set(entry, r * 8);
      return;
    }
    // The table must grow. As QEMU: the new structures go right after the regions in use so far
    // (nothing there can have a refcount yet), also after anything being allocated right now.
    const wanted = Math.max(clusterIndex >= 0 ? clusterIndex : r * per, x);
    let startCluster = Math.ceil((wanted + 1) / per) * per;
    for (const [, b] of reserved) startCluster = Math.max(startCluster, Math.ceil(b / per) * per);
    await refcountArea(img, startCluster, r, offset);
    if (oneStep) return;
  }
}

/**
 * QEMU's qcow2_refcount_metadata_size: refcount blocks needed to count `clusters` clusters plus
 * the refcount structures themselves (with the table 1.5 times as large when `generous`).
 */
export function refcountBlocksNeeded(clusters: number, clusterSize: number, refcountOrder: number, generous: boolean): number {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let last: number;
  let n = 0;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return blocks;
}

/**
 * QEMU's qcow2_refcount_area: from host cluster `startCluster` (past everything counted so far),
 * new refcount blocks for every region without one up to the new table's reach, then a new
 * refcount table 1.5 times as large as needed, every new structure counted in the blocks that
 * cover it; `newRefblockOffset` (already written) is entered at `newRefblockIndex`. Order: the
 * blocks, the table, flush, then the 12-byte header update at offset 48 (the commit point),
 * flush; only then is the old table freed. A crash before the commit leaves bytes nothing refers
 * to; after it, at worst the old table leaks.
 */
async function refcountArea(
  img: Qcow2Image, startCluster: number, newRefblockIndex: number, newRefblockOffset: number,
  additionalClusters = 0, exactSize = false,
): Promise<number> {
  const cs = img.clusterSize;
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const total = refcountBlocksNeeded(startCluster + additionalClusters, cs, order, !exactSize);
  let tableSize = exactSize ? total : total + Math.ceil(total / 2);
  tableSize = Math.ceil(tableSize / (cs / 8)) * (cs / 8);
  const tableClusters = (tableSize * 8) / cs;
  if (tableSize * 8 > MAX_REFTABLE_SIZE_BYTES) {
    throw new QcowError('TABLE_TOO_LARGE', `Reference count table too large: ${tableClusters} clusters needed`, {
      structure: 'Reference count table', clusters: tableClusters,
    });
  }
  const areaIndex = Math.floor(startCluster / per);
  const newTable = new Uint8Array(tableSize * 8);
  newTable.set(img.reftable.subarray(0, Math.min(img.reftable.length, newTable.length)));
  if (newRefblockOffset) putEntry(newTable, newRefblockIndex * 8, ...encodeL1Entry(newRefblockOffset, false));
  let additional = 0;
  for (let i = areaIndex; i < total; i++) if (reftableEntry(newTable, i) === 0) additional++;
  const tableCluster = startCluster + additional;
  const endCluster = tableCluster + tableClusters;
  if (endCluster * cs > MAX_CLUSTER_OFFSET) {
    throw new QcowError('IMAGE_TOO_BIG', 'Image is too big: the refcount table cannot grow past the largest host offset', { structure: 'Reference count table' });
  }
  const blocks: Array<[number, number, Uint8Array]> = []; // region, host offset, bytes
  let nextBlock = startCluster;
  for (let i = areaIndex; i < total; i++) {
    let offset = reftableEntry(newTable, i);
    let block: Uint8Array;
    if (offset !== 0) {
      block = img.refblockCache.get(offset) ?? (await img.store.read(offset, cs)).slice();
    } else {
      offset = nextBlock * cs;
      nextBlock++;
      block = new Uint8Array(cs);
      putEntry(newTable, i * 8, ...encodeL1Entry(offset, false));
    }
    const first = i * per;
    if (first < endCluster) {
      for (let c = Math.max(startCluster, first); c < Math.min(endCluster, first + per); c++) setRefcount(block, c - first, order, 1);
    }
    blocks.push([i, offset, block]);
  }
  const oldOffset = img.header.refcountTableOffset;
  const oldClusters = img.header.refcountTableClusters;
  for (const [i, offset, block] of blocks) await img.pwrite(offset, block, `refcount block ${i} (for the grown refcount table)`);
  await img.flush('refcount blocks of the new refcount table');
  await img.pwrite(tableCluster * cs, newTable, 'refcount table (new)');
  await img.flush('new refcount table before the header points at it');
  const hdr = new Uint8Array(12);
  put64(hdr, 0, tableCluster * cs);
  put32(hdr, 8, tableClusters);
  await img.pwrite(48, hdr, 'header: refcount_table_offset and refcount_table_clusters', true);
  await img.flush('header update');
  // This module made the change: what it knew still holds (the new table and blocks are added below).
  const known = stateOf(img);
  const { freeClusterIndex, metadata, inactiveL2 } = known;
  img.setTables({ reftable: newTable, header: { refcountTableOffset: tableCluster * cs, refcountTableClusters: tableClusters } });
  Object.assign(known, { freeClusterIndex, metadata, inactiveL2 });
  for (const [, offset, block] of blocks) img.refblockCache.set(offset, block);
  const meta = stateOf(img).metadata;
  if (meta) {
    for (const [, offset] of blocks) meta.addRange(offset / cs, offset / cs + 1, 'refcount block');
    meta.addRange(tableCluster, endCluster, 'refcount table');
  }
  // The old table is garbage now; a crash before this leaks it, nothing worse.
  if (oldClusters > 0) await updateRefcount(img, oldOffset, oldClusters * cs, -1);
  return endCluster;
}

/**
 * QEMU's qcow2_refcount_area with an exact size, as its preallocating truncate uses it: refcount
 * structures from host cluster `startCluster` able to count `additionalClusters` more clusters
 * after them without growing again. Returns the first cluster after the new structures.
 */
export async function reserveRefcountArea(img: Qcow2Image, startCluster: number, additionalClusters: number): Promise<number> {
  return refcountArea(img, startCluster, 0, 0, additionalClusters, true);
}

// ---- allocation ---------------------------------------------------------------------------------

/**
 * First `n` contiguous free clusters from the free-cluster index (QEMU's alloc_clusters_noref):
 * refcount 0, not reserved. Clusters beyond what the reftable covers count as free. A run that
 * would start far past the end of the file (refcounts counting clusters the file does not have:
 * alloc-limit.ts) is refused before anything is written, and the scan stops there.
 */
async function findFree(img: Qcow2Image, n: number, reserved: Reserved, what: string): Promise<number> {
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const maxCluster = Math.floor(MAX_CLUSTER_OFFSET / img.clusterSize);
  let c = stateOf(img).freeClusterIndex;
  const endCluster = Math.max(Math.ceil(img.store.size() / img.clusterSize), c);
  const limit = allocationLimit(img, endCluster);
  let runStart = c;
  let runLen = 0;
  for (;;) {
    const r = Math.floor(c / per);
    const block = await loadRefblock(img, r);
    const end = (r + 1) * per;
    if (!block && reserved.length === 0) {
      if (runLen === 0) runStart = c;
      const take = Math.min(end - c, n - runLen);
      runLen += take;
      c += take;
      if (runLen === n) break;
    } else {
      for (; c < end; c++) {
        const free = (!block || getRefcount(block, c - r * per, order) === 0) && !inReserved(reserved, c);
        if (free) {
          if (runLen === 0) runStart = c;
          if (++runLen === n) break;
        } else {
          runLen = 0;
        }
      }
      if (runLen === n) break;
    }
    if (c - runLen > limit) refuseFarAllocation(img, what, endCluster, limit);
    if (c > maxCluster) {
      throw new QcowError('IMAGE_TOO_BIG', `No room for ${n} clusters below the largest host offset`, { clusters: n });
    }
  }
  if (runStart > limit) refuseFarAllocation(img, what, endCluster, limit);
  return runStart;
}

/**
 * Allocate `n` contiguous host clusters, first fit (QEMU's qcow2_alloc_clusters): their refcounts
 * are set to 1 (and written) before the offset is returned. `what` names the use in errors
 * ("L2 table", "data cluster", ...). Refuses to hand out cluster 0 or a cluster known to hold
 * metadata (a corrupt refcount): QcowError('METADATA_CORRUPT'), "Preventing invalid allocation".
 */
export async function allocClusters(img: Qcow2Image, n: number, what = 'cluster'): Promise<number> {
  if (!Number.isSafeInteger(n) || n <= 0) throw new QcowError('INVALID_ARGUMENT', `Cannot allocate ${n} clusters`, { clusters: n });
  const per = refblockEntriesOf(img);
  for (let attempt = 0; ; attempt++) {
    if (attempt > 1000) throw new QcowError('INTERNAL', 'cluster allocation did not converge', { clusters: n });
    const start = await findFree(img, n, [], what);
    assertNotMetadata(img, start, n, what);
    // QEMU finds the run, then meets the missing refcount block while counting it: the block goes
    // to the first free cluster after the run, the counts already made are rolled back and the
    // search starts over from the run (-EAGAIN). Doing the same gives QEMU's layout (checked
    // byte for byte against qemu-img create -o preallocation=metadata with 512-byte clusters).
    let missing = -1;
    for (let r = Math.floor(start / per); r <= Math.floor((start + n - 1) / per); r++) {
      if (!regionPresent(img, r)) { missing = r; break; }
    }
    if (missing >= 0) {
      const s = stateOf(img);
      s.freeClusterIndex = start + n;
      await ensureRefblock(img, missing, [], true, Math.max(start, missing * per));
      s.freeClusterIndex = Math.min(s.freeClusterIndex, start);
      continue;
    }
    const deltas: RefcountDeltas = new Map();
    for (let c = start; c < start + n; c++) deltas.set(c, 1);
    await applyDeltas(img, deltas, []);
    stateOf(img).freeClusterIndex = start + n;
    return start * img.clusterSize;
  }
}

/** Drop one reference from every cluster touched by the byte range (QEMU's qcow2_free_clusters). */
export async function freeClusters(img: Qcow2Image, hostOffset: number, length: number): Promise<void> {
  await updateRefcount(img, hostOffset, length, -1);
}

// ---- the allocation guard -----------------------------------------------------------------------

/**
 * QEMU signals corruption rather than allocate over the header or live metadata (a refcount of 0
 * on a metadata cluster means the refcounts are wrong). We refuse the same way, without writing.
 */
function assertNotMetadata(img: Qcow2Image, start: number, n: number, what: string): void {
  if (start === 0) {
    throw new QcowError('METADATA_CORRUPT', `Preventing invalid allocation of ${what} at offset 0`, { structure: what, offset: 0 });
  }
  const hit = metadataClusters(img).firstIn(start, n);
  if (hit) {
    const [c, owner] = hit;
    throw new QcowError('METADATA_CORRUPT',
      `Preventing invalid allocation of ${what} at offset ${hex(c * img.clusterSize)} (overlaps with ${owner}); the refcounts are corrupt, run a check with repair`,
      { structure: what, offset: c * img.clusterSize, overlapsWith: owner });
  }
}

function metadataClusters(img: Qcow2Image): MetadataClusters {
  const s = stateOf(img);
  s.metadata ??= MetadataClusters.of(img);
  return s.metadata;
}

/** Record a newly allocated metadata cluster for the guard (L2 tables, L1 copies, tables). */
export function noteMetadata(img: Qcow2Image, hostOffset: number, length: number, name: string): void {
  stateOf(img).metadata?.addBytes(hostOffset, Math.max(1, length), img.clusterSize, name);
}

