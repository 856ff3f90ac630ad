// Where metadata lives (QEMU's QCOW2_OL_* sections) and what a write or an allocation would
// overlap: the one enumeration of the header, the tables, the refcount blocks and the L2 tables
// that the allocation guard (allocator.ts, snapshot-commit.ts), the writes' pre-write check
// (write.ts) and the check's repairs (QEMU's qcow2_check_metadata_overlap, rebuild.ts) all ask.
import { QcowError, hex } from '../errors.ts';
import { entriesDecoded } from '../work-count.ts';
import * as C from '../format/constants.ts';
import { l1L2Offset } from '../format/entries.ts';
import { reftableEntry, usedReftableIndices } from '../format/refcount.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { reftableSize } from './refcount.ts';

/** QEMU's metadata overlap sections (QCOW2_OL_*), named as its messages name them, in its bit order. */
export type MetadataSection =
  | 'qcow2_header' | 'active L1 table' | 'active L2 table' | 'refcount table' | 'refcount block'
  | 'snapshot table' | 'inactive L1 table' | 'inactive L2 table' | 'bitmap directory';

/**
 * Every piece of metadata the in-memory structures know of (all but the snapshots' L2 tables,
 * which need reads: inactiveL2Clusters), section by section in QEMU's bit order, as byte ranges.
 * `skip`: sections left out.
 */
