// A minimal, independent qcow2 reader for the test helpers (the corruptor, crash tests): just
// enough to find structures in a file (header fields, L1/L2 entries, reftable, refblock entries,
// snapshot table) and to poke them. It deliberately shares no code with core/, so tests that
// damage an image with it and judge our engine are not the engine agreeing with itself.
// Layouts: docs/interop/qcow2.txt (docs/qcow2-format.md §1). Works on files, synchronously.
import { peek, peekU16, peekU32, peekU64, poke as pokeBytes, pokeU16, pokeU32, pokeU64 } from './qemu.ts';

export const QCOW_MAGIC = 0x514649fb;
/** Bit 63 of L1/L2 entries: refcount is exactly 1. */
export const QCOW_OFLAG_COPIED = 1n << 63n;
/** Bit 62 of L2 entries: compressed cluster. */
export const QCOW_OFLAG_COMPRESSED = 1n << 62n;
/** Bit 0 of standard L2 entries (v3): reads as zeros. */
export const QCOW_OFLAG_ZERO = 1n;
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
export const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
export const REFT_OFFSET_MASK = 0xfffffffffffffe00n;

/**
 * Header byte offsets (docs/qcow2-format.md §1.2). A deliberate twin of core/format/header.ts and
 * worker/api.ts: this reader is the tests' independent answer and shares no code with the engine.
 */
export const HDR = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  compressionType: 104,
} as const;

// Deliberate twin of core/format/header.ts's field list: this reader shares no code with core/.
export interface MiniHeader {
  magic: number;
  version: number;
  backingFileOffset: bigint;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  size: bigint;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  refcountBits: number;
  headerLength: number;
}

/** A u64 offset as a number; throws if it is not exactly representable (corrupt input). */
function num(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`offset 0x${v.toString(16)} exceeds 2^53`);
  return Number(v);
}

export function readHeader(file: string): MiniHeader {
  const magic = peekU32(file, HDR.magic);
  if (magic !== QCOW_MAGIC) throw new Error(`${file}: not a qcow2 image (magic 0x${magic.toString(16)})`);
  const version = peekU32(file, HDR.version);
  const clusterBits = peekU32(file, HDR.clusterBits);
  const v3 = version >= 3;
  const refcountOrder = v3 ? peekU32(file, HDR.refcountOrder) : 4;
  return {
    magic,
    version,
    backingFileOffset: peekU64(file, HDR.backingFileOffset),
    backingFileSize: peekU32(file, HDR.backingFileSize),
    clusterBits,
    clusterSize: 2 ** clusterBits,
    size: peekU64(file, HDR.size),
    cryptMethod: peekU32(file, HDR.cryptMethod),
    l1Size: peekU32(file, HDR.l1Size),
    l1TableOffset: num(peekU64(file, HDR.l1TableOffset)),
    refcountTableOffset: num(peekU64(file, HDR.refcountTableOffset)),
    refcountTableClusters: peekU32(file, HDR.refcountTableClusters),
    nbSnapshots: peekU32(file, HDR.nbSnapshots),
    snapshotsOffset: num(peekU64(file, HDR.snapshotsOffset)),
    incompatibleFeatures: v3 ? peekU64(file, HDR.incompatibleFeatures) : 0n,
    compatibleFeatures: v3 ? peekU64(file, HDR.compatibleFeatures) : 0n,
    autoclearFeatures: v3 ? peekU64(file, HDR.autoclearFeatures) : 0n,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    headerLength: v3 ? peekU32(file, HDR.headerLength) : 72,
  };
}

// ---- L1 / L2 ------------------------------------------------------------------------------

/** File offset of active L1 entry `l1Index`. */
export function l1EntryPos(file: string, l1Index: number, h = readHeader(file)): number {
  return h.l1TableOffset + 8 * l1Index;
}

export function readL1Entry(file: string, l1Index: number, h = readHeader(file)): bigint {
  return peekU64(file, l1EntryPos(file, l1Index, h));
}

export function writeL1Entry(file: string, l1Index: number, entry: bigint, h = readHeader(file)): void {
  pokeU64(file, l1EntryPos(file, l1Index, h), entry);
}

/** Host offset of the L2 table that active L1[l1Index] points at (0 if unallocated). */
export function l2TableOffset(file: string, l1Index = 0, h = readHeader(file)): number {
  return num(readL1Entry(file, l1Index, h) & L1E_OFFSET_MASK);
}

