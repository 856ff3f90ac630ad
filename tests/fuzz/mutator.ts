// The structure-aware mutator. A case is a compact recipe — a seed image name and a short list of
// mutations (set a field, flip a bit, truncate, zero a range) — so failing inputs are saved as a
// few lines of JSON, not as binaries, and replay exactly on a seed rebuilt by qemu-img.
// Targets come from layout.ts (every metadata structure); values are the ones that break parsers:
// 0, 1, all-ones, 2^31, 2^32, 2^53, 2^63, limits ± 1, unaligned offsets, offsets past EOF and
// offsets of other metadata structures.
import type { Field, SeedLayout } from './layout.ts';

export type Mutation =
  /** Store `value` (hex, big-endian, `size` bytes) at `at`. `f` names the field (for humans). */
  | { set: number; size: 1 | 2 | 4 | 8; value: string; f?: string }
  /** Flip bit `bit` of the byte at `flip`. */
  | { flip: number; bit: number; f?: string }
  /** Cut (or grow with zeros) the file to `truncate` bytes. */
  | { truncate: number }
  /** Zero `len` bytes at `zero`. */
  | { zero: number; len: number; f?: string };

export interface FuzzCase {
  /** A name for reports: `case-<seed>-<index>` or the regression name. */
  name: string;
  seed: string;
  mutations: Mutation[];
}

/** Largest image a recipe may grow to (a truncate past this is clamped): keeps the harness itself bounded. */
export const MAX_MUTATED_SIZE = 64 * 1024 * 1024;

