// Where every metadata field of a (valid, qemu-made) seed image lives, found by a small parser of
// its own: the fuzzer must not learn the layout from the engine it is attacking. Produces a flat
// list of typed fields (header fields, header extensions, L1/L2 entries, reftable and refblock
// entries, snapshot table entries, bitmap directory entries, compressed data) that the mutator
// picks targets from, plus the offsets of every structure (for "point at other metadata" values).
// Layouts: docs/qcow2-format.md §1.

export type FieldKind =
  | 'header' // a header field (`name` says which)
  | 'ext-type' | 'ext-len' | 'ext-data'
  | 'backing-name'
  | 'l1' // active L1 entry
  | 'snap-l1' // snapshot L1 entry
  | 'l2' // L2 entry (first u64)
  | 'l2-bitmap' // extended L2 subcluster bitmap (second u64)
  | 'reftable'
  | 'refblock'
  | 'snap' // snapshot table entry field (`name` says which)
  | 'snap-str' // snapshot id/name bytes
  | 'bitmap-dir' // bitmap directory entry field
  | 'compressed-data';

export interface Field {
  kind: FieldKind;
  /** Byte offset in the image. */
  at: number;
  /** Bytes: 1, 2, 4 or 8 (strings and data use 1 and `len`). */
  size: 1 | 2 | 4 | 8;
  /** Length of the byte run for string/data fields (otherwise = size). */
  len: number;
  name: string;
}

export interface SeedLayout {
  clusterSize: number;
  clusterBits: number;
  version: number;
  refcountOrder: number;
  extendedL2: boolean;
  fileSize: number;
  fields: Field[];
  /** Cluster-aligned offsets of metadata structures (header, L1s, L2s, reftable, refblocks, snapshot table, bitmap directory). */
  structures: Array<{ name: string; offset: number; length: number }>;
  /** Clusters holding metadata (for random byte flips aimed at metadata). */
  metadataClusters: number[];
}

const be16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;
const be32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
const be64 = (b: Uint8Array, o: number): bigint => (BigInt(be32(b, o)) << 32n) | BigInt(be32(b, o + 4));
const OFFSET_MASK = 0x00fffffffffffe00n;
const COMPRESSED = 1n << 62n;

const HEADER_FIELDS: Array<[string, number, 1 | 2 | 4 | 8, number]> = [
  // name, offset, size, minimum version
  ['magic', 0, 4, 2], ['version', 4, 4, 2], ['backing_file_offset', 8, 8, 2], ['backing_file_size', 16, 4, 2],
  ['cluster_bits', 20, 4, 2], ['size', 24, 8, 2], ['crypt_method', 32, 4, 2], ['l1_size', 36, 4, 2],
  ['l1_table_offset', 40, 8, 2], ['refcount_table_offset', 48, 8, 2], ['refcount_table_clusters', 56, 4, 2],
  ['nb_snapshots', 60, 4, 2], ['snapshots_offset', 64, 8, 2],
  ['incompatible_features', 72, 8, 3], ['compatible_features', 80, 8, 3], ['autoclear_features', 88, 8, 3],
  ['refcount_order', 96, 4, 3], ['header_length', 100, 4, 3], ['compression_type', 104, 1, 3],
];

const SNAP_FIELDS: Array<[string, number, 1 | 2 | 4 | 8]> = [
  ['l1_table_offset', 0, 8], ['l1_size', 8, 4], ['id_str_size', 12, 2], ['name_size', 14, 2],
  ['date_sec', 16, 4], ['date_nsec', 20, 4], ['vm_clock_nsec', 24, 8], ['vm_state_size', 32, 4],
  ['extra_data_size', 36, 4],
];

