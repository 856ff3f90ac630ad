// Byte and bit layouts of every on-disk structure (docs/qcow2-format.md §1.2–1.9), named as the
// qcow2 spec names them: the one description the annotated hex view draws and its inspector
// decodes. Bit ranges of entries are derived from the masks in entries.ts and the feature bits in
// constants.ts; the variable-length structures (header extensions, snapshot table entries,
// bitmap directory entries) are laid out from the sizes their own fixed fields give. Pure.
// The field lists are data of one shape on purpose (name, offset, size, role, explanation, as the
// spec's tables give them): the duplicate-code scan's same-shape pairs between them are deliberate.
import { alignUp, be16, be32 } from './bytes.ts';
import * as C from './constants.ts';
import {
  OFFSET_MASK_HI, OFFSET_MASK_LO, QCOW_OFLAG_COMPRESSED_HI, QCOW_OFLAG_COPIED_HI, QCOW_OFLAG_ZERO_LO,
  type L2Geometry,
} from './entries.ts';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE } from './bitmaps.ts';
import type { HeaderFields, HeaderExtension } from './header.ts';

/**
 * What a field (or bit range) holds, which decides how its value reads in words: a host offset,
 * a count, a size in bytes, a power of two, a one-bit flag, a set of feature bits, text, a time,
 * a refcount, a subcluster bitmap, or bytes that must be zero.
 */
export const FIELD_ROLES = [
  'magic', 'version', 'offset', 'count', 'bytes', 'log2', 'flag', 'features', 'string',
  'seconds', 'nanoseconds', 'enum', 'refcount', 'bitmap', 'sectors', 'type', 'reserved', 'data',
] as const;
export type FieldRole = (typeof FIELD_ROLES)[number];

export interface BitLayout {
  /** The spec's name of the bit or bit range. */
  name: string;
  /** Lowest bit, counted from the least significant bit of the (big-endian) field. */
  lsb: number;
  width: number;
  role: FieldRole;
  explain: string;
}

export interface FieldLayout {
  /** The spec's name. */
  name: string;
  /** Bytes from the start of the structure (or of one table entry). */
  offset: number;
  size: number;
  role: FieldRole;
  explain: string;
  /** How the bytes read: a big-endian unsigned integer (the default), text, or raw bytes. */
  encoding?: 'uint' | 'string' | 'bytes';
  /** Names of the values of an `enum` field. */
  values?: Record<number, string>;
  /** The bits of a flag word or table entry, lowest first; every bit belongs to one range. */
  bits?: BitLayout[];
}

/** The value of a field as stored: a bigint for integers, a string for text, bytes otherwise. */
export function fieldValue(b: Uint8Array, at: number, f: FieldLayout): bigint | string | Uint8Array {
  const bytes = b.subarray(at, at + f.size);
  if (f.encoding === 'string') return new TextDecoder().decode(bytes).replace(/\0+$/, '');
  if (f.encoding === 'bytes') return bytes;
  let v = 0n;
  for (const x of bytes) v = (v << 8n) | BigInt(x);
  return v;
}

/** The value of bit range `bit` of an integer field's value. */
export function bitValue(v: bigint, bit: BitLayout): bigint {
  return (v >> BigInt(bit.lsb)) & ((1n << BigInt(bit.width)) - 1n);
}

/** The bytes of a field of `size` bytes that hold bit range `bit` (offsets inside the field). */
export function bitBytes(size: number, bit: BitLayout): [number, number] {
  const first = size - 1 - Math.floor((bit.lsb + bit.width - 1) / 8);
  const last = size - 1 - Math.floor(bit.lsb / 8);
  return [first, last - first + 1];
}

// ---- bits from masks ---------------------------------------------------------------------------

/** The (lsb, width) of a contiguous mask given as its high and low 32-bit words. */
function maskRange(hi: number, lo: number): { lsb: number; width: number } {
  const v = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  let lsb = 0;
  while (((v >> BigInt(lsb)) & 1n) === 0n) lsb++;
  let width = 0;
  while (((v >> BigInt(lsb + width)) & 1n) === 1n) width++;
  return { lsb, width };
}

