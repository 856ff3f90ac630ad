// The header on bytes (docs/qcow2-format.md §1.2–1.4, §2.1): encode/parse round trips of v2 and v3
// headers with every field, extensions in QEMU's order, unknown header fields and unknown
// extensions preserved; the open-time checks in QEMU's order with their codes and messages;
// qcow2_validate_table's limits at their exact boundaries.
import { describe, expect, it } from 'vitest';
import { QcowError } from '../../core/errors.ts';
import * as C from '../../core/format/constants.ts';
import {
  encodeHeader, l2EntriesOf, parseHeader, sizeToL1, unsupportedFeatureMessage, validateTable, type Qcow2Header,
} from '../../core/format/header.ts';

function baseHeader(over: Partial<Qcow2Header> = {}): Qcow2Header {
  return {
    magic: C.QCOW_MAGIC, version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 64 * 1024 * 1024,
    cryptMethod: 0, l1Size: 1, l1TableOffset: 0x30000, refcountTableOffset: 0x10000, refcountTableClusters: 1,
    nbSnapshots: 0, snapshotsOffset: 0, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n,
    refcountOrder: 4, headerLength: 112, compressionType: 0, unknownHeaderFields: new Uint8Array(0), extensions: [],
    featureNames: [], extensionsEnd: 0, ...over,
  };
}

function errorOf(f: () => unknown): QcowError {
  try {
    f();
  } catch (e) {
    if (e instanceof QcowError) return e;
    throw e;
  }
  throw new Error('no error');
}

const be = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

