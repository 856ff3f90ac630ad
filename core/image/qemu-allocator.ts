// QEMU's cluster allocator from a fresh process (block/qcow2-refcount.c), for the settle into
// QEMU's layout after a snapshot operation (snapshot-settle.ts): where qemu-img puts what it
// allocates, with the refcount blocks it adds on the way and the refcount table it grows.
import { getRefcount, reftableEntry } from '../format/refcount.ts';
import * as C from '../format/constants.ts';
import { allocationLimit } from './alloc-limit.ts';
import { refcountBlocksNeeded } from './allocator.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { loadRefblock, refblockEntriesOf } from './refcount.ts';

/**
 * The refcounts the allocator searches: by default the image's own; the settle's placement of
 * the bitmaps QEMU stores on close (snapshot-settle.ts) gives it QEMU's refcounts after the
 * operation, which are the published ones plus the settle's changes.
 */
export interface RefcountView {
  /** The refcount table: which ranges have a refcount block. */
  reftable: Uint8Array;
  /** Refcount block `rb` (a range the table covers; null reads as all zeros). */
  block(rb: number): Promise<Uint8Array | null>;
  /** Clusters with refcount 0 that QEMU would not take (passed over by an earlier search). */
  unavailable?: ReadonlySet<number>;
}

/**
 * QEMU's cluster allocator (block/qcow2-refcount.c) from a fresh process, for allocations with
 * nothing freed between: alloc_clusters_noref scans first fit from free_cluster_index (0 on open;
 * a cluster no refcount block counts has refcount 0); qcow2_alloc_clusters then counts the run,
 * and where a cluster of it has no refcount block, alloc_refcount_block takes the next free
 * cluster for one (describing itself when it lies in the range it counts), hooks it into the
 * refcount table and returns EAGAIN, which sends the search back to the run's start. When that
 * cluster lies in another range without a block, QEMU gives that range its block first (the next
 * free cluster, describing itself) and starts again; anything deeper is not modelled.
 */
export class QemuAllocator {
  /** Refcount blocks added: reftable index → cluster. */
  readonly newBlocks = new Map<number, number>();
  /** The refcount table QEMU grew (qcow2_refcount_area), if it did: first cluster and clusters. */
  grownTable: { cluster: number; clusters: number } | null = null;
  /** Clusters allocated so far (runs, blocks, a grown table). */
  private readonly used = new Set<number>();
  /** Clusters freed meanwhile (the old refcount table after it grew). */
  private readonly freed = new Set<number>();
  /** Free clusters the searches passed (every cluster below the free index was searched once). */
  private readonly passedFree = new Set<number>();
  private fci = 0;
  private readonly per: number;
  private readonly view: RefcountView;
  private readonly unavailable: ReadonlySet<number>;
  /** Entries of the image's refcount table, and of QEMU's (after growth). */
  private readonly oldEntries: number;
  private entries: number;
  private blockIndex = -1;
  private block: Uint8Array = new Uint8Array(0);
  /**
   * The one allocation limit of QEMU's layout (alloc-limit.ts): not far past the end of the file
   * as it is now. Past it, alloc() answers null and the shadow layout stays (the shadow commit
   * refuses there, naming the block).
   */
  private readonly limit: number;

  constructor(private readonly img: Qcow2Image, view?: RefcountView) {
    this.view = view ?? { reftable: img.reftable, block: (rb) => loadRefblock(img, rb) };
    this.unavailable = this.view.unavailable ?? new Set();
    this.per = refblockEntriesOf(img);
    this.oldEntries = this.entries = this.view.reftable.length / 8;
    this.limit = allocationLimit(img, Math.ceil(img.store.size() / img.clusterSize));
  }

  private covered(rb: number): boolean {
    return this.newBlocks.has(rb) || (rb < this.oldEntries && reftableEntry(this.view.reftable, rb) !== 0);
  }

  /** Clusters free before the operation that its allocations passed over (below the free index, not taken). */
  skippedFree(): Set<number> {
    const out = new Set<number>();
    for (const c of this.passedFree) if (c < this.fci && !this.used.has(c)) out.add(c);
    return out;
  }

  freedClusters(): Set<number> {
    return new Set(this.freed);
  }

