// Block status like qemu-img map (QEMU's qcow2_co_block_status through bdrv_co_block_status):
// the extents walk over the L2 tables of a view, falling through to the backing chain, merged as
// qemu-img map merges them; and the file's holes (HoleMap) for metadata-preallocated images.
import { be32 } from '../format/bytes.ts';
import {
  offsetOf, offsetUnalignedMaskLo, OFFSET_MASK_HI, OFFSET_MASK_LO, QCOW_OFLAG_COMPRESSED_HI, QCOW_OFLAG_ZERO_LO, sameRunEnd,
} from '../format/entries.ts';
import { checkDataAligned, mapInTable, zeroInV2Error } from './guest-read.ts';
import { canMergeExtents, type Extent } from './layer.ts';
import type { L1View, Qcow2Image } from './qcow2-image.ts';

/**
 * The extents of `extentsView`, handed to `onExtent` in guest order as soon as each is final, so
 * memory stays bounded by one L2 table whatever the image size. Each L2 table is walked as bytes
 * in one synchronous loop (no promise and no object per cluster): clusters of the same kind with
 * contiguous host offsets become one piece first, and only pieces become extents.
 */
export async function walkExtents(img: Qcow2Image, view: L1View, start: number, length: number, onExtent: (e: Extent) => void, holes?: HoleMap): Promise<void> {
  const merger = new ExtentMerger(onExtent);
  const end = Math.min(start + length, view.virtualSize);
  const cs = img.clusterSize;
  const pieces: number[] = [];
  let pos = start;
  while (pos < end) {
    const l1Index = Math.floor(Math.floor(pos / cs) / img.l2Entries);
    const spanEnd = Math.min(end, (l1Index + 1) * img.l2Span);
    const l2Offset = img.l2OffsetAt(view, l1Index);
    if (l2Offset === 0) {
      // whole L1 entries unallocated (and everything past the end of the table, which a
      // snapshot's disk size may reach far beyond): one piece for the whole run, so the loop
      // never steps through a hostile virtual size one L2 span at a time
      let next = l1Index + 1;
      while (next < view.size && next * img.l2Span < end && offsetOf(be32(view.table, next * 8), be32(view.table, next * 8 + 4)) === 0) next++;
      const runEnd = next >= view.size ? end : Math.min(end, next * img.l2Span);
      await backingExtents(img, merger, pos, runEnd - pos);
      pos = runEnd;
      continue;
    } else {
      const l2 = await img.scanL2(l2Offset);
      pieces.length = 0;
      if (img.geometry.extendedL2) piecesByMapping(img, l2, l2Offset, l1Index, pos, spanEnd, pieces);
      else piecesStandard(img, l2, l2Offset, pos, spanEnd, pieces);
      for (let k = 0; k < pieces.length; k += 4) {
        const kind = pieces[k]!;
        const pStart = pieces[k + 1]!;
        const pLen = pieces[k + 2]!;
        const pHost = pieces[k + 3]!;
        if (kind === P_BACKING) await backingExtents(img, merger, pStart, pLen);
        else if (kind === P_BACKING_AT) await backingExtents(img, merger, pStart, pLen, pHost);
        else if (kind === P_DATA && holes !== undefined) {
          // QEMU limits the status to the file's own data or hole extent (file-posix's
          // SEEK_DATA/SEEK_HOLE), so a data run splits exactly where the file's holes begin and end
          holes.split(pHost, pLen, (host, n, hole) => {
            merger.push({ start: pStart + (host - pHost), length: n, depth: 0, present: true, zero: hole, data: true, compressed: false, offset: host });
          });
        } else merger.push(pieceExtent(kind, pStart, pLen, pHost));
      }
    }
    pos = spanEnd;
  }
  merger.end();
}

/**
 * Pieces of [pos, spanEnd) inside one standard L2 table: (kind, start, length, host) quadruples.
 * The same decisions (and errors) as `mapInTable`, decoded inline from the entry bytes. Only the
 * first entry of each stretch of identical-looking entries is decoded here; `sameRunEnd` skips the
 * rest (a few integer operations per entry, no branch that a short-lived process has not seen).
 */