/** Parse a valid seed image. Throws on anything a qemu-made image would not contain. */
export function seedLayout(img: Uint8Array): SeedLayout {
  const version = be32(img, 4);
  const clusterBits = be32(img, 20);
  const cs = 2 ** clusterBits;
  const v3 = version >= 3;
  const incompat = v3 ? be64(img, 72) : 0n;
  const extendedL2 = (incompat & 16n) !== 0n;
  const refcountOrder = v3 ? be32(img, 96) : 4;
  const headerLength = v3 ? be32(img, 100) : 72;
  const fields: Field[] = [];
  const structures: SeedLayout['structures'] = [{ name: 'header', offset: 0, length: cs }];
  const add = (kind: FieldKind, at: number, size: 1 | 2 | 4 | 8, name: string, len: number = size): void => {
    if (at + len <= img.length) fields.push({ kind, at, size, len, name });
  };
  const num = (v: bigint): number => Number(v);

  for (const [name, at, size, minV] of HEADER_FIELDS) if (version >= minV && at < Math.max(72, headerLength)) add('header', at, size, name);

  // header extensions
  const backingOffset = num(be64(img, 8));
  const extEnd = backingOffset !== 0 ? backingOffset : cs;
  let bitmapDir: { offset: number; size: number } | undefined;
  if (v3) {
    let pos = headerLength;
    while (pos + 8 <= extEnd) {
      const type = be32(img, pos);
      const len = be32(img, pos + 4);
      add('ext-type', pos, 4, `ext@${pos}.type`);
      add('ext-len', pos + 4, 4, `ext@${pos}.len`);
      if (type === 0) break;
      if (len > 0) add('ext-data', pos + 8, 1, `ext 0x${type.toString(16)} data`, len);
      if (type === 0x23852875 && len === 24) {
        add('ext-data', pos + 8, 4, 'bitmaps.nb_bitmaps');
        add('ext-data', pos + 12, 4, 'bitmaps.reserved');
        add('ext-data', pos + 16, 8, 'bitmaps.dir_size');
        add('ext-data', pos + 24, 8, 'bitmaps.dir_offset');
        bitmapDir = { size: num(be64(img, pos + 16)), offset: num(be64(img, pos + 24)) };
      }
      if (type === 0x6803f857) {
        for (let i = 0; i + 48 <= len; i += 48) {
          add('ext-data', pos + 8 + i, 1, 'feature.type');
          add('ext-data', pos + 9 + i, 1, 'feature.bit');
        }
      }
      pos += 8 + Math.ceil(len / 8) * 8;
    }
  }
  if (backingOffset !== 0) add('backing-name', backingOffset, 1, 'backing file name', be32(img, 16));

  // reftable and refblocks
  const reftableOffset = num(be64(img, 48));
  const reftableClusters = be32(img, 56);
  structures.push({ name: 'refcount table', offset: reftableOffset, length: reftableClusters * cs });
  const refblocks: number[] = [];
  for (let i = 0; i < (reftableClusters * cs) / 8; i++) {
    const at = reftableOffset + i * 8;
    if (at + 8 > img.length) break;
    const e = num(be64(img, at) & OFFSET_MASK);
    if (e !== 0) {
      refblocks.push(e);
      add('reftable', at, 8, `reftable[${i}]`);
      structures.push({ name: `refcount block ${i}`, offset: e, length: cs });
    } else if (i < refblocks.length + 2) {
      add('reftable', at, 8, `reftable[${i}] (empty)`);
    }
  }
  const bits = 2 ** refcountOrder;
  const usedClusters = Math.ceil(img.length / cs);
  refblocks.forEach((rb, bi) => {
    const perBlock = (cs * 8) / bits;
    for (let j = 0; j < perBlock; j++) {
      const cluster = bi * perBlock + j;
      if (cluster > usedClusters + 2) break;
      const byteAt = rb + Math.floor((j * bits) / 8);
      const size = (bits >= 8 ? bits / 8 : 1) as 1 | 2 | 4 | 8;
      // one field per byte for sub-byte widths
      if (bits < 8 && (j * bits) % 8 !== 0) continue;
      add('refblock', byteAt, size, `refcount[${cluster}]`);
    }
  });

  // L1 tables: active and snapshots; L2 tables reachable from them
  const l2Tables = new Set<number>();
  const l2EntrySize = extendedL2 ? 16 : 8;
  const compressedRuns: Array<[number, number]> = [];
  const walkL1 = (kind: 'l1' | 'snap-l1', offset: number, size: number, label: string): void => {
    structures.push({ name: label, offset, length: size * 8 });
    for (let i = 0; i < size; i++) {
      const at = offset + i * 8;
      if (at + 8 > img.length) break;
      const e = num(be64(img, at) & OFFSET_MASK);
      if (e !== 0 || i < 2 || i === size - 1) add(kind, at, 8, `${label}[${i}]`);
      if (e !== 0) l2Tables.add(e);
    }
  };
  walkL1('l1', num(be64(img, 40)), be32(img, 36), 'active L1');

  const nbSnapshots = be32(img, 60);
  const snapshotsOffset = num(be64(img, 64));
  let pos = snapshotsOffset;
  for (let i = 0; i < nbSnapshots; i++) {
    pos = Math.ceil(pos / 8) * 8;
    for (const [name, off, size] of SNAP_FIELDS) add('snap', pos + off, size, `snapshot ${i}.${name}`);
    const eds = be32(img, pos + 36);
    for (let x = 0; x + 8 <= eds && x < 24; x += 8) add('snap', pos + 40 + x, 8, `snapshot ${i}.extra[${x}]`);
    const idLen = be16(img, pos + 12);
    const nameLen = be16(img, pos + 14);
    if (idLen > 0) add('snap-str', pos + 40 + eds, 1, `snapshot ${i}.id`, idLen);
    if (nameLen > 0) add('snap-str', pos + 40 + eds + idLen, 1, `snapshot ${i}.name`, nameLen);
    walkL1('snap-l1', num(be64(img, pos)), be32(img, pos + 8), `snapshot ${i} L1`);
    pos += 40 + eds + idLen + nameLen;
  }
  if (nbSnapshots > 0) structures.push({ name: 'snapshot table', offset: snapshotsOffset, length: pos - snapshotsOffset });

  for (const l2 of l2Tables) {
    structures.push({ name: `L2 table ${l2}`, offset: l2, length: cs });
    for (let j = 0; j < cs / l2EntrySize; j++) {
      const at = l2 + j * l2EntrySize;
      if (at + l2EntrySize > img.length) break;
      const e = be64(img, at);
      const bm = extendedL2 ? be64(img, at + 8) : 0n;
      if (e !== 0n || bm !== 0n || j < 1) {
        add('l2', at, 8, `L2@${l2}[${j}]`);
        if (extendedL2) add('l2-bitmap', at + 8, 8, `L2@${l2}[${j}].bitmap`);
      }
      if ((e & COMPRESSED) !== 0n) {
        const x = 62 - (clusterBits - 8);
        const coff = num(e & ((1n << BigInt(x)) - 1n));
        const nsec = num((e >> BigInt(x)) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
        compressedRuns.push([coff, nsec * 512 - (coff % 512)]);
      }
    }
  }
  for (const [off, len] of compressedRuns.slice(0, 64)) add('compressed-data', off, 1, `compressed@${off}`, Math.min(len, img.length - off));

  // bitmap directory (qemu-img bitmap --add): entry header fields of the first entries
  if (bitmapDir && bitmapDir.offset > 0) {
    structures.push({ name: 'bitmap directory', offset: bitmapDir.offset, length: bitmapDir.size });
    let p = bitmapDir.offset;
    const end = bitmapDir.offset + bitmapDir.size;
    for (let i = 0; p + 24 <= end && i < 8; i++) {
      add('bitmap-dir', p, 8, `bitmap ${i}.table_offset`);
      add('bitmap-dir', p + 8, 4, `bitmap ${i}.table_size`);
      add('bitmap-dir', p + 12, 4, `bitmap ${i}.flags`);
      add('bitmap-dir', p + 16, 1, `bitmap ${i}.type`);
      add('bitmap-dir', p + 17, 1, `bitmap ${i}.granularity_bits`);
      add('bitmap-dir', p + 18, 2, `bitmap ${i}.name_size`);
      add('bitmap-dir', p + 20, 4, `bitmap ${i}.extra_data_size`);
      const nameSize = be16(img, p + 18);
      const eds = be32(img, p + 20);
      p += Math.ceil((24 + eds + nameSize) / 8) * 8;
    }
  }

  const metadataClusters = [...new Set(structures.flatMap((s) => {
    const out: number[] = [];
    for (let o = Math.floor(s.offset / cs) * cs; o < s.offset + Math.max(1, s.length) && out.length < 16; o += cs) out.push(o / cs);
    return out;
  }))].filter((c) => c * cs < img.length);

  return { clusterSize: cs, clusterBits, version, refcountOrder, extendedL2, fileSize: img.length, fields, structures, metadataClusters };
}