/** Sort bit ranges and fill the gaps of a `width`-bit word with reserved ranges. */
function withReserved(width: number, named: BitLayout[], reservedExplain = 'Reserved: must be zero.'): BitLayout[] {
  const sorted = [...named].sort((a, b) => a.lsb - b.lsb);
  const out: BitLayout[] = [];
  let next = 0;
  const gap = (to: number) => {
    if (to > next) out.push({ name: 'reserved', lsb: next, width: to - next, role: 'reserved', explain: reservedExplain });
  };
  for (const b of sorted) {
    gap(b.lsb);
    out.push(b);
    next = b.lsb + b.width;
  }
  gap(width);
  return out;
}

const COPIED = maskRange(QCOW_OFLAG_COPIED_HI, 0);
const COMPRESSED = maskRange(QCOW_OFLAG_COMPRESSED_HI, 0);
const ZERO = maskRange(0, QCOW_OFLAG_ZERO_LO);
const OFFSET = maskRange(OFFSET_MASK_HI, OFFSET_MASK_LO);
/** REFT_OFFSET_MASK: bits 9..63. */
const REFT_OFFSET = maskRange(0xffffffff, OFFSET_MASK_LO);

const COPIED_EXPLAIN = 'QCOW_OFLAG_COPIED: 1 when the refcount of the cluster it points to is exactly one, so it may be written in place; 0 when it is shared (a snapshot holds it too) or unused.';

// ---- header (§1.2) -----------------------------------------------------------------------------

function featureBits(type: number, mask: bigint): BitLayout[] {
  const named = C.QEMU_FEATURE_NAMES.filter(([t]) => t === type).map(([, bit, name]): BitLayout => ({
    name, lsb: bit, width: 1, role: 'flag', explain: FEATURE_EXPLAIN[`${type}/${bit}`] ?? '',
  }));
  const known = named.reduce((m, b) => m | (1n << BigInt(b.lsb)), 0n);
  if (known !== mask) throw new Error('feature table and mask disagree');
  return withReserved(64, named, 'Not defined by this version of the spec: a bit set here is a feature this reader does not know.');
}

const FEATURE_EXPLAIN: Record<string, string> = {
  '0/0': 'Dirty bit: refcounts may be stale (lazy refcounts); a reader must rebuild them before it writes.',
  '0/1': 'Corrupt bit: metadata was found inconsistent; the image may only be opened to repair it.',
  '0/2': 'External data file: guest data lives in the file the data file extension names.',
  '0/3': 'Compression type: the compression_type field is not zlib.',
  '0/4': 'Extended L2 entries: L2 entries are 128 bits, each cluster split into 32 subclusters.',
  '1/0': 'Lazy refcounts: refcount updates may be delayed; the dirty bit says when they are stale.',
  '2/0': 'Bitmaps: the bitmaps extension is consistent (cleared by a writer that does not know bitmaps).',
  '2/1': 'Raw external data: the external data file is a valid raw image on its own.',
};