/** Bytes per L2 entry: 16 with extended L2 (incompatible bit 4), else 8. */
export function l2EntrySize(h: MiniHeader): number {
  return (h.incompatibleFeatures & 16n) !== 0n ? 16 : 8;
}

/** File offset of entry `l2Index` of the L2 table at `l2Offset`. */
export function l2EntryPos(l2Offset: number, l2Index: number, h: MiniHeader): number {
  return l2Offset + l2EntrySize(h) * l2Index;
}

/** File offset of the L2 entry that maps guest cluster (l1Index, l2Index) in the active tree. */
export function activeL2EntryPos(file: string, l1Index: number, l2Index: number, h = readHeader(file)): number {
  const l2 = l2TableOffset(file, l1Index, h);
  if (l2 === 0) throw new Error(`${file}: L1[${l1Index}] is unallocated`);
  return l2EntryPos(l2, l2Index, h);
}

export function readL2Entry(file: string, l1Index: number, l2Index: number, h = readHeader(file)): bigint {
  return peekU64(file, activeL2EntryPos(file, l1Index, l2Index, h));
}

export function writeL2Entry(file: string, l1Index: number, l2Index: number, entry: bigint, h = readHeader(file)): void {
  pokeU64(file, activeL2EntryPos(file, l1Index, l2Index, h), entry);
}

/** Host offset of the standard (uncompressed) data cluster mapped at active (l1Index, l2Index). */
export function dataClusterOffset(file: string, l1Index = 0, l2Index = 0, h = readHeader(file)): number {
  const e = readL2Entry(file, l1Index, l2Index, h);
  if (e & QCOW_OFLAG_COMPRESSED) throw new Error('compressed cluster');
  return num(e & L2E_OFFSET_MASK);
}

// ---- refcounts -----------------------------------------------------------------------------

export function reftableEntryPos(h: MiniHeader, reftableIndex: number): number {
  return h.refcountTableOffset + 8 * reftableIndex;
}

export function readReftableEntry(file: string, reftableIndex: number, h = readHeader(file)): bigint {
  return peekU64(file, reftableEntryPos(h, reftableIndex));
}

/** Host offset of refcount block `reftableIndex` (0 if absent). */
export function refblockOffset(file: string, reftableIndex = 0, h = readHeader(file)): number {
  return num(readReftableEntry(file, reftableIndex, h) & REFT_OFFSET_MASK);
}

/** Where the refcount of host cluster `clusterIndex` lives: its refblock, byte offset and bit shift. */
export function refcountLocation(file: string, clusterIndex: number, h = readHeader(file)):
  { refblock: number; bytePos: number; bits: number; shift: number } {
  const bits = h.refcountBits;
  const perBlock = (h.clusterSize * 8) / bits;
  const rtIndex = Math.floor(clusterIndex / perBlock);
  const blkIndex = clusterIndex % perBlock;
  const refblock = refblockOffset(file, rtIndex, h);
  if (refblock === 0) throw new Error(`${file}: no refcount block for cluster ${clusterIndex}`);
  if (bits >= 8) return { refblock, bytePos: refblock + (blkIndex * bits) / 8, bits, shift: 0 };
  // Sub-byte widths: entry i sits in byte i/(8/bits), entry 0 in the least significant bits.
  const perByte = 8 / bits;
  return { refblock, bytePos: refblock + Math.floor(blkIndex / perByte), bits, shift: (blkIndex % perByte) * bits };
}

export function getRefcount(file: string, clusterIndex: number, h = readHeader(file)): bigint {
  const { bytePos, bits, shift } = refcountLocation(file, clusterIndex, h);
  switch (bits) {
    case 64: return peekU64(file, bytePos);
    case 32: return BigInt(peekU32(file, bytePos));
    case 16: return BigInt(peekU16(file, bytePos));
    case 8: return BigInt(peek(file, bytePos, 1)[0]!);
    default: return BigInt((peek(file, bytePos, 1)[0]! >> shift) & ((1 << bits) - 1));
  }
}

