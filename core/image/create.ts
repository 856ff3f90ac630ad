// Image creation like `qemu-img create -f qcow2` (QEMU's qcow2_co_create): the same option checks
// and messages, and the same layout, byte for byte: header in cluster 0, refcount table in
// cluster 1, one refcount block in cluster 2, then the active L1 table allocated first-fit (so at
// cluster 3 unless it needs more refcount blocks), written only as far as its entries go (QEMU
// writes l1_size·8 bytes, so the file ends there). preallocation=metadata then allocates, per L1
// entry, an L2 table followed by a contiguous run of data clusters (not written; the file is
// extended to the end of the last one), exactly in QEMU's order, with refcount blocks and grown
// refcount tables placed as QEMU places them (see allocator.ts). preallocation=falloc and full do
// what QEMU's preallocating truncate does: new refcount structures sized exactly for the data
// after the file's last used cluster, the data clusters right after them (written as zeros, so
// the space is allocated), then the L2 tables first-fit (the old refcount table's cluster first).
import { QcowError } from '../errors.ts';
import { alignUp, put64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { encodeL1Entry, encodeL2Entry, putEntry } from '../format/entries.ts';
import { encodeHeader, sizeToL1, type Qcow2Header } from '../format/header.ts';
import { setRefcount } from '../format/refcount.ts';
import type { ImageStore } from '../io/store.ts';
import { allocClusters, reserveRefcountArea, updateRefcount } from './allocator.ts';
import { getClusterRefcount } from './refcount.ts';
import { Qcow2Image } from './qcow2-image.ts';

export interface CreateOptions {
  /** Virtual size in bytes (rounded up to 512, as QEMU does). */
  size: number;
  /** Default 65536. */
  clusterSize?: number;
  /** Default 16. */
  refcountBits?: number;
  /** '1.1' (v3, default) or '0.10' (v2). */
  compat?: '0.10' | '1.1';
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  /** Backing file name as stored in the header (the engine never opens it). */
  backingFile?: string;
  backingFormat?: string;
}

function bad(message: string, details: Record<string, unknown> = {}): QcowError {
  return new QcowError('INVALID_ARGUMENT', message, details);
}

/** QEMU's option checks (qcow2_co_create), with its messages. Returns the normalised options. */
function validateCreateOptions(o: CreateOptions): Required<Omit<CreateOptions, 'backingFile' | 'backingFormat'>> & Pick<CreateOptions, 'backingFile' | 'backingFormat'> {
  const clusterSize = o.clusterSize ?? 65536;
  const refcountBits = o.refcountBits ?? 16;
  const compat = o.compat ?? '1.1';
  const v3 = compat === '1.1';
  if (compat !== '0.10' && compat !== '1.1') throw bad(`Parameter 'version' does not accept value '${String(compat)}'`);
  if (!Number.isInteger(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    throw bad('Cluster size must be a power of two between 512 and 2048k', { clusterSize });
  }
  if (!Number.isInteger(refcountBits) || refcountBits < 1 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw bad('Refcount width must be a power of two and may not exceed 64 bits', { refcountBits });
  }
  if (!v3 && refcountBits !== 16) {
    throw bad('Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  }
  if (!v3 && o.lazyRefcounts) throw bad('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  if (o.extendedL2) {
    if (!v3) throw bad('Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
    if (clusterSize < 16384) throw bad('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  const compressionType = o.compressionType ?? 'zlib';
  if (compressionType !== 'zlib' && compressionType !== 'zstd') throw bad(`Invalid compression type '${String(compressionType)}'`);
  if (!v3 && compressionType !== 'zlib') {
    throw bad('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const preallocation = o.preallocation ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(preallocation)) throw bad(`Unsupported preallocation mode '${String(preallocation)}' (off, metadata, falloc or full)`);
  if (o.backingFormat !== undefined && o.backingFile === undefined) throw bad('Backing format cannot be used without backing file');
  if (o.backingFile !== undefined && preallocation !== 'off' && !o.extendedL2) {
    throw bad('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (o.backingFile !== undefined && new TextEncoder().encode(o.backingFile).length > C.MAX_BACKING_FILE_NAME) throw bad('Backing file name too long');
  if (o.backingFormat !== undefined && new TextEncoder().encode(o.backingFormat).length > C.MAX_BACKING_FORMAT_NAME) throw bad('Backing format name too long');
  if (!Number.isInteger(o.size) || o.size < 0) throw bad(`Invalid image size ${o.size}`, { size: o.size });
  const size = alignUp(o.size, 512);
  const clusterBits = Math.log2(clusterSize);
  const l1Size = sizeToL1({ clusterBits, incompatibleFeatures: o.extendedL2 ? C.INCOMPAT_EXTL2 : 0n }, size);
  if (l1Size * 8 > C.MAX_L1_SIZE_BYTES) throw bad("The image size is too large for file format 'qcow2' (try using a larger cluster size)", { size, clusterSize });
  // QEMU takes up to 2^63 - 1 bytes with 2 MiB clusters; offsets here are exact only below 2^53
  if (!Number.isSafeInteger(size)) throw bad('Virtual sizes above 8 PiB (2^53 bytes) are not supported by qcowscope', { size });
  return {
    size, clusterSize, refcountBits, compat, lazyRefcounts: !!o.lazyRefcounts, extendedL2: !!o.extendedL2,
    compressionType, preallocation, backingFile: o.backingFile, backingFormat: o.backingFormat,
  };
}

function headerFor(o: ReturnType<typeof validateCreateOptions>, l1Size: number, l1TableOffset: number, reftableOffset: number, reftableClusters: number, size: number): Qcow2Header {
  const v3 = o.compat === '1.1';
  let incompat = 0n;
  if (o.compressionType === 'zstd') incompat |= C.INCOMPAT_COMPRESSION;
  if (o.extendedL2) incompat |= C.INCOMPAT_EXTL2;
  return {
    magic: C.QCOW_MAGIC,
    version: v3 ? 3 : 2,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: Math.log2(o.clusterSize),
    size,
    cryptMethod: 0,
    l1Size,
    l1TableOffset,
    refcountTableOffset: reftableOffset,
    refcountTableClusters: reftableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: incompat,
    compatibleFeatures: o.lazyRefcounts ? C.COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: 0n,
    refcountOrder: Math.log2(o.refcountBits),
    headerLength: v3 ? C.QEMU_HEADER_LENGTH : C.V2_HEADER_LENGTH,
    compressionType: o.compressionType === 'zstd' ? C.COMPRESSION_ZSTD : C.COMPRESSION_ZLIB,
    unknownHeaderFields: new Uint8Array(0),
    extensions: [],
    featureNames: [],
    extensionsEnd: 0,
    ...(o.backingFile !== undefined ? { backingFile: o.backingFile } : {}),
    ...(o.backingFormat !== undefined ? { backingFormat: o.backingFormat } : {}),
  };
}

/**
 * Write a new qcow2 image into an empty writable store. The store is left open; the caller
 * closes it (or opens the image on it).
 */
export async function createImage(store: ImageStore, options: CreateOptions): Promise<void> {
  const o = validateCreateOptions(options);
  const cs = o.clusterSize;
  if (store.size() !== 0) await store.truncate(0);
  // Clusters 0..2: a header without L1 yet, the refcount table, one refcount block counting them.
  const refcountOrder = Math.log2(o.refcountBits);
  const first = new Uint8Array(3 * cs);
  first.set(encodeHeader(headerFor(o, 0, 0, cs, 1, 0)), 0);
  put64(first, cs, 2 * cs);
  for (let c = 0; c < 3; c++) setRefcount(first.subarray(2 * cs), c, refcountOrder, 1);
  await store.write(0, first);

  // A half-created file is no image at all, so the barriers the allocator uses for crash safety
  // buy nothing here; they cost an fdatasync each (hundreds for a big preallocated image).
  // One flush at the end instead.
  const img = await Qcow2Image.open(withoutBarriers(store), { writable: true });
  const l1Size = sizeToL1(img.header, o.size);
  let l1Offset = 0;
  if (l1Size > 0) {
    l1Offset = await allocClusters(img, Math.ceil((l1Size * 8) / cs), 'L1 table');
    await img.pwrite(l1Offset, new Uint8Array(l1Size * 8), 'active L1 table');
  }
  await img.flush('L1 table before the header');
  const h = headerFor(o, l1Size, l1Offset, img.header.refcountTableOffset, img.header.refcountTableClusters, o.size);
  await img.pwrite(0, encodeHeader(h), 'header', true);
  img.setTables({ header: { size: o.size, l1Size, l1TableOffset: l1Offset }, l1Table: new Uint8Array(l1Size * 8) });

  if (o.preallocation === 'metadata') await preallocateMetadata(img, o.size);
  else if (o.preallocation === 'falloc' || o.preallocation === 'full') await preallocateData(img, o.size);
  await store.flush();
}

/** The store with flush() as a no-op (creation only: see above). */
function withoutBarriers(store: ImageStore): ImageStore {
  return {
    get name() { return store.name; },
    get writable() { return store.writable; },
    size: () => store.size(),
    read: (offset, length) => store.read(offset, length),
    write: (offset, data) => store.write(offset, data),
    flush: async () => {},
    truncate: (size) => store.truncate(size),
    close: () => store.close(),
  };
}

/**
 * QEMU's preallocate_co for preallocation=metadata: per L1 entry, the L2 table then a contiguous
 * run of data clusters, every entry pointing at its cluster (COPIED; extended L2 entries keep an
 * empty bitmap, as QEMU's do); the file is extended to the end of the last data cluster.
 */
async function preallocateMetadata(img: Qcow2Image, size: number): Promise<void> {
  const cs = img.clusterSize;
  const es = img.l2EntrySize;
  const totalClusters = Math.ceil(size / cs);
  let end = 0;
  for (let l1Index = 0; l1Index * img.l2Entries < totalClusters; l1Index++) {
    const n = Math.min(img.l2Entries, totalClusters - l1Index * img.l2Entries);
    const l2Offset = await allocClusters(img, 1, 'L2 table');
    const data = await allocClusters(img, n, 'data cluster');
    const table = new Uint8Array(cs);
    for (let i = 0; i < n; i++) putEntry(table, i * es, ...encodeL2Entry(data + i * cs, { copied: true }));
    await img.pwrite(l2Offset, table, `L2 table for L1 index ${l1Index}`);
    const entry = new Uint8Array(8);
    putEntry(entry, 0, ...encodeL1Entry(l2Offset, true));
    await img.pwrite(img.header.l1TableOffset + l1Index * 8, entry, `active L1 table entry ${l1Index}`);
    img.l1Table.set(entry, l1Index * 8);
    end = Math.max(end, data + n * cs);
  }
  if (end > img.store.size()) await img.truncate(end, 'extend the file over the preallocated clusters');
}

/** Zeros written per call while preallocating data (bounded memory for any image size). */
const ZERO_CHUNK = 8 * 1024 * 1024;

/**
 * QEMU's qcow2_co_truncate for preallocation=falloc/full from an empty disk: refcount structures
 * for everything to come placed after the file's last used cluster (qcow2_refcount_area, exact
 * size), the data clusters right after them, counted and then written as zeros (QEMU allocates
 * them in the file: fallocate or zeros), then per L1 entry an L2 table allocated first-fit whose
 * entries point at consecutive data clusters (COPIED; extended L2 bitmaps left empty, as QEMU's).
 */
async function preallocateData(img: Qcow2Image, size: number): Promise<void> {
  const cs = img.clusterSize;
  const es = img.l2EntrySize;
  const dataClusters = Math.ceil(size / cs);
  // qcow2_get_last_cluster: the last cluster of the file with a refcount
  let last = Math.ceil(img.store.size() / cs) - 1;
  while (last >= 0 && (await getClusterRefcount(img, last)) === 0) last--;
  const l2Tables = Math.ceil(dataClusters / img.l2Entries) + 1;
  const start = await reserveRefcountArea(img, last + 1, dataClusters + l2Tables);
  if (dataClusters > 0) await updateRefcount(img, start * cs, dataClusters * cs, 1);
  const zeros = new Uint8Array(Math.min(ZERO_CHUNK, dataClusters * cs));
  for (let at = start * cs, end = (start + dataClusters) * cs; at < end; at += zeros.length) {
    await img.store.write(at, at + zeros.length <= end ? zeros : zeros.subarray(0, end - at));
  }
  for (let l1Index = 0; l1Index * img.l2Entries < dataClusters; l1Index++) {
    const first = l1Index * img.l2Entries;
    const n = Math.min(img.l2Entries, dataClusters - first);
    const l2Offset = await allocClusters(img, 1, 'L2 table');
    const table = new Uint8Array(cs);
    for (let i = 0; i < n; i++) putEntry(table, i * es, ...encodeL2Entry((start + first + i) * cs, { copied: true }));
    await img.pwrite(l2Offset, table, `L2 table for L1 index ${l1Index}`);
    const entry = new Uint8Array(8);
    putEntry(entry, 0, ...encodeL1Entry(l2Offset, true));
    await img.pwrite(img.header.l1TableOffset + l1Index * 8, entry, `active L1 table entry ${l1Index}`);
    img.l1Table.set(entry, l1Index * 8);
  }
}
