// L1, L2, refcount table and bitmap table entries (docs/qcow2-format.md §1.5–1.7): every bit of an
// entry is named here and nowhere else (decoding into cluster types and host offsets, encoding,
// and the word masks the hot loops use on entries read in place). Entries are handled as two u32 halves (hi, lo) read from the table bytes, never
// as 64-bit bitwise operations (those would silently truncate to 32 bits) and never as bigint on
// hot paths. QEMU's mask names are kept so a search finds the spec and QEMU too.
import { be32, put32 } from './bytes.ts';

const TWO32 = 4294967296;

// Word masks. Exported for the loops that read entries as int32 words in place (map, check,
// snapshot commits): such a loop copies the ones it needs into locals before it starts.
/** QCOW_OFLAG_COPIED, bit 63 (the high word's sign bit: `hi < 0` on an int32 word). */
export const QCOW_OFLAG_COPIED_HI = 0x80000000;
/** QCOW_OFLAG_COMPRESSED, bit 62. */
export const QCOW_OFLAG_COMPRESSED_HI = 0x40000000;
/** QCOW_OFLAG_ZERO, bit 0. */
export const QCOW_OFLAG_ZERO_LO = 1;
/** Bits 32..55 of L1E_OFFSET_MASK / L2E_OFFSET_MASK 0x00fffffffffffe00. */
export const OFFSET_MASK_HI = 0x00ffffff;
/** Bits 9..31 of L1E/L2E_OFFSET_MASK and REFT_OFFSET_MASK. */
export const OFFSET_MASK_LO = 0xfffffe00;
/** Bits 56..62 of an L2 entry: the compressed flag and the reserved bits above the offset. */
export const L2E_FLAGS_56_62_HI = 0x7f000000;
/** Extended L2: a subcluster bitmap (allocation or zero) with all 32 subclusters set. */
export const ALL_SUBCLUSTERS = 0xffffffff;
/** L1E_RESERVED_MASK 0x7F000000000001FF as (hi, lo). */
const L1E_RESERVED_HI = 0x7f000000;
const L1E_RESERVED_LO = 0x1ff;
/** L2E_STD_RESERVED_MASK 0x3F000000000001FE as (hi, lo). */
const L2E_STD_RESERVED_HI = 0x3f000000;
const L2E_STD_RESERVED_LO = 0x1fe;
/** REFT_RESERVED_MASK: bits 0..8 of a refcount table entry. */
const REFT_RESERVED_LO = 0x1ff;
/** BME_TABLE_ENTRY_RESERVED_MASK 0xff000000000001fe as (hi, lo); BME_TABLE_ENTRY_FLAG_ALL_ONES is bit 0. */
const BME_TABLE_ENTRY_RESERVED_HI = 0xff000000;
const BME_TABLE_ENTRY_RESERVED_LO = 0x1fe;
const BME_TABLE_ENTRY_FLAG_ALL_ONES = 1;

const HI_COPIED = QCOW_OFLAG_COPIED_HI;
const HI_COMPRESSED = QCOW_OFLAG_COMPRESSED_HI;
const HI_OFFSET = OFFSET_MASK_HI;
const LO_OFFSET = OFFSET_MASK_LO;
const LO_ZERO = QCOW_OFLAG_ZERO_LO;

/** The host offset of an L1 or L2 entry (L1E/L2E_OFFSET_MASK; for compressed entries see compressedDescriptor). */
export function offsetOf(hi: number, lo: number): number {
  return (hi & HI_OFFSET) * TWO32 + ((lo & LO_OFFSET) >>> 0);
}

/** Whether the entry's offset field is non-zero (an L2 entry with a host cluster, an allocated L1 entry). */
export function hasOffset(hi: number, lo: number): boolean {
  return (hi & HI_OFFSET) !== 0 || (lo & LO_OFFSET) !== 0;
}

/** QCOW_OFLAG_COPIED of an entry's high word. */
export function isCopied(hi: number): boolean {
  return (hi & HI_COPIED) !== 0;
}

/** The high word with QCOW_OFLAG_COPIED set or cleared (as a u32). */
export function withCopied(hi: number, copied: boolean): number {
  return copied ? (hi | HI_COPIED) >>> 0 : (hi & ~HI_COPIED) >>> 0;
}

