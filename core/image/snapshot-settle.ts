// QEMU's layout after an internal-snapshot operation (issue 16): where qemu-img puts what it
// writes, and the settle that moves a published shadow commit (snapshot-commit.ts) there, so that
// the file's size and its free clusters (so every later allocation, and `qemu-img map`) are the
// ones qemu-img would leave.
//
// QEMU changes the active L1 table, the active L2 tables (COPIED bits) and the refcount blocks in
// place, and puts only what is new (create: the snapshot's copy of the active L1; create and
// delete: the new snapshot table) in the first free clusters (first fit from cluster 0, a fresh
// process), writing exactly the bytes they hold (the file ends there when they lie past its end).
// Done in that order, a crash leaves refcounts and COPIED bits disagreeing in the active tree,
// which `qemu-img check` counts as corruption. So the operation runs in two published steps:
//   1. the shadow commit: the new state in clusters that are free now and that QEMU's new
//      structures do not take (CommitRequest.reserved), published by one header write. Every
//      refcount block it changes, and every one counting a reserved cluster, gets a new place, so
//      their old places are free afterwards; the old active L1 and L2 tables are now either free
//      or only a snapshot's (whose COPIED bits nothing reads).
//   2. the settle: QEMU's state written into clusters the published state does not use (or uses
//      only as a snapshot's tables, changing only COPIED bits), flushed, published by a second
//      header write (bytes 36..72: active L1, refcount table, snapshot table, and the bitmaps
//      extension when QEMU stores the bitmaps again), flushed; then the
//      file is cut back to QEMU's length (what lies beyond is free in both states).
// A crash at any write leaves the old state, the shadow state or QEMU's, each consistent and
// without leaks. QEMU's allocator is modelled with the refcount blocks it adds on the way and the
// refcount table it grows (qemu-allocator.ts). Persistent bitmaps, which QEMU stores anew when it
// closes the image, are placed after the operation's allocations (snapshot-settle-bitmaps.ts) and
// named by the same header write; where the bitmaps extension lies past the header's first
// sector (clusters over 4 KiB), by two sector writes with the old bitmaps counted until the
// second has landed, then freed (leaks between, never a refcount below its references; see
// docs/architecture.md). Any precondition the settle does not meet (a resize QEMU would make on a shrinking
// revert, an odd layout) leaves the shadow state: correct, only larger.
//
// Each active L2 table whose COPIED bits change is written twice, its copy in step 1 and its
// place in step 2: the least any order can do. In the old state it is active with its bits set,
// in QEMU's with them cleared, at the same place; no state between may have an active entry whose
// bit disagrees with its refcount (a corruption by `qemu-img check`), so the active tree must be
// elsewhere, on copies, while the place changes. The settle takes the bits from the copies the
// shadow commit made rather than walking the tree again.
import { put32, put64 } from '../format/bytes.ts';
import {
  compressedDescriptor, encodeL1Entry, entryWords, l1L2Offset, nextUsedEntry, OFFSET_MASK_HI, putEntry, QCOW_OFLAG_COMPRESSED_HI,
} from '../format/entries.ts';
import { getRefcount, refcountMax, reftableEntry, setRefcount, usedReftableIndices } from '../format/refcount.ts';
import { snapshotTableSize, type Snapshot } from '../format/snapshot-table.ts';
import { encodeHeader, type Qcow2Header } from '../format/header.ts';
import type { BitmapEntry } from '../format/bitmaps.ts';
import { readInto } from '../io/store.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { getClusterRefcount, loadRefblock, refblockEntriesOf } from './refcount.ts';
import { bytesEqual, layoutSnapshotTable, type ShadowCommit } from './snapshot-commit.ts';
import { QemuAllocator, type RefcountView } from './qemu-allocator.ts';
import { bitmapWrites, leaveOldBitmapsAsQemu, loadQemuBitmaps, placeBitmaps, placementClusters, type QemuBitmaps } from './snapshot-settle-bitmaps.ts';