/** The fixed header fields, bytes 0 to header_length (72 for version 2). */
export function headerLayout(h: Pick<HeaderFields, 'version' | 'headerLength'>): FieldLayout[] {
  const f: FieldLayout[] = [
    { name: 'magic', offset: 0, size: 4, role: 'magic', explain: 'QCOW magic string ("QFI\\xfb"): identifies the file as qcow.' },
    { name: 'version', offset: 4, size: 4, role: 'version', explain: 'Format version: 2 (compat=0.10) or 3 (compat=1.1).' },
    { name: 'backing_file_offset', offset: 8, size: 8, role: 'offset', explain: 'Offset in the image file of the backing file name (not NUL-terminated); 0 when there is no backing file. Must lie in the first cluster.' },
    { name: 'backing_file_size', offset: 16, size: 4, role: 'bytes', explain: 'Length of the backing file name in bytes (below 1024).' },
    { name: 'cluster_bits', offset: 20, size: 4, role: 'log2', explain: 'Bits of an offset that address a byte inside a cluster: cluster size = 1 << cluster_bits (9 to 21).' },
    { name: 'size', offset: 24, size: 8, role: 'bytes', explain: 'Virtual disk size in bytes: what the guest sees.' },
    { name: 'crypt_method', offset: 32, size: 4, role: 'enum', values: { 0: 'no encryption', 1: 'AES (legacy)', 2: 'LUKS' }, explain: 'Encryption of guest data.' },
    { name: 'l1_size', offset: 36, size: 4, role: 'count', explain: 'Number of entries in the active L1 table.' },
    { name: 'l1_table_offset', offset: 40, size: 8, role: 'offset', explain: 'Offset in the image file of the active L1 table. Must be cluster-aligned.' },
    { name: 'refcount_table_offset', offset: 48, size: 8, role: 'offset', explain: 'Offset in the image file of the refcount table. Must be cluster-aligned.' },
    { name: 'refcount_table_clusters', offset: 56, size: 4, role: 'count', explain: 'Number of clusters the refcount table occupies.' },
    { name: 'nb_snapshots', offset: 60, size: 4, role: 'count', explain: 'Number of snapshots contained in the image.' },
    { name: 'snapshots_offset', offset: 64, size: 8, role: 'offset', explain: 'Offset in the image file of the snapshot table. Must be cluster-aligned.' },
  ];
  if (h.version < 3) return f;
  f.push(
    { name: 'incompatible_features', offset: 72, size: 8, role: 'features', bits: featureBits(C.FEATURE_TYPE_INCOMPAT, C.INCOMPAT_MASK), explain: 'Bitmask of incompatible features: a reader that does not know a bit set here must refuse the image.' },
    { name: 'compatible_features', offset: 80, size: 8, role: 'features', bits: featureBits(C.FEATURE_TYPE_COMPAT, C.COMPAT_MASK), explain: 'Bitmask of compatible features: a reader may ignore bits it does not know.' },
    { name: 'autoclear_features', offset: 88, size: 8, role: 'features', bits: featureBits(C.FEATURE_TYPE_AUTOCLEAR, C.AUTOCLEAR_MASK), explain: 'Bitmask of auto-clear features: a writer that does not know a bit set here clears it.' },
    { name: 'refcount_order', offset: 96, size: 4, role: 'log2', explain: 'Width of a reference count block entry: refcount_bits = 1 << refcount_order (0 to 6).' },
    { name: 'header_length', offset: 100, size: 4, role: 'bytes', explain: 'Length of the header structure in bytes; header extensions follow it.' },
  );
  if (h.headerLength > 104) {
    f.push({ name: 'compression_type', offset: 104, size: 1, role: 'enum', values: { 0: 'zlib (deflate)', 1: 'zstd' }, explain: 'Compression method of compressed clusters (one for the whole image).' });
    const pad = Math.min(h.headerLength, C.QEMU_HEADER_LENGTH) - 105;
    if (pad > 0) f.push({ name: 'padding', offset: 105, size: pad, role: 'reserved', encoding: 'bytes', explain: 'Padding: the header length is a multiple of 8.' });
    if (h.headerLength > C.QEMU_HEADER_LENGTH) {
      f.push({ name: 'unknown header fields', offset: C.QEMU_HEADER_LENGTH, size: h.headerLength - C.QEMU_HEADER_LENGTH, role: 'data', encoding: 'bytes', explain: 'Header fields of a later version of the spec, kept as they are.' });
    }
  }
  return f;
}

// ---- header extensions (§1.4) ------------------------------------------------------------------

export const EXTENSION_NAMES: Record<number, string> = {
  [C.EXT_BACKING_FORMAT]: 'backing file format name',
  [C.EXT_FEATURE_TABLE]: 'feature name table',
  [C.EXT_BITMAPS]: 'bitmaps extension',
  [C.EXT_CRYPTO]: 'full disk encryption header pointer',
  [C.EXT_DATA_FILE]: 'external data file name',
};

