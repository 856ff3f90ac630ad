// The writes a repair makes (qcow2-reference.md §4.2), each through img.pwrite/flush so the journal
// sees them: in-place refcount adjustments in existing refcount blocks, COPIED flag rewrites, the
// rebuild of the whole refcount structure from the in-memory refcount table (QEMU's 2022
// algorithm: refblocks and reftable at the earliest free clusters, then one 12-byte header commit),
// and the header bits a clean repair clears.
//
// In-place refcount updates only ever touch refcount blocks that exist: QEMU repairs a refcount in
// place only when the on-disk value is non-zero (a zero on-disk refcount with references means the
// structure is rebuilt instead), so no refblock allocation is needed here. The one allocation a
// repair makes (the rewritten snapshot table) goes through image/allocator.ts.
import { QcowError } from '../errors.ts';
import { be32, put32, put64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { refcountTableOffset } from '../format/entries.ts';
import { getRefcount, refblockEntries, setRefcount } from '../format/refcount.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { Imrt } from './imrt.ts';
import { metadataOverlap, type MetadataSection } from '../image/metadata.ts';

/** Refcount blocks loaded for in-place updates, written back together by flush(). */
export class RefcountWriter {
  private readonly blocks = new Map<number, { offset: number; bytes: Uint8Array; dirty: boolean }>();
  readonly per: number;
  /** Host offsets of every refblock written so far. */
  readonly written = new Set<number>();

  constructor(private readonly img: Qcow2Image) {
    this.per = refblockEntries(img.clusterBits, img.refcountOrder);
  }

  private async block(reftableIndex: number): Promise<{ offset: number; bytes: Uint8Array; dirty: boolean } | null> {
    const img = this.img;
    let b = this.blocks.get(reftableIndex);
    if (b) return b;
    if (reftableIndex >= img.reftable.length / 8) return null;
    const offset = refcountTableOffset(be32(img.reftable, reftableIndex * 8), be32(img.reftable, reftableIndex * 8 + 4));
    if (offset === 0 || offset % img.clusterSize !== 0 || offset + img.clusterSize > Number.MAX_SAFE_INTEGER) return null;
    b = { offset, bytes: (await img.store.read(offset, img.clusterSize)).slice(), dirty: false };
    this.blocks.set(reftableIndex, b);
    return b;
  }

  /** The on-disk refcount of a cluster, or undefined if its refblock cannot be read. */
  async get(cluster: number): Promise<number | undefined> {
    const r = Math.floor(cluster / this.per);
    if (r >= this.img.reftable.length / 8) return 0;
    const off = refcountTableOffset(be32(this.img.reftable, r * 8), be32(this.img.reftable, r * 8 + 4));
    if (off === 0) return 0;
    const b = await this.block(r);
    if (!b) return undefined;
    return getRefcount(b.bytes, cluster % this.per, this.img.refcountOrder);
  }

  /** Set a cluster's refcount in its (existing) refblock. False if there is no refblock to change. */
  async set(cluster: number, value: number): Promise<boolean> {
    const b = await this.block(Math.floor(cluster / this.per));
    if (!b) return false;
    if (value < 0 || value > 2 ** (2 ** this.img.refcountOrder) - 1) return false;
    setRefcount(b.bytes, cluster % this.per, this.img.refcountOrder, value);
    b.dirty = true;
    return true;
  }

  /** Write every changed refblock, then a barrier. */
  async flush(purpose: string): Promise<void> {
    let wrote = false;
    for (const [r, b] of this.blocks) {
      if (!b.dirty) continue;
      await this.img.pwrite(b.offset, b.bytes, `refcount block ${r} (${purpose})`);
      this.written.add(b.offset);
      this.img.refblockCache.delete(b.offset);
      b.dirty = false;
      wrote = true;
    }
    if (wrote) await this.img.flush(`refcount blocks (${purpose})`);
  }

  /** Forget cached blocks (after the refcount structure was replaced). */
  reset(): void {
    this.blocks.clear();
  }
}

/** Write the active L1 entry `l1Index` from img.l1Table (qcow2_write_l1_entry), synchronously. */
export async function writeL1Entry(img: Qcow2Image, l1Index: number, purpose: string): Promise<void> {
  await img.pwrite(img.header.l1TableOffset + l1Index * 8, img.l1Table.slice(l1Index * 8, l1Index * 8 + 8), purpose);
  await img.flush(purpose);
}

/** Write `bytes` at an L2 entry position (one entry, 8 or 16 bytes), synchronously. */
export async function writeL2Entry(img: Qcow2Image, l2Offset: number, l2Index: number, bytes: Uint8Array, purpose: string): Promise<void> {
  await img.pwrite(l2Offset + l2Index * img.l2EntrySize, bytes, purpose);
  await img.flush(purpose);
  img.l2Cache.delete(l2Offset);
}

/**
 * Allocate `count` contiguous clusters in the IMRT from `*firstFree` on (QEMU's
 * alloc_clusters_imrt): first fit, growing the table past the end of the image if needed.
 */
function allocImrt(imrt: Imrt, count: number, firstFree: { v: number }, avoid: Set<number>): number {
  let cluster = firstFree.v;
  let contiguous = 0;
  let firstGap = true;
  for (; cluster < imrt.size && contiguous < count; cluster++) {
    if (imrt.counts[cluster] === 0 && !avoid.has(cluster)) {
      contiguous++;
      if (firstGap) {
        firstFree.v = cluster;
        firstGap = false;
      }
    } else {
      contiguous = 0;
    }
  }
  if (contiguous < count) {
    // Grow past the end; clusters to avoid there restart the run.
    while (contiguous < count) {
      imrt.ensure(cluster + 1);
      if (avoid.has(cluster)) contiguous = 0;
      else contiguous++;
      cluster++;
    }
  }
  cluster -= contiguous;
  for (let i = 0; i < count; i++) imrt.counts[cluster + i] = 1;
  return cluster;
}

/** Encode IMRT entries [base, base+per) as one refcount block of the image's width. */
function encodeRefblock(imrt: Imrt, base: number, per: number, clusterSize: number): Uint8Array {
  const out = new Uint8Array(clusterSize);
  const end = Math.min(imrt.size, base + per);
  const order = imrt.order;
  for (let c = base; c < end; c++) {
    const v = imrt.counts[c]!;
    if (v !== 0) setRefcount(out, c - base, order, v);
  }
  return out;
}

/**
 * QEMU's rebuild_refcount_structure: new refblocks for every refblock-sized range holding a
 * non-zero IMRT entry and a new reftable, all allocated in the IMRT at the earliest free clusters
 * (never past the end of the image unless no gap is big enough), written, flushed, then published
 * with the 12-byte header write at offset 48. The old structures are leaked (a later pass frees
 * them). On return img.reftable and the header describe the new structure.
 */
export async function rebuildRefcountStructure(img: Qcow2Image, imrt: Imrt): Promise<void> {
  const cs = img.clusterSize;
  const per = refblockEntries(img.clusterBits, img.refcountOrder);
  const entriesPerCluster = cs / 8;
  const reftable: number[] = [];
  // Clusters the old refcount structure still uses, even where the IMRT does not count them (an
  // entry with reserved bits, an unaligned one): overwriting them before the header commit would
  // break the old structure if the rebuild were interrupted (QEMU's overlap check refuses, and
  // its repair fails; we place the new structure around them instead).
  const avoid = new Set<number>();
  for (let c = Math.floor(img.header.refcountTableOffset / cs); c < Math.ceil((img.header.refcountTableOffset + img.reftable.length) / cs); c++) avoid.add(c);
  for (let i = 0; i < img.reftable.length / 8; i++) {
    const off = refcountTableOffset(be32(img.reftable, i * 8), be32(img.reftable, i * 8 + 4));
    if (off !== 0 && off < Number.MAX_SAFE_INTEGER) {
      avoid.add(Math.floor(off / cs));
      if (off % cs !== 0) avoid.add(Math.floor(off / cs) + 1);
    }
  }
  const pending = new Map<number, number>(); // refblock index → offset, written at the end of each pass

  const writeRefblocks = async (firstCluster: number, endCluster: number): Promise<boolean> => {
    let grown = false;
    const firstFree = { v: 0 };
    for (let cluster = firstCluster; cluster < endCluster; cluster++) {
      if (imrt.get(cluster) === 0) continue;
      const index = Math.floor(cluster / per);
      const start = index * per;
      let offset: number;
      if (index < reftable.length && reftable[index]) {
        offset = reftable[index]!;
      } else {
        if (firstFree.v < start) firstFree.v = start;
        const c = allocImrt(imrt, 1, firstFree, avoid);
        offset = c * cs;
        if (c >= endCluster) endCluster = c + 1;
        if (reftable.length <= index) {
          const n = Math.ceil(((index + 1) * 8) / cs) * entriesPerCluster;
          while (reftable.length < n) reftable.push(0);
          grown = true;
        }
        reftable[index] = offset;
      }
      pending.set(index, offset);
      cluster = start + per - 1;
    }
    return grown;
  };

  const flushPending = async (): Promise<void> => {
    for (const [index, offset] of pending) {
      if (offset + cs > Number.MAX_SAFE_INTEGER) throw new QcowError('IO_ERROR', 'ERROR writing refblock', { offset });
      await img.pwrite(offset, encodeRefblock(imrt, index * per, per, cs), `refcount block ${index} (rebuilt)`);
    }
    pending.clear();
  };

  await writeRefblocks(0, imrt.size);
  let reftableOffset = -1;
  let reftableClusters = 0;
  let changed: boolean;
  do {
    const length = reftable.length * 8;
    reftableClusters = Math.ceil(length / cs);
    const firstFree = { v: 0 };
    const start = allocImrt(imrt, reftableClusters, firstFree, avoid);
    reftableOffset = start * cs;
    changed = await writeRefblocks(start, start + reftableClusters);
  } while (changed);
  // Every refblock reflects the final IMRT only now: write them all once.
  for (let i = 0; i < reftable.length; i++) if (reftable[i]) pending.set(i, reftable[i]!);
  await flushPending();
  const table = new Uint8Array(reftableClusters * cs);
  for (let i = 0; i < reftable.length; i++) put64(table, i * 8, reftable[i]!);
  await img.pwrite(reftableOffset, table, 'refcount table (rebuilt)');
  await img.flush('new refcount structures before the header points at them');
  const hdr = new Uint8Array(12);
  put64(hdr, 0, reftableOffset);
  put32(hdr, 8, reftableClusters);
  await img.pwrite(48, hdr, 'header: refcount_table_offset and refcount_table_clusters', true);
  await img.flush('header commit');
  img.setTables({ reftable: table, header: { refcountTableOffset: reftableOffset, refcountTableClusters: reftableClusters } });
  img.refblockCache.clear();
}

/** Clear the dirty and corrupt bits after a clean repair (v3 only; v2 has no feature bits). */
export async function markCleanAndConsistent(img: Qcow2Image): Promise<void> {
  const h = img.header;
  if (h.version < 3) return;
  const bits = C.INCOMPAT_DIRTY | C.INCOMPAT_CORRUPT;
  if ((h.incompatibleFeatures & bits) === 0n) return;
  const next = h.incompatibleFeatures & ~bits;
  const b = new Uint8Array(8);
  put32(b, 0, Number((next >> 32n) & 0xffffffffn));
  put32(b, 4, Number(next & 0xffffffffn));
  await img.flush('repairs on disk before the image is marked clean');
  await img.pwrite(72, b, 'header: incompatible_features (clear dirty and corrupt bits)', true);
  await img.flush('header commit');
  img.setTables({ header: { incompatibleFeatures: next } });
}

/**
 * QEMU's qcow2_pre_write_overlap_check for a writable image: an overlap marks the image corrupt
 * (the corrupt bit is written) and the write is refused with EIO. Returns the message to report.
 */
export async function preWriteOverlapCheck(img: Qcow2Image, offset: number, size: number, ignore: readonly MetadataSection[] = []): Promise<string | null> {
  const hit = metadataOverlap(img, offset, size, ignore);
  if (!hit) return null;
  await markCorrupt(img);
  return `qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${hit}); further corruption events will be suppressed`;
}

/** Set the corrupt bit (QEMU's qcow2_mark_corrupt, as a fatal corruption event does on a writable image). */
export async function markCorrupt(img: Qcow2Image): Promise<void> {
  const h = img.header;
  if (h.version < 3 || (h.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n) return;
  const next = h.incompatibleFeatures | C.INCOMPAT_CORRUPT;
  const b = new Uint8Array(8);
  put32(b, 0, Number((next >> 32n) & 0xffffffffn));
  put32(b, 4, Number(next & 0xffffffffn));
  await img.pwrite(72, b, 'header: incompatible_features (mark corrupt)', true);
  await img.flush('header commit');
  img.setTables({ header: { incompatibleFeatures: next } });
}
