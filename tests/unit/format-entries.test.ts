// L1/L2 entries and compressed cluster descriptors on bytes (qcow2-reference.md §1.6–1.7):
// offsets above 2^32 and 2^48, every cluster type, extended-L2 bitmaps, and the compressed
// descriptor layout for every cluster size 512 B..2 MiB, checked against a BigInt reference of
// QEMU's bit arithmetic (the engine itself works on 32-bit halves).
import { describe, expect, it } from 'vitest';
import {
  bitmapTableEntryInvalid, ClusterType, clusterType, compressedDescriptor, decodeL1Entry, decodeL2Entry, encodeCompressedEntry,
  encodeL1Entry, encodeL2Entry, hasOffset, hasZeroFlag, isCompressed, isCopied, l1L2Offset, l1ReservedHex, l2EntrySize, offsetOf,
  offsetUnalignedMaskLo, putEntry, refcountTableOffset, refcountTableReservedBits, withCopied, type L2Geometry,
} from '../../core/format/entries.ts';

const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;

function table(...entries: bigint[]): Uint8Array {
  const b = new Uint8Array(entries.length * 8);
  const dv = new DataView(b.buffer);
  entries.forEach((e, i) => dv.setBigUint64(i * 8, e));
  return b;
}
function words(e: bigint): [number, number] {
  return [Number(e >> 32n), Number(e & 0xffffffffn)];
}

const OFFSETS = [
  0x50000, // first data cluster of a fresh image
  2 ** 32 - 65536, // just below 4 GiB
  2 ** 32, // 4 GiB: the 32-bit trap
  2 ** 32 + 3 * 65536,
  2 ** 48, // 256 TiB
  2 ** 48 + 2 ** 40 + 65536,
  2 ** 53 - 65536, // largest exact number that is cluster aligned
];

describe('L1 entries', () => {
  it('decode L2 offsets above 2^32 and 2^48, COPIED and reserved bits', () => {
    for (const off of OFFSETS) {
      for (const copied of [false, true]) {
        const e = BigInt(off) | (copied ? COPIED : 0n);
        const t = table(0n, e);
        const d = decodeL1Entry(t, 1);
        expect(d.l2Offset).toBe(off);
        expect(d.copied).toBe(copied);
        expect(d.reservedBits).toBe(false);
        expect(d.raw).toBe(e.toString(16).padStart(16, '0'));
        expect(l1L2Offset(t, 1)).toBe(off);
        expect(encodeL1Entry(off, copied)).toEqual(words(e));
      }
    }
  });

  it('offsets up to 2^56 − 2^9 (bits 9..55) come out exact where they are numbers', () => {
    const max = 0x00fffffffffffe00n;
    const d = decodeL1Entry(table(max | COPIED), 0);
    expect(BigInt(d.l2Offset)).toBe(max); // 2^56 − 512 is a power-of-two multiple: exact as a double
  });

  it('reserved bits: 0..8 and 56..62 (L1E_RESERVED_MASK 0x7F000000000001FF)', () => {
    for (const bit of [0n, 1n, 8n, 56n, 60n, 62n]) {
      const d = decodeL1Entry(table(0x40000n | (1n << bit)), 0);
      expect(d.reservedBits, `bit ${bit}`).toBe(true);
      expect(d.l2Offset).toBe(0x40000);
    }
    expect(decodeL1Entry(table(0x40000n | (1n << 9n)), 0).reservedBits).toBe(false);
  });
});

