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
import { encodeL1Entry, l1L2Offset, putEntry } from '../format/entries.ts';
import { getRefcount, refcountMax, reftableEntry, setRefcount } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import {
  checkRefcountDeltas, loadRefblock, refblockEntriesOf, reftableSize, type RefcountDeltas,
} from './refcount.ts';

// ---- per-image allocator state ------------------------------------------------------------------

interface AllocState {
  /** QEMU's free_cluster_index: no free cluster below it (0 on open). */
  freeClusterIndex: number;
  /** Host clusters holding metadata, for the "Preventing invalid allocation" guard; null = rebuild. */
  metadata: MetadataClusters | null;
  /** The in-memory structures this state was built from: if another module replaces them (a
   *  repair reloading the image, a snapshot revert), the state is rebuilt. */
  seen: readonly unknown[];
}

const states = new WeakMap<Qcow2Image, AllocState>();

/**
 * Where metadata lives, by host cluster: single clusters (refcount blocks, L2 tables) in a map,
 * multi-cluster tables (L1 tables, the refcount and snapshot tables) as ranges, so a hostile
 * header claiming huge tables costs one entry per table, not one per cluster.
 */
class MetadataClusters {
  private readonly singles = new Map<number, string>();
  private readonly ranges: Array<readonly [number, number, string]> = [];

  /** Clusters [first, end) hold `name` (the first name recorded for a cluster wins). */
  addRange(first: number, end: number, name: string): void {
    if (end - first === 1) {
      if (!this.singles.has(first)) this.singles.set(first, name);
    } else if (end > first) {
      this.ranges.push([first, end, name]);
    }
  }

  set(c: number, name: string): void {
    this.singles.set(c, name);
  }

  /** The lowest cluster of [start, start + n) holding metadata, and its owner; null if none. */
  firstIn(start: number, n: number): readonly [number, string] | null {
    let best: [number, string] | null = null;
    for (const [first, end, name] of this.ranges) {
      if (first < start + n && start < end) {
        const c = Math.max(first, start);
        if (!best || c < best[0]) best = [c, name];
      }
    }
    const limit = best ? best[0] : start + n;
    for (let c = start; c < limit; c++) {
      const owner = this.singles.get(c);
      if (owner !== undefined) return [c, owner];
    }
    return best;
  }
}

function identity(img: Qcow2Image): unknown[] {
  return [img.header, img.l1Table, img.reftable, img.snapshots];
}

function stateOf(img: Qcow2Image): AllocState {
  let s = states.get(img);
  const now = identity(img);
  if (!s) {
    s = { freeClusterIndex: 0, metadata: null, seen: now };
    states.set(img, s);
  } else if (s.seen.some((v, i) => v !== now[i])) {
    s.freeClusterIndex = 0;
    s.metadata = null;
    s.seen = now;
  }
  return s;
}

/** After this module replaced one of the structures itself: keep the state. */
function resync(img: Qcow2Image): void {
  const s = states.get(img);
  if (s) s.seen = identity(img);
}

/**
 * Forget cached knowledge of where metadata lives (the allocation guard rebuilds it). Call after
 * changing structures by other means than this module (snapshot table, L1 moves, repair).
 */
