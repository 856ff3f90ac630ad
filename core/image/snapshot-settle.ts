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
//      header write (bytes 36..72: active L1, refcount table, snapshot table), flushed; then the
//      file is cut back to QEMU's length (what lies beyond is free in both states).
// A crash at any write leaves the old state, the shadow state or QEMU's, each consistent and
// without leaks. Any precondition the settle does not meet (a new refcount block or a longer L1
// QEMU would allocate, bitmaps, an odd layout) leaves the shadow state: correct, only larger.
import { be32, put32, put64 } from '../format/bytes.ts';
import { encodeL1Entry, isCompressed, l1L2Offset, offsetOf, putEntry, withCopied } from '../format/entries.ts';
import { getRefcount, refcountMax, reftableEntry, setRefcount } from '../format/refcount.ts';
import { snapshotTableSize, type Snapshot } from '../format/snapshot-table.ts';
import { allocationLimit } from './alloc-limit.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { getClusterRefcount, loadRefblock, refblockEntriesOf } from './refcount.ts';
import { bytesEqual, layoutSnapshotTable, type ShadowCommit } from './snapshot-commit.ts';

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
  /** Where QEMU writes the snapshot table, when the operation rewrites it with entries. */
  snapshotsOffset: number | null;
  /** The file's length after QEMU's operation. */
  fileSizeAfter: number;
  /** The clusters of QEMU's new structures: step 1 must leave them free. */
  reserved: Set<number>;
}

/**
 * QEMU's layout for an operation on `img` (its current state): `newL1Copy` for create (the
 * snapshot whose L1 QEMU copies), `tableAfter` the snapshot list when the table is rewritten.
 * Null where QEMU would allocate what the settle does not model (a refcount block, bitmaps).
 */
export async function planQemuLayout(img: Qcow2Image, opts: { newL1Copy?: Snapshot; tableAfter?: readonly Snapshot[] }): Promise<QemuLayout | null> {
  const h = img.header;
  // QEMU opening an image with bitmaps read-write rewrites their directory (more allocations).
  if (h.bitmaps || h.l1Size === 0 || h.l1TableOffset === 0) return null;
  const sizes: number[] = [];
  if (opts.newL1Copy) sizes.push(h.l1Size * 8);
  const tableBytes = opts.tableAfter ? snapshotTableSize(opts.tableAfter) : 0;
  if (tableBytes > 0) sizes.push(tableBytes);
  const runs = await qemuFirstFit(img, sizes);
  if (!runs) return null;
  const reserved = new Set<number>();
  let fileSizeAfter = img.store.size();
  for (const r of runs) {
    for (let c = r.offset / img.clusterSize; c < (r.offset + r.bytes) / img.clusterSize; c++) reserved.add(c);
    fileSizeAfter = Math.max(fileSizeAfter, r.offset + r.bytes);
  }
  const l1Moves = new Map<Snapshot, number>();
  if (opts.newL1Copy) l1Moves.set(opts.newL1Copy, runs.shift()!.offset);
  return {
    fileSize: img.store.size(),
    l1TableOffset: h.l1TableOffset,
    l1Size: h.l1Size,
    reftableOffset: h.refcountTableOffset,
    reftableClusters: h.refcountTableClusters,
    reftable: img.reftable.slice(),
    l1Moves,
    snapshotsOffset: tableBytes > 0 ? runs[0]!.offset : null,
    fileSizeAfter,
    reserved,
  };
}

/**
 * QEMU's alloc_clusters_noref from a fresh process (free_cluster_index 0), one run after the
 * other with nothing freed between. Null if a run reaches a cluster no refcount block counts
 * (QEMU would allocate a refcount block first).
 */
