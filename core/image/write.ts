// Guest writes (QEMU's qcow2-cluster.c write paths): data writes, zero writes and discards on the
// active layer. Allocates L2 tables (new, or copied from a shared one), data clusters, and does
// copy-on-write of shared clusters (refcount > 1, COPIED clear), of compressed clusters, of
// preallocated zero clusters and of backing data around partial (sub)cluster writes. Zero writes
// use the v3 zero flag (and extended L2 zero bits) where whole (sub)clusters are zeroed.
//
// Work is done one L2 table (one L1 entry) at a time, in the crash-safe order of docs/architecture.md §3:
//   1. allocate: the L2 table first, then the data clusters (refcounts written, QEMU's order);
//   2. write the data (new clusters get their whole content, old content copied around the write);
//   3. flush;
//   4. publish: a new L2 table is written whole, flushed, then the one L1 entry (the commit point),
//      flushed; an L2 table updated in place gets one write covering every changed entry (the
//      commit point), flushed;
//   5. only then drop the references the old entries held (old data clusters, compressed ranges,
//      the shared L2 table that was copied).
// A crash anywhere leaves each L2 table's part of the write all old or all new, and can only leak.
//
// Refcounts are written eagerly even on images with lazy_refcounts, so the dirty bit is never
// set; a dirty image (written by QEMU with lazy refcounts) must be repaired before we write.
import { precheckGuestWrite } from './snapshot-precheck.ts';
import { QcowError, hex } from '../errors.ts';
import { be32, put32 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import {
  ALL_SUBCLUSTERS, ClusterType, clusterType, compressedDescriptor, encodeL1Entry, encodeL2Entry, hasZeroFlag, isCopied, offsetOf, putEntry,
} from '../format/entries.ts';
import { allocClusters, noteMetadata, updateClusterRefcounts } from './allocator.ts';
import { assertNoMetadataOverlap } from './metadata.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import type { RefcountDeltas } from './refcount.ts';

/** What a zero write may do with clusters it zeroes whole: keep them allocated (QEMU's default), or unmap. */
export interface ZeroOptions {
  /** Free the host clusters of whole zeroed clusters (qemu-io `write -z -u`). */
  unmap?: boolean;
}

/** Write `data` at `guestOffset` of the active layer. */
export async function writeGuest(img: Qcow2Image, guestOffset: number, data: Uint8Array): Promise<void> {
  assertCanWrite(img, guestOffset, data.length);
  await forEachL2(img, guestOffset, data.length, (l1Index, start, end) =>
    writeL2Span(img, l1Index, start, end, { kind: 'data', bytes: (off, n) => data.subarray(off - guestOffset, off - guestOffset + n) }));
}

/** Make [guestOffset, guestOffset+length) read as zeros (qemu-io `write -z`). */
export async function writeZeroes(img: Qcow2Image, guestOffset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
  assertCanWrite(img, guestOffset, length);
  await forEachL2(img, guestOffset, length, (l1Index, start, end) =>
    writeL2Span(img, l1Index, start, end, { kind: 'zero', unmap: !!opts.unmap }));
}

/**
 * Discard whole clusters in the range (QEMU's non-full discard): on v3 they become zero clusters,
 * on v2 without a backing file unallocated (reads zeros), on v2 with one unallocated (reads the
 * backing file, as QEMU does). Partial clusters at either end are left alone. With `full` (QEMU's
 * full_discard, as bdrv_make_empty uses it) every whole cluster becomes unallocated: it reads
 * the backing file again.
 */
export async function discard(img: Qcow2Image, guestOffset: number, length: number, opts: { full?: boolean } = {}): Promise<void> {
  assertCanWrite(img, guestOffset, length);
  await forEachL2(img, guestOffset, length, (l1Index, start, end) =>
    writeL2Span(img, l1Index, start, end, { kind: 'discard', full: !!opts.full }));
}

/** Refuse what we must not or cannot write, before touching anything (asked up front by commit and rebase too). */
export function assertCanWrite(img: Qcow2Image, guestOffset: number, length: number): void {
  if (!img.writable) throw new QcowError('READ_ONLY', `${img.store.name} is opened read-only`, {});
  if (img.isCorrupt) {
    throw new QcowError('IMAGE_CORRUPT', 'qcow2: Image is corrupt; cannot be opened read/write', { structure: 'header', offset: 72 });
  }
  if (img.isDirty) {
    throw new QcowError('NOT_SUPPORTED',
      'Image is dirty (its refcounts were not written back, lazy_refcounts); repair it before writing: qcowscope check --repair all',
      { structure: 'header', offset: 72 });
  }
  if (img.hasDataFile) throw new QcowError('NOT_SUPPORTED', 'Writing images with an external data file is not supported', { structure: 'header', offset: 72 });
  if (img.header.cryptMethod !== 0) throw new QcowError('ENCRYPTED', 'Writing encrypted images is not supported', { structure: 'header', offset: 32 });
  if ((img.header.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n && !img.bitmapsTracked) {
    throw new QcowError('NOT_SUPPORTED', 'The image has persistent dirty bitmaps, which guest writes would make stale; writing it is not supported', { structure: 'header', offset: 88 });
  }
  precheckGuestWrite(img);
  if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 ||
      guestOffset + length > img.virtualSize) {
    throw new QcowError('INVALID_ARGUMENT', `Write of ${length} bytes at guest offset ${guestOffset} is outside the virtual disk (${img.virtualSize} bytes)`, {
      guestOffset, length, virtualSize: img.virtualSize,
    });
  }
}

/** Guest bytes handled per commit at most (bounds the memory a copy-on-write batch holds). */
const BATCH_BYTES = 32 * 1024 * 1024;

async function forEachL2(img: Qcow2Image, offset: number, length: number, fn: (l1Index: number, start: number, end: number) => Promise<void>): Promise<void> {
  const span = img.l2Span;
  const batch = Math.max(img.clusterSize, BATCH_BYTES);
  const end = offset + length;
  for (let pos = offset; pos < end;) {
    const l1Index = Math.floor(pos / span);
    const chunkEnd = Math.min(end, (l1Index + 1) * span, (Math.floor(pos / batch) + 1) * batch);
    await fn(l1Index, pos, chunkEnd);
    pos = chunkEnd;
  }
}

type Op =
  | { kind: 'data'; bytes: (guestOffset: number, length: number) => Uint8Array }
  | { kind: 'zero'; unmap: boolean }
  | { kind: 'discard'; full: boolean };

/** What one cluster of the span needs. */
type Plan =
  | { kind: 'skip' }
  /** Entry change only (zero flags, unmapping). */
  | { kind: 'entry'; hi: number; lo: number; zbm: number; abm: number }
  /** Data written into the cluster it already owns (refcount 1); maybe an entry change. */
  | { kind: 'inplace'; host: number; bytes: Uint8Array; hi: number; lo: number; zbm: number; abm: number }
  /** A new cluster with this whole content; entry gets its offset (+ bitmaps). */
  | { kind: 'new'; content: Uint8Array; zbm: number; abm: number };

interface ClusterState {
  guestCluster: number;
  l2Index: number;
  /** In-cluster byte range of the write. */
  a: number;
  b: number;
  hi: number;
  lo: number;
  zbm: number;
  abm: number;
  type: ClusterType;
  copied: boolean;
}

/** Bits [from, to) of a subcluster bitmap, as an unsigned 32-bit number. */
function bitRange(from: number, to: number): number {
  if (to <= from) return 0;
  return (2 ** to - 2 ** from) >>> 0;
}

function hasBit(bm: number, i: number): boolean {
  return Math.floor(bm / 2 ** i) % 2 === 1;
}

async function writeL2Span(img: Qcow2Image, l1Index: number, start: number, end: number, op: Op): Promise<void> {
  const cs = img.clusterSize;
  const es = img.l2EntrySize;
  const ext = img.geometry.extendedL2;
  const view = img.activeView();
  const oldL2Offset = img.l2OffsetAt(view, l1Index);
  const l1Copied = isCopied(be32(img.l1Table, l1Index * 8));
  const oldTable = oldL2Offset !== 0 ? await img.readL2(oldL2Offset) : null;
  const table = oldTable ? oldTable.slice() : new Uint8Array(cs);

  const plans: Array<[ClusterState, Plan]> = [];
  const drops: RefcountDeltas = new Map();
  const drop = (offset: number, length: number): void => {
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + length - 1) / cs); c++) drops.set(c, (drops.get(c) ?? 0) - 1);
  };
  const dropOld = (st: ClusterState): void => {
    if (st.type === ClusterType.Compressed) {
      const d = compressedDescriptor(st.hi, st.lo, img.clusterBits);
      drop(d.hostOffset, d.compressedSize);
    } else if (st.type === ClusterType.Normal || st.type === ClusterType.ZeroAlloc) {
      drop(offsetOf(st.hi, st.lo), cs);
    }
  };

  for (let gc = Math.floor(start / cs); gc <= Math.floor((end - 1) / cs); gc++) {
    const l2Index = gc % img.l2Entries;
    const at = l2Index * es;
    const hi = be32(table, at);
    const lo = be32(table, at + 4);
    const st: ClusterState = {
      guestCluster: gc, l2Index,
      a: Math.max(start, gc * cs) - gc * cs,
      b: Math.min(end, (gc + 1) * cs) - gc * cs,
      hi, lo,
      zbm: ext ? be32(table, at + 8) : 0,
      abm: ext ? be32(table, at + 12) : 0,
      type: clusterType(hi, lo, img.geometry),
      copied: isCopied(hi),
    };
    if (st.type === ClusterType.Normal || st.type === ClusterType.ZeroAlloc) {
      const host = offsetOf(hi, lo);
      if (host % cs !== 0) {
        throw new QcowError('METADATA_CORRUPT', `Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${hex(oldL2Offset)}, L2 index: ${hex(l2Index)})`, {
          structure: 'L2 table', offset: oldL2Offset + at, l2Offset: oldL2Offset, l2Index, hostOffset: host,
        });
      }
    }
    const plan = await planCluster(img, st, op, dropOld);
    plans.push([st, plan]);
  }
  if (plans.every(([, p]) => p.kind === 'skip')) return;

  // 0. Nothing is written in place over other metadata (QEMU's pre-write overlap check, which
  // marks the image corrupt after the fact; we refuse before the first write).
  const inPlace = new Map<number, string>();
  for (const [st, p] of plans) if (p.kind === 'inplace') inPlace.set(p.host, `guest data for guest cluster ${st.guestCluster}`);
  const l2InPlace = oldL2Offset !== 0 && l1Copied;
  if (l2InPlace && inPlace.has(oldL2Offset)) {
    throw new QcowError('METADATA_CORRUPT', `Preventing invalid write of ${inPlace.get(oldL2Offset)!} at offset ${hex(oldL2Offset)} (overlaps with active L2 table); the image is corrupt, run a check with repair`, {
      structure: 'L2 table', offset: oldL2Offset, overlapsWith: 'active L2 table',
    });
  }
  if (l2InPlace) inPlace.set(oldL2Offset, `L2 table for L1 index ${l1Index}`);
  // A cluster written in place lies inside the file: one past its end holds nothing the refcounts
  // can vouch for (a hostile entry there would make the file grow by gigabytes). QEMU writes a
  // sparse file there; we refuse before the first write.
  const fileSize = img.store.size();
  for (const [host, what] of inPlace) {
    if (host >= fileSize) {
      throw new QcowError('METADATA_CORRUPT', `Preventing invalid write of ${what} at offset ${hex(host)} (past the end of the file at ${hex(fileSize)}); the image is corrupt, run a check with repair`, {
        structure: what, offset: host, fileSize,
      });
    }
  }
  await assertNoMetadataOverlap(img, inPlace, l2InPlace ? new Set([oldL2Offset]) : undefined);

  // 1. Allocate: a private L2 table first (new, or a copy of the shared one), then data clusters.
  const needNewL2 = oldL2Offset === 0 || !l1Copied;
  const l2Offset = needNewL2 ? await allocClusters(img, 1, 'L2 table') : oldL2Offset;
  if (needNewL2) noteMetadata(img, l2Offset, cs, 'active L2 table');
  const fresh = plans.filter(([, p]) => p.kind === 'new');
  let nextHost = fresh.length > 0 ? await allocClusters(img, fresh.length, 'data cluster') : 0;

  // 2. Data, and the new entries in the private copy of the table.
  const writer = new RunWriter(img);
  for (const [st, p] of plans) {
    const at = st.l2Index * es;
    if (p.kind === 'skip') continue;
    if (p.kind === 'new') {
      await writer.add(nextHost, p.content, 'guest data (new cluster)');
      putEntry(table, at, ...encodeL2Entry(nextHost, { copied: true }));
      if (ext) { put32(table, at + 8, p.zbm); put32(table, at + 12, p.abm); }
      nextHost += cs;
      continue;
    }
    if (p.kind === 'inplace') await writer.add(p.host, p.bytes, 'guest data (in place)');
    putEntry(table, at, p.hi, p.lo);
    if (ext) { put32(table, at + 8, p.zbm); put32(table, at + 12, p.abm); }
  }
  await writer.done();

  // 3.–4. Publish.
  if (needNewL2) {
    await img.flush('data and refcounts before the new L2 table');
    await img.pwrite(l2Offset, table, `L2 table for L1 index ${l1Index} (new)`);
    await img.flush('new L2 table before the L1 entry');
    const entry = new Uint8Array(8);
    putEntry(entry, 0, ...encodeL1Entry(l2Offset, true));
    await img.pwrite(img.header.l1TableOffset + l1Index * 8, entry, `active L1 table entry ${l1Index}`, true);
    await img.flush('L1 entry');
    img.l1Table.set(entry, l1Index * 8);
    img.l2Cache.set(l2Offset, table);
    if (oldL2Offset !== 0) drops.set(oldL2Offset / cs, (drops.get(oldL2Offset / cs) ?? 0) - 1);
  } else {
    let lo = -1;
    let hi = -1;
    for (let i = 0; i < cs; i++) {
      if (table[i] !== oldTable![i]) {
        if (lo < 0) lo = i;
        hi = i + 1;
      }
    }
    if (lo >= 0) {
      lo = Math.floor(lo / es) * es;
      hi = Math.ceil(hi / es) * es;
      await img.flush('data and refcounts before the L2 entries');
      await img.pwrite(l2Offset + lo, table.slice(lo, hi), `L2 table for L1 index ${l1Index}, entries ${lo / es}..${hi / es - 1}`, true);
      await img.flush('L2 entries');
      img.l2Cache.set(l2Offset, table);
    }
  }

  // 5. The old references are unpublished and flushed: now drop them.
  if (drops.size > 0) await updateClusterRefcounts(img, drops);
}