  /** qcow2_alloc_clusters for `n` clusters: the first cluster, or null where QEMU would do what is not modelled (recurse deeper than two blocks). */
  async alloc(n: number): Promise<number | null> {
    for (let guard = 0; guard < 64; guard++) {
      const start = await this.noref(n);
      if (start === null) return null;
      let again = false;
      for (let c = start; c < start + n; c++) {
        const rb = Math.floor(c / this.per);
        if (this.covered(rb)) continue;
        const nb = await this.noref(1);
        if (nb === null) return null;
        const nbBlock = Math.floor(nb / this.per);
        if (nbBlock !== rb && !this.covered(nbBlock)) {
          // Described by a range without a block either: update_refcount(nb) first needs one
          // there, and alloc_refcount_block takes the next free cluster for it, which describes
          // itself when it lies in that range (deeper is not modelled). Its EAGAIN ends this
          // attempt too, nb left free: the search starts again.
          const nb2 = await this.noref(1);
          if (nb2 === null || Math.floor(nb2 / this.per) !== nbBlock) return null;
          this.used.add(nb2);
          this.newBlocks.set(nbBlock, nb2);
          if (nbBlock >= this.entries && !this.growTable(nbBlock, nb, nb2)) return null;
          this.fci = Math.min(this.fci, start);
          again = true;
          break;
        }
        this.used.add(nb);
        this.newBlocks.set(rb, nb);
        if (rb >= this.entries && !this.growTable(rb, c, nb)) return null;
        this.fci = Math.min(this.fci, start); // EAGAIN: try the same clusters again
        again = true;
        break;
      }
      if (!again) {
        for (let c = start; c < start + n; c++) this.used.add(c);
        return start;
      }
    }
    return null;
  }

  /**
   * qcow2_refcount_area from alloc_refcount_block: past everything counted so far, a refcount
   * block for every range without one up to the new table's reach, then the table (half as large
   * again as needed), all counted; the old table is freed (free_cluster_index falls back to it).
   */
  private growTable(rb: number, cluster: number, newBlock: number): boolean {
    const cs = this.img.clusterSize;
    const per = this.per;
    const blocksUsed = Math.ceil(Math.max(cluster + 1, newBlock + 1) / per);
    const start = blocksUsed * per;
    const total = refcountBlocksNeeded(start, cs, this.img.refcountOrder, true);
    let size = total + Math.ceil(total / 2);
    size = Math.ceil(size / (cs / 8)) * (cs / 8);
    if (size * 8 > C.MAX_REFTABLE_SIZE_BYTES || rb >= total || this.grownTable) return false;
    let next = start;
    for (let i = Math.floor(start / per); i < total; i++) {
      if (this.covered(i)) continue;
      this.newBlocks.set(i, next++);
    }
    const clusters = (size * 8) / cs;
    this.grownTable = { cluster: next, clusters };
    for (let c = start; c < next + clusters; c++) this.used.add(c);
    const h = this.img.header;
    const oldFirst = Math.floor(h.refcountTableOffset / cs);
    for (let c = oldFirst; c < oldFirst + h.refcountTableClusters; c++) this.freed.add(c);
    this.fci = Math.min(this.fci, oldFirst);
    this.entries = size;
    return true;
  }

  /** alloc_clusters_noref: the first run of `n` free clusters from free_cluster_index, which moves past it; null past the allocation limit. */
  private async noref(n: number): Promise<number | null> {
    const per = this.per;
    const order = this.img.refcountOrder;
    let start = this.fci;
    let next = this.fci;
    for (let run = 0; run < n;) {
      if (next > this.limit) return null;
      const rb = Math.floor(next / per);
      let free: boolean;
      if (!this.covered(rb) || this.newBlocks.has(rb)) {
        free = !this.used.has(next) && !this.unavailable.has(next);
      } else {
        if (rb !== this.blockIndex) {
          this.block = (await this.view.block(rb)) ?? new Uint8Array(this.img.clusterSize);
          this.blockIndex = rb;
        }
        const block = this.block;
        if (run === 0 && this.freed.size === 0) {
          // skip the used clusters of this block at once
          const i = firstZeroRefcount(block, next - rb * per, per, order);
          next = rb * per + i;
          if (i === per) continue;
        }
        free = (getRefcount(block, next - rb * per, order) === 0 || this.freed.has(next)) && !this.used.has(next) && !this.unavailable.has(next);
      }
      next++;
      if (free) {
        this.passedFree.add(next - 1);
        if (run === 0) start = next - 1;
        run++;
      } else {
        run = 0;
      }
    }
    this.fci = start + n;
    return start;
  }
}

/** The first index from `from` whose refcount is 0 (`per` if none): byte tests for widths of 8 bits and more. */
function firstZeroRefcount(block: Uint8Array, from: number, per: number, order: number): number {
  if (order < 3) {
    let i = from;
    while (i < per && getRefcount(block, i, order) !== 0) i++;
    return i;
  }
  if (order === 4) {
    // the default width: two bytes an entry
    for (let i = from; i < per; i++) if ((block[2 * i]! | block[2 * i + 1]!) === 0) return i;
    return per;
  }
  const w = 1 << (order - 3);
  for (let i = from; i < per; i++) {
    let any = 0;
    for (let k = i * w, e = k + w; k < e; k++) any |= block[k]!;
    if (any === 0) return i;
  }
  return per;
}
