// Refcounts in memory and on disk for the check and the layout: the in-memory refcount table
// (IMRT, a typed array that widens as counts grow) and the on-disk refcounts read refblock by
// refblock, decoded into the same arrays and compared with them.
// ---- the in-memory refcount table ----------------------------------------------------------------
import { QcowError } from '../errors.ts';
import { be32 } from '../format/bytes.ts';
import { refcountTableOffset } from '../format/entries.ts';
import { getRefcount, refcountMax } from '../format/refcount.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { tablesInOrder, type ReadBuffer } from './table-reads.ts';

/** Largest IMRT we build: beyond this the image is refused with a check error (memory bound). */
export const MAX_IMRT_BYTES = 1024 * 1024 * 1024;

export type Counts = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/**
 * One counter per host cluster, as wide as the image's refcounts (overflow is a finding, as in
 * QEMU). Wider refcounts start as one byte per cluster and widen the first time a count passes
 * 255: almost no image needs it, and every byte of this array is fresh memory, which costs more
 * to touch than the whole walk (about 4 ms per MiB where this was measured).
 */
export class Imrt {
  counts: Counts;
  /** Clusters covered (QEMU's nb_clusters, grows for references just past EOF and allocations). */
  size: number;
  readonly max: number;
  readonly order: number;
  /** The largest count `counts` holds as it is now (`max` once wide). */
  storeMax: number;

  constructor(order: number, size: number) {
    this.order = order;
    this.max = refcountMax(order);
    this.size = size;
    this.counts = new Uint8Array(Imrt.capacityFor(size));
    this.storeMax = Math.min(255, this.max);
  }

  static bytesPerEntry(order: number): number {
    return order <= 3 ? 1 : order === 4 ? 2 : order === 5 ? 4 : 8;
  }

  private static capacityFor(n: number): number {
    return Math.max(64, Math.ceil(n / 64) * 64);
  }

  /** `n` zeroed counters wide enough for refcounts of 2^order bits. */
  static alloc(order: number, n: number): Counts {
    return order <= 3 ? new Uint8Array(n) : order === 4 ? new Uint16Array(n) : order === 5 ? new Uint32Array(n) : new Float64Array(n);
  }

  /** Hold counts up to `max` from now on (the writers call this before storing a count above storeMax). */
  widen(): void {
    if (this.storeMax === this.max) return;
    const next = Imrt.alloc(this.order, this.counts.length);
    next.set(this.counts as never);
    this.counts = next;
    this.storeMax = this.max;
  }

  /** Make clusters [0, n) addressable (zero-filled). */
  ensure(n: number): void {
    if (n <= this.size) return;
    if (n > this.counts.length) {
      const len = Imrt.capacityFor(Math.max(n, this.counts.length * 1.25));
      const next = this.storeMax === this.max ? Imrt.alloc(this.order, len) : new Uint8Array(len);
      next.set(this.counts as never);
      this.counts = next;
    }
    this.size = n;
  }

  get(i: number): number {
    return i < this.size ? this.counts[i]! : 0;
  }

  clear(): void {
    this.counts.fill(0);
  }
}

// ---- on-disk refcounts --------------------------------------------------------------------------

/** On-disk refcounts by cluster, and the reftable indices whose refblock could not be read. */
export interface DiskRefcounts {
  counts: Counts;
  unreadable: Set<number>;
}

/**
 * The refblocks that hold the refcounts of clusters [0, n), in reftable order, read in batches:
 * [reftable index, refblock] (the refblock valid until the next is asked for, as tablesInOrder's).
 * Reftable entries of 0 are left out; unaligned ones cannot be read (QEMU: -EIO) and are added to
 * `unreadable` before the first refblock is yielded.
 */
export async function* refblocksInOrder(
  img: Qcow2Image, n: number, unreadable: Set<number>, buffer?: ReadBuffer,
): AsyncGenerator<[number, Uint8Array]> {
  const cs = img.clusterSize;
  const per = 2 ** (img.clusterBits + 3 - img.refcountOrder);
  const rt = img.reftable;
  const needed = Math.min(rt.length / 8, Math.ceil(n / per));
  const idx: number[] = [];
  const offs: number[] = [];
  for (let r = 0; r < needed; r++) {
    const off = refcountTableOffset(be32(rt, r * 8), be32(rt, r * 8 + 4));
    if (off === 0) continue;
    if (off % cs !== 0) {
      unreadable.add(r);
      continue;
    }
    idx.push(r);
    offs.push(off);
  }
  for await (const [k, block] of tablesInOrder(img, offs, cs, buffer)) yield [idx[k]!, block];
}

/**
 * The on-disk refcounts of clusters [0, n), read through the in-memory refcount table in batched
 * refblock reads. Reftable entries whose refblock is unaligned cannot be read (QEMU: -EIO); their
 * indices are returned in `unreadable`.
 */
export async function readDiskRefcounts(img: Qcow2Image, n: number, buffer?: ReadBuffer): Promise<DiskRefcounts> {
  const order = img.refcountOrder;
  const counts = Imrt.alloc(order, n);
  const unreadable = new Set<number>();
  const per = 2 ** (img.clusterBits + 3 - order);
  for await (const [r, block] of refblocksInOrder(img, n, unreadable, buffer)) {
    const base = r * per;
    decodeInto(block, order, counts, base, Math.min(per, n - base));
  }
  return { counts, unreadable };
}