/** QEMU's result of one operation, planned before it starts (from the state it finds). */
export interface QemuLayout {
  /** The state before: the file's length, the active L1 and the refcount table. */
  fileSize: number;
  l1TableOffset: number;
  l1Size: number;
  reftableOffset: number;
  reftableClusters: number;
  reftable: Uint8Array;
  /** Snapshots whose L1 table QEMU writes to a new place (create: the new snapshot's copy). */
  l1Moves: Map<Snapshot, number>;
  /**
   * Revert: the L1 table of the snapshot reverted to (offset, entries). QEMU counts its tree up
   * once more (qcow2_update_snapshot_refcount, +1) and writes the table back in place with every
   * COPIED bit cleared (the refcounts are at least 2 then).
   */
  revertedL1: { offset: number; size: number } | null;
  /** Where QEMU writes the snapshot table, when the operation rewrites it with entries. */
  snapshotsOffset: number | null;
  /** The file's length after QEMU's operation (with bitmaps: at most; the settle finds it). */
  fileSizeAfter: number;
  /** The file's length after the operation's own allocations, before QEMU stores the bitmaps. */
  fileSizeBase: number;
  /**
   * The bitmaps QEMU stores again on close; the clusters below its free index it skipped (free,
   * yet never allocated after); the clusters they would take if the operation freed nothing
   * (free before it: the shadow commit leaves them alone), with the refcount blocks QEMU would
   * add for them (reserved, not in `reftable`: the settle finds the ones QEMU adds).
   */
  bitmaps: (QemuBitmaps & { skipped: Set<number>; freeBefore: Set<number> }) | null;
  /** The clusters of QEMU's new structures (step 1 must leave them free), and the old bitmaps (QEMU frees them): their refcount blocks move in step 1. */
  reserved: Set<number>;
  /** Clusters QEMU frees without punching a hole (the old refcount table when it grew): what it writes there keeps the old bytes after it. */
  unpunched: Set<number>;
}

/**
 * QEMU's layout for an operation on `img` (its current state): `newL1Copy` for create (the
 * snapshot whose L1 QEMU copies), `tableAfter` the snapshot list when the table is rewritten.
 * Null where QEMU would allocate what the settle does not model (a larger refcount table,
 * bitmaps).
 */
export async function planQemuLayout(
  img: Qcow2Image, opts: { newL1Copy?: Snapshot; tableAfter?: readonly Snapshot[]; revertTo?: Snapshot },
): Promise<QemuLayout | null> {
  const h = img.header;
  if (h.l1Size === 0 || h.l1TableOffset === 0) return null;
  // QEMU closing an image with bitmaps stores them again (snapshot-settle-bitmaps.ts).
  const bitmaps = await loadQemuBitmaps(img);
  if (bitmaps === null) return null;
  const sizes: number[] = [];
  if (opts.newL1Copy) sizes.push(h.l1Size * 8);
  const tableBytes = opts.tableAfter ? snapshotTableSize(opts.tableAfter) : 0;
  if (tableBytes > 0) sizes.push(tableBytes);
  const alloc = new QemuAllocator(img);
  const runs: Array<{ offset: number; bytes: number }> = [];
  for (const bytes of sizes) {
    const c = await alloc.alloc(Math.ceil(bytes / img.clusterSize));
    if (c === null) return null;
    runs.push({ offset: c * img.clusterSize, bytes });
  }
  let bitmapGuess: { skipped: Set<number>; again: number[]; clusters: number[]; blocks: Map<number, number> } | null = null;
  if (bitmaps) {
    // Where the bitmaps would go if the operation freed nothing: the settle places them again
    // on QEMU's refcounts after the operation (which may free lower clusters); these must stay
    // free in the shadow commit, and so must a refcount block they need (QEMU adds it as for any
    // allocation; the settle adds the ones its placement needs). A grown table is not modelled.
    const skipped = alloc.skippedFree();
    // QEMU's free index falls back to the lowest cluster the operation frees (the old snapshot
    // table, a deleted snapshot's L1 table): the clusters it skipped from there on are searched
    // again when it stores the bitmaps, so they stay free in the shadow commit as well
    const from = lowestFreed(img, opts);
    const again = [...skipped].filter((c) => c >= from);
    for (const c of again) skipped.delete(c);
    const before = new Set(alloc.newBlocks.keys());
    const p = await placeBitmaps(bitmaps, img.clusterSize, (n) => alloc.alloc(n));
    if (!p || alloc.grownTable) return null;
    const blocks = new Map([...alloc.newBlocks].filter(([rb]) => !before.has(rb)));
    bitmapGuess = { skipped, again, clusters: placementClusters(p, bitmaps, img.clusterSize), blocks };
  }
  const reserved = new Set<number>();
  let fileSizeAfter = img.store.size();
  for (const r of runs) {
    for (let c = r.offset / img.clusterSize; c < (r.offset + r.bytes) / img.clusterSize; c++) reserved.add(c);
    fileSizeAfter = Math.max(fileSizeAfter, r.offset + r.bytes);
  }
  // Refcount blocks QEMU adds on the way, written whole, hooked into the refcount table in place
  // (or into the larger one it wrote past them).
  const grown = alloc.grownTable;
  const reftable = new Uint8Array(grown ? grown.clusters * img.clusterSize : img.reftable.length);
  reftable.set(img.reftable);
  if (grown) {
    for (let c = grown.cluster; c < grown.cluster + grown.clusters; c++) reserved.add(c);
    fileSizeAfter = Math.max(fileSizeAfter, (grown.cluster + grown.clusters) * img.clusterSize);
  }
  for (const [rb, c] of alloc.newBlocks) {
    reserved.add(c);
    if (bitmapGuess?.blocks.has(rb)) continue; // the settle finds QEMU's blocks for the bitmaps
    fileSizeAfter = Math.max(fileSizeAfter, (c + 1) * img.clusterSize);
    putEntry(reftable, rb * 8, ...encodeL1Entry(c * img.clusterSize, false));
  }
  const fileSizeBase = fileSizeAfter;
  for (const c of [...(bitmapGuess?.clusters ?? []), ...(bitmapGuess?.blocks.values() ?? [])]) {
    reserved.add(c);
    fileSizeAfter = Math.max(fileSizeAfter, (c + 1) * img.clusterSize);
  }
  for (const c of bitmapGuess?.again ?? []) reserved.add(c);
  // The old bitmaps, which QEMU frees after storing them anew: in use now (the shadow commit
  // cannot take them), reserved so that the refcount blocks counting them get new places and the
  // settle can rewrite the old ones in place.
  for (const [off, bytes] of bitmaps?.old ?? []) {
    for (let c = Math.floor(off / img.clusterSize); c <= Math.floor((off + bytes - 1) / img.clusterSize); c++) reserved.add(c);
  }
  const l1Moves = new Map<Snapshot, number>();
  if (opts.newL1Copy) l1Moves.set(opts.newL1Copy, runs.shift()!.offset);
  return {
    fileSize: img.store.size(),
    l1TableOffset: h.l1TableOffset,
    l1Size: h.l1Size,
    reftableOffset: grown ? grown.cluster * img.clusterSize : h.refcountTableOffset,
    reftableClusters: grown ? grown.clusters : h.refcountTableClusters,
    reftable,
    l1Moves,
    revertedL1: opts.revertTo ? { offset: opts.revertTo.l1TableOffset, size: opts.revertTo.l1Size } : null,
    snapshotsOffset: tableBytes > 0 ? runs[0]!.offset : null,
    fileSizeAfter,
    fileSizeBase,
    reserved,
    unpunched: alloc.freedClusters(),
    bitmaps: bitmaps && bitmapGuess ? {
      ...bitmaps, skipped: bitmapGuess.skipped, freeBefore: new Set([...bitmapGuess.clusters, ...bitmapGuess.blocks.values(), ...bitmapGuess.again]),
    } : null,
  };
}