/** Decide what one cluster needs. Reads old guest content where a copy-on-write needs it. */
async function planCluster(img: Qcow2Image, st: ClusterState, op: Op, dropOld: (st: ClusterState) => void): Promise<Plan> {
  const cs = img.clusterSize;
  const ext = img.geometry.extendedL2;
  // The last cluster of a disk whose size is not a cluster multiple counts as whole (QEMU too).
  const whole = st.a === 0 && (st.b === cs || st.guestCluster * cs + st.b >= img.virtualSize);
  const backed = img.backing !== null && st.guestCluster * cs < img.backing.virtualSize;
  const host = st.type === ClusterType.Normal || st.type === ClusterType.ZeroAlloc ? offsetOf(st.hi, st.lo) : 0;
  const v3 = img.version >= 3;

  if (op.kind === 'discard') {
    if (!whole) return { kind: 'skip' };
    if (op.full) {
      if (st.hi === 0 && st.lo === 0 && st.zbm === 0 && st.abm === 0) return { kind: 'skip' };
      dropOld(st);
      return { kind: 'entry', hi: 0, lo: 0, zbm: 0, abm: 0 };
    }
    const allocated = st.type !== ClusterType.Unallocated && st.type !== ClusterType.ZeroPlain;
    if (!allocated && !backed) return { kind: 'skip' };
    if (!allocated && st.type === ClusterType.ZeroPlain) return { kind: 'skip' };
    if (ext && !allocated && st.zbm === ALL_SUBCLUSTERS) return { kind: 'skip' };
    dropOld(st);
    if (ext) return { kind: 'entry', hi: 0, lo: 0, zbm: ALL_SUBCLUSTERS, abm: 0 };
    return { kind: 'entry', hi: 0, lo: v3 ? 1 : 0, zbm: 0, abm: 0 };
  }

  if (op.kind === 'zero') {
    // QEMU's policy (qcow2_co_pwrite_zeroes, zero_in_l2_slice, zero_l2_subclusters), so the
    // same zero writes give the same metadata: a whole cluster gets the zero flag on its entry (compressed clusters, and with
    // unmap allocated ones, are freed; otherwise the entry keeps its cluster); a partial cluster
    // is zeroed whole if the rest of it already reads as zeros, else real zeros are written.
    const atEnd = st.guestCluster * cs + st.b >= img.virtualSize;
    if (!v3) {
      // No zero flag before v3. Without a backing file QEMU discards instead (the cluster then
      // reads as zeros); with one it writes real zeros.
      const rest = st.type === ClusterType.Unallocated;
      if (img.backing !== null || !(whole || rest)) return planData(img, st, new Uint8Array(st.b - st.a), dropOld, host);
      if (st.hi === 0 && st.lo === 0) return { kind: 'skip' };
      dropOld(st);
      return { kind: 'entry', hi: 0, lo: 0, zbm: 0, abm: 0 };
    }
    if (!ext) {
      const restIsZero = st.type === ClusterType.ZeroPlain || st.type === ClusterType.ZeroAlloc ||
        (st.type === ClusterType.Unallocated && !backed);
      if (!(whole || (st.a === 0 && atEnd) || restIsZero)) return planData(img, st, new Uint8Array(st.b - st.a), dropOld, host);
      const unmap = st.type === ClusterType.Compressed ||
        (op.unmap && (st.type === ClusterType.Normal || st.type === ClusterType.ZeroAlloc));
      if (unmap) {
        dropOld(st);
        return { kind: 'entry', hi: 0, lo: 1, zbm: 0, abm: 0 };
      }
      if (hasZeroFlag(st.lo)) return { kind: 'skip' };
      return { kind: 'entry', hi: st.hi, lo: (st.lo | 1) >>> 0, zbm: 0, abm: 0 };
    }
    const scs = img.subclusterSize;
    let a = st.a;
    let b = st.b;
    // An unaligned end is widened to its subcluster if the rest of that subcluster reads zero.
    const subclusterIsZero = (i: number): boolean =>
      hasBit(st.zbm, i) || (!hasBit(st.abm, i) && st.type !== ClusterType.Compressed && !backed);
    if (a % scs !== 0) {
      if (!subclusterIsZero(Math.floor(a / scs))) return planData(img, st, new Uint8Array(st.b - st.a), dropOld, host);
      a = Math.floor(a / scs) * scs;
    }
    if (b % scs !== 0 && !atEnd) {
      if (!subclusterIsZero(Math.floor(b / scs))) return planData(img, st, new Uint8Array(st.b - st.a), dropOld, host);
      b = Math.ceil(b / scs) * scs;
    }
    if (a === 0 && (b === cs || atEnd)) {
      if (st.type === ClusterType.Compressed || (op.unmap && st.type === ClusterType.Normal)) {
        dropOld(st);
        return { kind: 'entry', hi: 0, lo: 0, zbm: ALL_SUBCLUSTERS, abm: 0 };
      }
      if (st.zbm === ALL_SUBCLUSTERS && st.abm === 0) return { kind: 'skip' };
      return { kind: 'entry', hi: st.hi, lo: st.lo, zbm: ALL_SUBCLUSTERS, abm: 0 };
    }
    if (st.type === ClusterType.Compressed) return planData(img, st, new Uint8Array(st.b - st.a), dropOld, host);
    const m = bitRange(Math.floor(a / scs), Math.ceil(b / scs));
    const zbm = (st.zbm | m) >>> 0;
    const abm = (st.abm & ~m) >>> 0;
    if (zbm === st.zbm && abm === st.abm) return { kind: 'skip' };
    return { kind: 'entry', hi: st.hi, lo: st.lo, zbm, abm };
  }

  const bytes = op.bytes(st.guestCluster * cs + st.a, st.b - st.a);
  return planData(img, st, bytes, dropOld, host);
}

