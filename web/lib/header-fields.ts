// The header view's rows: every field of the qcow2 header in on-disk order (docs/qcow2-format.md
// §1.2), with the spec's name, where it sits, and what it means in plain words.
import type { HeaderDTO } from '../../worker/api.ts';
import { bytes, grouped, hex } from './format.ts';

export interface HeaderRow {
  /** The spec's field name (docs/interop/qcow2.txt). */
  spec: string;
  offset: number;
  size: number;
  value: string;
  /** A short decoded form ("64 MiB", "v3 (compat 1.1)"). */
  decoded?: string;
  explain: string;
  /** The field is absent from this header (v2 headers end at byte 72). */
  absent?: boolean;
}

export interface FeatureBit {
  group: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
  set: boolean;
  explain: string;
}

export function headerRows(h: HeaderDTO): HeaderRow[] {
  const v3 = h.version >= 3;
  const rows: HeaderRow[] = [
    { spec: 'magic', offset: 0, size: 4, value: hex(h.magic), decoded: "QFI\\xfb", explain: 'Identifies the file as qcow2.' },
    { spec: 'version', offset: 4, size: 4, value: String(h.version), decoded: v3 ? 'compat 1.1' : 'compat 0.10', explain: 'Format version: 2 is the original layout, 3 adds feature bits, zero clusters and more.' },
    { spec: 'backing_file_offset', offset: 8, size: 8, value: hex(h.backingFileOffset), decoded: h.backingFileOffset ? undefined : 'no backing file', explain: 'Where the backing file name is stored in cluster 0; clusters this image does not hold are read from the backing file.' },
    { spec: 'backing_file_size', offset: 16, size: 4, value: String(h.backingFileSize), explain: 'Length of the backing file name in bytes.' },
    { spec: 'cluster_bits', offset: 20, size: 4, value: String(h.clusterBits), decoded: `clusters of ${bytes(h.clusterSize)}`, explain: 'Cluster size as a power of two. Everything in the file is allocated in whole clusters.' },
    { spec: 'size', offset: 24, size: 8, value: grouped(h.size), decoded: bytes(h.size), explain: 'Virtual disk size: what the guest sees, not the file size.' },
    { spec: 'crypt_method', offset: 32, size: 4, value: String(h.cryptMethod), decoded: ['none', 'AES (legacy)', 'LUKS'][h.cryptMethod] ?? 'unknown', explain: 'Encryption of guest data.' },
    { spec: 'l1_size', offset: 36, size: 4, value: grouped(h.l1Size), explain: 'Entries in the active L1 table; each points to one L2 table.' },
    { spec: 'l1_table_offset', offset: 40, size: 8, value: hex(h.l1TableOffset), explain: 'Host offset of the active L1 table, the first level of guest → host translation.' },
    { spec: 'refcount_table_offset', offset: 48, size: 8, value: hex(h.refcountTableOffset), explain: 'Host offset of the refcount table, which points to refcount blocks.' },
    { spec: 'refcount_table_clusters', offset: 56, size: 4, value: grouped(h.refcountTableClusters), explain: 'Clusters occupied by the refcount table.' },
    { spec: 'nb_snapshots', offset: 60, size: 4, value: grouped(h.nbSnapshots), explain: 'Number of internal snapshots.' },
    { spec: 'snapshots_offset', offset: 64, size: 8, value: hex(h.snapshotsOffset), explain: 'Host offset of the snapshot table.' },
    { spec: 'incompatible_features', offset: 72, size: 8, value: hex(h.incompatibleFeatures), explain: 'A reader that does not know a bit set here must refuse the image.', absent: !v3 },
    { spec: 'compatible_features', offset: 80, size: 8, value: hex(h.compatibleFeatures), explain: 'Bits a reader may ignore.', absent: !v3 },
    { spec: 'autoclear_features', offset: 88, size: 8, value: hex(h.autoclearFeatures), explain: 'Bits a writer that does not know them must clear before writing.', absent: !v3 },
    { spec: 'refcount_order', offset: 96, size: 4, value: String(h.refcountOrder), decoded: `${h.refcountBits}-bit refcounts`, explain: 'Width of each reference count as a power of two.', absent: !v3 },
    { spec: 'header_length', offset: 100, size: 4, value: String(h.headerLength), explain: 'Length of this header; header extensions follow it.', absent: !v3 },
    { spec: 'compression_type', offset: 104, size: 1, value: String(h.compressionType), decoded: h.compressionType === 1 ? 'zstd' : h.compressionType === 0 ? 'zlib (deflate)' : 'unknown', explain: 'Algorithm of compressed clusters.', absent: !v3 || h.headerLength <= 104 },
  ];
  return rows;
}

const BITS: Omit<FeatureBit, 'set'>[] = [
  { group: 'incompatible', bit: 0, name: 'dirty bit', explain: 'Refcounts may be stale (lazy refcounts were not written back). The image is read-only here until a repair (Check, Repair all) rebuilds them; QEMU and the qcowscope CLI repair it on their own before they write.' },
  { group: 'incompatible', bit: 1, name: 'corrupt bit', explain: 'Metadata was found inconsistent; the image may only be opened to repair it.' },
  { group: 'incompatible', bit: 2, name: 'external data file', explain: 'Guest data lives in a separate file.' },
  { group: 'incompatible', bit: 3, name: 'compression type', explain: 'A compression type other than zlib is in use.' },
  { group: 'incompatible', bit: 4, name: 'extended L2 entries', explain: 'L2 entries are 128 bits with 32 subclusters each.' },
  { group: 'compatible', bit: 0, name: 'lazy refcounts', explain: 'Refcounts may be updated lazily; the dirty bit guards them.' },
  { group: 'autoclear', bit: 0, name: 'bitmaps', explain: 'The bitmaps extension is consistent.' },
  { group: 'autoclear', bit: 1, name: 'raw external data', explain: 'The external data file is a valid raw image on its own.' },
];

export function featureBits(h: HeaderDTO): FeatureBit[] {
  const mask = { incompatible: h.incompatibleFeatures, compatible: h.compatibleFeatures, autoclear: h.autoclearFeatures };
  return BITS.map((b) => ({ ...b, set: (mask[b.group] & (1 << b.bit)) !== 0 }));
}