/** One header extension: its type and length, its data as the spec lays it out, and the padding to 8. */
export function extensionLayout(ext: Pick<HeaderExtension, 'type' | 'data'>, length: number): FieldLayout[] {
  const f: FieldLayout[] = [
    { name: 'header extension type', offset: 0, size: 4, role: 'type', values: { ...EXTENSION_NAMES, [C.EXT_END]: 'end of the header extension area' }, explain: 'Header extension type.' },
    { name: 'length of the header extension data', offset: 4, size: 4, role: 'bytes', explain: 'Bytes of extension data that follow (padded to a multiple of 8).' },
  ];
  const d = 8;
  switch (ext.type) {
    case C.EXT_BACKING_FORMAT:
      f.push({ name: 'backing file format name', offset: d, size: length, role: 'string', encoding: 'string', explain: 'The format of the backing file ("qcow2", "raw"), not NUL-terminated.' });
      break;
    case C.EXT_DATA_FILE:
      f.push({ name: 'external data file name', offset: d, size: length, role: 'string', encoding: 'string', explain: 'The external data file name, not NUL-terminated.' });
      break;
    case C.EXT_FEATURE_TABLE:
      for (let i = 0; i + 48 <= length; i += 48) {
        f.push(
          { name: 'feature type', offset: d + i, size: 1, role: 'enum', values: { 0: 'incompatible feature', 1: 'compatible feature', 2: 'autoclear feature' }, explain: `Feature name table entry ${i / 48}: which bitmask the bit is in.` },
          { name: 'bit number', offset: d + i + 1, size: 1, role: 'count', explain: `Feature name table entry ${i / 48}: bit number within the bitmask (0-63).` },
          { name: 'feature name', offset: d + i + 2, size: 46, role: 'string', encoding: 'string', explain: `Feature name table entry ${i / 48}: the feature's name, padded with zeros.` },
        );
      }
      break;
    case C.EXT_BITMAPS:
      f.push(
        { name: 'nb_bitmaps', offset: d, size: 4, role: 'count', explain: 'Number of bitmaps in the image (1 to 65535).' },
        { name: 'reserved', offset: d + 4, size: 4, role: 'reserved', explain: 'Reserved: must be zero.' },
        { name: 'bitmap_directory_size', offset: d + 8, size: 8, role: 'bytes', explain: 'Size of the bitmap directory in bytes.' },
        { name: 'bitmap_directory_offset', offset: d + 16, size: 8, role: 'offset', explain: 'Offset in the image file of the bitmap directory. Must be cluster-aligned.' },
      );
      break;
    case C.EXT_CRYPTO:
      f.push(
        { name: 'offset', offset: d, size: 8, role: 'offset', explain: 'Offset in the image file of the encryption (LUKS) header. Must be cluster-aligned.' },
        { name: 'length', offset: d + 8, size: 8, role: 'bytes', explain: 'Length of the encryption header in bytes.' },
      );
      break;
    case C.EXT_END:
      break;
    default:
      if (length > 0) f.push({ name: 'header extension data', offset: d, size: length, role: 'data', encoding: 'bytes', explain: 'Data of an extension this reader does not know: kept as it is.' });
  }
  const pad = alignUp(length, 8) - length;
  if (pad > 0 && ext.type !== C.EXT_END) f.push({ name: 'padding', offset: d + length, size: pad, role: 'reserved', encoding: 'bytes', explain: 'Padding to a multiple of 8 bytes.' });
  return f;
}

/** The backing file name (at backing_file_offset, backing_file_size bytes). */
export function backingFileNameLayout(size: number): FieldLayout[] {
  return [{ name: 'backing file name', offset: 0, size, role: 'string', encoding: 'string', explain: 'The backing file name, as given when the image was created (not NUL-terminated).' }];
}

// ---- L1, L2 and refcount table entries (§1.5–1.7) ----------------------------------------------