export function applyMutations(seed: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let img = seed.slice();
  for (const m of mutations) {
    if ('truncate' in m) {
      const size = Math.max(0, Math.min(MAX_MUTATED_SIZE, m.truncate));
      const next = new Uint8Array(size);
      next.set(img.subarray(0, Math.min(size, img.length)));
      img = next;
    } else if ('set' in m) {
      let v = BigInt('0x' + (m.value || '0'));
      for (let i = m.size - 1; i >= 0; i--) {
        if (m.set + i < img.length) img[m.set + i] = Number(v & 0xffn);
        v >>= 8n;
      }
    } else if ('flip' in m) {
      if (m.flip < img.length) img[m.flip] = img[m.flip]! ^ (1 << (m.bit & 7));
    } else if ('zero' in m) {
      img.fill(0, Math.min(m.zero, img.length), Math.min(m.zero + m.len, img.length));
    }
  }
  return img;
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

/** A per-case seed from the run seed and the case index (so case N replays alone). */
export function caseSeed(runSeed: number, index: number): number {
  let h = (runSeed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ index, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rand, n: number): number => Math.floor(r() * n);

// ---------------------------------------------------------------------------------------------
// Values

const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;

function mask(size: number): bigint {
  return (1n << BigInt(size * 8)) - 1n;
}

function read(img: Uint8Array, at: number, size: number): bigint {
  let v = 0n;
  for (let i = 0; i < size; i++) v = (v << 8n) | BigInt(img[at + i] ?? 0);
  return v;
}

/** Values that break integer handling, for a field of `size` bytes. */
function genericValues(size: number, orig: bigint): bigint[] {
  const m = mask(size);
  const vals = [0n, 1n, m, orig + 1n, orig - 1n, orig * 2n, orig ^ 1n, m >> 1n, (m >> 1n) + 1n];
  if (size >= 4) vals.push(1n << 31n, (1n << 31n) - 1n, (1n << 32n) - 1n, 0x7fffffffn, 0x80000000n);
  if (size >= 8) vals.push(1n << 32n, 1n << 53n, (1n << 53n) + 1n, (1n << 53n) - 1n, 1n << 63n, 1n << 56n, (1n << 56n) - 512n, 1n << 62n, 0x7fffffffffff0000n, 0xffffffffffff0000n, 0x1234567890abcdefn);
  if (size === 2) vals.push(0x7fffn, 0x8000n, 0xfffen);
  return vals.map((v) => ((v % (m + 1n)) + (m + 1n)) % (m + 1n));
}

/** Offsets a pointer field could be made to hold. */
function offsetValues(r: Rand, lay: SeedLayout, orig: bigint, dataClusters: number[]): bigint[] {
  const cs = BigInt(lay.clusterSize);
  const eof = BigInt(Math.ceil(lay.fileSize / lay.clusterSize)) * cs;
  const other = pick(r, lay.structures);
  const vals: bigint[] = [
    0n, cs, orig + 512n, orig + 1n, orig + cs / 2n, orig + cs, orig - cs,
    eof, eof + cs * 16n, eof + cs * BigInt(1 + int(r, 1 << 20)), (1n << 56n) - cs, (1n << 55n), (1n << 53n),
    BigInt(other.offset), BigInt(other.offset) + 512n,
  ];
  if (dataClusters.length) vals.push(BigInt(pick(r, dataClusters)));
  return vals.filter((v) => v >= 0n);
}

/** Field-specific candidates (limits ± 1, meaningful codes) by header / snapshot field name. */
function namedValues(name: string, lay: SeedLayout, orig: bigint): bigint[] {
  const cs = BigInt(lay.clusterSize);
  const n = name.replace(/^snapshot \d+\./, '');
  switch (n) {
    case 'magic': return [0n, 0x514649fan, 0x514649fcn];
    case 'version': return [0n, 1n, 2n, 3n, 4n, 0xffffffffn];
    case 'cluster_bits': return [0n, 8n, 9n, 12n, 13n, 14n, 16n, 20n, 21n, 22n, 31n, 32n, 63n, 64n, 0xffffffffn];
    case 'crypt_method': return [0n, 1n, 2n, 3n];
    case 'refcount_order': return [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 31n, 0xffffffffn];
    case 'header_length': return [0n, 71n, 72n, 103n, 104n, 105n, 112n, 113n, 120n, cs - 8n, cs, cs + 8n, 0x7fffffffn, 0xffffffffn];
    case 'compression_type': return [0n, 1n, 2n, 0xffn];
    case 'incompatible_features': return [orig | 1n, orig | 2n, orig | 4n, orig ^ 8n, orig ^ 16n, orig | 32n, orig | (1n << 63n), 0n, mask(8)];
    case 'compatible_features': return [orig | 1n, orig | 2n, mask(8)];
    case 'autoclear_features': return [orig | 1n, orig | 2n, orig ^ 1n, mask(8)];
    case 'l1_size': return [0n, 1n, orig - 1n, orig + 1n, 4194304n, 4194305n, 0x7fffffffn, 0xffffffffn, 0x10000000n];
    case 'refcount_table_clusters': return [0n, 1n, orig + 1n, 128n, 129n, 0x00020001n, 0xffffffffn];
    case 'nb_snapshots': return [0n, 1n, orig + 1n, orig - 1n, 65535n, 65536n, 65537n, 0x20000n, 0x7fffffffn, 0xffffffffn];
    case 'size': return [0n, 1n, 511n, 512n, orig * 2n, orig * 1024n, 1n << 40n, 1n << 50n, 1n << 53n, 1n << 62n, 1n << 63n, mask(8)];
    case 'backing_file_size': return [0n, 1n, 1023n, 1024n, cs, 0xffffffffn];
    case 'backing_file_offset': return [0n, 8n, 72n, 112n, cs - 1n, cs, cs + 1n, 0x1000n, mask(8)];
    case 'id_str_size': case 'name_size': return [0n, 1n, orig + 1n, orig + 8n, 255n, 256n, 1023n, 0x7fffn, 0xffffn];
    case 'extra_data_size': return [0n, 7n, 8n, 15n, 16n, 23n, 24n, 25n, 50n, 1024n, 1025n, 0x10000n, 0x7fffffffn, 0xffffffffn];
    case 'vm_state_size': return [0n, 1n, 0xffffffffn];
    case 'date_sec': case 'date_nsec': return [0n, 999999999n, 1000000000n, 0xffffffffn];
    case 'bitmaps.nb_bitmaps': return [0n, 1n, 65535n, 65536n, 0xffffffffn];
    case 'bitmaps.dir_size': return [0n, 8n, 23n, 24n, 67107840n, 67107841n, mask(8)];
    case 'bitmap 0.table_size': case 'bitmap 1.table_size': return [0n, 1n, 0x8000000n, 0x8000001n, 0xffffffffn];
    case 'bitmap 0.granularity_bits': case 'bitmap 1.granularity_bits': return [0n, 8n, 9n, 31n, 32n, 63n, 255n];
    case 'bitmap 0.name_size': case 'bitmap 1.name_size': return [0n, 1n, 1023n, 1024n, 0xffffn];
    case 'feature.type': return [0n, 1n, 2n, 3n, 255n];
    case 'feature.bit': return [0n, 5n, 63n, 64n, 255n];
    default: return [];
  }
}

function isOffsetField(f: Field): boolean {
  return f.kind === 'l1' || f.kind === 'snap-l1' || f.kind === 'reftable' || f.kind === 'l2' ||
    /offset|extra\[0\]/.test(f.name);
}

function fieldMutation(r: Rand, img: Uint8Array, lay: SeedLayout, f: Field, dataClusters: number[]): Mutation {
  if (f.len > f.size || f.kind === 'compressed-data' || f.kind === 'snap-str' || f.kind === 'backing-name' || (f.kind === 'ext-data' && f.size === 1)) {
    // byte runs: overwrite a few bytes with hostile bytes, or flip one bit
    const at = f.at + int(r, Math.max(1, f.len));
    if (r() < 0.5) return { flip: at, bit: int(r, 8), f: f.name };
    return { set: at, size: 1, value: pick(r, [0x00, 0xff, 0x80, 0xc3, 0x28, 0x2f, 0x0a, 0xed, 0xa0]).toString(16), f: f.name };
  }
  const orig = read(img, f.at, f.size);
  let vals: bigint[] = [...genericValues(f.size, orig)];
  const named = namedValues(f.name, lay, orig);
  if (named.length) vals = r() < 0.7 ? named : vals.concat(named);
  if (isOffsetField(f) && f.size === 8) {
    const offs = offsetValues(r, lay, orig & 0x00fffffffffffe00n, dataClusters);
    const keepFlags = orig & (COPIED | COMPRESSED);
    const o = pick(r, offs);
    if (f.kind === 'l2' && r() < 0.3) {
      // a compressed descriptor: offset field + additional-sector count (QEMU's layout)
      const x = BigInt(62 - (lay.clusterBits - 8));
      const nsec = pick(r, [0n, 1n, (1n << BigInt(lay.clusterBits - 8)) - 1n, BigInt(int(r, 1 << (lay.clusterBits - 8)))]);
      const coff = pick(r, [o, o + BigInt(int(r, lay.clusterSize)), (1n << x) - 1n, orig & ((1n << x) - 1n)]) & ((1n << x) - 1n);
      vals = [COMPRESSED | (nsec << x) | coff, COPIED | COMPRESSED | coff];
    } else if (f.kind === 'l2' && r() < 0.2) {
      vals = [o | 1n, COPIED | o | 1n, 1n, o | 0x3e00000000000000n | (keepFlags & COPIED), 0x3f000000000001fen | o];
    } else {
      vals = r() < 0.3 ? vals.concat(offs) : offs.map((v) => (r() < 0.7 ? keepFlags : 0n) | v);
    }
  }
  if (f.kind === 'l2-bitmap') {
    const a = BigInt(int(r, 2 ** 32) >>> 0);
    vals = [0n, a, a << 32n, (a << 32n) | a, mask(8), 0xffffffffn, 0xffffffff00000000n, 1n, 1n << 32n, orig ^ (1n << BigInt(int(r, 64)))];
  }
  if (f.kind === 'refblock') {
    const m = lay.refcountOrder >= 3 ? mask(f.size) : BigInt(0xff);
    vals = [0n, 1n, 2n, orig + 1n, orig - 1n, m, m - 1n, orig ^ 0xffn].map((v) => v & mask(f.size));
  }
  let v = pick(r, vals);
  v = ((v % (mask(f.size) + 1n)) + (mask(f.size) + 1n)) % (mask(f.size) + 1n);
  return { set: f.at, size: f.size, value: v.toString(16), f: f.name };
}

/** Kinds a case aims at, with weights: every metadata structure gets its share. */
const KIND_WEIGHTS: Array<[Field['kind'], number]> = [
  ['header', 14], ['ext-type', 2], ['ext-len', 3], ['ext-data', 3], ['backing-name', 1],
  ['l1', 10], ['snap-l1', 5], ['l2', 14], ['l2-bitmap', 4], ['reftable', 8], ['refblock', 8],
  ['snap', 14], ['snap-str', 2], ['bitmap-dir', 3], ['compressed-data', 4],
];

/** Generate the mutations of one case. */
export function generateMutations(r: Rand, img: Uint8Array, lay: SeedLayout): Mutation[] {
  const byKind = new Map<string, Field[]>();
  for (const f of lay.fields) {
    const list = byKind.get(f.kind) ?? [];
    list.push(f);
    byKind.set(f.kind, list);
  }
  const kinds = KIND_WEIGHTS.filter(([k]) => byKind.has(k));
  const total = kinds.reduce((s, [, w]) => s + w, 0);
  const dataClusters = lay.fields.filter((f) => f.kind === 'l2').map((f) => Number(read(img, f.at, 8) & 0x00fffffffffffe00n)).filter((o) => o > 0);
  const out: Mutation[] = [];
  const roll = r();
  const n = roll < 0.5 ? 1 : roll < 0.75 ? 2 : 3 + int(r, 4);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.8) {
      let w = r() * total;
      let kind = kinds[0]![0];
      for (const [kk, ww] of kinds) {
        if ((w -= ww) < 0) {
          kind = kk;
          break;
        }
      }
      out.push(fieldMutation(r, img, lay, pick(r, byKind.get(kind)!), dataClusters));
    } else if (k < 0.92) {
      // random bit flips inside metadata clusters, biased to the start of each cluster (tables fill from 0)
      const flips = 1 + int(r, 8);
      for (let j = 0; j < flips; j++) {
        const c = pick(r, lay.metadataClusters);
        const span = r() < 0.7 ? Math.min(lay.clusterSize, 1024) : lay.clusterSize;
        out.push({ flip: c * lay.clusterSize + int(r, span), bit: int(r, 8) });
      }
    } else if (k < 0.97) {
      const cs = lay.clusterSize;
      const clusters = Math.ceil(lay.fileSize / cs);
      out.push({ truncate: pick(r, [int(r, clusters) * cs, lay.fileSize - 1 - int(r, cs), 0, 100, lay.fileSize + cs * (1 + int(r, 4)), int(r, lay.fileSize)]) });
    } else {
      const s = pick(r, lay.structures);
      out.push({ zero: s.offset, len: Math.max(8, Math.min(s.length, lay.clusterSize)), f: s.name });
    }
  }
  return out;
}
