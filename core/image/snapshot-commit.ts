// The shadow commit behind every internal-snapshot operation: the new state of the image (active
// L1 and the L2 tables it needs rewritten, snapshot table, refcount blocks, refcount table) is
// built in clusters that are free in the current state, flushed, and published by ONE header
// write of bytes 36..72 (24..72 when the virtual size changes) — l1_size, l1_table_offset,
// refcount_table_offset, refcount_table_clusters, nb_snapshots, snapshots_offset — all inside
// sector 0, so the switch is atomic.
//
// Why not QEMU's in-place order (docs/qcow2-format.md §3.4–3.6)? Its refcount changes and the
// COPIED bits of the active tree live in different clusters, so a crash between them leaves an
// active entry whose COPIED bit disagrees with its refcount, which `qemu-img check` counts as a
// corruption (verified: refcount 2 with COPIED set ⇒ "ERROR OFLAG_COPIED data cluster"). Here
// every refcount change is published together with the references it accounts for, so:
//   - a crash (or any subset of writes lost) before the commit leaves the old image exactly, and
//     the new structures sit in clusters whose refcount is 0: no leak, no corruption;
//   - after the commit the image is exactly the new state, with nothing left to do (no leak);
//   - until another write is made, writing the old header bytes back undoes the operation
//     exactly (nothing the old state uses was overwritten): group operations use this.
// Refcount overflow, underflow and references to clusters with refcount 0 are found while
// planning, before the first write: a refused operation leaves the file untouched.
//
// Memory stays bounded whatever the image size: the changed refcount blocks are kept in a cache
// of OpenOptions.commitRefblockBytes (RefcountOverlay); beyond it, a changed block is given its
// new place at once and written there early (during planning or prepare, always before the flush
// that precedes the commit), and read back when needed again. Such early places are always past
// the file's end as the operation found it (the walk has not yet proved that a refcount of 0
// means unused), so a refusal met after early writes cuts the file back to its old length and
// leaves it byte for byte as it was (PlannedSnapshotOp.abandon).
//
// Refcounts follow QEMU's accounting (§3.1): every L1 entry → L2 table reference counts 1 on the
// L2 cluster and 1 on every host cluster its entries reach (compressed: every cluster its byte
// range touches). An operation is described as trees removed and added; only L2 references that
// differ are walked, one L2 table at a time, on typed arrays without per-entry awaits.
//
// Over 600 lines on purpose: ShadowCommit is one plan whose phases (reference deltas, COPIED bits,
// placement, prepare, commit, rollback) share its state, and its 16-bit hot loops must be module
// functions beside it (see the end of the file); the refcount overlay has its own file.
import { QcowError, hex } from '../errors.ts';
import { alignUp, put32, put64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import {
  compressedDescriptor, encodeL1Entry, entryWords, l1L2Offset, nextUsedEntry, offsetOf, offsetUnalignedMaskLo, OFFSET_MASK_HI, OFFSET_MASK_LO, putEntry,
  QCOW_OFLAG_COMPRESSED_HI, QCOW_OFLAG_COPIED_HI, withCopied,
} from '../format/entries.ts';
import { getRefcount, reftableEntry } from '../format/refcount.ts';
import { encodeSnapshotTable, snapshotTableSize, type Snapshot } from '../format/snapshot-table.ts';
import { readInto } from '../io/store.ts';
import type { Qcow2Image, TablesChange } from './qcow2-image.ts';
import { allocationLimit, refuseFarAllocation } from './alloc-limit.ts';
import { MetadataClusters } from './metadata.ts';
import { RefcountOverlay } from './refcount-overlay.ts';
import { reftableSize } from './refcount.ts';

// entry word masks as module constants, read by the hot loops below
const HI_COPIED = QCOW_OFLAG_COPIED_HI;
const HI_COMPRESSED = QCOW_OFLAG_COMPRESSED_HI;
const HI_OFFSET = OFFSET_MASK_HI;
const LO_OFFSET = OFFSET_MASK_LO;
const TWO32 = 4294967296;

// ---- the plan -----------------------------------------------------------------------------------

/** What an operation wants the image to become. */
export interface CommitRequest {
  /** Operation name for the journal ("snapshot create", ...). */
  operation: string;
  /** The snapshot list afterwards. Entries may use the current active L1's offset (create). */
  snapshots: Snapshot[];
  /** Whether the snapshot table must be rewritten. */
  snapshotsChanged: boolean;
  /** Active L1 entries afterwards (l1Size · 8 bytes); COPIED bits are recomputed. */
  activeL1: Uint8Array;
  /** New virtual size (revert to a snapshot of another size). */
  size?: number;
  /** Snapshots whose L1 tables are dropped, with their tables already read and validated. */
  removed: Array<{ snapshot: Snapshot; table: Uint8Array }>;
  /**
   * Clusters the plan must not use (where QEMU's layout puts new structures, for the settle that
   * follows: snapshot-settle.ts; or in use, whose refcount the settle changes); their refcount
   * blocks get new places too, so that the settle can rewrite the old ones.
   */
  reserved?: ReadonlySet<number>;
  /**
   * First cluster the plan may allocate (the end of QEMU's file, for the settle: what the shadow
   * state puts there is cut off afterwards, and the clusters QEMU leaves free keep their bytes).
   */
  allocFrom?: number;
}

interface Allocation {
  cluster: number;
  count: number;
}

/**
 * A planned operation: nothing written yet, unless it changes more refcount blocks than the
 * overlay keeps in memory (those went early to their new places, clusters nobody uses).
 */
export class ShadowCommit {
  readonly img: Qcow2Image;
  readonly request: CommitRequest;
  readonly overlay: RefcountOverlay;
  /** Old L2 offset → new L2 offset (copies with corrected COPIED bits). */
  readonly l2Copies = new Map<number, number>();
  /**
   * L2 tables of the new active tree that only need COPIED bits cleared and that the current
   * active tree does not use: fixed in place before the commit (a snapshot's COPIED bits are
   * never read, so this changes nothing anyone can see; revert saves a copy of every table).
   */
  readonly l2FixInPlace = new Set<number>();
  newL1 = new Uint8Array(0);
  newL1Offset = 0;
  newL1Size = 0;
  newSnapshotsOffset = 0;
  newSnapshotsSize = 0;
  newSnapshotTable: Uint8Array | null = null;
  newReftable = new Uint8Array(0);
  newReftableOffset = 0;
  newReftableClusters = 0;
  /** Clusters whose refcount drops to 0 (for cache invalidation). */
  private readonly freed: number[] = [];
  private cursor = 1;
  /** Clusters of known metadata in the current state, with what they hold. */
  private metadata = new MetadataClusters();
  /** The header bytes the commit replaces, for rollback. */
  oldCommitBytes: Uint8Array | null = null;
  commitStart = 36;
  prepared = false;
  committed = false;
  private saved: Required<TablesChange> | null = null;

  /**
   * Integer-only cluster → (refcount block, index) arithmetic for the hot loops, valid when
   * cluster_bits + log2(entries per block) ≤ 31 (e.g. 64 KiB clusters with 16-bit refcounts:
   * 16 + 15); other geometries take the floating-point path.
   */
  private readonly geo: { fast: boolean; cb: number; alignMask: number; rbHiMul: number; rbShift: number; idxMask: number };

  private constructor(img: Qcow2Image, request: CommitRequest) {
    this.img = img;
    this.request = request;
    this.overlay = new RefcountOverlay(img, img.commitRefblockBytes, (rb) => this.placeRefblock(rb, true));
    this.appendCursor = Math.max(Math.ceil(img.store.size() / img.clusterSize), request.allocFrom ?? 0);
    this.cursor = Math.max(1, request.allocFrom ?? 1);
    const cb = img.clusterBits;
    const lp = Math.log2(this.overlay.per);
    this.geo = {
      fast: cb + lp <= 31,
      cb,
      alignMask: offsetUnalignedMaskLo(img.clusterSize),
      rbHiMul: cb + lp <= 31 ? 2 ** (32 - cb - lp) : 0,
      rbShift: cb + lp,
      idxMask: this.overlay.per - 1,
    };
  }

  /**
   * Plan the operation: every check and every allocation. No write, unless the changed refcount
   * blocks outgrow the overlay's budget: those are written early to their new places.
   */
  static async plan(img: Qcow2Image, request: CommitRequest): Promise<ShadowCommit> {
    const c = new ShadowCommit(img, request);
    await c.build();
    return c;
  }

  private get cs(): number {
    return this.img.clusterSize;
  }

  private async build(): Promise<void> {
    const img = this.img;
    const req = this.request;
    const h = img.header;
    const cs = this.cs;
    // Known metadata of the current state but the active L2 tables (the new L1 may point at them
    // again): no L2 reference may land there.
    const otherMetadata = MetadataClusters.of(img, ['active L2 table']);

    // 1. L2 references that change: removed trees −1, the old active tree −1 (unless a snapshot
    //    keeps its L1), the new active tree +1. Shared references cancel out.
    const keptL1s = new Set(req.snapshots.map((s) => s.l1TableOffset));
    const activeKept = keptL1s.has(h.l1TableOffset) && h.l1Size > 0;
    const delta = new Map<number, number>();
    const bump = (table: Uint8Array, size: number, d: number, where: string, tableOffset: number): void => {
      for (let i = 0; i < size; i++) {
        const off = l1L2Offset(table, i);
        if (off === 0) continue;
        if (off % cs !== 0) {
          throw new QcowError('METADATA_CORRUPT', `L2 table offset ${hex(off)} unaligned (L1 index: ${hex(i)})`, {
            structure: where, offset: tableOffset + i * 8, l1Index: i, l2Offset: off,
          });
        }
        delta.set(off, (delta.get(off) ?? 0) + d);
      }
    };
    for (const r of req.removed) bump(r.table, r.snapshot.l1Size, -1, 'Snapshot L1 table', r.snapshot.l1TableOffset);
    if (!activeKept) bump(img.l1Table, h.l1Size, -1, 'Active L1 table', h.l1TableOffset);
    const newSize = req.activeL1.length / 8;
    bump(req.activeL1, newSize, +1, 'Active L1 table', h.l1TableOffset);
    // An L2 reference that lands on other metadata (an L1 entry pointing at an L1 table, a
    // refcount block, the header...) means the image is corrupt: refuse before anything is
    // counted through it (QEMU would trip its overlap check half-way and mark the image corrupt).
    for (const off of delta.keys()) {
      const owner = otherMetadata.ownerOf(off / cs);
      if (owner !== undefined) {
        throw new QcowError('METADATA_CORRUPT',
          `L2 table offset ${hex(off)} overlaps with the ${owner}; the image is corrupt, run a check with repair`,
          { structure: 'L2 table', offset: off, overlapsWith: owner });
      }
    }
    // All of it, the active L2 tables too: allocation must never land there (a refcount of 0 on
    // one of these clusters means the refcounts are corrupt).
    this.metadata = MetadataClusters.of(img);

    // 2. Apply them: decrements first, so a cluster moving between trees never looks overflowed.
    const neg = [...delta].filter(([, d]) => d < 0);
    const pos = [...delta].filter(([, d]) => d > 0);
    for (const [l2, d] of [...neg, ...pos]) await this.applyL2Ref(l2, d);
    // L1 tables of removed snapshots are freed.
    for (const r of req.removed) await this.addRange(r.snapshot.l1TableOffset, r.snapshot.l1Size * 8, -1, 'Snapshot L1 table');

    // 3. The new active tree: L2 tables whose COPIED bits are now wrong are copied (never
    //    changed in place: the old state still uses them until the commit).
    const l1 = req.activeL1.slice();
    const uses = new Map<number, number>();
    for (let i = 0; i < newSize; i++) {
      const off = l1L2Offset(l1, i);
      if (off !== 0) uses.set(off, (uses.get(off) ?? 0) + 1);
    }
    const oldActiveL2s = new Set<number>();
    for (let i = 0; i < h.l1Size; i++) {
      const off = l1L2Offset(img.l1Table, i);
      if (off !== 0) oldActiveL2s.add(off);
    }
    for (const [off, k] of uses) {
      const need = await this.l2CopiedNeeds(off, !oldActiveL2s.has(off));
      if (need === 'none') continue;
      if (need === 'clear') {
        this.l2FixInPlace.add(off);
      } else {
        const copy = await this.alloc(1, 'L2 table copy', k);
        this.l2Copies.set(off, copy.cluster * cs);
        // The new tree points at the copy: the original loses those references (its data keeps
        // its count, reached through the copy instead).
        await this.addRange(off, cs, -k, 'L2 table');
      }
    }
    for (let i = 0; i < newSize; i++) {
      let off = l1L2Offset(l1, i);
      if (off === 0) {
        putEntry(l1, i * 8, 0, 0);
        continue;
      }
      off = this.l2Copies.get(off) ?? off;
      await this.ready([Math.floor(off / cs / this.overlay.per)], false);
      const copied = this.overlay.get(off / cs) === 1;
      putEntry(l1, i * 8, ...encodeL1Entry(off, copied));
    }
    for (const [off, d] of delta) {
      if (d >= 0) continue;
      await this.ready([Math.floor(off / cs / this.overlay.per)], false);
      if (this.overlay.get(off / cs) === 0) this.freed.push(off / cs);
    }
    this.newL1 = l1;
    this.newL1Size = newSize;

    // 4. Where the active L1 goes: unchanged tables stay; otherwise a new copy.
    const sameL1 = !activeKept && newSize === h.l1Size && bytesEqual(l1, img.l1Table);
    if (sameL1) {
      this.newL1Offset = h.l1TableOffset;
    } else {
      if (!activeKept) await this.addRange(h.l1TableOffset, h.l1Size * 8, -1, 'Active L1 table');
      if (newSize * 8 > C.MAX_L1_SIZE_BYTES) {
        throw new QcowError('TABLE_TOO_LARGE', 'Active L1 table too large', { structure: 'Active L1 table', entries: newSize });
      }
      this.newL1Offset = newSize > 0 ? (await this.alloc(Math.ceil((newSize * 8) / cs), 'active L1 table')).cluster * cs : 0;
    }

    // 5. The snapshot table.
    if (req.snapshotsChanged) {
      const size = snapshotTableSize(req.snapshots);
      if (size > C.MAX_SNAPSHOTS_SIZE) {
        throw new QcowError('SNAPSHOT_LIMIT', `Snapshot table would be ${size} bytes, more than the ${C.MAX_SNAPSHOTS_SIZE} QEMU accepts`, {
          structure: 'snapshot table', size,
        });
      }
      if (h.nbSnapshots > 0) await this.addRange(h.snapshotsOffset, img.snapshotsSize, -1, 'snapshot table');
      this.newSnapshotsSize = size;
      this.newSnapshotsOffset = size > 0 ? (await this.alloc(Math.ceil(size / cs), 'snapshot table')).cluster * cs : 0;
      this.newSnapshotTable = layoutSnapshotTable(req.snapshots, this.newSnapshotsOffset);
    } else {
      this.newSnapshotsOffset = h.snapshotsOffset;
      this.newSnapshotsSize = img.snapshotsSize;
    }

    // 6. Refcount blocks and the refcount table, copied where they change (and those counting
    //    reserved clusters, which the settle rewrites in place).
    for (const c of req.reserved ?? []) {
      const rb = Math.floor(c / this.overlay.per);
      await this.overlay.load(rb);
      this.overlay.block(rb);
      await this.trim([rb]);
    }
    await this.placeRefcountStructures();
    this.oldCommitBytes = (await img.store.read(0, 72)).slice(this.commitStartFor(), 72);
  }

  private commitStartFor(): number {
    this.commitStart = this.request.size !== undefined && this.request.size !== this.img.header.size ? 24 : 36;
    return this.commitStart;
  }

  /** ±d on an L2 table and on every cluster its entries reach. */
  private async applyL2Ref(l2Offset: number, d: number): Promise<void> {
    const ov = this.overlay;
    const l2ci = l2Offset / this.cs;
    await ov.load(Math.floor(l2ci / ov.per));
    ov.addRef(l2ci, d, 'L2 table');
    const t = await this.scanL2(l2Offset);
    // Synchronous runs, each stopping at an entry whose refcount block is not ready.
    const n = this.img.l2Entries;
    for (let j = this.applyEntries(t, l2Offset, d, 0); j < n; j = this.applyEntries(t, l2Offset, d, j)) await this.ready(this.wanted);
    await this.trim();
  }

  /** Refcount blocks the last synchronous pass stopped for (an entry's: two for a compressed one across blocks). */
  private wanted: number[] = [];

  /** Load refcount blocks a synchronous pass needs, then trim the overlay without dropping them. */
  private async ready(rbs: number[], forChange = true): Promise<void> {
    for (const rb of rbs) await this.overlay.load(rb, forChange);
    await this.trim(rbs);
  }

  /**
   * Give changed refcount block rb its new place. Its old place is freed later (trim() below):
   * the overlay's trim places the blocks it evicts, and freeing there would load the blocks that
   * count the old places, one more per eviction.
   */
  private async placeRefblock(rb: number, early = false): Promise<void> {
    const ov = this.overlay;
    if (ov.homes.has(rb)) return;
    const a = early ? await this.allocPastEnd('refcount block') : await this.alloc(1, 'refcount block');
    ov.homes.set(rb, a.cluster * this.cs);
    const old = rb < reftableSize(this.img) ? reftableEntry(this.img.reftable, rb) : 0;
    if (old !== 0) this.oldRefblocks.push(old);
  }

  /** Old places of refcount blocks given a new one, not freed yet (never allocated meanwhile: their refcount on disk is not 0). */
  private readonly oldRefblocks: number[] = [];

  /** Trim the overlay (keeping `keep`), then free the old places of the blocks it placed (which may place more). */
  private async trim(keep: readonly number[] = []): Promise<void> {
    await this.overlay.trim(keep);
    for (let old = this.oldRefblocks.pop(); old !== undefined; old = this.oldRefblocks.pop()) {
      await this.addRange(old, this.cs, -1, 'refcount block');
    }
  }

  private unaligned(l2Offset: number, j: number, hi: number, lo: number): never {
    const off = offsetOf(hi, lo);
    throw new QcowError('METADATA_CORRUPT', `Cluster allocation offset ${hex(off)} unaligned (L2 offset: ${hex(l2Offset)}, L2 index: ${hex(j)})`, {
      structure: 'L2 table', offset: l2Offset + j * this.img.l2EntrySize, l2Offset, l2Index: j, hostOffset: off,
    });
  }

  /**
   * The ±d walk over one L2 table's entries from entry `from` (synchronous, the hot loop).
   * Returns the first entry it could not take because a refcount block it needs is not ready
   * (those blocks in `wanted`; nothing done for that entry), or the entry count when done.
   */
  private applyEntries(t: Uint8Array, l2Offset: number, d: number, from: number): number {
    const img = this.img;
    const ov = this.overlay;
    const cs = this.cs;
    const per = ov.per;
    const es = img.l2EntrySize;
    const n = img.l2Entries;
    const { fast, cb, alignMask, rbHiMul, rbShift, idxMask } = this.geo;
    const sixteen = fast && ov.order === 4;
    const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    const w = entryWords(t);
    let lastRb = -1;
    let zero: Uint8Array | null = null;
    let blk: Uint8Array | null = null;
    let blkDv: DataView | null = null;
    for (let j = from; j < n; j++) {
      if (w !== null && (w[j * (es >>> 2)]! | w[j * (es >>> 2) + 1]!) === 0) {
        j = nextUsedEntry(w, j + 1, n, es >>> 2) - 1;
        continue;
      }
      if (sixteen && blkDv !== null) {
        j = addRefRun16(dv, j, n, es, lastRb, zero!, blkDv, d, ov.max, cb, alignMask, rbHiMul, rbShift, idxMask, w);
        if (j >= n) break;
      }
      const at = j * es;
      const hi = (t[at]! << 24) | (t[at + 1]! << 16) | (t[at + 2]! << 8) | t[at + 3]!;
      const lo = (t[at + 4]! << 24) | (t[at + 5]! << 16) | (t[at + 6]! << 8) | t[at + 7]!;
      if ((hi & HI_COMPRESSED) !== 0) {
        const dsc = compressedDescriptor(hi >>> 0, lo >>> 0, img.clusterBits);
        const first = Math.floor(dsc.hostOffset / cs);
        const last = Math.floor((dsc.hostOffset + dsc.compressedSize - 1) / cs);
        const rbs = new Set<number>();
        for (let c = first; c <= last; c++) rbs.add(Math.floor(c / per));
        for (const rb of rbs) {
          if (!ov.isReady(rb)) {
            this.wanted = [...rbs];
            return j;
          }
        }
        for (let c = first; c <= last; c++) ov.addRef(c, d, 'Compressed cluster');
        continue;
      }
      const hiO = hi & HI_OFFSET;
      if (hiO === 0 && (lo & LO_OFFSET) === 0) continue;
      let rb: number;
      let idx: number;
      if (fast) {
        if ((lo & alignMask) !== 0) this.unaligned(l2Offset, j, hi, lo);
        rb = hiO * rbHiMul + (lo >>> rbShift);
        idx = (lo >>> cb) & idxMask;
      } else {
        const off = hiO * TWO32 + ((lo & LO_OFFSET) >>> 0);
        if (off % cs !== 0) this.unaligned(l2Offset, j, hi, lo);
        const ci = off / cs;
        rb = Math.floor(ci / per);
        idx = ci - rb * per;
      }
      if (rb !== lastRb) {
        if (!ov.isReady(rb)) {
          this.wanted = [rb];
          return j;
        }
        lastRb = rb;
        blk = ov.block(rb);
        zero = ov.zeroBits(rb)!;
        blkDv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
      }
      ov.addRefIn(zero!, blk!, idx, rb * per + idx, d, 'Data cluster');
    }
    return n;
  }

  /** ±d on every cluster touched by a byte range of metadata (tables being freed). */
  private async addRange(offset: number, bytes: number, d: number, what: string): Promise<void> {
    if (bytes <= 0) return;
    const cs = this.cs;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + bytes - 1) / cs);
    const ov = this.overlay;
    for (let c = first; c <= last; c++) {
      const rb = Math.floor(c / ov.per);
      await ov.load(rb);
      ov.addRef(c, d, what);
      if (d < 0 && ov.get(c) === 0) this.freed.push(c);
      await ov.trim([rb]);
    }
  }

  /**
   * Walk an L2 table of the new active tree with the refcounts afterwards: `fix` rewrites each
   * COPIED bit (set exactly where the refcount is 1, never on compressed entries) and reports
   * whether anything changed; without `fix`, stops at the first wrong bit.
   */
  private async copiedPass(t: Uint8Array, fix: boolean | 'needs-set'): Promise<boolean | 'clear'> {
    // Synchronous runs, each stopping at an entry whose refcount block is not loaded; the next
    // run takes that entry again once it is.
    this.passChanged = false;
    for (let from = 0; ;) {
      const r = this.copiedEntries(t, fix, from);
      if (typeof r !== 'number') return r;
      from = r;
      await this.ready(this.wanted, false);
    }
  }

  /** Whether the COPIED pass in progress changed (or, 'needs-set', would clear) a bit before the entry it stopped at. */
  private passChanged = false;

  /**
   * COPIED check/fix over an L2 table from entry `from`; a number: the entry it stopped at
   * because its refcount block is not loaded (that block in `wanted`, the entry untouched).
   */
  private copiedEntries(t: Uint8Array, fix: boolean | 'needs-set', from: number): boolean | 'clear' | number {
    const img = this.img;
    const ov = this.overlay;
    const cs = this.cs;
    const per = ov.per;
    const es = img.l2EntrySize;
    const n = img.l2Entries;
    const { fast, cb, rbHiMul, rbShift, idxMask } = this.geo;
    const sixteen = fast && ov.order === 4;
    const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    const w = entryWords(t);
    const flips = this.flips;
    flips[0] = 0;
    let changed = this.passChanged;
    let lastRb = -1;
    let cur: Uint8Array | null = null;
    let curDv: DataView | null = null;
    for (let j = from; j < n; j++) {
      if (w !== null && (w[j * (es >>> 2)]! | w[j * (es >>> 2) + 1]!) === 0) {
        j = nextUsedEntry(w, j + 1, n, es >>> 2) - 1;
        continue;
      }
      if (sixteen && curDv !== null) {
        j = copiedRun16(dv, j, n, es, lastRb, curDv, fix === true, cb, rbHiMul, rbShift, idxMask, flips, w);
        if (flips[0]! > 0) changed = true;
        if (j >= n) break;
      }
      const at = j * es;
      const hi = (t[at]! << 24) | (t[at + 1]! << 16) | (t[at + 2]! << 8) | t[at + 3]!;
      let want: boolean;
      if ((hi & HI_COMPRESSED) !== 0) {
        want = false;
      } else {
        const lo = (t[at + 4]! << 24) | (t[at + 5]! << 16) | (t[at + 6]! << 8) | t[at + 7]!;
        const hiO = hi & HI_OFFSET;
        if (hiO === 0 && (lo & LO_OFFSET) === 0) continue;
        let rb: number;
        let idx: number;
        if (fast) {
          rb = hiO * rbHiMul + (lo >>> rbShift);
          idx = (lo >>> cb) & idxMask;
        } else {
          const ci = (hiO * TWO32 + ((lo & LO_OFFSET) >>> 0)) / cs;
          rb = Math.floor(ci / per);
          idx = Math.floor(ci) - rb * per;
        }
        if (rb !== lastRb) {
          if (!ov.isLoaded(rb)) {
            this.passChanged = changed;
            this.wanted = [rb];
            return j;
          }
          lastRb = rb;
          cur = ov.current(rb) ?? null;
          curDv = cur ? new DataView(cur.buffer, cur.byteOffset, cur.byteLength) : null;
        }
        want = cur !== null && (ov.order === 4 ? (cur[2 * idx]! << 8) | cur[2 * idx + 1]! : getRefcount(cur, idx, ov.order)) === 1;
      }
      if (((hi & HI_COPIED) !== 0) !== want) {
        if (fix === 'needs-set') {
          if (want) return true;
          changed = true; // only bits to clear so far
          continue;
        }
        if (!fix) return true;
        changed = true;
        t[at] = withCopied(hi, want) >>> 24; // the entry's first byte holds COPIED
      }
    }
    return fix === 'needs-set' && changed ? 'clear' : changed;
  }

  /** Bits copiedRun16 flipped in the table being fixed. */
  private readonly flips = new Int32Array(1);

  /**
   * What an L2 table of the new active tree needs: nothing, only COPIED bits cleared, or a copy
   * (a bit to set, or `mayFixInPlace` false and any change). One pass, stopping early when it can.
   */
  private async l2CopiedNeeds(l2Offset: number, mayFixInPlace: boolean): Promise<'none' | 'clear' | 'copy'> {
    const t = await this.scanL2(l2Offset);
    const r = await this.copiedPass(t, mayFixInPlace ? 'needs-set' : false);
    if (r === 'clear') return 'clear';
    return r ? 'copy' : 'none';
  }

  /**
   * The L2 table copy: COPIED set exactly where the refcount afterwards is 1, cleared on
   * compressed entries. Built in `into` (one scratch buffer for all copies).
   */
  private async l2CopyBytes(l2Offset: number, into: Uint8Array): Promise<Uint8Array> {
    await this.readL2Into(l2Offset, into);
    await this.copiedPass(into, true);
    return into;
  }

  /**
   * An L2 table for one pass of the planning walks, in a buffer reused for every table (valid
   * until the next call). Tables are not cached: the walks visit each once or twice, and keeping
   * them (or fresh memory for each) cost more than reading them again.
   */
  private async scanL2(l2Offset: number): Promise<Uint8Array> {
    this.l2Buf ??= new Uint8Array(this.cs);
    await this.readL2Into(l2Offset, this.l2Buf);
    return this.l2Buf;
  }

  private l2Buf: Uint8Array | null = null;

  /** The L2 table at `l2Offset` into `out`: the image's cached copy if it has one (written through, so the same bytes), else the file's. */
  private async readL2Into(l2Offset: number, out: Uint8Array): Promise<void> {
    const cached = this.img.l2Cache.get(l2Offset);
    if (cached) out.set(cached);
    else await readInto(this.img.store, l2Offset, out);
  }

  /**
   * First-fit run of `count` clusters free in the current state (refcount 0 before and after,
   * so nothing the old state uses is ever written) and not known metadata.
   */
  private async alloc(count: number, what: string, refcount = 1): Promise<Allocation> {
    const ov = this.overlay;
    const per = ov.per;
    const order = ov.order;
    const maxCluster = Math.floor(C.MAX_CLUSTER_OFFSET / this.cs);
    if (refcount > ov.max) {
      throw new QcowError('REFCOUNT_OVERFLOW', `A new ${what} would need refcount ${refcount}, more than refcount_bits=${2 ** order} can hold`, {
        structure: what, refcount, refcountBits: 2 ** order,
      });
    }
    let c = this.cursor;
    let runStart = c;
    let runLen = 0;
    // never far past the end of the file (or of what this plan placed): alloc-limit.ts
    const endCluster = Math.max(this.appendCursor, this.highWater);
    const limit = allocationLimit(this.img, endCluster);
    for (;;) {
      if (c - runLen > limit) refuseFarAllocation(this.img, what, endCluster, limit);
      if (c + count > maxCluster) {
        throw new QcowError('IMAGE_TOO_BIG', `No room for ${count} clusters below the largest host offset`, { clusters: count });
      }
      const rb = Math.floor(c / per);
      // Read, not loaded: a scan over many blocks must not fill the overlay.
      const { data: cur, zero } = await ov.peek(rb);
      const base = rb * per;
      const end = base + per;
      const wc = order === 4 && cur ? new Uint16Array(cur.buffer, cur.byteOffset, per) : null;
      while (c < end) {
        if (runLen === 0 && wc) {
          // Fast skip over used entries (16-bit refcounts, the default): a word zero now, and on
          // disk too (the bitmap of a changed block; an unchanged block is what the disk holds).
          let i = c - base;
          if (zero) while (i < per && (wc[i] !== 0 || ((zero[i >>> 3]! >>> (i & 7)) & 1) === 0)) i++;
          else while (i < per && wc[i] !== 0) i++;
          if (c === this.cursor) this.cursor = base + i;
          c = base + i;
          if (c >= end) break;
        }
        const idx = c - base;
        const free = (!cur || getRefcount(cur, idx, order) === 0) && (!zero || ((zero[idx >>> 3]! >>> (idx & 7)) & 1) !== 0)
          && !this.request.reserved?.has(c);
        if (free && this.metadata.ownerOf(c) !== undefined) {
          throw new QcowError('METADATA_CORRUPT',
            `Preventing invalid allocation of ${what} at offset ${hex(c * this.cs)}: it holds metadata but its refcount is 0; run a check with repair`,
            { structure: what, offset: c * this.cs });
        }
        if (free) {
          if (runLen === 0) runStart = c;
          if (++runLen === count) {
            if (runStart > limit) refuseFarAllocation(this.img, what, endCluster, limit);
            this.highWater = Math.max(this.highWater, runStart + count);
            for (let k = runStart; k < runStart + count; k++) {
              await ov.load(Math.floor(k / per));
              ov.set(k, refcount);
            }
            if (runStart === this.cursor) this.cursor = runStart + count;
            return { cluster: runStart, count };
          }
        } else {
          runLen = 0;
          if (c === this.cursor) this.cursor = c + 1;
        }
        c++;
      }
    }
  }

  /** The first cluster past the file's end as the operation found it (or past the last early placement). */
  private appendCursor: number;
  /** The first cluster past everything this plan allocated. */
  private highWater = 0;

  /**
   * A cluster for a block written early, past the file's end as the operation found it. Early
   * writes happen while the plan still walks the tables, before it knows that every cluster with
   * refcount 0 is really unused (a corrupt refcount may hide a data cluster): they must never land
   * inside the file. A refusal then cuts them off again (PlannedSnapshotOp.abandon).
   */
  private async allocPastEnd(what: string): Promise<Allocation> {
    const saved = this.cursor;
    this.cursor = Math.max(this.cursor, this.appendCursor);
    try {
      const a = await this.alloc(1, what);
      this.appendCursor = a.cluster + a.count;
      return a;
    } finally {
      this.cursor = saved;
    }
  }

  /** Give back an allocation made during planning (never written). */
  private async release(a: Allocation): Promise<void> {
    for (let k = a.cluster; k < a.cluster + a.count; k++) {
      await this.overlay.load(Math.floor(k / this.overlay.per));
      this.overlay.set(k, 0);
    }
    this.cursor = Math.min(this.cursor, a.cluster);
  }

  /**
   * Every changed refcount block gets a new home (changing other blocks, so repeat until none is
   * left), then the refcount table is copied (grown if a block lies beyond it).
   */
  private async placeRefcountStructures(): Promise<void> {
    const img = this.img;
    const h = img.header;
    const cs = this.cs;
    const ov = this.overlay;
    const oldEntries = reftableSize(img);
    let table: Allocation | null = null;
    let oldTableFreed = false;
    for (let round = 0; ; round++) {
      if (round > 64) throw new QcowError('INTERNAL', 'refcount structures did not converge', {});
      // Blocks, to a fixpoint.
      for (let guard = 0; ; guard++) {
        if (guard > 1_000_000) throw new QcowError('INTERNAL', 'refcount blocks did not converge', {});
        await this.trim();
        const todo = [...ov.changed].filter((rb) => !ov.homes.has(rb));
        if (todo.length === 0) break;
        for (const rb of todo.sort((a, b) => a - b)) {
          await this.placeRefblock(rb);
          await this.trim();
        }
      }
      let maxIndex = oldEntries - 1;
      for (const rb of ov.homes.keys()) maxIndex = Math.max(maxIndex, rb);
      const needClusters = Math.max(h.refcountTableClusters, Math.ceil(((maxIndex + 1) * 8) / cs));
      if (table && table.count >= needClusters) break;
      if (table) await this.release(table);
      const clusters = needClusters > h.refcountTableClusters ? Math.ceil(needClusters * 1.5) : needClusters;
      if (clusters * cs > C.MAX_REFTABLE_SIZE_BYTES) {
        throw new QcowError('TABLE_TOO_LARGE', 'Reference count table too large', { structure: 'Reference count table', clusters });
      }
      table = await this.alloc(clusters, 'refcount table');
      if (!oldTableFreed) {
        oldTableFreed = true;
        await this.addRange(h.refcountTableOffset, h.refcountTableClusters * cs, -1, 'refcount table');
      }
    }
    if (this.oldRefblocks.length > 0) throw new QcowError('INTERNAL', 'old refcount blocks left unfreed', {});
    ov.frozen = true;
    const t = new Uint8Array(table.count * cs);
    t.set(img.reftable.subarray(0, Math.min(img.reftable.length, t.length)));
    for (const [rb, off] of ov.homes) putEntry(t, rb * 8, ...encodeL1Entry(off, false));
    this.newReftable = t;
    this.newReftableOffset = table.cluster * cs;
    this.newReftableClusters = table.count;
  }

  // ---- execution ----------------------------------------------------------------------------

  /** Write every new structure (into clusters nobody uses yet) and flush. Invisible until commit(). */
  async prepare(): Promise<void> {
    const img = this.img;
    const cs = this.cs;
    let i = 0;
    // Stores copy or write the bytes before write() resolves, so one buffer serves every copy.
    const scratch = new Uint8Array(cs);
    for (const [from, to] of this.l2Copies) {
      const bytes = await this.l2CopyBytes(from, scratch);
      await img.pwrite(to, bytes, `L2 table copy ${i++} (of ${hex(from)}, COPIED bits recomputed) for the new active L1`);
    }
    for (const off of this.l2FixInPlace) {
      const bytes = await this.l2CopyBytes(off, scratch);
      await img.pwrite(off, bytes, `L2 table at ${hex(off)}: stale COPIED bits cleared in place (not in the active tree before the commit)`);
      img.l2Cache.delete(off);
    }
    if (this.newL1Offset !== img.header.l1TableOffset && this.newL1Size > 0) {
      const padded = new Uint8Array(alignUp(this.newL1.length, cs));
      padded.set(this.newL1);
      await img.pwrite(this.newL1Offset, padded, 'active L1 table (new copy)');
    }
    if (this.newSnapshotTable && this.newSnapshotTable.length > 0) {
      const padded = new Uint8Array(alignUp(this.newSnapshotTable.length, cs));
      padded.set(this.newSnapshotTable);
      await img.pwrite(this.newSnapshotsOffset, padded, 'snapshot table (new copy)');
    }
    await this.overlay.writeBack();
    await img.pwrite(this.newReftableOffset, this.newReftable, 'refcount table (new copy)');
    await img.flush('new structures on disk before the header points at them');
    this.prepared = true;
  }

  /** The header bytes that switch the image to the new state. */
  commitBytes(): Uint8Array {
    const h = this.img.header;
    const b = new Uint8Array(72);
    put64(b, 24, this.request.size ?? h.size);
    put32(b, 32, h.cryptMethod);
    put32(b, 36, this.newL1Size);
    put64(b, 40, this.newL1Offset);
    put64(b, 48, this.newReftableOffset);
    put32(b, 56, this.newReftableClusters);
    put32(b, 60, this.request.snapshots.length);
    put64(b, 64, this.newSnapshotsOffset);
    return b.slice(this.commitStart, 72);
  }

  /** The one write that publishes the operation, then the in-memory state follows. */
  async commit(): Promise<void> {
    if (!this.prepared) throw new QcowError('INTERNAL', 'commit before prepare', {});
    const img = this.img;
    const what = this.commitStart === 24
      ? 'header: size, L1 table, refcount table and snapshot table (commit)'
      : 'header: L1 table, refcount table and snapshot table (commit)';
    await img.pwrite(this.commitStart, this.commitBytes(), what, true);
    await img.flush('commit durable');
    this.committed = true;
    this.applyInMemory();
  }

  private applyInMemory(): void {
    const img = this.img;
    this.saved = img.savedTables();
    img.setTables({
      header: {
        size: this.request.size ?? img.header.size,
        l1Size: this.newL1Size,
        l1TableOffset: this.newL1Offset,
        refcountTableOffset: this.newReftableOffset,
        refcountTableClusters: this.newReftableClusters,
        nbSnapshots: this.request.snapshots.length,
        snapshotsOffset: this.newSnapshotsOffset,
      },
      l1Table: this.newL1,
      reftable: this.newReftable,
      snapshots: this.request.snapshots,
      snapshotsSize: this.newSnapshotsSize,
    });
    const cs = this.cs;
    for (const c of this.freed) {
      img.l2Cache.delete(c * cs);
      img.refblockCache.delete(c * cs);
    }
    for (const [rb, off] of this.overlay.homes) {
      const b = this.overlay.cachedBlock(rb);
      if (b) img.refblockCache.set(off, b);
      else img.refblockCache.delete(off);
    }
    for (const to of this.l2Copies.values()) img.l2Cache.delete(to);
  }

  /**
   * Undo a committed operation by writing the old header bytes back: valid only while nothing
   * else has been written to the image since (the old state's clusters are untouched until then).
   */
  async rollback(): Promise<void> {
    const img = this.img;
    if (!this.oldCommitBytes) return;
    await img.pwrite(this.commitStart, this.oldCommitBytes, 'header: previous L1, refcount and snapshot tables (rollback)', true);
    await img.flush('rollback durable');
    if (this.saved) {
      img.setTables(this.saved);
      this.saved = null;
    }
    img.l2Cache.clear();
    img.refblockCache.clear();
    img.allocation.forget();
    this.committed = false;
  }
}