export function l1EntryLayout(): FieldLayout[] {
  return [{
    name: 'L1 table entry', offset: 0, size: 8, role: 'data', explain: 'One L1 table entry: where the L2 table for this stretch of the guest disk is.',
    bits: withReserved(64, [
      { name: 'L2 table offset', ...OFFSET, role: 'offset', explain: 'Bits 9-55: offset of the L2 table in the image file (cluster-aligned); 0 when the L2 table is unallocated.' },
      { name: 'COPIED', ...COPIED, role: 'flag', explain: COPIED_EXPLAIN },
    ]),
  }];
}

/** L2 entries: variant 0 the standard cluster descriptor, variant 1 the compressed one. */
export function l2EntryLayouts(g: L2Geometry): [FieldLayout[], FieldLayout[]] {
  const standard: FieldLayout[] = [{
    name: 'L2 table entry (standard cluster descriptor)', offset: 0, size: 8, role: 'data', explain: 'One L2 table entry: where one guest cluster is in the image file.',
    bits: withReserved(64, [
      { name: 'all zeros', ...ZERO, role: 'flag', explain: g.extendedL2 ? 'Bit 0: reserved with extended L2 entries (the subcluster bitmap says which parts read as zeros).' : 'Bit 0: the cluster reads as all zeros (QCOW_OFLAG_ZERO); the host offset may still hold a preallocated cluster.' },
      { name: 'host cluster offset', ...OFFSET, role: 'offset', explain: 'Bits 9-55: offset of the guest cluster\'s data in the image file (cluster-aligned); 0 when it is unallocated.' },
      { name: 'compressed', ...COMPRESSED, role: 'flag', explain: 'Bit 62: 0 for a standard cluster, 1 for a compressed one (the entry then reads as a compressed cluster descriptor).' },
      { name: 'COPIED', ...COPIED, role: 'flag', explain: COPIED_EXPLAIN },
    ]),
  }];
  const x = 62 - (g.clusterBits - 8);
  const compressed: FieldLayout[] = [{
    name: 'L2 table entry (compressed cluster descriptor)', offset: 0, size: 8, role: 'data', explain: `One L2 table entry of a compressed cluster (x = 62 - (cluster_bits - 8) = ${x}).`,
    bits: [
      { name: 'host offset', lsb: 0, width: x, role: 'offset', explain: `Bits 0-${x - 1}: host offset of the compressed data, in bytes (not aligned).` },
      { name: 'additional sectors', lsb: x, width: 62 - x, role: 'sectors', explain: `Bits ${x}-61: number of additional 512-byte sectors the compressed data takes beyond the first.` },
      { name: 'compressed', ...COMPRESSED, role: 'flag', explain: 'Bit 62: 1, a compressed cluster.' },
      { name: 'COPIED', ...COPIED, role: 'reserved', explain: 'Bit 63: must be 0 for compressed clusters (they are never written in place).' },
    ],
  }];
  if (g.extendedL2) {
    const bitmap = (name: string, offset: number, what: string): FieldLayout => ({
      name, offset, size: 4, role: 'bitmap', explain: `Extended L2 entry, bits ${offset === 8 ? '32-63' : '0-31'} of the subcluster bitmap: bit k is 1 when subcluster k ${what}.`,
      bits: Array.from({ length: C.SUBCLUSTERS_PER_CLUSTER }, (_, k): BitLayout => ({ name: `subcluster ${k}`, lsb: k, width: 1, role: 'flag', explain: `Subcluster ${k} ${what}.` })),
    });
    standard.push(bitmap('subcluster zero bitmap', 8, 'reads as zeros'), bitmap('subcluster allocation bitmap', 12, 'is allocated (its data is in the host cluster)'));
    compressed.push({ name: 'reserved (subcluster bitmap)', offset: 8, size: 8, role: 'reserved', explain: 'The subcluster bitmap of a compressed cluster is reserved: must be zero.' });
  }
  return [standard, compressed];
}