/**
 * Whether the on-disk refcounts of clusters [0, imrt.size) are exactly the IMRT's: the refblocks
 * are compared one by one as they are read, without decoding them into a second per-cluster
 * array. This is the answer for a clean image; on any difference, or a refblock that cannot be
 * read, it says false and the caller decodes them all (readDiskRefcounts) to compare and report
 * cluster by cluster as QEMU does.
 */
export async function refcountsMatch(img: Qcow2Image, imrt: Imrt, buffer?: ReadBuffer, isCancelled?: () => boolean): Promise<boolean> {
  const order = img.refcountOrder;
  const n = imrt.size;
  const counts = imrt.counts;
  const per = 2 ** (img.clusterBits + 3 - order);
  const rt = img.reftable;
  const rtEntries = rt.length / 8;
  const needed = Math.ceil(n / per);
  const bases: number[] = [];
  const offs: number[] = [];
  for (let r = 0; r < needed; r++) {
    const base = r * per;
    const off = r < rtEntries ? refcountTableOffset(be32(rt, r * 8), be32(rt, r * 8 + 4)) : 0;
    if (off === 0) {
      // no refblock: every refcount it would hold is 0
      for (let i = base, end = Math.min(n, base + per); i < end; i++) if (counts[i] !== 0) return false;
      continue;
    }
    if (off % img.clusterSize !== 0) return false;
    bases.push(base);
    offs.push(off);
  }
  for await (const [k, block] of tablesInOrder(img, offs, img.clusterSize, buffer)) {
    if (isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled', {});
    const base = bases[k]!;
    if (!refblockMatches(block, order, counts, base, Math.min(per, n - base))) return false;
  }
  return true;
}

/** Whether `count` refcounts of a refblock equal `counts[base ..]` (one loop per common width). */
function refblockMatches(block: Uint8Array, order: number, counts: Counts, base: number, count: number): boolean {
  const dv = new DataView(block.buffer, block.byteOffset, block.byteLength);
  switch (order) {
    case 3:
      for (let i = 0; i < count; i++) if (block[i] !== counts[base + i]) return false;
      return true;
    case 4:
      if (counts instanceof Uint8Array) {
        // the IMRT still one byte wide: every on-disk refcount must be a zero byte, then the count
        for (let i = 2 * pairsMatch(block, counts, base, count); i < count; i++) if (block[2 * i] !== 0 || block[2 * i + 1] !== counts[base + i]) return false;
        return true;
      }
      for (let i = 0; i < count; i++) if (dv.getUint16(2 * i) !== counts[base + i]) return false;
      return true;
    case 5:
      for (let i = 0; i < count; i++) if (dv.getUint32(4 * i) !== counts[base + i]) return false;
      return true;
    default:
      for (let i = 0; i < count; i++) if (getRefcount(block, i, order) !== counts[base + i]) return false;
      return true;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * refblockMatches for 16-bit refcounts and one-byte counts, two clusters per step on a
 * little-endian machine: the 32-bit word of two big-endian refcounts (0, c0, 0, c1) against the
 * 16-bit word of two counts (c0, c1). Returns how many leading pairs of clusters are known to
 * match (the caller's loop checks the rest, and finds the difference if there is one). Nothing
 * after the loop but the return: an operation there has no type feedback when V8 compiles the
 * loop while it first runs, and sent the compiled loop back to the interpreter at every refblock.
 */
function pairsMatch(block: Uint8Array, counts: Uint8Array, base: number, count: number): number {
  if (!LITTLE_ENDIAN || (block.byteOffset & 3) !== 0 || ((counts.byteOffset + base) & 1) !== 0) return 0;
  const words = new Uint32Array(block.buffer, block.byteOffset, count >>> 1);
  const pairs = new Uint16Array(counts.buffer, counts.byteOffset + base, count >>> 1);
  const n = count >>> 1;
  let j = 0;
  for (; j < n; j++) {
    const x = pairs[j]!;
    if ((words[j]! | 0) !== (((x & 0xff) << 8) | ((x & 0xff00) << 16))) break;
  }
  return j;
}

/** The highest cluster with a reference (0 if none): what compareRefcounts finds when the refcounts match. */
export function highestReferenced(imrt: Imrt): number {
  const counts = imrt.counts;
  for (let i = imrt.size - 1; i > 0; i--) if (counts[i] !== 0) return i;
  return 0;
}

/** Decode `count` refcounts of a refblock into `out` at `base`. */
export function decodeInto(block: Uint8Array, order: number, out: Counts, base: number, count: number): void {
  switch (order) {
    case 0: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 3]! >>> (i & 7)) & 1; break;
    case 1: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 2]! >>> ((i & 3) * 2)) & 3; break;
    case 2: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 1]! >>> ((i & 1) * 4)) & 15; break;
    case 3: for (let i = 0; i < count; i++) out[base + i] = block[i]!; break;
    case 4: for (let i = 0; i < count; i++) out[base + i] = (block[2 * i]! << 8) | block[2 * i + 1]!; break;
    case 5: for (let i = 0; i < count; i++) out[base + i] = be32(block, 4 * i); break;
    default: for (let i = 0; i < count; i++) out[base + i] = be32(block, 8 * i) * 4294967296 + be32(block, 8 * i + 4);
  }
}