/** The lowest cluster QEMU's operation frees in its own steps (the old snapshot table, a deleted snapshot's L1 table), or Infinity. */
function lowestFreed(img: Qcow2Image, opts: { tableAfter?: readonly Snapshot[] }): number {
  if (!opts.tableAfter) return Infinity;
  const cs = img.clusterSize;
  let m = img.header.snapshotsOffset !== 0 && img.snapshotsSize > 0 ? Math.floor(img.header.snapshotsOffset / cs) : Infinity;
  const kept = new Set(opts.tableAfter.map((s) => s.idStr));
  for (const s of img.snapshots) if (!kept.has(s.idStr) && s.l1TableOffset !== 0) m = Math.min(m, Math.floor(s.l1TableOffset / cs));
  return m;
}

interface SettleWrite {
  offset: number;
  /** The bytes, or the place of a cluster whose bytes are written (read when the write is made: an L2 table copy, not held in memory meanwhile). */
  bytes: Uint8Array | { copyOf: number };
  purpose: string;
}

/** Bytes a settle write puts down. */
/** A write within one 512-byte sector lands whole or not at all (DESIGN.md's crash model). */
const SECTOR = 512;

const lengthOf = (w: SettleWrite, cs: number): number => (w.bytes instanceof Uint8Array ? w.bytes.length : cs);

/**
 * Move the published result of `commit` into QEMU's layout `q` (see the top of the file).
 * False, with nothing written, where a precondition does not hold.
 */