export function reftableEntryLayout(): FieldLayout[] {
  return [{
    name: 'refcount table entry', offset: 0, size: 8, role: 'data', explain: 'One refcount table entry: where one refcount block is.',
    bits: withReserved(64, [{ name: 'refcount block offset', ...REFT_OFFSET, role: 'offset', explain: 'Bits 9-63: offset of the refcount block in the image file (cluster-aligned); 0 when it is unallocated (every refcount it would hold is 0).' }]),
  }];
}

/**
 * One refcount block item: a refcount of refcount_bits (8 to 64) bits, or for 1, 2 and 4 bits one
 * byte holding 8/refcount_bits refcounts, the first in the least significant bits.
 */
export function refblockItemLayout(refcountOrder: number): { stride: number; perItem: number; fields: FieldLayout[] } {
  const bits = 2 ** refcountOrder;
  if (bits >= 8) {
    return { stride: bits / 8, perItem: 1, fields: [{ name: 'refcount', offset: 0, size: bits / 8, role: 'refcount', explain: `Reference count of one host cluster (${bits} bits).` }] };
  }
  const perItem = 8 / bits;
  return {
    stride: 1,
    perItem,
    fields: [{
      name: 'refcount block byte', offset: 0, size: 1, role: 'data', explain: `${perItem} reference counts of ${bits} bits each, the first in the least significant bits.`,
      bits: Array.from({ length: perItem }, (_, j): BitLayout => ({ name: `refcount +${j}`, lsb: j * bits, width: bits, role: 'refcount', explain: `Reference count of the ${j === 0 ? 'first' : `${j + 1}th`} cluster of this byte.` })),
    }],
  };
}

// ---- snapshot table entry (§1.8) ---------------------------------------------------------------

/** The fields of the snapshot table entry at `b[at..]`; its variable sizes are read from its fixed part. */
export function snapshotEntryLayout(b: Uint8Array, at: number): { fields: FieldLayout[]; size: number } {
  const idSize = be16(b, at + 12);
  const nameSize = be16(b, at + 14);
  const extra = be32(b, at + 36);
  const f: FieldLayout[] = [
    { name: 'l1_table_offset', offset: 0, size: 8, role: 'offset', explain: 'Offset in the image file of this snapshot\'s L1 table (a copy made when the snapshot was taken).' },
    { name: 'l1_size', offset: 8, size: 4, role: 'count', explain: 'Number of entries in the snapshot\'s L1 table.' },
    { name: 'id_str_size', offset: 12, size: 2, role: 'bytes', explain: 'Length of the unique ID string.' },
    { name: 'name_size', offset: 14, size: 2, role: 'bytes', explain: 'Length of the name.' },
    { name: 'date_sec', offset: 16, size: 4, role: 'seconds', explain: 'Time the snapshot was taken, seconds since the epoch.' },
    { name: 'date_nsec', offset: 20, size: 4, role: 'nanoseconds', explain: 'Sub-second part of the time the snapshot was taken, in nanoseconds.' },
    { name: 'vm_clock_nsec', offset: 24, size: 8, role: 'nanoseconds', explain: 'The guest\'s clock when the snapshot was taken, in nanoseconds.' },
    { name: 'vm_state_size', offset: 32, size: 4, role: 'bytes', explain: 'Size of the saved VM state (0 for a disk-only snapshot; vm_state_size_large holds it when present).' },
    { name: 'extra_data_size', offset: 36, size: 4, role: 'bytes', explain: 'Bytes of extra data that follow (24 when QEMU wrote them).' },
  ];
  let o = C.SNAPSHOT_HEADER_SIZE;
  const known: Array<[string, FieldRole, string]> = [
    ['vm_state_size_large', 'bytes', 'Extra data: size of the saved VM state, 64 bits.'],
    ['disk_size', 'bytes', 'Extra data: virtual disk size of the snapshot, in bytes.'],
    ['icount', 'count', 'Extra data: the guest\'s instruction count when the snapshot was taken (all ones: not recorded).'],
  ];
  for (const [i, [name, role, explain]] of known.entries()) {
    if (extra >= (i + 1) * 8) f.push({ name, offset: o + i * 8, size: 8, role, explain });
  }
  const knownBytes = Math.min(C.SNAPSHOT_EXTRA_KNOWN, Math.floor(extra / 8) * 8);
  if (extra > knownBytes) f.push({ name: 'extra data (unknown)', offset: o + knownBytes, size: extra - knownBytes, role: 'data', encoding: 'bytes', explain: 'Extra data this version of the spec does not define, kept as it is.' });
  o += extra;
  if (idSize) f.push({ name: 'unique ID string', offset: o, size: idSize, role: 'string', encoding: 'string', explain: 'The snapshot\'s unique ID (qemu-img snapshot -l\'s ID column).' });
  o += idSize;
  if (nameSize) f.push({ name: 'name', offset: o, size: nameSize, role: 'string', encoding: 'string', explain: 'The snapshot\'s name (its tag).' });
  o += nameSize;
  return { fields: f, size: o };
}