/** QCOW_OFLAG_ZERO of an L2 entry's low word. */
export function hasZeroFlag(lo: number): boolean {
  return (lo & LO_ZERO) !== 0;
}

/** QCOW_OFLAG_COMPRESSED of an L2 entry's high word. */
export function isCompressed(hi: number): boolean {
  return (hi & HI_COMPRESSED) !== 0;
}

/**
 * The low-word bits of the offset field that lie below `clusterSize`: an entry whose low word has
 * any of them set points to an unaligned host offset.
 */
export function offsetUnalignedMaskLo(clusterSize: number): number {
  return (clusterSize - 1) & LO_OFFSET;
}

// ---- refcount table ----------------------------------------------------------------------------

/** Refblock offset of a reftable entry: REFT_OFFSET_MASK keeps bits 9..63. */
export function refcountTableOffset(hi: number, lo: number): number {
  return (hi >>> 0) * TWO32 + ((lo & LO_OFFSET) >>> 0);
}

/** Whether a reftable entry's low word has REFT_RESERVED_MASK bits set. */
export function refcountTableReservedBits(lo: number): boolean {
  return (lo & REFT_RESERVED_LO) !== 0;
}

// ---- bitmap table ------------------------------------------------------------------------------

/**
 * Whether a bitmap table entry is invalid as QEMU's check_table_entry says: reserved bits set,
 * or an offset that is unaligned or comes with the all-ones flag.
 */
export function bitmapTableEntryInvalid(hi: number, lo: number, clusterSize: number): boolean {
  if ((hi & BME_TABLE_ENTRY_RESERVED_HI) !== 0 || (lo & BME_TABLE_ENTRY_RESERVED_LO) !== 0) return true;
  const off = offsetOf(hi, lo);
  return off !== 0 && ((lo & BME_TABLE_ENTRY_FLAG_ALL_ONES) !== 0 || off % clusterSize !== 0);
}

/** The data cluster offset in bitmap table entry `index` of `table` (0 ⇒ none: all zeros or all ones). */
export function bitmapTableEntryOffset(table: Uint8Array, index: number): number {
  return offsetOf(be32(table, index * 8), be32(table, index * 8 + 4));
}

// ---- L1 --------------------------------------------------------------------------------------

export interface L1Entry {
  /** L2 table host offset, 0 ⇒ unallocated. */
  l2Offset: number;
  copied: boolean;
  reservedBits: boolean;
  /** The raw u64 as a hex string (for display). */
  raw: string;
}

function l1Hi(table: Uint8Array, index: number): number {
  return be32(table, index * 8);
}
function l1Lo(table: Uint8Array, index: number): number {
  return be32(table, index * 8 + 4);
}

/** The L2 offset in L1 entry `index` of `table` (0 ⇒ unallocated). */
export function l1L2Offset(table: Uint8Array, index: number): number {
  return offsetOf(be32(table, index * 8), be32(table, index * 8 + 4));
}

export function decodeL1Entry(table: Uint8Array, index: number): L1Entry {
  const hi = l1Hi(table, index);
  const lo = l1Lo(table, index);
  return {
    l2Offset: offsetOf(hi, lo),
    copied: (hi & HI_COPIED) !== 0,
    reservedBits: (hi & L1E_RESERVED_HI) !== 0 || (lo & L1E_RESERVED_LO) !== 0,
    raw: rawHex(hi, lo),
  };
}

export function l1ReservedBits(hi: number, lo: number): boolean {
  return (hi & L1E_RESERVED_HI) !== 0 || (lo & L1E_RESERVED_LO) !== 0;
}

/** The L1E_RESERVED_MASK bits set in an entry, as hex ('' when none): for display. */
export function l1ReservedHex(hi: number, lo: number): string {
  if (!l1ReservedBits(hi, lo)) return '';
  return '0x' + rawHex(hi & L1E_RESERVED_HI, lo & L1E_RESERVED_LO).replace(/^0+(?=.)/, '');
}