describe('L2 entries', () => {
  const std: L2Geometry = { clusterBits: 16, extendedL2: false, dataFile: false };
  const ext: L2Geometry = { clusterBits: 16, extendedL2: true, dataFile: false };
  const withDataFile: L2Geometry = { clusterBits: 16, extendedL2: false, dataFile: true };

  it('every cluster type (QEMU qcow2_get_cluster_type)', () => {
    const cases: Array<[bigint, L2Geometry, ClusterType, number]> = [
      [0n, std, ClusterType.Unallocated, 0],
      [COPIED, std, ClusterType.Unallocated, 0], // offset 0 with COPIED, no data file
      [COPIED, withDataFile, ClusterType.Normal, 0], // offset 0 is a real cluster in a data file
      [1n, std, ClusterType.ZeroPlain, 0],
      [0x50000n | 1n, std, ClusterType.ZeroAlloc, 0x50000],
      [COPIED | 0x50000n | 1n, std, ClusterType.ZeroAlloc, 0x50000],
      [COPIED | 0x50000n, std, ClusterType.Normal, 0x50000],
      [0x50000n, std, ClusterType.Normal, 0x50000],
      [COMPRESSED | 0x50123n, std, ClusterType.Compressed, 0],
      [0x50000n | 1n, ext, ClusterType.Normal, 0x50000], // bit 0 means nothing with extended L2
      [1n, ext, ClusterType.Unallocated, 0],
    ];
    for (const [e, g, type, host] of cases) {
      const [hi, lo] = words(e);
      expect(clusterType(hi, lo, g), e.toString(16)).toBe(type);
      const d = decodeL2Entry(table(...(g.extendedL2 ? [e, 0n] : [e])), 0, g);
      expect(d.type).toBe(type);
      expect(d.hostOffset).toBe(host);
      expect(d.copied).toBe((e & COPIED) !== 0n);
    }
  });

  it('host offsets above 2^32 and 2^48, encode round trip', () => {
    for (const off of OFFSETS) {
      for (const flags of [{}, { copied: true }, { zero: true }, { copied: true, zero: true }]) {
        const [hi, lo] = encodeL2Entry(off, flags);
        const e = (BigInt(hi) << 32n) | BigInt(lo);
        expect(e).toBe(BigInt(off) | (flags.copied ? COPIED : 0n) | (flags.zero ? 1n : 0n));
        const t = new Uint8Array(16);
        putEntry(t, 8, hi, lo);
        const d = decodeL2Entry(t, 1, std);
        expect(d.hostOffset).toBe(off);
        expect(d.type).toBe(flags.zero ? ClusterType.ZeroAlloc : ClusterType.Normal);
        expect(offsetOf(hi, lo)).toBe(off);
      }
    }
  });

  it('reserved bits of standard entries (L2E_STD_RESERVED_MASK 0x3F000000000001FE), none for compressed', () => {
    for (const bit of [1n, 8n, 56n, 61n]) {
      expect(decodeL2Entry(table(0x50000n | (1n << bit)), 0, std).reservedBits, `bit ${bit}`).toBe(true);
    }
    expect(decodeL2Entry(table(COPIED | 0x50000n | 1n), 0, std).reservedBits).toBe(false);
    expect(decodeL2Entry(table(COMPRESSED | (0x3fn << 56n) | 0x1ffn), 0, std).reservedBits).toBe(false);
  });

  it('extended L2: 16-byte entries, zero bitmap in the high word, allocation bitmap in the low word', () => {
    expect(l2EntrySize(ext)).toBe(16);
    expect(l2EntrySize(std)).toBe(8);
    const bitmap = (0x80000001n << 32n) | 0x00000006n; // zero: subclusters 0 and 31; alloc: 1 and 2
    const t = table(0n, 0n, COPIED | BigInt(2 ** 40), bitmap);
    const d = decodeL2Entry(t, 1, ext);
    expect(d.type).toBe(ClusterType.Normal);
    expect(d.hostOffset).toBe(2 ** 40);
    expect(d.zeroBitmap).toBe(0x80000001);
    expect(d.allocBitmap).toBe(6);
    expect(d.rawBitmap).toBe('8000000100000006');
    const u = decodeL2Entry(t, 0, ext);
    expect([u.type, u.zeroBitmap, u.allocBitmap]).toEqual([ClusterType.Unallocated, 0, 0]);
  });
});