export async function settleToQemuLayout(img: Qcow2Image, commit: ShadowCommit, q: QemuLayout): Promise<boolean> {
  const plan = await planSettle(img, commit, q);
  if (!plan) return false;
  // Stores copy or write the bytes before pwrite resolves: one buffer serves every copied cluster.
  const buffer = new Uint8Array(img.clusterSize);
  for (const w of plan.writes) {
    if (!(w.bytes instanceof Uint8Array)) await readInto(img.store, w.bytes.copyOf, buffer);
    await img.pwrite(w.offset, w.bytes instanceof Uint8Array ? w.bytes : buffer, w.purpose);
  }
  await img.flush('QEMU\'s layout on disk before the header points at it');
  const header: Qcow2Header = {
    ...img.header,
    l1Size: q.l1Size,
    l1TableOffset: q.l1TableOffset,
    refcountTableOffset: q.reftableOffset,
    refcountTableClusters: q.reftableClusters,
    nbSnapshots: plan.snapshots.length,
    snapshotsOffset: plan.snapshotsOffset,
    ...(plan.bitmapsAfter && img.header.bitmaps
      ? { bitmaps: { ...img.header.bitmaps, bitmapDirectoryOffset: plan.bitmapsAfter.directoryOffset } }
      : {}),
  };
  // One write from byte 36: the tables, and the bitmaps extension when QEMU stored the bitmaps
  // again (the old ones stay whole and counted until it lands; the new ones are counted by the
  // refcount blocks it names). Not marked as the commit point: a reader sees the same disks,
  // snapshots and bitmaps on either side.
  let end = 72;
  if (plan.bitmapsAfter) {
    const now = await img.store.read(0, img.clusterSize);
    const want = encodeHeader(header);
    end = want.length;
    while (end > 72 && want[end - 1] === now[end - 1]) end--;
    if (!plan.split) {
      await img.pwrite(36, want.slice(36, end), 'header: L1 table, refcount table, snapshot table and bitmap directory where QEMU keeps them (settle)');
    } else {
      // Two sectors, each written whole: the tables (the old bitmaps still named, and counted by
      // the new refcount blocks), then the directory (the old bitmaps now counted, unnamed: a
      // leak), then their clusters freed in place.
      await img.pwrite(36, want.slice(36, SECTOR), 'header: L1 table, refcount table and snapshot table where QEMU keeps them, the old bitmaps still named (settle)');
      await img.flush('tables durable before the bitmap directory moves');
      if (end > SECTOR) await img.pwrite(SECTOR, want.slice(SECTOR, end), 'header: bitmap directory where QEMU stores it (settle)');
      await img.flush('new bitmap directory durable before the old bitmaps are freed');
      for (const w of plan.late) await img.pwrite(w.offset, w.bytes as Uint8Array, w.purpose);
    }
  } else {
    const b = new Uint8Array(72);
    put32(b, 36, q.l1Size);
    put64(b, 40, q.l1TableOffset);
    put64(b, 48, q.reftableOffset);
    put32(b, 56, q.reftableClusters);
    put32(b, 60, plan.snapshots.length);
    put64(b, 64, plan.snapshotsOffset);
    await img.pwrite(36, b.slice(36), 'header: L1 table, refcount table and snapshot table where QEMU keeps them (settle)');
  }
  await img.flush('settle durable');
  if (q.bitmaps && plan.bitmapsAfter) await leaveOldBitmapsAsQemu(img, q.bitmaps, plan.fileSizeAfter);
  if (img.store.size() !== plan.fileSizeAfter) {
    // (longer: a refcount block of zeros QEMU writes last, which the file's zeros already hold)
    await img.truncate(plan.fileSizeAfter, 'cut back to the length QEMU leaves (only free clusters lie beyond)');
    await img.flush('truncate durable');
  }
  if (plan.bitmapsAfter) img.bitmaps = plan.bitmapsAfter.entries;
  img.setTables({
    header: {
      l1TableOffset: q.l1TableOffset,
      refcountTableOffset: q.reftableOffset,
      refcountTableClusters: q.reftableClusters,
      snapshotsOffset: plan.snapshotsOffset,
      ...(header.bitmaps ? { bitmaps: header.bitmaps } : {}),
    },
    l1Table: plan.l1,
    reftable: plan.reftable,
    snapshots: plan.snapshots,
    snapshotsSize: img.snapshotsSize,
  });
  img.l2Cache.clear();
  img.refblockCache.clear();
  img.allocation.forget();
  return true;
}

/** Cap on the refcount blocks the settle keeps in memory (beyond it, the shadow layout stays). */
const MAX_SETTLE_BLOCK_BYTES = 64 * 1024 * 1024;