function piecesStandard(img: Qcow2Image, l2: Uint8Array, l2Offset: number, pos: number, spanEnd: number, out: number[]): void {
  const cs = img.clusterSize;
  const v3 = img.header.version >= 3;
  const dataFile = img.geometry.dataFile;
  const lowMask = offsetUnalignedMaskLo(cs);
  const clusterIndex = Math.floor(pos / cs);
  const i0 = (clusterIndex % img.l2Entries) | 0;
  const tableBase = (clusterIndex - i0) * cs; // guest offset of entry 0
  const i1 = Math.ceil((spanEnd - tableBase) / cs) | 0;
  const dv = new DataView(l2.buffer, l2.byteOffset, l2.byteLength);
  let rKind = -1;
  let rI = 0; // first entry of the run
  let rHost = 0; // host offset of that entry
  for (let i = i0; i < i1;) {
    const hi = dv.getInt32(i * 8);
    const lo = dv.getInt32(i * 8 + 4);
    const host = (hi & OFFSET_MASK_HI) * 4294967296 + ((lo & OFFSET_MASK_LO) >>> 0);
    let kind: number;
    if ((hi & QCOW_OFLAG_COMPRESSED_HI) !== 0) {
      kind = P_COMPRESSED;
    } else if ((lo & QCOW_OFLAG_ZERO_LO) !== 0) {
      if (!v3) throw zeroInV2Error(img, l2Offset, i, i * 8);
      if (host !== 0) {
        if ((lo & lowMask) !== 0) checkDataAligned(img, host, l2Offset, i, i * 8);
        kind = P_ZERO_AT;
      } else {
        kind = P_ZERO;
      }
    } else if (host === 0 && !(dataFile && hi < 0)) {
      kind = P_BACKING; // (hi < 0: QCOW_OFLAG_COPIED, a data-file cluster at offset 0)
    } else {
      if ((lo & lowMask) !== 0) checkDataAligned(img, host, l2Offset, i, i * 8);
      kind = P_DATA;
    }
    const hasOffset = kind === P_DATA || kind === P_ZERO_AT;
    // an entry with other flags (COPIED) may still continue the run: same kind, offset one cluster on
    if (kind !== rKind || (hasOffset && host !== rHost + (i - rI) * cs)) {
      if (rKind >= 0) pushPiece(img, out, rKind, rI, i, rHost, i0, pos, tableBase, spanEnd);
      rKind = kind;
      rI = i;
      rHost = host;
    }
    if (kind === P_COMPRESSED) {
      i++;
    } else if (hasOffset) {
      // the entries after it with the same words and the offset one cluster on each, while the
      // offset stays inside its 56 bits (past them it would carry into the flags); the end is
      // kept an int32 (a double there would make the whole loop count in doubles)
      i = sameRunEnd(dv, i, (OFFSET_LIMIT - host) / cs >= i1 - i ? i1 : i + (OFFSET_LIMIT - host) / cs, cs);
    } else {
      i = sameRunEnd(dv, i, i1, 0); // the same words again
    }
  }
  if (rKind >= 0) pushPiece(img, out, rKind, rI, i1, rHost, i0, pos, tableBase, spanEnd);
}

/** Host offsets end at 2^56 (bits 9-55 of an entry). */
const OFFSET_LIMIT = 2 ** 56;

/** One piece of `piecesStandard`: entries [iStart, iEnd) of kind `kind`, clipped to [pos, spanEnd). */
function pushPiece(img: Qcow2Image, out: number[], kind: number, iStart: number, iEnd: number, rHost: number,
  i0: number, pos: number, tableBase: number, spanEnd: number): void {
  const cs = img.clusterSize;
  const s0 = tableBase + iStart * cs;
  const start = iStart === i0 ? pos : s0;
  const end = Math.min(spanEnd, tableBase + iEnd * cs);
  const host = kind === P_DATA || kind === P_ZERO_AT ? rHost + (start - s0) : 0;
  out.push(kind, start, end - start, host);
}

/** Pieces through `mapInTable` (extended L2: subcluster granularity). */
function piecesByMapping(img: Qcow2Image, l2: Uint8Array, l2Offset: number, l1Index: number, pos: number, spanEnd: number, out: number[]): void {
  let rKind = -1;
  let rStart = 0;
  let rLen = 0;
  let rHost = 0;
  while (pos < spanEnd) {
    const m = mapInTable(img, l2, l2Offset, l1Index, pos, spanEnd - pos);
    const n = m.length;
    let kind: number;
    let host = 0;
    if (m.kind === 'data') {
      host = m.hostOffset;
      kind = P_DATA;
    } else if (m.kind === 'compressed') {
      kind = P_COMPRESSED;
    } else if (m.kind === 'zero') {
      host = m.hostOffset;
      kind = host ? P_ZERO_AT : P_ZERO;
    } else {
      host = m.hostOffset;
      kind = host ? P_BACKING_AT : P_BACKING;
    }
    if (kind === rKind && (kind === P_BACKING || kind === P_ZERO || kind === P_COMPRESSED || rHost + rLen === host)) {
      rLen += n;
    } else {
      if (rKind >= 0) out.push(rKind, rStart, rLen, rHost);
      rKind = kind;
      rStart = pos;
      rLen = n;
      rHost = host;
    }
    pos += n;
  }
  if (rKind >= 0) out.push(rKind, rStart, rLen, rHost);
}

/**
 * A range unallocated in this layer: the backing chain's status, or (no backing file, or past
 * its end) unallocated zeros here. `host`: the host offset of `pos` when the range is an
 * unallocated subcluster of an allocated cluster (extended L2), which QEMU reports as the
 * offset of those zeros (QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC keeps BDRV_BLOCK_OFFSET_VALID).
 */