async function planData(img: Qcow2Image, st: ClusterState, bytes: Uint8Array, dropOld: (st: ClusterState) => void, host: number): Promise<Plan> {
  const cs = img.clusterSize;
  const guestStart = st.guestCluster * cs;
  const whole = st.a === 0 && st.b === cs;
  if (img.geometry.extendedL2) {
    const scs = img.subclusterSize;
    const sa = Math.floor(st.a / scs);
    const sb = Math.ceil(st.b / scs);
    const touched = bitRange(sa, sb);
    if (st.type === ClusterType.Normal && st.copied) {
      // In place; a partially written subcluster that was not allocated gets the rest of its
      // old content (backing file or zeros) around the new bytes.
      let ea = st.a;
      let eb = st.b;
      if (st.a % scs !== 0 && !hasBit(st.abm, sa)) ea = sa * scs;
      if (st.b % scs !== 0 && !hasBit(st.abm, sb - 1)) eb = sb * scs;
      let buf = bytes;
      if (ea < st.a || eb > st.b) {
        buf = await img.read(guestStart + ea, eb - ea);
        buf.set(bytes, st.a - ea);
      }
      return {
        kind: 'inplace', host: host + ea, bytes: buf, hi: st.hi, lo: st.lo,
        zbm: (st.zbm & ~touched) >>> 0, abm: (st.abm | touched) >>> 0,
      };
    }
    const content = whole ? bytes : await withOld(img, guestStart, bytes, st.a);
    let zbm: number;
    let abm: number;
    if (st.type === ClusterType.Compressed) {
      zbm = 0;
      abm = ALL_SUBCLUSTERS;
    } else if (st.type === ClusterType.Normal) {
      zbm = (st.zbm & ~touched) >>> 0;
      abm = (st.abm | touched) >>> 0;
    } else {
      zbm = (st.zbm & ~touched) >>> 0;
      abm = touched;
    }
    dropOld(st);
    return { kind: 'new', content, zbm, abm };
  }
  if (st.type === ClusterType.Normal && st.copied) {
    return { kind: 'inplace', host: host + st.a, bytes, hi: st.hi, lo: st.lo, zbm: 0, abm: 0 };
  }
  if (st.type === ClusterType.ZeroAlloc && st.copied) {
    // A preallocated zero cluster we own: fill it (zeros around the data) and clear the flag.
    const content = new Uint8Array(cs);
    content.set(bytes, st.a);
    const [hi, lo] = encodeL2Entry(host, { copied: true });
    return { kind: 'inplace', host, bytes: content, hi, lo, zbm: 0, abm: 0 };
  }
  const content = whole ? bytes : await withOld(img, guestStart, bytes, st.a);
  dropOld(st);
  return { kind: 'new', content, zbm: 0, abm: 0 };
}