async function planSettle(
  img: Qcow2Image, commit: ShadowCommit, q: QemuLayout,
): Promise<{
  writes: SettleWrite[]; l1: Uint8Array; snapshots: Snapshot[]; snapshotsOffset: number; fileSizeAfter: number;
  bitmapsAfter: { entries: BitmapEntry[]; directoryOffset: number } | null;
  /** QEMU's refcount table: the plan's with the blocks QEMU adds for the bitmaps. */
  reftable: Uint8Array;
  /**
   * The bitmaps extension lies past the header's first sector: published in two sector writes
   * (tables, then directory) with the old bitmaps still counted, then `late`: the refcount blocks
   * with the old bitmaps' clusters freed, in place.
   */
  split: boolean;
  late: SettleWrite[];
} | null> {
  const h = img.header;
  const cs = img.clusterSize;
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const max = Math.min(refcountMax(order), Number.MAX_SAFE_INTEGER);
  if (h.l1Size !== q.l1Size) return null;

  // Refcount changes from the published state to QEMU's: only where structures sit differs.
  const delta = new Map<number, number>();
  const add = (offset: number, bytes: number, d: number): void => {
    if (bytes <= 0 || offset === 0) return;
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + bytes - 1) / cs); c++) delta.set(c, (delta.get(c) ?? 0) + d);
  };
  // The active L1 back at its place, pointing at the L2 tables it copied.
  const back = new Map<number, number>();
  for (const [from, to] of commit.l2Copies) back.set(to, from);
  const s1L1 = img.l1Table;
  const l1 = s1L1.slice();
  const s1Active = new Set<number>();
  for (let i = 0; i < h.l1Size; i++) {
    const off = l1L2Offset(s1L1, i);
    if (off === 0) continue;
    s1Active.add(off);
    const orig = back.get(off);
    if (orig !== undefined) {
      add(off, cs, -1);
      add(orig, cs, +1);
      putEntry(l1, i * 8, ...encodeL1Entry(orig, false));
    }
  }
  if (h.l1TableOffset !== q.l1TableOffset) {
    add(h.l1TableOffset, h.l1Size * 8, -1);
    add(q.l1TableOffset, q.l1Size * 8, +1);
  }
  // Snapshot L1 tables QEMU puts elsewhere, and the snapshot table.
  const snapshots = img.snapshots.map((s) => ({ ...s }));
  const writes: SettleWrite[] = [];
  // The reverted-to snapshot's L1 table, in place, as QEMU leaves it (only COPIED bits change:
  // nothing reads them in a snapshot's table).
  if (q.revertedL1 && q.revertedL1.size > 0) {
    const t = (await img.store.read(q.revertedL1.offset, q.revertedL1.size * 8)).slice();
    let changed = false;
    for (let i = 0; i < t.length; i += 8) {
      if (t[i]! & 0x80) {
        t[i] = t[i]! & 0x7f; // bit 63: QCOW_OFLAG_COPIED
        changed = true;
      }
    }
    if (changed) writes.push({ offset: q.revertedL1.offset, bytes: t, purpose: 'L1 table of the snapshot reverted to: COPIED bits cleared, as QEMU leaves it' });
  }
  for (const [i, s] of img.snapshots.entries()) {
    const to = q.l1Moves.get(s);
    if (to === undefined) continue;
    add(s.l1TableOffset, s.l1Size * 8, -1);
    add(to, s.l1Size * 8, +1);
    snapshots[i]!.l1TableOffset = to;
    writes.push({ offset: to, bytes: zeroTail(await img.store.read(s.l1TableOffset, s.l1Size * 8), to, cs, q), purpose: `L1 table of snapshot '${s.name}' where QEMU puts its copy` });
  }
  let snapshotsOffset = h.snapshotsOffset;
  if (q.snapshotsOffset !== null && q.snapshotsOffset !== h.snapshotsOffset) {
    add(h.snapshotsOffset, img.snapshotsSize, -1);
    add(q.snapshotsOffset, img.snapshotsSize, +1);
    snapshotsOffset = q.snapshotsOffset;
    writes.push({ offset: snapshotsOffset, bytes: zeroTail(layoutSnapshotTable(snapshots, snapshotsOffset), snapshotsOffset, cs, q), purpose: 'snapshot table where QEMU puts it' });
  } else if (q.l1Moves.size > 0) {
    return null;
  }
  // Refcount blocks and table: the published ones go, the old ones come back.
  const usedS1 = usedReftableIndices(img.reftable);
  const usedQ = usedReftableIndices(q.reftable);
  for (const k of usedS1) add(reftableEntry(img.reftable, k), cs, -1);
  add(h.refcountTableOffset, h.refcountTableClusters * cs, -1);
  for (const k of usedQ) add(reftableEntry(q.reftable, k), cs, +1);
  add(q.reftableOffset, q.reftableClusters * cs, +1);
  // QEMU's refcount table after the operation, and the blocks it adds storing the bitmaps
  const reftable = q.reftable.slice();

  // The bitmaps QEMU stores again on close: first fit on its refcounts after the operation.
  let fileSizeAfter = q.fileSizeAfter;
  let bitmapsAfter: { entries: BitmapEntry[]; directoryOffset: number } | null = null;
  const bitmapPlaces: number[] = [];
  let split = false;
  /** With `split`: the old bitmaps' clusters, counted until the header names the new directory. */
  const oldBitmapClusters = new Set<number>();
  const late: SettleWrite[] = [];
  if (q.bitmaps) {
    const b = q.bitmaps;
    // QEMU's allocator (qemu-allocator.ts) on QEMU's refcounts after the operation: the published
    // ones with the changes so far. The refcount blocks it adds on the way (alloc_refcount_block,
    // written whole) join QEMU's refcount table; a table it would grow leaves the shadow layout.
    const alloc = new QemuAllocator(img, settleRefcounts(img, q, delta, b.skipped));
    const p = await placeBitmaps(b, cs, (n) => alloc.alloc(n));
    if (!p || alloc.grownTable) return null;
    bitmapPlaces.push(...placementClusters(p, b, cs));
    fileSizeAfter = q.fileSizeBase;
    for (const [rb, c] of alloc.newBlocks) {
      putEntry(reftable, rb * 8, ...encodeL1Entry(c * cs, false));
      bitmapPlaces.push(c); // counted with the bitmaps' clusters below
      fileSizeAfter = Math.max(fileSizeAfter, (c + 1) * cs);
    }
    for (const c of bitmapPlaces) add(c * cs, cs, +1);
    for (const [off, bytes] of b.old) add(off, bytes, -1);
    // Where the directory's offset lies past the header's first sector, one write cannot publish
    // the tables and the directory together without the risk of landing in part.
    if (img.header.bitmaps) {
      const now = encodeHeader(img.header);
      const next = encodeHeader({ ...img.header, bitmaps: { ...img.header.bitmaps, bitmapDirectoryOffset: p.directory } });
      let last = Math.max(now.length, next.length) - 1;
      while (last >= 0 && now[last] === next[last]) last--;
      split = last >= SECTOR;
    }
    if (split) for (const [off, bytes] of b.old) for (let c = Math.floor(off / cs); c <= Math.floor((off + bytes - 1) / cs); c++) oldBitmapClusters.add(c);
    const bw = await bitmapWrites(img, b, p);
    for (const w of bw.writes) {
      // A cluster free before the operation keeps the bytes QEMU left there (it frees old bitmap
      // tables and directories without a hole); one the operation freed, QEMU punched.
      const last = Math.floor((w.offset + w.bytes.length - 1) / cs);
      const bytes = b.freeBefore.has(last) ? w.bytes : zeroTail(w.bytes, w.offset, cs, q);
      fileSizeAfter = Math.max(fileSizeAfter, w.offset + w.bytes.length);
      writes.push({ ...w, bytes });
    }
    bitmapsAfter = { entries: bw.entries, directoryOffset: p.directory };
  }

  // QEMU's refcount blocks: the published ones with the changes.
  const byBlock = changesByBlock(delta, per);
  const blocks = new Map<number, Uint8Array | null>();
  /** One cluster read for a comparison, reused. */
  const disk = new Uint8Array(cs);
  let held = 0;
  const block = async (rb: number): Promise<Uint8Array | null> => {
    if (blocks.has(rb)) return blocks.get(rb)!;
    const s1 = await loadRefblock(img, rb);
    const changes = byBlock.get(rb);
    let b: Uint8Array | null = s1;
    if (changes) {
      b = s1 ? s1.slice() : new Uint8Array(cs);
      held += cs;
      for (const [idx, d] of changes) {
        const v = getRefcount(b, idx, order) + d;
        if (v < 0 || v > max) throw new SettleRefused();
        setRefcount(b, idx, order, v);
      }
    }
    blocks.set(rb, b);
    return b;
  };
  const ref = async (c: number): Promise<number> => {
    const rb = Math.floor(c / per);
    const b = await block(rb);
    return b ? getRefcount(b, c - rb * per, order) : 0;
  };
  /** Whether the published state leaves [offset, offset+bytes) unused. */
  const free = async (offset: number, bytes: number): Promise<boolean> => {
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + bytes - 1) / cs); c++) {
      if ((await getClusterRefcount(img, c)) !== 0) return false;
    }
    return true;
  };

  try {
    const rbs = new Set<number>(byBlock.keys());
    // QEMU's table with the blocks the bitmaps' placement added (not only q.reftable's)
    for (const k of usedS1) if (reftableEntry(img.reftable, k) !== 0) rbs.add(k);
    for (const k of usedReftableIndices(reftable)) if (reftableEntry(reftable, k) !== 0) rbs.add(k);
    for (const rb of [...rbs].sort((a, b) => a - b)) {
      const at0 = rb < reftable.length / 8 ? reftableEntry(reftable, rb) : 0;
      const s1At = rb < img.reftable.length / 8 ? reftableEntry(img.reftable, rb) : 0;
      if (!byBlock.has(rb) && at0 !== 0 && at0 === s1At) continue; // the same block, unchanged, in the same place
      const b = await block(rb);
      if (held > MAX_SETTLE_BLOCK_BYTES) return null;
      const at = rb < reftable.length / 8 ? reftableEntry(reftable, rb) : 0;
      if (at === 0) {
        if (b && b.some((x) => x !== 0)) return null; // QEMU's table has no block there
        for (const c of oldBitmapClusters) if (Math.floor(c / per) === rb) return null; // nor for the old bitmaps to stay counted
        continue;
      }
      const final = b ?? new Uint8Array(cs);
      // split: first with the old bitmaps still counted, their clusters freed once unpublished
      let want = final;
      for (const c of oldBitmapClusters) {
        if (Math.floor(c / per) !== rb) continue;
        if (want === final) want = final.slice();
        setRefcount(want, c - rb * per, order, getRefcount(want, c - rb * per, order) + 1);
      }
      if (want !== final) late.push({ offset: at, bytes: final, purpose: `refcount block ${rb}: the old bitmaps' clusters freed` });
      await readInto(img.store, at, disk);
      if (bytesEqual(disk, want)) continue;
      if (!(await free(at, cs))) return null;
      // A changed block is this plan's own copy (held in `blocks`, never changed again); an unchanged one is the image's cached block.
      writes.push({ offset: at, bytes: want !== final || byBlock.has(rb) || !b ? want : want.slice(), purpose: `refcount block ${rb} in its place` });
    }

    // QEMU's refcount table in its place (free now: the published state has its own copy), with
    // the refcount blocks QEMU hooks in.
    const rtDisk = await img.store.read(q.reftableOffset, reftable.length);
    if (!bytesEqual(rtDisk, reftable)) {
      if (!(await free(q.reftableOffset, reftable.length))) return null;
      writes.push({ offset: q.reftableOffset, bytes: reftable.slice(), purpose: 'refcount table where QEMU keeps it, with the refcount blocks QEMU adds' });
    }

    // COPIED bits of the active tree. The shadow commit set them from its refcounts, which differ
    // from QEMU's only on the clusters in `delta` (metadata: tables and blocks that move); no
    // data entry of the active tree references those (checked below, else the shadow layout
    // stays), so the bits it computed are QEMU's: a table it copied goes back to its place with
    // the copy's bytes, a table it kept is right as it is. No per-entry refcount walk here.
    const moved = deltaClusters(delta);
    const seen = new Set<number>();
    for (let i = 0; i < q.l1Size; i++) {
      const off = l1L2Offset(l1, i);
      if (off === 0) continue;
      putEntry(l1, i * 8, ...encodeL1Entry(off, (await ref(off / cs)) === 1));
      if (seen.has(off)) continue;
      seen.add(off);
      const copy = commit.l2Copies.get(off);
      await readInto(img.store, copy ?? off, disk);
      if (referencesAny(disk, img, moved)) return null;
      if (copy === undefined) continue;
      if (s1Active.has(off)) return null; // an L2 table the published state uses actively
      // The copy's bytes are read again when written (a 256 GiB image has 32 MiB of them): its
      // cluster stays as it is until then, the settle writes only to clusters free now.
      writes.push({ offset: off, bytes: { copyOf: copy }, purpose: `L2 table at ${off}: COPIED bits as QEMU leaves them` });
    }
    // The active L1 in its place (free now, or the L1 table of the snapshot QEMU copies elsewhere).
    const l1Bytes = l1.subarray(0, q.l1Size * 8);
    const onDisk = await img.store.read(q.l1TableOffset, q.l1Size * 8);
    if (!bytesEqual(onDisk, l1Bytes)) {
      const movedFrom = img.snapshots.some((s) => q.l1Moves.has(s) && s.l1TableOffset === q.l1TableOffset);
      if (!movedFrom && !(await free(q.l1TableOffset, q.l1Size * 8))) return null;
      writes.push({ offset: q.l1TableOffset, bytes: l1Bytes.slice(), purpose: 'active L1 table in its place' });
    }
    // New places must be free now and lie inside QEMU's file.
    for (const w of writes) {
      if (w.offset + lengthOf(w, cs) > Math.max(fileSizeAfter, q.fileSizeBase)) return null;
    }
    for (const c of bitmapPlaces) if (!(await free(c * cs, cs))) return null;
    for (const [, to] of q.l1Moves) if (!(await free(to, q.l1Size * 8))) return null;
    if (snapshotsOffset !== h.snapshotsOffset && !(await free(snapshotsOffset, img.snapshotsSize))) return null;
  } catch (e) {
    if (e instanceof SettleRefused) return null;
    throw e;
  }
  return { writes, l1: l1.slice(0, q.l1Size * 8), snapshots, snapshotsOffset, fileSizeAfter, bitmapsAfter, reftable, split, late };
}