/** Unaligned L2 offsets in an L1 entry: bits 0..8 inside the offset field region are reserved. */
export function encodeL1Entry(l2Offset: number, copied: boolean): [number, number] {
  const hi = (Math.floor(l2Offset / TWO32) & HI_OFFSET) | (copied ? HI_COPIED : 0);
  const lo = (l2Offset % TWO32) >>> 0;
  return [hi >>> 0, lo];
}

export function putEntry(table: Uint8Array, byteOffset: number, hi: number, lo: number): void {
  put32(table, byteOffset, hi >>> 0);
  put32(table, byteOffset + 4, lo >>> 0);
}

export function rawHex(hi: number, lo: number): string {
  return (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}

// ---- L2 --------------------------------------------------------------------------------------

/** QEMU's QCow2ClusterType. */
export const ClusterType = {
  Unallocated: 0,
  ZeroPlain: 1,
  ZeroAlloc: 2,
  Normal: 3,
  Compressed: 4,
} as const;
export type ClusterType = (typeof ClusterType)[keyof typeof ClusterType];

export const CLUSTER_TYPE_NAMES = ['unallocated', 'zero (plain)', 'zero (allocated)', 'normal', 'compressed'] as const;

export interface L2Geometry {
  clusterBits: number;
  extendedL2: boolean;
  /** External data file: offset 0 + COPIED is a valid normal cluster. */
  dataFile: boolean;
}

/** Bytes per L2 entry. */
export function l2EntrySize(g: L2Geometry): number {
  return g.extendedL2 ? 16 : 8;
}

/** qcow2_get_cluster_type on the first u64 of an L2 entry. */
export function clusterType(hi: number, lo: number, g: L2Geometry): ClusterType {
  if ((hi & HI_COMPRESSED) !== 0) return ClusterType.Compressed;
  const off = (hi & HI_OFFSET) !== 0 || (lo & LO_OFFSET) !== 0;
  if ((lo & LO_ZERO) !== 0 && !g.extendedL2) return off ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain;
  if (!off) {
    if (g.dataFile && (hi & HI_COPIED) !== 0) return ClusterType.Normal;
    return ClusterType.Unallocated;
  }
  return ClusterType.Normal;
}

/** Compressed cluster descriptor: where its bytes are and how many (QEMU's qcow2_parse_compressed_l2_entry). */
export interface CompressedDescriptor {
  hostOffset: number;
  /** Bytes that may hold compressed data: nb_sectors·512 − (offset mod 512). */
  compressedSize: number;
  nbSectors: number;
}

export function compressedDescriptor(hi: number, lo: number, clusterBits: number): CompressedDescriptor {
  const x = 62 - (clusterBits - 8); // first bit of the sector count
  const hiOffBits = x - 32; // offset bits held in hi
  const hiOffMask = hiOffBits >= 32 ? 0xffffffff : 2 ** hiOffBits - 1;
  const hostOffset = (hi & hiOffMask) * TWO32 + (lo >>> 0);
  const countMask = 2 ** (clusterBits - 8) - 1;
  const nbSectors = (Math.floor((hi >>> 0) / 2 ** hiOffBits) & countMask) + 1;
  const compressedSize = nbSectors * 512 - (hostOffset % 512);
  return { hostOffset, compressedSize, nbSectors };
}

export function encodeCompressedEntry(hostOffset: number, nbSectors: number, clusterBits: number): [number, number] {
  const x = 62 - (clusterBits - 8);
  const hiOffBits = x - 32;
  const hi = Math.floor(hostOffset / TWO32) + (nbSectors - 1) * 2 ** hiOffBits + HI_COMPRESSED;
  return [hi >>> 0, (hostOffset % TWO32) >>> 0];
}

export interface L2Entry {
  type: ClusterType;
  /** Host cluster offset for normal / zero-alloc clusters, 0 otherwise. */
  hostOffset: number;
  copied: boolean;
  zeroFlag: boolean;
  reservedBits: boolean;
  compressed?: CompressedDescriptor;
  /** Extended L2 only: the subcluster allocation and zero bitmaps (32 bits each). */
  allocBitmap?: number;
  zeroBitmap?: number;
  raw: string;
  rawBitmap?: string;
}

export function decodeL2Entry(table: Uint8Array, index: number, g: L2Geometry): L2Entry {
  const at = index * l2EntrySize(g);
  const hi = be32(table, at);
  const lo = be32(table, at + 4);
  const type = clusterType(hi, lo, g);
  const e: L2Entry = {
    type,
    hostOffset: type === ClusterType.Normal || type === ClusterType.ZeroAlloc ? offsetOf(hi, lo) : 0,
    copied: (hi & HI_COPIED) !== 0,
    zeroFlag: (lo & LO_ZERO) !== 0,
    reservedBits: type !== ClusterType.Compressed && ((hi & L2E_STD_RESERVED_HI) !== 0 || (lo & L2E_STD_RESERVED_LO) !== 0),
    raw: rawHex(hi, lo),
  };
  if (type === ClusterType.Compressed) e.compressed = compressedDescriptor(hi, lo, g.clusterBits);
  if (g.extendedL2) {
    e.zeroBitmap = be32(table, at + 8);
    e.allocBitmap = be32(table, at + 12);
    e.rawBitmap = rawHex(e.zeroBitmap, e.allocBitmap);
  }
  return e;
}

export function l2StdReservedBits(hi: number, lo: number): boolean {
  return (hi & L2E_STD_RESERVED_HI) !== 0 || (lo & L2E_STD_RESERVED_LO) !== 0;
}

export function encodeL2Entry(hostOffset: number, flags: { copied?: boolean; zero?: boolean }): [number, number] {
  const hi = (Math.floor(hostOffset / TWO32) & HI_OFFSET) | (flags.copied ? HI_COPIED : 0);
  const lo = ((hostOffset % TWO32) >>> 0) | (flags.zero ? LO_ZERO : 0);
  return [hi >>> 0, lo >>> 0];
}

/**
 * The first entry at or after `from` (below `n`) of an L2 table whose first eight bytes are not
 * all zero; `w` is the table as 32-bit words, `wordsPerEntry` 2 (standard) or 4 (extended L2).
 * The walks over the entries of a table call it on an empty entry: a loop this small is optimised
 * by V8 on its first long run, so a mostly empty table (2 MiB clusters: 256 Ki entries, a few in
 * use) costs them little even in a fresh process. An entry with only flag bits is not skipped.
 */
export function nextUsedEntry(w: Uint32Array, from: number, n: number, wordsPerEntry: number): number {
  const end = n * wordsPerEntry;
  let i = from * wordsPerEntry;
  while (i < end && (w[i]! | w[i + 1]!) === 0) i += wordsPerEntry;
  return i < end ? i / wordsPerEntry : n;
}

/** `t` as 32-bit words for nextUsedEntry (null where the bytes are not 4-byte aligned). */
export function entryWords(t: Uint8Array): Uint32Array | null {
  return t.byteOffset % 4 === 0 && t.byteLength % 4 === 0 ? new Uint32Array(t.buffer, t.byteOffset, t.byteLength / 4) : null;
}

/**
 * The end of the stretch of entries that starts at standard L2 entry `i` of `dv`: the first entry
 * after `i` (below `end`) whose words are not entry i's moved on by `step` per entry (0: the same
 * words each time), or `end`. The offset moves on through the whole 64-bit entry: the caller keeps
 * `end` where it would carry into the flags. The hot loop of map and check over tables read in
 * place: small, so V8 optimises it early, and branch-free apart from the exit (the carry into
 * `hi` is arithmetic), so the optimised code is never thrown away on a path it had not seen.
 */
export function sameRunEnd(dv: DataView, i: number, end: number, step: number): number {
  const s = step | 0; // an int32 for V8 (a plain parameter made the loop half as fast in Node 20)
  let hi = dv.getInt32(i * 8);
  let lo = dv.getInt32(i * 8 + 4);
  for (i++; i < end; i++) {
    const gotLo = dv.getInt32(i * 8 + 4);
    const gotHi = dv.getInt32(i * 8);
    const next = (lo + s) | 0;
    hi = (hi + ((lo & ~next) >>> 31)) | 0; // carry out of the low word (step < 2^31)
    lo = next;
    if (gotLo !== lo || gotHi !== hi) return i;
  }
  return end;
}