/** The cluster's current guest content with `bytes` laid over it at `at`. */
async function withOld(img: Qcow2Image, guestStart: number, bytes: Uint8Array, at: number): Promise<Uint8Array> {
  const old = await img.read(guestStart, img.clusterSize);
  old.set(bytes, at);
  return old;
}

/** Merges host-contiguous data writes into larger ones (bounded), in order. */
class RunWriter {
  private start = -1;
  private parts: Uint8Array[] = [];
  private len = 0;
  private purpose = '';
  private static readonly MAX = 8 * 1024 * 1024;

  constructor(private readonly img: Qcow2Image) {}

  async add(host: number, bytes: Uint8Array, purpose: string): Promise<void> {
    if (this.len > 0 && (this.start + this.len !== host || this.purpose !== purpose || this.len + bytes.length > RunWriter.MAX)) await this.done();
    if (this.len === 0) {
      this.start = host;
      this.purpose = purpose;
    }
    this.parts.push(bytes);
    this.len += bytes.length;
  }

  async done(): Promise<void> {
    if (this.len === 0) return;
    let buf: Uint8Array;
    if (this.parts.length === 1) {
      buf = this.parts[0]!;
    } else {
      buf = new Uint8Array(this.len);
      let o = 0;
      for (const p of this.parts) { buf.set(p, o); o += p.length; }
    }
    await this.img.pwrite(this.start, buf, this.purpose);
    this.parts = [];
    this.len = 0;
  }
}