/**
 * QEMU's refcounts after the operation, for its allocator: QEMU's refcount table; each block the
 * published one with the changes `delta` (published → QEMU's) applied; the clusters its free
 * index passed (`skipped`) not to be taken.
 */
function settleRefcounts(img: Qcow2Image, q: QemuLayout, delta: ReadonlyMap<number, number>, skipped: ReadonlySet<number>): RefcountView {
  const per = refblockEntriesOf(img);
  const order = img.refcountOrder;
  const max = Math.min(refcountMax(order), Number.MAX_SAFE_INTEGER);
  const byBlock = changesByBlock(delta, per);
  return {
    reftable: q.reftable,
    unavailable: skipped,
    block: async (rb) => {
      const s1 = await loadRefblock(img, rb);
      const changes = byBlock.get(rb);
      if (!changes) return s1;
      const b = s1 ? s1.slice() : new Uint8Array(img.clusterSize);
      for (const [idx, d] of changes) {
        const v = getRefcount(b, idx, order) + d;
        // out of range: in use here (the settle refuses when it writes the block)
        setRefcount(b, idx, order, v === 0 ? 0 : Math.min(Math.max(v, 1), max));
      }
      return b;
    },
  };
}

/** The non-zero changes of `delta` by refcount block (`per` entries a block): [index in the block, change]. */
function changesByBlock(delta: ReadonlyMap<number, number>, per: number): Map<number, Array<[number, number]>> {
  const byBlock = new Map<number, Array<[number, number]>>();
  for (const [c, d] of delta) {
    if (d === 0) continue;
    const rb = Math.floor(c / per);
    let l = byBlock.get(rb);
    if (!l) byBlock.set(rb, (l = []));
    l.push([c - rb * per, d]);
  }
  return byBlock;
}