export function invalidateAllocatorState(img: Qcow2Image): void {
  const s = stateOf(img);
  s.metadata = null;
  s.freeClusterIndex = 0;
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
    const x = await findFree(img, 1, reserved);
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
    s.metadata?.set(x, 'refcount block');
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
  img.reftable = newTable;
  img.header.refcountTableOffset = tableCluster * cs;
  img.header.refcountTableClusters = tableClusters;
  resync(img);
  for (const [, offset, block] of blocks) img.refblockCache.set(offset, block);
  const meta = stateOf(img).metadata;
  if (meta) {
    for (const [, offset] of blocks) meta.set(offset / cs, 'refcount block');
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
 * refcount 0, not reserved. Clusters beyond what the reftable covers count as free.
 */
async function findFree(img: Qcow2Image, n: number, reserved: Reserved): Promise<number> {
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const maxCluster = Math.floor(MAX_CLUSTER_OFFSET / img.clusterSize);
  let c = stateOf(img).freeClusterIndex;
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
      if (runLen === n) return runStart;
    } else {
      for (; c < end; c++) {
        const free = (!block || getRefcount(block, c - r * per, order) === 0) && !inReserved(reserved, c);
        if (free) {
          if (runLen === 0) runStart = c;
          if (++runLen === n) return runStart;
        } else {
          runLen = 0;
        }
      }
    }
    if (c > maxCluster) {
      throw new QcowError('IMAGE_TOO_BIG', `No room for ${n} clusters below the largest host offset`, { clusters: n });
    }
  }
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
    const start = await findFree(img, n, []);
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

/** Snapshot L1 bytes the write guard reads at most to learn the inactive L2 tables (hostile tables are bounded). */
const MAX_INACTIVE_L1_BYTES = 64 * 1024 * 1024;

/**
 * QEMU's qcow2_pre_write_overlap_check (mode "all"), made before anything is written: guest data
 * or an L2 table written in place whose host cluster holds other metadata (an L2 entry pointing
 * at the L1 table, a refcount block, a snapshot's L2 table...) is refused. QEMU detects it at
 * write time, marks the image corrupt and fails; we refuse and leave the file as it was.
 * `targets`: host offset → what would be written there; `l2Targets` may be active L2 tables;
 * `checkInactiveL2` off where the targets may rightly be shared with snapshots.
 * Computed from the structures as they are now (not from the allocation guard's cache, which
 * keeps clusters that have since been freed).
 */
export async function assertNoMetadataOverlap(img: Qcow2Image, targets: Map<number, string>, l2Targets: ReadonlySet<number> = new Set(), checkInactiveL2 = true): Promise<void> {
  if (targets.size === 0) return;
  const cs = img.clusterSize;
  const want = new Map<number, string>();
  for (const [off, what] of targets) want.set(Math.floor(off / cs), what);
  const fail = (c: number, owner: string): never => {
    const what = want.get(c)!;
    throw new QcowError('METADATA_CORRUPT',
      `Preventing invalid write of ${what} at offset ${hex(c * cs)} (overlaps with ${owner}); the image is corrupt, run a check with repair`,
      { structure: what, offset: c * cs, overlapsWith: owner });
  };
  for (const c of want.keys()) {
    // beyond what any file can hold (an entry pointing near 2^56): QEMU's write fails with EFBIG
    if ((c + 1) * cs > Number.MAX_SAFE_INTEGER) fail(c, 'the end of any possible file');
  }
  const range = (offset: number, bytes: number, owner: string): void => {
    if (bytes <= 0) return;
    for (const c of want.keys()) if (c * cs < offset + bytes && offset < (c + 1) * cs) fail(c, owner);
  };
  const h = img.header;
  if (want.has(0)) fail(0, 'qcow2_header');
  range(h.l1TableOffset, h.l1Size * 8, 'active L1 table');
  range(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  range(h.snapshotsOffset, img.snapshotsSize, 'snapshot table');
  for (const sn of img.snapshots) range(sn.l1TableOffset, sn.l1Size * 8, 'inactive L1 table');
  if (h.bitmaps && h.bitmaps.bitmapDirectorySize > 0) range(h.bitmaps.bitmapDirectoryOffset, h.bitmaps.bitmapDirectorySize, 'bitmap directory');
  for (let r = 0; r < reftableSize(img); r++) {
    const off = reftableEntry(img.reftable, r);
    if (off !== 0 && want.has(off / cs)) fail(off / cs, 'refcount block');
  }
  for (let i = 0; i < h.l1Size; i++) {
    const off = l1L2Offset(img.l1Table, i);
    if (off !== 0 && want.has(off / cs) && !l2Targets.has(off)) fail(off / cs, 'active L2 table');
  }
  if (checkInactiveL2 && img.snapshots.length > 0) {
    const inactive = await inactiveL2Clusters(img);
    for (const c of want.keys()) if (inactive.has(c)) fail(c, 'inactive L2 table');
  }
}

/** The snapshots' L2 tables, per snapshot list (a new list after every snapshot operation). */
const inactiveCache = new WeakMap<object, Set<number>>();

async function inactiveL2Clusters(img: Qcow2Image): Promise<Set<number>> {
  const hit = inactiveCache.get(img.snapshots);
  if (hit) return hit;
  const set = new Set<number>();
  let budget = MAX_INACTIVE_L1_BYTES;
  for (const sn of img.snapshots) {
    try {
      img.validateSnapshotL1(sn);
    } catch (e) {
      if (e instanceof QcowError) continue; // an invalid snapshot L1 is the check's to report
      throw e;
    }
    const bytes = sn.l1Size * 8;
    if (bytes === 0 || bytes > budget) continue;
    budget -= bytes;
    const table = await img.store.read(sn.l1TableOffset, bytes);
    for (let i = 0; i < sn.l1Size; i++) {
      const off = l1L2Offset(table, i);
      if (off !== 0 && off % img.clusterSize === 0) set.add(off / img.clusterSize);
    }
  }
  inactiveCache.set(img.snapshots, set);
  return set;
}

function metadataClusters(img: Qcow2Image): MetadataClusters {
  const s = stateOf(img);
  if (s.metadata) return s.metadata;
  const cs = img.clusterSize;
  const m = new MetadataClusters();
  const addRange = (offset: number, bytes: number, name: string): void => {
    if (bytes <= 0) return;
    m.addRange(Math.floor(offset / cs), Math.floor((offset + bytes - 1) / cs) + 1, name);
  };
  m.set(0, 'qcow2_header');
  const h = img.header;
  addRange(h.l1TableOffset, h.l1Size * 8, 'active L1 table');
  addRange(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table');
  for (let r = 0; r < reftableSize(img); r++) {
    const off = reftableEntry(img.reftable, r);
    if (off !== 0) addRange(off, 1, 'refcount block');
  }
  addRange(h.snapshotsOffset, img.snapshotsSize, 'snapshot table');
  for (const sn of img.snapshots) addRange(sn.l1TableOffset, sn.l1Size * 8, 'inactive L1 table');
  for (let i = 0; i < h.l1Size; i++) {
    const off = l1L2Offset(img.l1Table, i);
    if (off !== 0) addRange(off, 1, 'active L2 table');
  }
  if (h.bitmaps) addRange(h.bitmaps.bitmapDirectoryOffset, h.bitmaps.bitmapDirectorySize, 'bitmap directory');
  s.metadata = m;
  return m;
}

/** Record a newly allocated metadata cluster for the guard (L2 tables, L1 copies, tables). */
export function noteMetadata(img: Qcow2Image, hostOffset: number, length: number, name: string): void {
  const m = stateOf(img).metadata;
  if (!m) return;
  const cs = img.clusterSize;
  m.addRange(Math.floor(hostOffset / cs), Math.floor((hostOffset + Math.max(1, length) - 1) / cs) + 1, name);
}

/** The refcount width's maximum, re-exported for callers that only import the allocator. */
export function maxRefcount(img: Qcow2Image): number {
  return refcountMax(img.refcountOrder);
}