function forEachMetadata(
  img: Qcow2Image, visit: (section: MetadataSection, offset: number, bytes: number) => boolean | void, skip: readonly MetadataSection[] = [],
): void {
  const h = img.header;
  const cs = img.clusterSize;
  const want = (s: MetadataSection): boolean => !skip.includes(s);
  // the tables in memory it goes through, for a caller that budgets work (a walk per write is quadratic)
  entriesDecoded((want('active L2 table') ? h.l1Size : 0) + (want('refcount block') ? reftableSize(img) : 0) + img.snapshots.length);
  // visit returns true to stop the walk
  if (want('qcow2_header') && visit('qcow2_header', 0, cs)) return;
  if (want('active L1 table') && visit('active L1 table', h.l1TableOffset, h.l1Size * 8)) return;
  if (want('active L2 table')) {
    for (let i = 0; i < h.l1Size; i++) {
      const off = l1L2Offset(img.l1Table, i);
      if (off !== 0 && visit('active L2 table', off, cs)) return;
    }
  }
  if (want('refcount table') && visit('refcount table', h.refcountTableOffset, h.refcountTableClusters * cs)) return;
  if (want('refcount block')) {
    for (const r of usedReftableIndices(img.reftable, reftableSize(img))) {
      const off = reftableEntry(img.reftable, r);
      if (off !== 0 && visit('refcount block', off, cs)) return;
    }
  }
  if (want('snapshot table') && h.nbSnapshots > 0 && visit('snapshot table', h.snapshotsOffset, img.snapshotsSize)) return;
  if (want('inactive L1 table')) for (const sn of img.snapshots) if (visit('inactive L1 table', sn.l1TableOffset, sn.l1Size * 8)) return;
  // QEMU checks the bitmap directory only while the bitmaps extension is consistent
  if (want('bitmap directory') && h.bitmaps && (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n) {
    visit('bitmap directory', h.bitmaps.bitmapDirectoryOffset, h.bitmaps.bitmapDirectorySize);
  }
}

/**
 * Where metadata lives, by host cluster: single clusters (refcount blocks, L2 tables) in a map,
 * multi-cluster tables (L1 tables, the refcount and snapshot tables) as ranges, so a hostile
 * header claiming huge tables costs one entry per table, not one per cluster.
 */
export class MetadataClusters {
  private readonly singles = new Map<number, string>();
  private readonly ranges: Array<readonly [number, number, string]> = [];

  /** The clusters of `img`'s metadata (the first section that claims a cluster names it). */
  static of(img: Qcow2Image, skip: readonly MetadataSection[] = []): MetadataClusters {
    const m = new MetadataClusters();
    forEachMetadata(img, (section, offset, bytes) => m.addBytes(offset, bytes, img.clusterSize, section), skip);
    return m;
  }

  /** Bytes [offset, offset + bytes) hold `name` (nothing for an empty range). */
  addBytes(offset: number, bytes: number, clusterSize: number, name: string): void {
    if (bytes <= 0) return;
    this.addRange(Math.floor(offset / clusterSize), Math.floor((offset + bytes - 1) / clusterSize) + 1, name);
  }

  /** Clusters [first, end) hold `name` (the first name recorded for a cluster wins). */
  addRange(first: number, end: number, name: string): void {
    if (end - first === 1) {
      if (!this.singles.has(first)) this.singles.set(first, name);
    } else if (end > first) {
      this.ranges.push([first, end, name]);
    }
  }

  /** What cluster `c` holds, if it is metadata. */
  ownerOf(c: number): string | undefined {
    return this.firstIn(c, 1)?.[1];
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

/**
 * QEMU's qcow2_check_metadata_overlap in its default "cached" mode (every section but inactive L2
 * tables): the first section (in QEMU's bit order, as its message names it) that the
 * cluster-aligned range around [offset, offset + size) would overwrite.
 */
export function metadataOverlap(img: Qcow2Image, offset: number, size: number, ignore: readonly MetadataSection[] = []): MetadataSection | null {
  if (size === 0) return null;
  const cs = img.clusterSize;
  const start = Math.floor(offset / cs) * cs;
  const end = Math.ceil((offset + size) / cs) * cs;
  let hit: MetadataSection | null = null;
  forEachMetadata(img, (section, o, n) => {
    if (n > 0 && o < end && start < o + n) hit = section;
    return hit !== null;
  }, ignore);
  return hit;
}

/** Where the refcount table or a refcount block lies on other metadata (refcountStructureOverlap). */
export interface RefcountOverlap {
  structure: 'refcount table' | 'refcount block';
  /** The refcount block's reftable index. */
  index?: number;
  offset: number;
  /** What else lives there. */
  owner: MetadataSection;
}

/**
 * The first refcount structure that lies on other metadata the in-memory structures know of
 * (the header, an L1 table, an active L2 table, the snapshot table, the bitmap directory, the
 * refcount table itself, another refcount block): its refcounts are then that structure's bytes,
 * not refcounts. No reads; linear in the tables' sizes. Null if none (or if only a snapshot's L2
 * table or guest data is hit, which needs reads; the allocators' limit catches what that does).
 */
export function refcountStructureOverlap(img: Qcow2Image): RefcountOverlap | null {
  const cs = img.clusterSize;
  const h = img.header;
  const tableFirst = Math.floor(h.refcountTableOffset / cs);
  const tableEnd = tableFirst + h.refcountTableClusters;
  const blockAt = new Map<number, number>(); // cluster → reftable index
  for (const r of usedReftableIndices(img.reftable, reftableSize(img))) {
    const off = reftableEntry(img.reftable, r);
    if (off === 0 || off % cs !== 0) continue;
    const c = off / cs;
    if (c >= tableFirst && c < tableEnd) return { structure: 'refcount block', index: r, offset: off, owner: 'refcount table' };
    if (blockAt.has(c)) return { structure: 'refcount block', index: r, offset: off, owner: 'refcount block' };
    blockAt.set(c, r);
  }
  const blocks = [...blockAt.keys()].sort((a, b) => a - b);
  let hit: RefcountOverlap | null = null;
  // the table first (a moved table is what makes every block wrong), then the blocks
  forEachMetadata(img, (section, offset, bytes) => {
    if (bytes <= 0 || Math.floor((offset + bytes - 1) / cs) < tableFirst || Math.floor(offset / cs) >= tableEnd) return false;
    hit = { structure: 'refcount table', offset: h.refcountTableOffset, owner: section };
    return true;
  }, ['refcount table', 'refcount block']);
  if (hit) return hit;
  forEachMetadata(img, (section, offset, bytes) => {
    if (bytes <= 0) return false;
    const first = Math.floor(offset / cs);
    const end = Math.floor((offset + bytes - 1) / cs) + 1;
    // the lowest refcount block at or after `first`
    let lo = 0;
    let hi = blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (blocks[mid]! < first) lo = mid + 1;
      else hi = mid;
    }
    const c = blocks[lo];
    if (c !== undefined && c < end) {
      hit = { structure: 'refcount block', index: blockAt.get(c)!, offset: c * cs, owner: section };
      return true;
    }
    return false;
  }, ['refcount table', 'refcount block']);
  return hit;
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
  forEachMetadata(img, (section, offset, bytes) => {
    if (bytes <= 0) return;
    if (bytes === cs && offset % cs === 0) {
      // one cluster (an L2 table, a refcount block): a lookup, not a loop over the targets
      if (want.has(offset / cs) && !(section === 'active L2 table' && l2Targets.has(offset))) fail(offset / cs, section);
      return;
    }
    for (const c of want.keys()) if (c * cs < offset + bytes && offset < (c + 1) * cs) fail(c, section);
  });
  if (checkInactiveL2 && img.snapshots.length > 0) {
    const inactive = await inactiveL2Clusters(img);
    for (const c of want.keys()) if (inactive.has(c)) fail(c, 'inactive L2 table');
  }
}

/** The host clusters of the snapshots' L2 tables (kept by the image until its tables change). */
async function inactiveL2Clusters(img: Qcow2Image): Promise<Set<number>> {
  const hit = img.allocation.inactiveL2;
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
  img.allocation.inactiveL2 = set;
  return set;
}