/** The clusters whose refcount differs between the published state and QEMU's, as a bitmap by cluster index. */
function deltaClusters(delta: ReadonlyMap<number, number>): Uint8Array {
  let max = -1;
  for (const [c, d] of delta) if (d !== 0) max = Math.max(max, c);
  // arithmetic, not >>: a cluster index may pass 2^31 (a 1 TiB file of 512-byte clusters)
  const bits = new Uint8Array(Math.floor(max / 8) + 1);
  for (const [c, d] of delta) if (d !== 0) bits[Math.floor(c / 8)]! |= 1 << (c % 8);
  return bits;
}

/**
 * Whether an entry of L2 table `t` reaches a cluster set in `bits` (compressed: any cluster its
 * bytes touch). One pass over every active entry of a large image: integer words, no calls but
 * for compressed entries.
 */
function referencesAny(t: Uint8Array, img: Qcow2Image, bits: Uint8Array): boolean {
  const cs = img.clusterSize;
  const cb = img.clusterBits;
  const es = img.l2EntrySize;
  const n = img.l2Entries;
  const limit = bits.length * 8;
  const hiMul = 2 ** (32 - cb); // cluster index = (hi offset bits) · 2^(32−cb) + lo >>> cb
  const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const w = entryWords(t);
  for (let j = 0; j < n; j++) {
    const hi = dv.getInt32(j * es);
    const lo = dv.getInt32(j * es + 4);
    if ((hi | lo) === 0 && w !== null) {
      j = nextUsedEntry(w, j + 1, n, es >>> 2) - 1;
      continue;
    }
    if ((hi & QCOW_OFLAG_COMPRESSED_HI) === 0) {
      const c = (hi & OFFSET_MASK_HI) * hiMul + (lo >>> cb);
      if (c !== 0 && c < limit && ((bits[c >>> 3]! >> (c & 7)) & 1) !== 0) return true;
      continue;
    }
    const d = compressedDescriptor(hi >>> 0, lo >>> 0, cb);
    const last = Math.floor((d.hostOffset + d.compressedSize - 1) / cs);
    for (let c = Math.floor(d.hostOffset / cs); c <= last && c < limit; c++) if ((bits[c >>> 3]! >> (c & 7)) & 1) return true;
  }
  return false;
}

/**
 * `bytes` written at `offset` as QEMU leaves its last cluster: zeros after them up to the cluster's
 * end where QEMU punched a hole when it freed the cluster before, never past the end of QEMU's
 * file (past the old end the file holds zeros already).
 */
function zeroTail(bytes: Uint8Array, offset: number, cs: number, q: QemuLayout): Uint8Array {
  const last = Math.floor((offset + bytes.length - 1) / cs);
  // past the file's end as the operation found it: zeros already
  if (q.unpunched.has(last) || last * cs >= q.fileSize) return bytes.slice();
  const end = Math.min((last + 1) * cs, Math.max(q.fileSizeAfter, offset + bytes.length));
  const out = new Uint8Array(end - offset);
  out.set(bytes);
  return out;
}

/** A refcount QEMU's layout would put out of range: the shadow layout stays. */
class SettleRefused extends Error {}