export function setRefcount(file: string, clusterIndex: number, value: number | bigint, h = readHeader(file)): void {
  const { bytePos, bits, shift } = refcountLocation(file, clusterIndex, h);
  const v = BigInt(value);
  if (v < 0n || v >= 1n << BigInt(bits)) throw new RangeError(`refcount ${v} does not fit ${bits} bits`);
  switch (bits) {
    case 64: pokeU64(file, bytePos, v); return;
    case 32: pokeU32(file, bytePos, Number(v)); return;
    case 16: pokeU16(file, bytePos, Number(v)); return;
    case 8: pokeBytes(file, bytePos, [Number(v)]); return;
    default: {
      const mask = ((1 << bits) - 1) << shift;
      const old = peek(file, bytePos, 1)[0]!;
      pokeBytes(file, bytePos, [(old & ~mask & 0xff) | (Number(v) << shift)]);
    }
  }
}

// ---- snapshot table --------------------------------------------------------------------------

export interface MiniSnapshot {
  /** File offset where this table entry starts. */
  entryPos: number;
  /** Bytes of the entry without the trailing padding. */
  entryLength: number;
  l1TableOffset: bigint;
  l1Size: number;
  idStr: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: number;
  extraDataSize: number;
}

/** Field offsets inside a snapshot table entry (docs/qcow2-format.md §1.8). */
export const SNAP = {
  l1TableOffset: 0,
  l1Size: 8,
  idStrSize: 12,
  nameSize: 14,
  dateSec: 16,
  dateNsec: 20,
  vmClockNsec: 24,
  vmStateSize: 32,
  extraDataSize: 36,
  extra: 40,
} as const;

/** The snapshot table as the header describes it. Refuses absurd sizes (this is a test helper). */
export function readSnapshots(file: string, h = readHeader(file)): MiniSnapshot[] {
  if (h.nbSnapshots > 4096) throw new Error(`readSnapshots: ${h.nbSnapshots} snapshots is more than a test image has`);
  const out: MiniSnapshot[] = [];
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const fixed = Buffer.from(peek(file, pos, SNAP.extra));
    const idLen = fixed.readUInt16BE(SNAP.idStrSize);
    const nameLen = fixed.readUInt16BE(SNAP.nameSize);
    const eds = fixed.readUInt32BE(SNAP.extraDataSize);
    if (eds > 1 << 20) throw new Error(`readSnapshots: extra data ${eds} too large`);
    const strPos = pos + SNAP.extra + eds;
    const strs = Buffer.from(peek(file, strPos, idLen + nameLen));
    const entryLength = SNAP.extra + eds + idLen + nameLen;
    out.push({
      entryPos: pos,
      entryLength,
      l1TableOffset: fixed.readBigUInt64BE(SNAP.l1TableOffset),
      l1Size: fixed.readUInt32BE(SNAP.l1Size),
      idStr: strs.subarray(0, idLen).toString('latin1'),
      name: strs.subarray(idLen).toString('utf8'),
      dateSec: fixed.readUInt32BE(SNAP.dateSec),
      dateNsec: fixed.readUInt32BE(SNAP.dateNsec),
      vmClockNsec: fixed.readBigUInt64BE(SNAP.vmClockNsec),
      vmStateSize: fixed.readUInt32BE(SNAP.vmStateSize),
      extraDataSize: eds,
    });
    pos += Math.ceil(entryLength / 8) * 8;
  }
  return out;
}

// ---- header extensions -----------------------------------------------------------------------

export const EXT_FEATURE_TABLE = 0x6803f857;

export interface MiniExtension {
  type: number;
  /** File offset of the extension header (type, length). */
  pos: number;
  length: number;
}

/** Header extensions between header_length and the backing file name (or the end of cluster 0). */
export function readExtensions(file: string, h = readHeader(file)): MiniExtension[] {
  if (h.version < 3) return [];
  const end = h.backingFileOffset !== 0n ? Number(h.backingFileOffset) : h.clusterSize;
  const out: MiniExtension[] = [];
  let pos = h.headerLength;
  while (pos + 8 <= end) {
    const type = peekU32(file, pos);
    const length = peekU32(file, pos + 4);
    if (type === 0) break;
    out.push({ type, pos, length });
    pos += 8 + Math.ceil(length / 8) * 8;
  }
  return out;
}

/** File offset of the end-of-extensions marker (where a new extension may be appended). */
export function extensionsEnd(file: string, h = readHeader(file)): number {
  const exts = readExtensions(file, h);
  const last = exts[exts.length - 1];
  return last ? last.pos + 8 + Math.ceil(last.length / 8) * 8 : h.headerLength;
}
