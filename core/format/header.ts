// The qcow2 header (cluster 0): parse every field, the optional additional fields, unknown
// trailing header bytes and every header extension (docs/qcow2-format.md §1.2–1.4), validate it the
// way QEMU's qcow2_do_open does (§2.1, same order, equally precise messages), and encode it back
// in QEMU's rewrite order. Pure: bytes in, values out.
import { QcowError, hex } from '../errors.ts';
import { be32, be64n, decodeCString, decodeString, encodeString, isSafe, put32, put64, put64n, toNumber } from './bytes.ts';
import * as C from './constants.ts';
import { l2EntrySize, type L2Geometry } from './entries.ts';

export interface FeatureName {
  type: number; // 0 incompatible, 1 compatible, 2 autoclear
  bit: number;
  name: string;
}

export interface HeaderExtension {
  type: number;
  /** Byte offset of the extension's 8-byte type/length header in cluster 0. */
  offset: number;
  data: Uint8Array;
}

export interface BitmapsExtension {
  nbBitmaps: number;
  reserved: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

export interface CryptoExtension {
  offset: number;
  length: number;
}

export interface Qcow2Header {
  magic: number;
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual size in bytes as stored. */
  size: number;
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
  headerLength: number;
  compressionType: number;
  /** Header bytes between 112 (or 104) and header_length that this version does not know: kept verbatim. */
  unknownHeaderFields: Uint8Array;
  /** Every extension in file order, known and unknown (unknown ones are preserved on rewrite). */
  extensions: HeaderExtension[];
  backingFormat?: string;
  featureNames: FeatureName[];
  bitmaps?: BitmapsExtension;
  crypto?: CryptoExtension;
  dataFile?: string;
  backingFile?: string;
  /** Where the extension area ended (the end marker's offset, or where parsing stopped). */
  extensionsEnd: number;
}

function u64Field(b: Uint8Array, off: number): number {
  const v = be64n(b, off);
  // Offsets above 2^53 can't be exact numbers; they are invalid for any real image and are
  // reported by the table validation below (which compares in floating point safely).
  return isSafe(v) ? toNumber(v) : Number(v);
}

/** The fixed header fields (§1.2), as stored. */
export type HeaderFields = Pick<Qcow2Header,
  'magic' | 'version' | 'backingFileOffset' | 'backingFileSize' | 'clusterBits' | 'size' | 'cryptMethod' | 'l1Size' |
  'l1TableOffset' | 'refcountTableOffset' | 'refcountTableClusters' | 'nbSnapshots' | 'snapshotsOffset' |
  'incompatibleFeatures' | 'compatibleFeatures' | 'autoclearFeatures' | 'refcountOrder' | 'headerLength' | 'compressionType'>;

/**
 * The fixed header fields as stored, without any validation (at least QEMU_HEADER_LENGTH bytes):
 * version 3's fields for any version from 3 on, version 2's defaults before. parseHeader
 * validates them; on their own they show a header the engine refuses.
 */
export function readHeaderFields(b: Uint8Array): HeaderFields {
  const version = be32(b, 4);
  const v3 = version >= 3;
  const headerLength = v3 ? be32(b, 100) : C.V2_HEADER_LENGTH;
  return {
    magic: be32(b, 0),
    version,
    backingFileOffset: u64Field(b, 8),
    backingFileSize: be32(b, 16),
    clusterBits: be32(b, 20),
    size: u64Field(b, 24),
    cryptMethod: be32(b, 32),
    l1Size: be32(b, 36),
    l1TableOffset: u64Field(b, 40),
    refcountTableOffset: u64Field(b, 48),
    refcountTableClusters: be32(b, 56),
    nbSnapshots: be32(b, 60),
    snapshotsOffset: u64Field(b, 64),
    incompatibleFeatures: v3 ? be64n(b, 72) : 0n,
    compatibleFeatures: v3 ? be64n(b, 80) : 0n,
    autoclearFeatures: v3 ? be64n(b, 88) : 0n,
    refcountOrder: v3 ? be32(b, 96) : 4,
    headerLength,
    compressionType: headerLength > 104 ? b[104]! : 0,
  };
}

/**
 * How many bytes of cluster 0 parseHeader needs, judged from its first `b.length` bytes: those
 * bytes when the header, the extension chain up to its end marker and the backing file name all
 * lie inside them, else the whole cluster. On 2 MiB clusters a header read is then 4 KiB, not
 * 2 MiB (qemu-img info reads no more either).
 */
export function headerBytesNeeded(b: Uint8Array, clusterSize: number): number {
  if (b.length >= clusterSize || b.length < C.QEMU_HEADER_LENGTH) return clusterSize;
  const f = readHeaderFields(b);
  if (f.headerLength > b.length || f.backingFileOffset + f.backingFileSize > b.length) return clusterSize;
  const end = f.backingFileOffset !== 0 ? f.backingFileOffset : clusterSize;
  for (let offset = f.headerLength; offset + 8 <= b.length && offset < end;) {
    if (be32(b, offset) === C.EXT_END) return b.length;
    offset += 8 + Math.ceil(be32(b, offset + 4) / 8) * 8;
  }
  return clusterSize;
}

/**
 * Parse the header in `b`: the first cluster (or the whole file if smaller; bytes past the end of
 * the file must be zeros), or as many of its first bytes as headerBytesNeeded says suffice.
 * Validates as QEMU's open does; throws QcowError.
 */
export function parseHeader(b: Uint8Array, fileName = 'image'): Qcow2Header {
  if (b.length < C.QEMU_HEADER_LENGTH) {
    const padded = new Uint8Array(C.QEMU_HEADER_LENGTH);
    padded.set(b);
    b = padded;
  }
  const f = readHeaderFields(b);
  if (f.magic !== C.QCOW_MAGIC) {
    throw new QcowError('NOT_QCOW2', 'Image is not in qcow2 format', { structure: 'header', offset: 0, magic: f.magic });
  }
  if (f.version !== 2 && f.version !== 3) {
    throw new QcowError('UNSUPPORTED_VERSION', `Unsupported qcow2 version ${f.version}`, { structure: 'header', offset: 4, version: f.version });
  }
  const clusterBits = f.clusterBits;
  if (clusterBits < C.MIN_CLUSTER_BITS || clusterBits > C.MAX_CLUSTER_BITS) {
    throw new QcowError('UNSUPPORTED_CLUSTER_SIZE', `Unsupported cluster size: 2^${clusterBits}`, { structure: 'header', offset: 20, clusterBits });
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    ...f,
    unknownHeaderFields: new Uint8Array(0),
    extensions: [],
    featureNames: [],
    extensionsEnd: 0,
  };
  if (f.version === 3 && h.headerLength < C.V3_MIN_HEADER_LENGTH) {
    throw new QcowError('HEADER_TOO_SHORT', 'qcow2 header too short', { structure: 'header', offset: 100, headerLength: h.headerLength });
  }
  if (h.headerLength > clusterSize) {
    throw new QcowError('HEADER_EXCEEDS_CLUSTER', 'qcow2 header exceeds cluster size', { structure: 'header', offset: 100, headerLength: h.headerLength });
  }
  if (h.headerLength > C.QEMU_HEADER_LENGTH) {
    h.unknownHeaderFields = b.slice(C.QEMU_HEADER_LENGTH, h.headerLength);
  }
  if (h.backingFileOffset > clusterSize) {
    throw new QcowError('INVALID_BACKING_FILE_OFFSET', 'Invalid backing file offset', { structure: 'header', offset: 8, backingFileOffset: h.backingFileOffset });
  }
  const compressionBit = (h.incompatibleFeatures & C.INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType !== C.COMPRESSION_ZLIB && h.compressionType !== C.COMPRESSION_ZSTD) {
    throw new QcowError('UNKNOWN_COMPRESSION_TYPE', `qcow2: unknown compression type: ${h.compressionType}`, { structure: 'header', offset: 104 });
  }
  if (h.compressionType === C.COMPRESSION_ZLIB && compressionBit) {
    throw new QcowError('COMPRESSION_TYPE_BIT', 'qcow2: Compression type incompatible feature bit must not be set', { structure: 'header', offset: 72 });
  }
  if (h.compressionType !== C.COMPRESSION_ZLIB && !compressionBit) {
    throw new QcowError('COMPRESSION_TYPE_BIT', 'qcow2: Compression type incompatible feature bit must be set', { structure: 'header', offset: 72 });
  }

  // The extension area (parsed now; its errors are reported where QEMU reports them).
  const extEnd = h.backingFileOffset !== 0 ? h.backingFileOffset : clusterSize;
  let extError: QcowError | undefined;
  try {
    parseExtensions(b, h, extEnd, clusterSize);
  } catch (e) {
    if (!(e instanceof QcowError)) throw e;
    extError = e;
  }

  const unknownIncompat = h.incompatibleFeatures & ~C.INCOMPAT_MASK;
  if (unknownIncompat !== 0n) {
    throw new QcowError('UNSUPPORTED_FEATURE', unsupportedFeatureMessage(h.featureNames, unknownIncompat), {
      structure: 'header', offset: 72, features: '0x' + unknownIncompat.toString(16),
    });
  }
  if ((h.incompatibleFeatures & C.INCOMPAT_EXTL2) !== 0n && clusterBits < C.MIN_EXTL2_CLUSTER_BITS) {
    throw new QcowError('UNSUPPORTED_SUBCLUSTER_SIZE', `Unsupported subcluster size: ${clusterSize / C.SUBCLUSTERS_PER_CLUSTER}`, { structure: 'header', offset: 72 });
  }
  if (h.refcountOrder > 6) {
    throw new QcowError('REFCOUNT_WIDTH_TOO_LARGE', 'Reference count entry width too large; may not exceed 64 bits', { structure: 'header', offset: 96, refcountOrder: h.refcountOrder });
  }
  if (h.cryptMethod > C.CRYPT_LUKS) {
    throw new QcowError('ENCRYPTED', `Unsupported encryption method: ${h.cryptMethod}`, { structure: 'header', offset: 32 });
  }
  if (extError) throw extError;
  if (h.crypto && h.cryptMethod !== C.CRYPT_LUKS) {
    throw new QcowError('HEADER_EXTENSION_INVALID', 'CRYPTO header extension only expected with LUKS encryption method', { structure: 'header extension', offset: extOffset(h, C.EXT_CRYPTO) });
  }
  if (h.cryptMethod === C.CRYPT_LUKS && !h.crypto) {
    throw new QcowError('HEADER_EXTENSION_INVALID', `Missing CRYPTO header for crypt method ${h.cryptMethod}`, { structure: 'header', offset: 32 });
  }

  if (h.backingFileOffset !== 0) {
    const len = h.backingFileSize;
    if (len > Math.min(C.MAX_BACKING_FILE_NAME, clusterSize - h.backingFileOffset)) {
      throw new QcowError('BACKING_FILE_NAME_TOO_LONG', 'Backing file name too long', { structure: 'backing file name', offset: h.backingFileOffset, length: len });
    }
    h.backingFile = decodeString(b.subarray(h.backingFileOffset, h.backingFileOffset + len));
  }
  return h;
}

function extOffset(h: Qcow2Header, type: number): number {
  return h.extensions.find((e) => e.type === type)?.offset ?? 0;
}

/**
 * QEMU's report_unsupported_feature: names from the feature table (in table order, up to the
 * first entry with an empty name, where QEMU stops reading the table), then the unnamed rest in hex.
 */
export function unsupportedFeatureMessage(names: FeatureName[], mask: bigint): string {
  const parts: string[] = [];
  let rest = mask;
  for (const f of names) {
    if (f.name === '') break;
    if (f.type !== C.FEATURE_TYPE_INCOMPAT || f.bit > 63) continue;
    const bit = 1n << BigInt(f.bit);
    if ((rest & bit) !== 0n) {
      parts.push(f.name);
      rest &= ~bit;
    }
  }
  if (rest !== 0n) parts.push(`Unknown incompatible feature: ${rest.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(', ')}`;
}

function parseExtensions(b: Uint8Array, h: Qcow2Header, end: number, clusterSize: number): void {
  let offset = h.headerLength;
  const limit = Math.min(end, b.length);
  while (offset < end) {
    const type = offset + 8 <= b.length ? be32(b, offset) : 0;
    const len = offset + 8 <= b.length ? be32(b, offset + 4) : 0;
    const extAt = offset;
    offset += 8;
    if (offset > end || len > end - offset) {
      throw new QcowError('HEADER_EXTENSION_INVALID', 'Header extension too large', {
        structure: 'header extension', offset: extAt, type: hex(type), length: len,
      });
    }
    if (type === C.EXT_END) {
      h.extensionsEnd = extAt;
      return;
    }
    const data = b.slice(offset, Math.min(offset + len, limit));
    h.extensions.push({ type, offset: extAt, data });
    switch (type) {
      case C.EXT_BACKING_FORMAT:
        if (len >= 16) {
          throw new QcowError('HEADER_EXTENSION_INVALID', `ERROR: ext_backing_format: len=${len} too large (>=16)`, { structure: 'backing format extension', offset: extAt });
        }
        h.backingFormat = decodeString(data);
        break;
      case C.EXT_FEATURE_TABLE:
        for (let i = 0; i + 48 <= data.length; i += 48) {
          h.featureNames.push({ type: data[i]!, bit: data[i + 1]!, name: decodeCString(data.subarray(i + 2, i + 48)) });
        }
        break;
      case C.EXT_CRYPTO:
        if (len !== 16) {
          throw new QcowError('HEADER_EXTENSION_INVALID', `CRYPTO header extension size ${len}, but expected size 16`, { structure: 'crypto extension', offset: extAt });
        }
        h.crypto = { offset: Number(be64n(data, 0)), length: Number(be64n(data, 8)) };
        if (h.crypto.offset % clusterSize !== 0) {
          throw new QcowError('HEADER_EXTENSION_INVALID', `Encryption header offset '${h.crypto.offset}' is not a multiple of cluster size '${clusterSize}'`, { structure: 'crypto extension', offset: extAt });
        }
        break;
      case C.EXT_BITMAPS: {
        if (len !== 24) {
          throw new QcowError('HEADER_EXTENSION_INVALID', 'bitmaps_ext: Invalid extension length', { structure: 'bitmaps extension', offset: extAt });
        }
        const bm: BitmapsExtension = {
          nbBitmaps: be32(data, 0),
          reserved: be32(data, 4),
          bitmapDirectorySize: Number(be64n(data, 8)),
          bitmapDirectoryOffset: Number(be64n(data, 16)),
        };
        // QEMU only validates the extension when the autoclear bit says it is consistent.
        if ((h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n) {
          if (bm.reserved !== 0) throw new QcowError('HEADER_EXTENSION_INVALID', 'bitmaps_ext: Reserved field is not zero', { structure: 'bitmaps extension', offset: extAt });
          if (bm.nbBitmaps > C.MAX_BITMAPS) throw new QcowError('HEADER_EXTENSION_INVALID', `bitmaps_ext: Image has ${bm.nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${C.MAX_BITMAPS}`, { structure: 'bitmaps extension', offset: extAt });
          if (bm.nbBitmaps === 0) throw new QcowError('HEADER_EXTENSION_INVALID', 'found bitmaps extension with zero bitmaps', { structure: 'bitmaps extension', offset: extAt });
          if (bm.bitmapDirectoryOffset % clusterSize !== 0) throw new QcowError('HEADER_EXTENSION_INVALID', 'bitmaps_ext: invalid bitmap directory offset', { structure: 'bitmaps extension', offset: extAt });
          if (bm.bitmapDirectorySize > C.MAX_BITMAP_DIRECTORY_SIZE) throw new QcowError('HEADER_EXTENSION_INVALID', `bitmaps_ext: bitmap directory size (${bm.bitmapDirectorySize}) exceeds the maximum supported size (${C.MAX_BITMAP_DIRECTORY_SIZE})`, { structure: 'bitmaps extension', offset: extAt });
        }
        h.bitmaps = bm;
        break;
      }
      case C.EXT_DATA_FILE:
        h.dataFile = decodeString(data);
        break;
      default:
        break; // unknown: kept in h.extensions
    }
    offset += Math.ceil(len / 8) * 8;
  }
  h.extensionsEnd = Math.min(offset, end);
}

export function clusterSizeOf(h: Pick<Qcow2Header, 'clusterBits'>): number {
  return 2 ** h.clusterBits;
}

/** What the L2 entries of an image with this header look like (entries.ts decodes them with it). */
export function l2GeometryOf(h: Pick<Qcow2Header, 'clusterBits' | 'incompatibleFeatures'>): L2Geometry {
  return {
    clusterBits: h.clusterBits,
    extendedL2: (h.incompatibleFeatures & C.INCOMPAT_EXTL2) !== 0n,
    dataFile: (h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n,
  };
}

/** L2 entries per table: CS/8, or CS/16 with extended L2. */
export function l2EntriesOf(h: Pick<Qcow2Header, 'clusterBits' | 'incompatibleFeatures'>): number {
  return 2 ** h.clusterBits / l2EntrySize(l2GeometryOf(h));
}

/** L1 entries needed to map `size` bytes (QEMU's size_to_l1). */
export function sizeToL1(h: Pick<Qcow2Header, 'clusterBits' | 'incompatibleFeatures'>, size: number): number {
  return Math.ceil(size / (2 ** h.clusterBits * l2EntriesOf(h)));
}

/**
 * QEMU's qcow2_validate_table: entries·entryLen bounded by maxBytes (checked before anything is
 * allocated), offset aligned and offset + size representable.
 */
export function validateTable(offset: number, entries: number, entryLen: number, maxBytes: number, clusterSize: number, name: string, headerOffset?: number): void {
  if (entries > Math.floor(maxBytes / entryLen)) {
    throw new QcowError('TABLE_TOO_LARGE', `${name} too large`, { structure: name, offset, entries, headerOffset });
  }
  const size = entries * entryLen;
  if (2 ** 63 - 1 - size < offset || offset % clusterSize !== 0 || offset > Number.MAX_SAFE_INTEGER) {
    throw new QcowError('TABLE_OFFSET_INVALID', `${name} offset invalid`, { structure: name, offset, entries, headerOffset });
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** The feature-name table payload QEMU writes (8 entries, 384 bytes). */
function encodeFeatureTable(): Uint8Array {
  const out = new Uint8Array(C.QEMU_FEATURE_NAMES.length * 48);
  C.QEMU_FEATURE_NAMES.forEach(([type, bit, name], i) => {
    out[i * 48] = type;
    out[i * 48 + 1] = bit;
    out.set(encodeString(name), i * 48 + 2);
  });
  return out;
}

/**
 * Build cluster 0 in QEMU's order (qcow2_update_header): header, unknown header fields, backing
 * format, data-file name, crypto, feature table (v3 and CS > 4096 only), bitmaps, preserved
 * unknown extensions, end marker, backing file name. Throws if it doesn't fit in one cluster.
 */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const out = new Uint8Array(cs);
  put32(out, 0, C.QCOW_MAGIC);
  put32(out, 4, h.version);
  put32(out, 16, h.backingFile !== undefined ? encodeString(h.backingFile).length : 0);
  put32(out, 20, h.clusterBits);
  put64(out, 24, h.size);
  put32(out, 32, h.cryptMethod);
  put32(out, 36, h.l1Size);
  put64(out, 40, h.l1TableOffset);
  put64(out, 48, h.refcountTableOffset);
  put32(out, 56, h.refcountTableClusters);
  put32(out, 60, h.nbSnapshots);
  put64(out, 64, h.snapshotsOffset);
  let pos: number;
  if (h.version >= 3) {
    const headerLength = C.QEMU_HEADER_LENGTH + h.unknownHeaderFields.length;
    put64n(out, 72, h.incompatibleFeatures);
    put64n(out, 80, h.compatibleFeatures);
    put64n(out, 88, h.autoclearFeatures);
    put32(out, 96, h.refcountOrder);
    put32(out, 100, headerLength);
    out[104] = h.compressionType;
    out.set(h.unknownHeaderFields, C.QEMU_HEADER_LENGTH);
    pos = headerLength;
  } else {
    pos = C.V2_HEADER_LENGTH;
  }
  const exts: Array<[number, Uint8Array]> = [];
  if (h.backingFormat !== undefined && h.backingFile !== undefined) exts.push([C.EXT_BACKING_FORMAT, encodeString(h.backingFormat)]);
  if (h.dataFile !== undefined) exts.push([C.EXT_DATA_FILE, encodeString(h.dataFile)]);
  if (h.crypto) {
    const d = new Uint8Array(16);
    put64(d, 0, h.crypto.offset);
    put64(d, 8, h.crypto.length);
    exts.push([C.EXT_CRYPTO, d]);
  }
  if (h.version >= 3 && cs > 4096) exts.push([C.EXT_FEATURE_TABLE, encodeFeatureTable()]);
  if (h.bitmaps && (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n) {
    const d = new Uint8Array(24);
    put32(d, 0, h.bitmaps.nbBitmaps);
    put64(d, 8, h.bitmaps.bitmapDirectorySize);
    put64(d, 16, h.bitmaps.bitmapDirectoryOffset);
    exts.push([C.EXT_BITMAPS, d]);
  }
  const known = new Set([C.EXT_BACKING_FORMAT, C.EXT_DATA_FILE, C.EXT_CRYPTO, C.EXT_FEATURE_TABLE, C.EXT_BITMAPS]);
  for (const e of h.extensions) if (!known.has(e.type)) exts.push([e.type, e.data]);
  for (const [type, data] of exts) {
    const need = 8 + Math.ceil(data.length / 8) * 8;
    if (pos + need + 8 > cs) throw new QcowError('INVALID_ARGUMENT', 'Header extensions do not fit in the first cluster', { structure: 'header' });
    put32(out, pos, type);
    put32(out, pos + 4, data.length);
    out.set(data, pos + 8);
    pos += need;
  }
  pos += 8; // end marker (zeros)
  if (h.backingFile !== undefined) {
    const name = encodeString(h.backingFile);
    if (pos + name.length > cs || name.length > C.MAX_BACKING_FILE_NAME) {
      throw new QcowError('BACKING_FILE_NAME_TOO_LONG', 'Backing file name too long', { structure: 'header' });
    }
    put64(out, 8, pos);
    out.set(name, pos);
  } else {
    put64(out, 8, 0);
  }
  return out;
}