async function qemuFirstFit(img: Qcow2Image, sizes: readonly number[]): Promise<Array<{ offset: number; bytes: number }> | null> {
  const cs = img.clusterSize;
  const per = refblockEntriesOf(img);
  const out: Array<{ offset: number; bytes: number }> = [];
  let next = 0;
  // One refcount block at a time: the scan crosses millions of clusters on a big image.
  let blockIndex = -1;
  let block: Uint8Array | null = null;
  // Not far past the end (alloc-limit.ts): the shadow commit refuses there, naming the block.
  const limit = allocationLimit(img, Math.ceil(img.store.size() / cs));
  for (const bytes of sizes) {
    const n = Math.ceil(bytes / cs);
    let start = next;
    for (let run = 0; run < n;) {
      if (start > limit) return null;
      const c = next++;
      const rb = Math.floor(c / per);
      if (rb !== blockIndex) {
        block = await loadRefblock(img, rb);
        blockIndex = rb;
      }
      if (!block) return null;
      if (getRefcount(block, c - rb * per, img.refcountOrder) !== 0) {
        run = 0;
        start = next;
      } else {
        run++;
      }
    }
    out.push({ offset: start * cs, bytes });
  }
  return out;
}

interface SettleWrite {
  offset: number;
  bytes: Uint8Array;
  purpose: string;
}

/**
 * Move the published result of `commit` into QEMU's layout `q` (see the top of the file).
 * False, with nothing written, where a precondition does not hold.
 */
