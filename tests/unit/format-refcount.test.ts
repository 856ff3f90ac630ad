// Refcount blocks of every width (1..64 bits) and reftable entries on bytes (docs/qcow2-format.md
// §1.5): get/set against a BigInt reference of the layout (sub-byte widths LSB-first inside each
// byte, 8..64 bits big-endian), neighbours untouched, whole-block decoding, maxima.
import { describe, expect, it } from 'vitest';
import {
  decodeRefblock, getRefcount, refblockEntries, refcountBits, refcountMax, reftableEntry, reftableRaw, reftableReservedBits,
  setRefcount, usedReftableIndices,
} from '../../core/format/refcount.ts';
import { seededRandom } from '../helpers/random.ts';

/** The refcount at `index` read bit by bit as QEMU lays it out. */
function referenceGet(block: Uint8Array, index: number, order: number): bigint {
  const bits = 2 ** order;
  if (bits < 8) {
    const perByte = 8 / bits;
    return BigInt((block[Math.floor(index / perByte)]! >> (bits * (index % perByte))) & ((1 << bits) - 1));
  }
  const bytes = bits / 8;
  let v = 0n;
  for (let i = 0; i < bytes; i++) v = (v << 8n) | BigInt(block[index * bytes + i]!);
  return v;
}

describe('refcount entries, widths 1 to 64 bits', () => {
  for (let order = 0; order <= 6; order++) {
    const bits = refcountBits(order);
    it(`${bits}-bit refcounts`, () => {
      const clusterBits = 9;
      const entries = refblockEntries(clusterBits, order);
      expect(entries).toBe((512 * 8) / bits);
      const max = refcountMax(order);
      expect(max).toBe(order === 6 ? 2 ** 64 - 1 : 2 ** bits - 1);
      const exactMax = Math.min(max, Number.MAX_SAFE_INTEGER);
      const block = new Uint8Array(512);
      const expected = new Array<number>(entries).fill(0);
      const r = seededRandom(order + 1);
      for (let round = 0; round < Math.min(entries, 1024); round++) {
        const i = Math.floor(r() * entries);
        const v = Math.min(exactMax, [0, 1, 2, exactMax, Math.floor(r() * (exactMax + 1))][round % 5]!);
        setRefcount(block, i, order, v);
        expected[i] = v;
        // the entry just written and both neighbours read back exactly
        for (const j of [i - 1, i, i + 1]) {
          if (j < 0 || j >= entries) continue;
          expect(getRefcount(block, j, order), `entry ${j}`).toBe(expected[j]);
          expect(referenceGet(block, j, order), `layout of entry ${j}`).toBe(BigInt(expected[j]!));
        }
      }
      expect(Array.from(decodeRefblock(block, order))).toEqual(expected);
    });
  }

  it('sub-byte layout: entry 0 in the least significant bits', () => {
    const b = new Uint8Array(1);
    setRefcount(b, 0, 0, 1);
    expect(b[0]).toBe(0x01);
    setRefcount(b, 7, 0, 1);
    expect(b[0]).toBe(0x81);
    b[0] = 0;
    setRefcount(b, 1, 1, 3);
    expect(b[0]).toBe(0x0c);
    b[0] = 0;
    setRefcount(b, 1, 2, 0xa);
    expect(b[0]).toBe(0xa0);
    expect(getRefcount(Uint8Array.of(0xa5), 0, 2)).toBe(5);
  });

  it('64-bit refcounts above 2^32', () => {
    const b = new Uint8Array(16);
    setRefcount(b, 1, 6, 2 ** 40 + 7);
    expect(Array.from(b.subarray(8))).toEqual([0, 0, 1, 0, 0, 0, 0, 7]);
    expect(getRefcount(b, 1, 6)).toBe(2 ** 40 + 7);
    expect(getRefcount(new Uint8Array(8).fill(0xff), 0, 6)).toBe(2 ** 64); // 2^64−1, as near as a number gets
  });

  it('entries per refcount block for every cluster size and width', () => {
    for (let clusterBits = 9; clusterBits <= 21; clusterBits++) {
      for (let order = 0; order <= 6; order++) {
        expect(refblockEntries(clusterBits, order)).toBe((2 ** clusterBits * 8) / 2 ** order);
      }
    }
  });
});

describe('reftable entries', () => {
  it('refblock offsets above 2^32 and 2^48, reserved bits 0..8', () => {
    const t = new Uint8Array(32);
    const dv = new DataView(t.buffer);
    dv.setBigUint64(0, 0x20000n);
    dv.setBigUint64(8, (1n << 32n) + 0x10000n);
    dv.setBigUint64(16, (1n << 48n) + 0x30000n + 0x100n);
    expect(reftableEntry(t, 0)).toBe(0x20000);
    expect(reftableEntry(t, 1)).toBe(2 ** 32 + 0x10000);
    expect(reftableEntry(t, 2)).toBe(2 ** 48 + 0x30000);
    expect([0, 1, 2, 3].map((i) => reftableReservedBits(t, i))).toEqual([false, false, true, false]);
    expect(reftableRaw(t, 2)).toBe(2 ** 48 + 0x30100);
    expect(reftableEntry(t, 3)).toBe(0);
  });

  it('used entries: every entry with any bit set (reserved bits alone too), aligned or not, up to a bound', () => {
    const rand = seededRandom(15);
    for (const shift of [0, 3]) {
      const buf = new Uint8Array(8 * 4096 + shift);
      const t = buf.subarray(shift);
      const want: number[] = [];
      for (let i = 0; i < 4096; i++) {
        const r = rand();
        if (r < 0.9) continue;
        // one random byte of the entry set: offsets, high bits, or only reserved bit 0
        t[i * 8 + Math.floor(rand() * 8)] = 1 + Math.floor(rand() * 255);
        want.push(i);
      }
      expect(usedReftableIndices(t)).toEqual(want);
      expect(usedReftableIndices(t, 1000)).toEqual(want.filter((i) => i < 1000));
    }
  });
});