// ---- the hot loops for 16-bit refcounts ---------------------------------------------------------
//
// The default refcount width with the fast geometry (see ShadowCommit.geo): the per-entry loops of
// applyEntries and copiedEntries hand runs of entries whose clusters share one refcount block to
// these, which read the entry as int32 words and the refcounts as big-endian u16 in place. They
// stop at the first entry they cannot take (another block, a compressed or unaligned entry, a
// refcount that is 0 on disk or would leave 0..max), which the general loop then takes, errors
// included. Module functions with nothing after the loop but the return: V8 compiles such a loop
// while it first runs, and code after it without type feedback would undo that at every table.
// Their entry decoding repeats on purpose (a deliberate twin, kept so): a shared helper called per
// entry would cost the call these loops exist to avoid.

/** applyEntries' common entry: ±d on a data cluster of refcount block `rb` (blk: the block, changed in place; zero: its zeros on disk). */
function addRefRun16(
  dv: DataView, start: number, n: number, es: number, rb: number, zero: Uint8Array, blk: DataView, d: number, max: number,
  cb: number, alignMask: number, rbHiMul: number, rbShift: number, idxMask: number, w: Uint32Array | null,
): number {
  for (let j = start; j < n; j++) {
    const hi = dv.getInt32(j * es);
    const lo = dv.getInt32(j * es + 4);
    if ((hi | lo) === 0 && w !== null) {
      j = nextUsedEntry(w, j + 1, n, es >>> 2) - 1;
      continue;
    }
    if ((hi & HI_COMPRESSED) !== 0) return j;
    const hiO = hi & HI_OFFSET;
    if (hiO === 0 && (lo & LO_OFFSET) === 0) continue;
    if ((lo & alignMask) !== 0 || hiO * rbHiMul + (lo >>> rbShift) !== rb) return j;
    const idx = (lo >>> cb) & idxMask;
    const next = blk.getUint16(idx * 2) + d;
    if (((zero[idx >>> 3]! >>> (idx & 7)) & 1) !== 0 || next < 0 || next > max) return j;
    blk.setUint16(idx * 2, next);
  }
  return n;
}