describe('header round trip', () => {
  it('a fresh 64 MiB v3 image: header_length 112, feature table at 0x70 (0x180 bytes), end marker at 0x1f8', () => {
    const b = encodeHeader(baseHeader());
    expect(b.length).toBe(65536);
    const dv = be(b);
    expect(dv.getUint32(100)).toBe(112);
    expect(dv.getUint32(0x70)).toBe(C.EXT_FEATURE_TABLE);
    expect(dv.getUint32(0x74)).toBe(0x180);
    expect(dv.getBigUint64(0x1f8)).toBe(0n);
    const h = parseHeader(b);
    expect(h.featureNames.map((f) => f.name)).toEqual(C.QEMU_FEATURE_NAMES.map((f) => f[2]));
    expect(h.extensionsEnd).toBe(0x1f8);
  });

  it('v3 with every field, large offsets, backing file and format, unknown header bytes and extension', () => {
    const unknownExt = { type: 0x12345678, offset: 0, data: Uint8Array.from([1, 2, 3, 4, 5]) };
    const h = baseHeader({
      size: 2 ** 50, l1Size: 4096, l1TableOffset: 2 ** 40, refcountTableOffset: 2 ** 33, refcountTableClusters: 7,
      nbSnapshots: 3, snapshotsOffset: 2 ** 48 + 0x10000, incompatibleFeatures: C.INCOMPAT_DIRTY | C.INCOMPAT_EXTL2 | C.INCOMPAT_COMPRESSION,
      compatibleFeatures: C.COMPAT_LAZY_REFCOUNTS, autoclearFeatures: C.AUTOCLEAR_BITMAPS, refcountOrder: 6, compressionType: 1,
      unknownHeaderFields: Uint8Array.from([9, 8, 7, 6, 5, 4, 3, 2]), headerLength: 120,
      extensions: [unknownExt], backingFile: '../base image.qcow2', backingFormat: 'qcow2',
      bitmaps: { nbBitmaps: 2, reserved: 0, bitmapDirectorySize: 4096, bitmapDirectoryOffset: 0x90000 },
    });
    const b = encodeHeader(h);
    const p = parseHeader(b);
    for (const k of ['version', 'clusterBits', 'size', 'l1Size', 'l1TableOffset', 'refcountTableOffset', 'refcountTableClusters',
      'nbSnapshots', 'snapshotsOffset', 'incompatibleFeatures', 'compatibleFeatures', 'autoclearFeatures', 'refcountOrder',
      'compressionType', 'backingFile', 'backingFormat', 'bitmaps'] as const) {
      expect(p[k], k).toEqual(h[k]);
    }
    expect(p.headerLength).toBe(120);
    expect(Array.from(p.unknownHeaderFields)).toEqual([9, 8, 7, 6, 5, 4, 3, 2]);
    expect(p.extensions.find((e) => e.type === 0x12345678)?.data).toEqual(unknownExt.data);
    // QEMU's order: backing format, feature table, bitmaps, unknown, end, backing name
    expect(p.extensions.map((e) => e.type)).toEqual([C.EXT_BACKING_FORMAT, C.EXT_FEATURE_TABLE, C.EXT_BITMAPS, 0x12345678]);
    expect(p.backingFileOffset).toBe(p.extensionsEnd + 8);
    expect(p.backingFileSize).toBe(Buffer.byteLength('../base image.qcow2'));
    expect(encodeHeader(p)).toEqual(b); // stable
  });

  it('v2: 72-byte header, no extensions beyond a backing format, refcount order 4', () => {
    const h = baseHeader({ version: 2, headerLength: 72, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
    const b = encodeHeader(h);
    const p = parseHeader(b);
    expect([p.version, p.headerLength, p.refcountOrder, p.incompatibleFeatures, p.compressionType]).toEqual([2, 72, 4, 0n, 0]);
    expect(p.featureNames).toEqual([]);
    expect(p.backingFile).toBe('base.qcow2');
    expect(p.backingFormat).toBe('qcow2');
    expect(p.extensions.map((e) => e.offset)).toEqual([72]);
  });

  it('no feature table with clusters of 4 KiB or less', () => {
    const p = parseHeader(encodeHeader(baseHeader({ clusterBits: 12 })));
    expect(p.extensions).toEqual([]);
    expect(p.extensionsEnd).toBe(112);
  });

  it('v3 header_length 104 (no compression type field) reads compression type 0', () => {
    const b = encodeHeader(baseHeader({ clusterBits: 12 }));
    be(b).setUint32(100, 104);
    b[104] = 1; // beyond header_length: not a field
    expect(parseHeader(b).compressionType).toBe(0);
  });
});

describe('open-time checks, QEMU\'s order and messages', () => {
  const cases: Array<[string, (b: Uint8Array) => void, string, string]> = [
    ['magic', (b) => be(b).setUint32(0, 0x12345678), 'NOT_QCOW2', 'Image is not in qcow2 format'],
    ['version 1', (b) => be(b).setUint32(4, 1), 'UNSUPPORTED_VERSION', 'Unsupported qcow2 version 1'],
    ['cluster bits 22', (b) => be(b).setUint32(20, 22), 'UNSUPPORTED_CLUSTER_SIZE', 'Unsupported cluster size: 2^22'],
    ['header too short', (b) => be(b).setUint32(100, 96), 'HEADER_TOO_SHORT', 'qcow2 header too short'],
    ['header exceeds cluster', (b) => be(b).setUint32(100, 65537), 'HEADER_EXCEEDS_CLUSTER', 'qcow2 header exceeds cluster size'],
    ['backing offset', (b) => be(b).setBigUint64(8, 65537n), 'INVALID_BACKING_FILE_OFFSET', 'Invalid backing file offset'],
    ['compression type 3', (b) => { b[104] = 3; }, 'UNKNOWN_COMPRESSION_TYPE', 'qcow2: unknown compression type: 3'],
    ['zstd without bit', (b) => { b[104] = 1; }, 'COMPRESSION_TYPE_BIT', 'qcow2: Compression type incompatible feature bit must be set'],
    ['bit without zstd', (b) => be(b).setBigUint64(72, 8n), 'COMPRESSION_TYPE_BIT', 'qcow2: Compression type incompatible feature bit must not be set'],
    ['unknown incompatible bit', (b) => be(b).setBigUint64(72, 1n << 40n), 'UNSUPPORTED_FEATURE', 'Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000'],
    ['refcount order 7', (b) => be(b).setUint32(96, 7), 'REFCOUNT_WIDTH_TOO_LARGE', 'Reference count entry width too large; may not exceed 64 bits'],
    ['extension too large', (b) => { be(b).setUint32(0x1f8, 0x12345678); be(b).setUint32(0x1fc, 65536 - 0x1f8 - 7); }, 'HEADER_EXTENSION_INVALID', 'Header extension too large'],
    ['backing name too long', (b) => { be(b).setBigUint64(8, 0x1000n); be(b).setUint32(16, 1024); }, 'BACKING_FILE_NAME_TOO_LONG', 'Backing file name too long'],
  ];
  for (const [name, damage, code, message] of cases) {
    it(name, () => {
      const b = encodeHeader(baseHeader());
      damage(b);
      const e = errorOf(() => parseHeader(b));
      expect(e.code).toBe(code);
      expect(e.message).toBe(message);
      expect(typeof e.details.structure).toBe('string');
    });
  }

  it('an extension that exactly fills the rest of cluster 0 is fine', () => {
    const b = encodeHeader(baseHeader());
    be(b).setUint32(0x1f8, 0x12345678);
    be(b).setUint32(0x1fc, 65536 - 0x1f8 - 8);
    expect(parseHeader(b).extensions.at(-1)?.data.length).toBe(65536 - 0x1f8 - 8);
  });

  it('a short file reads as zeros past its end', () => {
    const b = encodeHeader(baseHeader({ clusterBits: 12 })).subarray(0, 112);
    expect(parseHeader(b).version).toBe(3);
  });
});

describe('unsupported feature names (iotest 036)', () => {
  it('names from the table in table order, then the unnamed bits in hex', () => {
    const names = [{ type: 0, bit: 62, name: 'B' }, { type: 1, bit: 63, name: 'compat' }, { type: 0, bit: 61, name: 'A' }];
    expect(unsupportedFeatureMessage(names, 7n << 61n)).toBe('Unsupported qcow2 feature(s): B, A, Unknown incompatible feature: 8000000000000000');
    expect(unsupportedFeatureMessage([], 1n << 63n)).toBe('Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000');
  });
  it('the table ends at the first entry with an empty name, as QEMU reads it', () => {
    const names = [{ type: 0, bit: 62, name: '' }, { type: 0, bit: 63, name: 'Test feature' }];
    expect(unsupportedFeatureMessage(names, 3n << 62n)).toBe('Unsupported qcow2 feature(s): Unknown incompatible feature: c000000000000000');
  });
});

describe('qcow2_validate_table limits', () => {
  const cs = 65536;
  it('active L1: 4 Mi entries (32 MiB) allowed, one more too large', () => {
    expect(() => validateTable(0x30000, 4 * 1024 * 1024, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table')).not.toThrow();
    expect(errorOf(() => validateTable(0x30000, 4 * 1024 * 1024 + 1, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table')).message).toBe('Active L1 table too large');
  });
  it('offsets: unaligned, above 2^53, and overflowing INT64_MAX are invalid', () => {
    for (const off of [0x30001, 2 ** 53 + 2 ** 20, 2 ** 63 - 2 ** 16]) {
      const e = errorOf(() => validateTable(off, 0xffff, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table'));
      expect(e.code).toBe('TABLE_OFFSET_INVALID');
      expect(e.message).toBe('Active L1 table offset invalid');
    }
    expect(() => validateTable(2 ** 48, 1, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table')).not.toThrow();
  });
  it('size checked before the offset (080: huge count with a bad offset reports "too large")', () => {
    expect(errorOf(() => validateTable(0x1234567, 0xffffffff, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table')).code).toBe('TABLE_TOO_LARGE');
  });
});

describe('geometry', () => {
  it('L2 entries and L1 entries needed, standard and extended L2', () => {
    expect(l2EntriesOf({ clusterBits: 16, incompatibleFeatures: 0n })).toBe(8192);
    expect(l2EntriesOf({ clusterBits: 16, incompatibleFeatures: C.INCOMPAT_EXTL2 })).toBe(4096);
    expect(sizeToL1({ clusterBits: 16, incompatibleFeatures: 0n }, 64 * 1024 * 1024)).toBe(1);
    expect(sizeToL1({ clusterBits: 9, incompatibleFeatures: 0n }, 2 ** 42)).toBe(2 ** 42 / (512 * 64));
    expect(sizeToL1({ clusterBits: 16, incompatibleFeatures: C.INCOMPAT_EXTL2 }, 2 ** 28 + 1)).toBe(2);
  });
});
