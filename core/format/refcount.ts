// Refcount table and refcount block entries (docs/qcow2-format.md §1.5): every width from 1 to 64
// bits. Sub-byte widths pack LSB-first inside each byte; 8..64 are big-endian integers. 64-bit
// refcounts above 2^53 are read approximately (no image can have that many references).
import { be16, be32, put16, put32 } from './bytes.ts';
import { nextUsedEntry, offsetOf, refcountTableReservedBits } from './entries.ts';

export function refcountBits(order: number): number {
  return 2 ** order;
}

export function refcountMax(order: number): number {
  return order >= 6 ? 2 ** 64 - 1 : 2 ** (2 ** order) - 1;
}

/** Refcount entries in one refcount block. */
export function refblockEntries(clusterBits: number, order: number): number {
  return 2 ** (clusterBits + 3 - order);
}

/** Reftable entry: refblock host offset (0 ⇒ absent). */
export function reftableEntry(table: Uint8Array, index: number): number {
  return offsetOf(be32(table, index * 8), be32(table, index * 8 + 4));
}

/**
 * Indices of the refcount table entries that are not all zero, in order: a table of one 2 MiB
 * cluster has 256 Ki entries, mostly empty, and decoding each one (reftableEntry) cost the
 * snapshot operations on 2 MiB clusters more than their writes. Tested a word pair at a time.
 */
export function usedReftableIndices(table: Uint8Array, end = Math.floor(table.length / 8)): number[] {
  const out: number[] = [];
  const n = Math.min(end, Math.floor(table.length / 8));
  if (table.byteOffset % 4 === 0) {
    // zero whatever the byte order; nextUsedEntry's loop is the one the L2 walks keep hot
    const w = new Uint32Array(table.buffer, table.byteOffset, n * 2);
    for (let i = nextUsedEntry(w, 0, n, 2); i < n; i = nextUsedEntry(w, i + 1, n, 2)) out.push(i);
  } else {
    for (let i = 0; i < n; i++) if ((be32(table, i * 8) | be32(table, i * 8 + 4)) !== 0) out.push(i);
  }
  return out;
}

export function reftableReservedBits(table: Uint8Array, index: number): boolean {
  return refcountTableReservedBits(be32(table, index * 8 + 4));
}

/** The raw value of a reftable entry (offset bits and reserved bits). */
export function reftableRaw(table: Uint8Array, index: number): number {
  return be32(table, index * 8) * 4294967296 + be32(table, index * 8 + 4);
}

export function getRefcount(block: Uint8Array, index: number, order: number): number {
  switch (order) {
    case 0: return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1: return (block[index >>> 2]! >>> ((index & 3) * 2)) & 3;
    case 2: return (block[index >>> 1]! >>> ((index & 1) * 4)) & 15;
    case 3: return block[index]!;
    case 4: return be16(block, index * 2);
    case 5: return be32(block, index * 4);
    default: return be32(block, index * 8) * 4294967296 + be32(block, index * 8 + 4);
  }
}

export function setRefcount(block: Uint8Array, index: number, order: number, value: number): void {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 2 ** order;
      const perByte = 8 / bits;
      const byte = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block[byte] = (block[byte]! & ~mask) | ((value << shift) & mask);
      return;
    }
    case 3: block[index] = value; return;
    case 4: put16(block, index * 2, value); return;
    case 5: put32(block, index * 4, value); return;
    default:
      put32(block, index * 8, Math.floor(value / 4294967296));
      put32(block, index * 8 + 4, value % 4294967296);
  }
}

/** Decode a whole refcount block into numbers (for walks over many clusters). */
export function decodeRefblock(block: Uint8Array, order: number, out?: Float64Array): Float64Array {
  const n = (block.length * 8) / 2 ** order;
  const res = out ?? new Float64Array(n);
  if (order === 4) {
    for (let i = 0; i < n; i++) res[i] = (block[2 * i]! << 8) | block[2 * i + 1]!;
  } else {
    for (let i = 0; i < n; i++) res[i] = getRefcount(block, i, order);
  }
  return res;
}