// ---- bitmap directory entry (§1.9) -------------------------------------------------------------

export const BITMAP_DIR_ENTRY_FIXED = 24;

/** The fields of the bitmap directory entry at `b[at..]`, and its size padded to 8. */
export function bitmapDirEntryLayout(b: Uint8Array, at: number): { fields: FieldLayout[]; size: number } {
  const nameSize = be16(b, at + 18);
  const extra = be32(b, at + 20);
  const f: FieldLayout[] = [
    { name: 'bitmap_table_offset', offset: 0, size: 8, role: 'offset', explain: 'Offset in the image file of the bitmap table. Must be cluster-aligned.' },
    { name: 'bitmap_table_size', offset: 8, size: 4, role: 'count', explain: 'Number of entries in the bitmap table.' },
    {
      name: 'flags', offset: 12, size: 4, role: 'features', explain: 'Bitmap flags.',
      bits: withReserved(32, [
        { name: 'in_use', lsb: Math.log2(BME_FLAG_IN_USE), width: 1, role: 'flag', explain: 'Bit 0: the bitmap was not saved correctly (QEMU had it open) and may be inconsistent.' },
        { name: 'auto', lsb: Math.log2(BME_FLAG_AUTO), width: 1, role: 'flag', explain: 'Bit 1: the bitmap is enabled: it tracks guest writes.' },
        { name: 'extra_data_compatible', lsb: 2, width: 1, role: 'flag', explain: 'Bit 2: extra data may be ignored by a reader that does not know it.' },
      ]),
    },
    { name: 'type', offset: 16, size: 1, role: 'enum', values: { 1: 'dirty tracking bitmap' }, explain: 'Bitmap type (1: dirty tracking bitmap).' },
    { name: 'granularity_bits', offset: 17, size: 1, role: 'log2', explain: 'Granularity of the bitmap: each bit covers 1 << granularity_bits bytes of the guest disk.' },
    { name: 'name_size', offset: 18, size: 2, role: 'bytes', explain: 'Length of the bitmap\'s name.' },
    { name: 'extra_data_size', offset: 20, size: 4, role: 'bytes', explain: 'Bytes of extra data that follow (QEMU writes none).' },
  ];
  let o = BITMAP_DIR_ENTRY_FIXED;
  if (extra) f.push({ name: 'extra data', offset: o, size: extra, role: 'data', encoding: 'bytes', explain: 'Extra data of the bitmap.' });
  o += extra;
  if (nameSize) f.push({ name: 'name', offset: o, size: nameSize, role: 'string', encoding: 'string', explain: 'The bitmap\'s name, unique within the image.' });
  o += nameSize;
  const size = alignUp(o, 8);
  if (size > o) f.push({ name: 'padding', offset: o, size: size - o, role: 'reserved', encoding: 'bytes', explain: 'Padding to a multiple of 8 bytes.' });
  return { fields: f, size };
}