export async function settleToQemuLayout(img: Qcow2Image, commit: ShadowCommit, q: QemuLayout): Promise<boolean> {
  const plan = await planSettle(img, commit, q);
  if (!plan) return false;
  for (const w of plan.writes) await img.pwrite(w.offset, w.bytes, w.purpose);
  await img.flush('QEMU\'s layout on disk before the header points at it');
  const b = new Uint8Array(72);
  put32(b, 36, q.l1Size);
  put64(b, 40, q.l1TableOffset);
  put64(b, 48, q.reftableOffset);
  put32(b, 56, q.reftableClusters);
  put32(b, 60, plan.snapshots.length);
  put64(b, 64, plan.snapshotsOffset);
  // Not marked as the commit point: a reader sees the same disks and snapshots on either side.
  await img.pwrite(36, b.slice(36), 'header: L1 table, refcount table and snapshot table where QEMU keeps them (settle)');
  await img.flush('settle durable');
  if (img.store.size() > q.fileSizeAfter) {
    await img.truncate(q.fileSizeAfter, 'cut back to the length QEMU leaves (only free clusters lie beyond)');
    await img.flush('truncate durable');
  }
  img.setTables({
    header: {
      l1TableOffset: q.l1TableOffset,
      refcountTableOffset: q.reftableOffset,
      refcountTableClusters: q.reftableClusters,
      snapshotsOffset: plan.snapshotsOffset,
    },
    l1Table: plan.l1,
    reftable: q.reftable.slice(),
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
): Promise<{ writes: SettleWrite[]; l1: Uint8Array; snapshots: Snapshot[]; snapshotsOffset: number } | null> {
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
  for (const [i, s] of img.snapshots.entries()) {
    const to = q.l1Moves.get(s);
    if (to === undefined) continue;
    add(s.l1TableOffset, s.l1Size * 8, -1);
    add(to, s.l1Size * 8, +1);
    snapshots[i]!.l1TableOffset = to;
    writes.push({ offset: to, bytes: (await img.store.read(s.l1TableOffset, s.l1Size * 8)).slice(), purpose: `L1 table of snapshot '${s.name}' where QEMU puts its copy` });
  }
  let snapshotsOffset = h.snapshotsOffset;
  if (q.snapshotsOffset !== null && q.snapshotsOffset !== h.snapshotsOffset) {
    add(h.snapshotsOffset, img.snapshotsSize, -1);
    add(q.snapshotsOffset, img.snapshotsSize, +1);
    snapshotsOffset = q.snapshotsOffset;
    writes.push({ offset: snapshotsOffset, bytes: layoutSnapshotTable(snapshots, snapshotsOffset), purpose: 'snapshot table where QEMU puts it' });
  } else if (q.l1Moves.size > 0) {
    return null;
  }
  // Refcount blocks and table: the published ones go, the old ones come back.
  for (let k = 0; k < img.reftable.length / 8; k++) add(reftableEntry(img.reftable, k), cs, -1);
  add(h.refcountTableOffset, h.refcountTableClusters * cs, -1);
  for (let k = 0; k < q.reftable.length / 8; k++) add(reftableEntry(q.reftable, k), cs, +1);
  add(q.reftableOffset, q.reftableClusters * cs, +1);

  // QEMU's refcount blocks: the published ones with the changes.
  const byBlock = new Map<number, Array<[number, number]>>();
  for (const [c, d] of delta) {
    if (d === 0) continue;
    const rb = Math.floor(c / per);
    let l = byBlock.get(rb);
    if (!l) byBlock.set(rb, (l = []));
    l.push([c - rb * per, d]);
  }
  const blocks = new Map<number, Uint8Array | null>();
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
    for (let k = 0; k < img.reftable.length / 8; k++) if (reftableEntry(img.reftable, k) !== 0) rbs.add(k);
    for (const rb of [...rbs].sort((a, b) => a - b)) {
      const at0 = rb < q.reftable.length / 8 ? reftableEntry(q.reftable, rb) : 0;
      const s1At = rb < img.reftable.length / 8 ? reftableEntry(img.reftable, rb) : 0;
      if (!byBlock.has(rb) && at0 !== 0 && at0 === s1At) continue; // the same block, unchanged, in the same place
      const b = await block(rb);
      if (held > MAX_SETTLE_BLOCK_BYTES) return null;
      const at = rb < q.reftable.length / 8 ? reftableEntry(q.reftable, rb) : 0;
      if (at === 0) {
        if (b && b.some((x) => x !== 0)) return null; // QEMU's table has no block there
        continue;
      }
      const want = b ?? new Uint8Array(cs);
      const disk = await img.store.read(at, cs);
      if (bytesEqual(disk, want)) continue;
      if (!(await free(at, cs))) return null;
      writes.push({ offset: at, bytes: want.slice(), purpose: `refcount block ${rb} in its place` });
    }

    // COPIED bits of the active tree from QEMU's refcounts.
    const es = img.l2EntrySize;
    const seen = new Set<number>();
    for (let i = 0; i < q.l1Size; i++) {
      const off = l1L2Offset(l1, i);
      if (off === 0) continue;
      putEntry(l1, i * 8, ...encodeL1Entry(off, (await ref(off / cs)) === 1));
      if (seen.has(off)) continue;
      seen.add(off);
      const cur = (await img.store.read(off, cs)).slice();
      const t = cur.slice();
      for (let j = 0; j < img.l2Entries; j++) {
        const hi = be32(t, j * es);
        const lo = be32(t, j * es + 4);
        let want: boolean;
        if (isCompressed(hi)) {
          want = false;
        } else {
          const host = offsetOf(hi, lo);
          if (host === 0) continue;
          // The refcount block is almost always loaded already: no await per entry then.
          const c = host / cs;
          const rb = Math.floor(c / per);
          const b = blocks.has(rb) ? blocks.get(rb)! : await block(rb);
          want = (b ? getRefcount(b, c - rb * per, order) : 0) === 1;
        }
        put32(t, j * es, withCopied(hi, want) >>> 0);
      }
      if (bytesEqual(t, cur)) continue;
      if (s1Active.has(off)) return null; // an L2 table the published state uses actively
      writes.push({ offset: off, bytes: t, purpose: `L2 table at ${off}: COPIED bits as QEMU leaves them` });
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
      if (w.offset + w.bytes.length > q.fileSizeAfter) return null;
    }
    for (const [, to] of q.l1Moves) if (!(await free(to, q.l1Size * 8))) return null;
    if (snapshotsOffset !== h.snapshotsOffset && !(await free(snapshotsOffset, img.snapshotsSize))) return null;
  } catch (e) {
    if (e instanceof SettleRefused) return null;
    throw e;
  }
  return { writes, l1: l1.slice(0, q.l1Size * 8), snapshots, snapshotsOffset };
}

/** A refcount QEMU's layout would put out of range: the shadow layout stays. */
class SettleRefused extends Error {}