/**
 * copiedEntries' common entry: a data cluster of refcount block `rb` (`cur`: its refcounts
 * afterwards) whose COPIED bit says refcount 1, or (`fix`) is made to; flips are counted in
 * `flips[0]`. Compressed entries are left to the general loop.
 */
function copiedRun16(
  dv: DataView, start: number, n: number, es: number, rb: number, cur: DataView, fix: boolean,
  cb: number, rbHiMul: number, rbShift: number, idxMask: number, flips: Int32Array, w: Uint32Array | null,
): number {
  for (let j = start; j < n; j++) {
    const hi = dv.getInt32(j * es);
    const lo = dv.getInt32(j * es + 4);
    if ((hi | lo) === 0 && w !== null) {
      j = nextUsedEntry(w, j + 1, n, es >>> 2) - 1;
      continue;
    }
    if ((hi & HI_COMPRESSED) !== 0) return j;
    const hiO = hi & HI_OFFSET;
    if (hiO === 0 && (lo & LO_OFFSET) === 0) continue;
    if (hiO * rbHiMul + (lo >>> rbShift) !== rb) return j;
    const want = cur.getUint16(((lo >>> cb) & idxMask) * 2) === 1;
    if (want === hi < 0) continue;
    if (!fix) return j;
    dv.setInt32(j * es, want ? hi | HI_COPIED : hi & ~HI_COPIED);
    flips[0]++;
  }
  return n;
}

/**
 * Give each entry its offset in a table written at `tableOffset` (QEMU's extra data: the known 24
 * bytes and what it did not know, kept) and encode the table.
 */
export function layoutSnapshotTable(snapshots: readonly Snapshot[], tableOffset: number): Uint8Array {
  let pos = tableOffset;
  for (const sn of snapshots) {
    pos = alignUp(pos, 8);
    sn.entryOffset = pos;
    pos += C.SNAPSHOT_HEADER_SIZE + C.SNAPSHOT_EXTRA_KNOWN + sn.unknownExtraData.length + sn.idBytes.length + sn.nameBytes.length;
    sn.extraDataSize = C.SNAPSHOT_EXTRA_KNOWN + sn.unknownExtraData.length;
  }
  return encodeSnapshotTable(snapshots);
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    // 32-bit words where both are aligned (tables and blocks: whole clusters)
    const n = a.length >>> 2;
    const wa = new Uint32Array(a.buffer, a.byteOffset, n);
    const wb = new Uint32Array(b.buffer, b.byteOffset, n);
    for (let k = 0; k < n; k++) if (wa[k] !== wb[k]) return false;
    i = n * 4;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
