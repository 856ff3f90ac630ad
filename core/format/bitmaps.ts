// The persistent-bitmap directory (docs/qcow2-format.md §1.9): its entries decoded and checked as
// QEMU's bitmap_list_load and check_dir_entry do when an image with bitmaps is opened (a
// directory QEMU refuses makes the image unopenable there too). Pure: bytes in, values out.
import { QcowError, hex } from '../errors.ts';
import { be16, be32, be64, decodeString, encodeString, put16, put32, put64 } from './bytes.ts';
import * as C from './constants.ts';

export const BME_FLAG_IN_USE = 1 << 0;
export const BME_FLAG_AUTO = 1 << 1;
/** QEMU's BME_RESERVED_FLAGS: everything but in_use and auto (extra_data_compatible included). */
const BME_RESERVED_FLAGS = 0xfffffffc;
export const BME_MAX_TABLE_SIZE = 0x8000000;
export const BME_MAX_PHYS_SIZE = 0x20000000;
const BME_MIN_GRANULARITY_BITS = 9;
const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MAX_NAME_SIZE = 1023;
export const BT_DIRTY_TRACKING_BITMAP = 1;
/** Fixed part of a directory entry (offset, table size, flags, type, granularity, name size, extra size). */
const BITMAP_DIR_ENTRY_SIZE = 24;

export interface BitmapEntry {
  bitmapTableOffset: number;
  /** Entries in the bitmap table. */
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  /** Byte offset of the entry inside the directory. */
  entryOffset: number;
}

/** The flags qemu-img info reports for a bitmap (QEMU's get_bitmap_info_flags). */
export function bitmapInfoFlags(flags: number): string[] {
  const out: string[] = [];
  if (flags & BME_FLAG_IN_USE) out.push('in-use');
  if (flags & BME_FLAG_AUTO) out.push('auto');
  return out;
}

/**
 * Decode the directory bytes (bitmap_directory_size of them) holding `nbBitmaps` entries, for an
 * image of `virtualSize` bytes with `clusterSize` clusters. `directoryOffset` is for messages.
 * Throws QcowError with QEMU's messages for what QEMU refuses.
 */
export function parseBitmapDirectory(dir: Uint8Array, nbBitmaps: number, clusterSize: number, virtualSize: number, directoryOffset = 0): BitmapEntry[] {
  const fail = (message: string, entryOffset?: number): QcowError =>
    new QcowError('METADATA_CORRUPT', message, {
      structure: 'bitmap directory', offset: directoryOffset + (entryOffset ?? 0), directoryOffset: hex(directoryOffset),
    });
  if (dir.length === 0) throw fail('Requested bitmap directory size is zero');
  if (dir.length > C.MAX_BITMAP_DIRECTORY_SIZE) throw fail('Requested bitmap directory size is too big');
  const out: BitmapEntry[] = [];
  let pos = 0;
  while (pos < dir.length) {
    if (pos + BITMAP_DIR_ENTRY_SIZE > dir.length) throw fail('Broken bitmap directory', pos);
    if (out.length + 1 > nbBitmaps) throw fail('More bitmaps found than specified in header extension', pos);
    const bitmapTableOffset = be64(dir, pos);
    const bitmapTableSize = be32(dir, pos + 8);
    const flags = be32(dir, pos + 12);
    const type = dir[pos + 16]!;
    const granularityBits = dir[pos + 17]!;
    const nameSize = be16(dir, pos + 18);
    const extraDataSize = be32(dir, pos + 20);
    const next = pos + Math.ceil((BITMAP_DIR_ENTRY_SIZE + nameSize + extraDataSize) / 8) * 8;
    if (next > dir.length) throw fail('Broken bitmap directory', pos);
    if (extraDataSize !== 0) throw fail('Bitmap extra data is not supported', pos);
    const nameBytes = dir.subarray(pos + BITMAP_DIR_ENTRY_SIZE, pos + BITMAP_DIR_ENTRY_SIZE + nameSize);
    const name = decodeString(nameBytes);
    // check_dir_entry
    const physBytes = bitmapTableSize * clusterSize;
    const bad = bitmapTableSize === 0 || bitmapTableOffset === 0 || bitmapTableOffset % clusterSize !== 0 ||
      bitmapTableSize > BME_MAX_TABLE_SIZE || granularityBits > BME_MAX_GRANULARITY_BITS ||
      granularityBits < BME_MIN_GRANULARITY_BITS || (flags & BME_RESERVED_FLAGS) !== 0 || nameSize > BME_MAX_NAME_SIZE ||
      type !== BT_DIRTY_TRACKING_BITMAP || physBytes > BME_MAX_PHYS_SIZE ||
      ((flags & BME_FLAG_IN_USE) === 0 && virtualSize > physBytes * 8 * 2 ** granularityBits);
    if (bad) throw fail(`Bitmap '${name}' doesn't satisfy the constraints`, pos);
    out.push({ bitmapTableOffset, bitmapTableSize, flags, type, granularityBits, name, entryOffset: pos });
    pos = next;
  }
  if (out.length !== nbBitmaps) throw fail('Less bitmaps found than specified in header extension');
  return out;
}

/** Bytes a directory entry takes (QEMU's calc_dir_entry_size): fixed part and name, padded to 8. */
export function dirEntrySize(name: string): number {
  return Math.ceil((BITMAP_DIR_ENTRY_SIZE + encodeString(name).length) / 8) * 8;
}

/** The directory bytes for `entries` (no extra data), as QEMU's bitmap_list_store lays them out. */
export function encodeBitmapDirectory(entries: ReadonlyArray<Omit<BitmapEntry, 'entryOffset'>>): Uint8Array {
  const out = new Uint8Array(entries.reduce((n, e) => n + dirEntrySize(e.name), 0));
  let pos = 0;
  for (const e of entries) {
    const name = encodeString(e.name);
    put64(out, pos, e.bitmapTableOffset);
    put32(out, pos + 8, e.bitmapTableSize);
    put32(out, pos + 12, e.flags);
    out[pos + 16] = e.type;
    out[pos + 17] = e.granularityBits;
    put16(out, pos + 18, name.length);
    put32(out, pos + 20, 0);
    out.set(name, pos + BITMAP_DIR_ENTRY_SIZE);
    pos += dirEntrySize(e.name);
  }
  return out;
}