async function backingExtents(img: Qcow2Image, out: ExtentMerger, pos: number, n: number, host?: number): Promise<void> {
  const b = img.backing;
  const zeros = (s: number, len: number): void => {
    const e: Extent = { start: s, length: len, depth: 0, present: false, zero: true, data: false, compressed: false };
    if (host !== undefined) e.offset = host + (s - pos);
    out.push(e);
  };
  if (!b) {
    zeros(pos, n);
    return;
  }
  const bEnd = Math.min(pos + n, b.virtualSize);
  if (bEnd > pos) {
    for (const e of await b.extents(pos, bEnd - pos)) out.push({ ...e, depth: e.depth + 1 });
  }
  if (bEnd < pos + n) {
    const s = Math.max(pos, bEnd);
    zeros(s, pos + n - s);
  }
}

/**
 * The holes of an image file (metadata-preallocated images: qemu-img map asks the file system
 * which data clusters are holes and reports them as zero). Built from the file's data segments;
 * asked once per data cluster in (mostly) increasing host order, so a cursor makes each question
 * O(1), and a question behind the cursor falls back to binary search.
 */
export class HoleMap {
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;
  private cur = 0; // first segment whose end is beyond the last queried offset
  private last = 0;

  /** `segments`: sorted, disjoint [start, end) host ranges that hold data. */
  constructor(segments: ReadonlyArray<readonly [number, number]>) {
    this.starts = new Float64Array(segments.length);
    this.ends = new Float64Array(segments.length);
    segments.forEach(([s, e], i) => {
      this.starts[i] = s;
      this.ends[i] = e;
    });
  }

  /**
   * Split [hostOffset, hostOffset + length) where the file's data and holes begin and end, calling
   * `each(offset, length, hole)` in order.
   */
  split(hostOffset: number, length: number, each: (offset: number, length: number, hole: boolean) => void): void {
    const starts = this.starts;
    const ends = this.ends;
    const count = ends.length;
    const end = hostOffset + length;
    this.isHole(hostOffset, length); // positions the cursor on the first segment ending after hostOffset
    let cur = this.cur;
    let pos = hostOffset;
    while (pos < end) {
      if (cur >= count || starts[cur]! >= end) {
        each(pos, end - pos, true);
        break;
      }
      if (starts[cur]! > pos) {
        each(pos, starts[cur]! - pos, true);
        pos = starts[cur]!;
      }
      const dataEnd = Math.min(ends[cur]!, end);
      each(pos, dataEnd - pos, false);
      pos = dataEnd;
      if (ends[cur]! <= end) cur++;
    }
    this.cur = cur;
    this.last = end; // a later question below `end` repositions by binary search
  }

  /** Whether no data segment intersects [hostOffset, hostOffset + length). */
  isHole(hostOffset: number, length: number): boolean {
    const ends = this.ends;
    const count = ends.length;
    let cur = this.cur;
    if (hostOffset < this.last) {
      let lo = 0;
      let hi = count;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ends[mid]! <= hostOffset) lo = mid + 1;
        else hi = mid;
      }
      cur = lo;
    } else {
      while (cur < count && ends[cur]! <= hostOffset) cur++;
    }
    this.cur = cur;
    this.last = hostOffset;
    return cur >= count || this.starts[cur]! >= hostOffset + length;
  }
}

// Piece kinds of the extents walk: each is one combination of qemu-img map's flags.
const P_BACKING = 0; // unallocated here: the backing chain decides (or present: false, zero: true)
const P_ZERO = 1; // zero, no host offset
const P_ZERO_AT = 2; // zero with a preallocated host cluster
const P_DATA = 3;
const P_COMPRESSED = 5;
const P_BACKING_AT = 6; // extended L2: unallocated subclusters of an allocated cluster (host offset known)

function pieceExtent(kind: number, start: number, length: number, host: number): Extent {
  switch (kind) {
    case P_ZERO: return { start, length, depth: 0, present: true, zero: true, data: false, compressed: false };
    case P_ZERO_AT: return { start, length, depth: 0, present: true, zero: true, data: false, compressed: false, offset: host };
    case P_DATA: return { start, length, depth: 0, present: true, zero: false, data: true, compressed: false, offset: host };
    default: return { start, length, depth: 0, present: true, zero: false, data: true, compressed: true };
  }
}

/** Merges adjacent extents as qemu-img map does and hands each on once nothing more can join it. */
class ExtentMerger {
  private pending: Extent | null = null;
  private readonly emit: (e: Extent) => void;

  constructor(emit: (e: Extent) => void) {
    this.emit = emit;
  }

  /** Takes ownership of `e`. */
  push(e: Extent): void {
    const p = this.pending;
    if (p !== null && canMergeExtents(p, e)) {
      p.length += e.length;
      return;
    }
    if (p !== null) this.emit(p);
    this.pending = e;
  }

  end(): void {
    if (this.pending !== null) this.emit(this.pending);
    this.pending = null;
  }
}