describe('compressed cluster descriptors, every cluster size', () => {
  /** QEMU: csize_shift = 62 − (cluster_bits − 8); offset = e & ((1 << shift) − 1); sectors = ((e >> shift) & mask) + 1. */
  function reference(e: bigint, clusterBits: number) {
    const shift = BigInt(62 - (clusterBits - 8));
    const hostOffset = e & ((1n << shift) - 1n);
    const nbSectors = Number((e >> shift) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
    return { hostOffset: Number(hostOffset), nbSectors, compressedSize: nbSectors * 512 - Number(hostOffset % 512n) };
  }

  for (let clusterBits = 9; clusterBits <= 21; clusterBits++) {
    it(`cluster_bits ${clusterBits} (${2 ** clusterBits} B)`, () => {
      const cs = 2 ** clusterBits;
      const maxSectors = 2 ** (clusterBits - 8); // the count field holds sectors − 1
      const shift = 62 - (clusterBits - 8);
      const maxOffset = Math.min(2 ** shift, 2 ** 53) - 1;
      const hosts = [0x50000, 0x50000 + 4567, 2 ** 32 - 1, 2 ** 32 + 1, 2 ** 48 + 12345, maxOffset];
      for (const host of hosts) {
        for (const nbSectors of [1, 2, Math.max(1, maxSectors >> 1), maxSectors]) {
          const [hi, lo] = encodeCompressedEntry(host, nbSectors, clusterBits);
          const e = (BigInt(hi) << 32n) | BigInt(lo);
          expect(e & COMPRESSED, 'compressed flag').toBe(COMPRESSED);
          expect(e & COPIED, 'never COPIED').toBe(0n);
          expect(e, `${host} ${nbSectors}`).toBe(COMPRESSED | (BigInt(nbSectors - 1) << BigInt(shift)) | BigInt(host));
          const d = compressedDescriptor(hi, lo, clusterBits);
          expect(d).toEqual(reference(e, clusterBits));
          expect(d.hostOffset).toBe(host);
          expect(d.nbSectors).toBe(nbSectors);
          expect(d.compressedSize).toBe(nbSectors * 512 - (host % 512));
          expect(decodeL2Entry(table(e), 0, { clusterBits, extendedL2: false, dataFile: false }).compressed).toEqual(d);
        }
      }
      // a COPIED bit set by a broken writer does not leak into the sector count
      const [hi, lo] = encodeCompressedEntry(0x50000, maxSectors, clusterBits);
      expect(compressedDescriptor((hi | 0x80000000) >>> 0, lo, clusterBits).nbSectors).toBe(maxSectors);
      expect(cs).toBeGreaterThan(0);
    });
  }
});

describe('named entry bits, against QEMU\'s 64-bit masks in BigInt', () => {
  const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
  const REFT_OFFSET_MASK = 0xfffffffffffffe00n;
  const L1E_RESERVED_MASK = 0x7f000000000001ffn;
  const BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001fen;
  const samples = [
    0n, 1n, 0x50000n, COPIED | 0x50000n, COMPRESSED | 0x123456789n, COPIED | COMPRESSED, (1n << 56n) | 0x10000n,
    0x00fffffffffffe00n, 0xffffffffffffffffn, 0x1ffn, 0x200n, (1n << 63n) | 1n, 0x8000000000000200n, 0x0100000000000000n,
  ];

  it('offset, COPIED, COMPRESSED, ZERO and the reftable offset of every sample', () => {
    for (const e of samples) {
      const [hi, lo] = words(e);
      expect(hasOffset(hi, lo), e.toString(16)).toBe((e & L2E_OFFSET_MASK) !== 0n);
      expect(isCopied(hi)).toBe((e & COPIED) !== 0n);
      expect(isCompressed(hi)).toBe((e & COMPRESSED) !== 0n);
      expect(hasZeroFlag(lo)).toBe((e & 1n) !== 0n);
      expect(refcountTableOffset(hi, lo)).toBe(Number(e & REFT_OFFSET_MASK));
      expect(refcountTableReservedBits(lo)).toBe((e & 0x1ffn) !== 0n);
      for (const copied of [false, true]) {
        const want = copied ? e | COPIED : e & ~COPIED;
        expect(withCopied(hi, copied)).toBe(Number(want >> 32n));
      }
      const res = e & L1E_RESERVED_MASK;
      expect(l1ReservedHex(hi, lo)).toBe(res === 0n ? '' : '0x' + res.toString(16));
    }
  });

  it('the unaligned-offset mask of the low word, every cluster size', () => {
    expect(offsetUnalignedMaskLo(512)).toBe(0); // the offset field starts at bit 9: never unaligned
    for (let bits = 10; bits <= 21; bits++) {
      const cs = 2 ** bits;
      expect(offsetUnalignedMaskLo(cs) >>> 0).toBe(Number(BigInt(cs - 1) & L2E_OFFSET_MASK));
      const [, lo] = words(BigInt(cs) * 3n + 512n);
      expect((lo & offsetUnalignedMaskLo(cs)) !== 0).toBe(true);
      const [, aligned] = words(BigInt(cs) * 3n);
      expect(aligned & offsetUnalignedMaskLo(cs)).toBe(0);
    }
  });

  it('bitmap table entries: reserved bits, or an offset that is unaligned or has the all-ones flag', () => {
    const cs = 65536;
    for (const e of [...samples, 0x10000n, 0x10001n, 0x10200n, 0x20000n | (1n << 60n)]) {
      const [hi, lo] = words(e);
      const off = e & L2E_OFFSET_MASK;
      const want = (e & BME_TABLE_ENTRY_RESERVED_MASK) !== 0n || (off !== 0n && ((e & 1n) !== 0n || off % BigInt(cs) !== 0n));
      expect(bitmapTableEntryInvalid(hi, lo, cs), e.toString(16)).toBe(want);
    }
  });
});
