// Qcow2Image: opening and validating an image as QEMU's qcow2_do_open does (docs/qcow2-format.md
// §2.1), the table caches, guest→host mapping, guest reads (active layer, snapshots read-only,
// backing chains) and block status for `map`. Writes, allocation and snapshots live in their own
// modules and act on this object.
import { QcowError, hex } from '../errors.ts';
import { readInto, type ImageStore } from '../io/store.ts';
import { alignUp, qemuHex } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import {
  ClusterType, clusterType, compressedDescriptor, offsetOf, QCOW_OFLAG_COMPRESSED_HI, QCOW_OFLAG_COPIED_HI, type L2Geometry,
} from '../format/entries.ts';
import { be32 } from '../format/bytes.ts';
import { parseHeader, sizeToL1, validateTable, l2EntriesOf, type Qcow2Header } from '../format/header.ts';
import { parseSnapshotTable, type Snapshot } from '../format/snapshot-table.ts';
import { parseBitmapDirectory, type BitmapEntry } from '../format/bitmaps.ts';
import { TableCache } from './table-cache.ts';
import { decompressCluster } from './compression.ts';
import { canMergeExtents, type Extent, type Layer } from './layer.ts';
import type { Journal } from './journal.ts';

export interface OpenOptions {
  /** Open for writing (refused for corrupt images unless `checkMode`). */
  writable?: boolean;
  /** qemu-img check's BDRV_O_CHECK: tolerate what only a repair can fix. */
  checkMode?: boolean;
  /** Repair mode while reading the snapshot table (truncate extra data, drop overhanging entries). */
  repairSnapshotTable?: boolean;
  /** The backing layer, already opened by the caller (the engine never resolves file names). */
  backing?: Layer | null;
  /** The external data file store, for images with one. */
  dataFile?: ImageStore | null;
  /** L2 table cache size (QEMU's default is 32 MiB). */
  l2CacheBytes?: number;
  /** Refcount block cache size. */
  refblockCacheBytes?: number;
  /**
   * Refcount blocks a snapshot operation keeps in memory while it builds its shadow commit
   * (snapshot-commit.ts); the changed blocks beyond it are written early to their new places.
   */
  commitRefblockBytes?: number;
  /** Collects non-fatal notes (repair messages, warnings). */
  onMessage?: (message: string) => void;
}

export const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;
export const DEFAULT_REFBLOCK_CACHE_BYTES = 4 * 1024 * 1024;
export const DEFAULT_COMMIT_REFBLOCK_BYTES = 4 * 1024 * 1024;

/** Which L1 table a read goes through: the active one, or a snapshot's (read-only). */
export interface L1View {
  table: Uint8Array;
  size: number;
  /** Host offset of the table (for messages). */
  offset: number;
  /** Virtual size seen through this view. */
  virtualSize: number;
}

export class Qcow2Image implements Layer {
  readonly store: ImageStore;
  header: Qcow2Header;
  readonly clusterBits: number;
  readonly clusterSize: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  readonly l2EntrySize: number;
  readonly geometry: L2Geometry;
  /** Active L1 table bytes (l1Size · 8, exactly). */
  l1Table: Uint8Array;
  /** Refcount table bytes (refcount_table_clusters · CS). */
  reftable: Uint8Array;
  snapshots: Snapshot[] = [];
  /** Persistent bitmaps (directory entries), when the image has a consistent bitmaps extension. */
  bitmaps: BitmapEntry[] = [];
  /** Bytes of the snapshot table as stored (QEMU's snapshots_size). */
  snapshotsSize = 0;
  /** Error met while reading the snapshot table in check mode (open refuses it otherwise). */
  snapshotTableError?: QcowError;
  backing: Layer | null;
  dataFile: ImageStore | null;
  readonly l2Cache: TableCache;
  readonly refblockCache: TableCache;
  /** See OpenOptions.commitRefblockBytes. */
  readonly commitRefblockBytes: number;
  writable: boolean;
  readonly checkMode: boolean;
  readonly messages: string[] = [];
  private readonly onMessage?: (m: string) => void;

  private constructor(store: ImageStore, header: Qcow2Header, opts: OpenOptions) {
    this.store = store;
    this.header = header;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = l2EntriesOf(header);
    this.geometry = {
      clusterBits: header.clusterBits,
      extendedL2: (header.incompatibleFeatures & C.INCOMPAT_EXTL2) !== 0n,
      dataFile: (header.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n,
    };
    this.l2EntrySize = this.geometry.extendedL2 ? 16 : 8;
    this.l1Table = new Uint8Array(0);
    this.reftable = new Uint8Array(0);
    this.backing = opts.backing ?? null;
    this.dataFile = opts.dataFile ?? null;
    this.l2Cache = new TableCache(opts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES);
    this.refblockCache = new TableCache(opts.refblockCacheBytes ?? DEFAULT_REFBLOCK_CACHE_BYTES);
    this.commitRefblockBytes = opts.commitRefblockBytes ?? DEFAULT_COMMIT_REFBLOCK_BYTES;
    this.writable = !!opts.writable;
    this.checkMode = !!opts.checkMode;
    this.onMessage = opts.onMessage;
  }

  /** Read and validate the header only (for callers that must resolve a backing file first). */
  static async readHeader(store: ImageStore): Promise<Qcow2Header> {
    const first = await store.read(0, 4096);
    if (be32(first, 0) !== C.QCOW_MAGIC) {
      throw new QcowError('NOT_QCOW2', 'Image is not in qcow2 format', { structure: 'header', offset: 0 });
    }
    const bits = be32(first, 20);
    const cs = bits >= C.MIN_CLUSTER_BITS && bits <= C.MAX_CLUSTER_BITS ? 2 ** bits : 4096;
    const b = cs <= first.length ? first.subarray(0, cs) : await store.read(0, cs);
    return parseHeader(b, store.name);
  }

  static async open(store: ImageStore, opts: OpenOptions = {}): Promise<Qcow2Image> {
    const header = await Qcow2Image.readHeader(store);
    const img = new Qcow2Image(store, header, opts);
    await img.load(opts);
    return img;
  }

  private async load(opts: OpenOptions): Promise<void> {
    const h = this.header;
    const cs = this.clusterSize;
    if ((h.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n && this.writable && !this.checkMode) {
      throw new QcowError('IMAGE_CORRUPT', 'qcow2: Image is corrupt; cannot be opened read/write', { structure: 'header', offset: 72 });
    }
    if (this.writable && !this.store.writable) {
      throw new QcowError('READ_ONLY', `${this.store.name} cannot be written`, {});
    }
    if (h.refcountTableClusters === 0 && !this.checkMode) {
      throw new QcowError('NO_REFCOUNT_TABLE', 'Image does not contain a reference count table', { structure: 'header', offset: 56 });
    }
    validateTable(h.refcountTableOffset, h.refcountTableClusters, cs, C.MAX_REFTABLE_SIZE_BYTES, cs, 'Reference count table', 48);
    if (!this.checkMode) {
      validateTable(h.snapshotsOffset, h.nbSnapshots, C.SNAPSHOT_HEADER_SIZE, C.SNAPSHOT_HEADER_SIZE * C.MAX_SNAPSHOTS, cs, 'Snapshot table', 64);
    }
    validateTable(h.l1TableOffset, h.l1Size, 8, C.MAX_L1_SIZE_BYTES, cs, 'Active L1 table', 40);
    const l1VmStateIndex = sizeToL1(h, h.size);
    if (l1VmStateIndex > C.INT_MAX) {
      throw new QcowError('IMAGE_TOO_BIG', 'Image is too big', { structure: 'header', offset: 24, size: h.size });
    }
    if (h.l1Size < l1VmStateIndex) {
      throw new QcowError('L1_TABLE_TOO_SMALL', 'L1 table is too small', { structure: 'Active L1 table', offset: h.l1TableOffset, l1Size: h.l1Size, needed: l1VmStateIndex });
    }
    if (h.size > Number.MAX_SAFE_INTEGER) {
      throw new QcowError('IMAGE_TOO_BIG', 'Image is too big', { structure: 'header', offset: 24, size: h.size });
    }
    if (this.geometry.dataFile && (h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) !== 0n && h.backingFile !== undefined) {
      // allowed by QEMU only without a backing file
      this.note('data-file-raw with a backing file is inconsistent');
    }
    if ((h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) !== 0n && !this.geometry.dataFile) {
      throw new QcowError('DATA_FILE_REQUIRED', 'data-file-raw requires a data file', { structure: 'header', offset: 88 });
    }
    this.l1Table = h.l1Size > 0 ? (await this.store.read(h.l1TableOffset, h.l1Size * 8)).slice() : new Uint8Array(0);
    this.reftable = h.refcountTableClusters > 0
      ? (await this.store.read(h.refcountTableOffset, h.refcountTableClusters * cs)).slice()
      : new Uint8Array(0);
    if (this.checkMode) {
      try {
        await this.loadSnapshots(!!opts.repairSnapshotTable);
      } catch (e) {
        if (!(e instanceof QcowError)) throw e;
        this.snapshotTableError = e;
        this.snapshots = [];
      }
    } else {
      await this.loadSnapshots(false);
    }
    // QEMU loads the bitmap directory on every open, check mode included: a broken one is refused
    await this.loadBitmaps();
  }

  /**
   * The persistent-bitmap directory, decoded and checked as QEMU does when it opens an image with
   * bitmaps (qcow2_load_dirty_bitmaps → bitmap_list_load): only when the bitmaps autoclear bit
   * says the extension is consistent; a directory QEMU refuses makes the open fail here too.
   */
  async loadBitmaps(): Promise<void> {
    const h = this.header;
    const bm = h.bitmaps;
    this.bitmaps = [];
    if (!bm || (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n || bm.nbBitmaps === 0) return;
    // the size was checked against QCOW2_MAX_BITMAP_DIRECTORY_SIZE when the header was parsed
    const size = Math.min(bm.bitmapDirectorySize, C.MAX_BITMAP_DIRECTORY_SIZE);
    const dir = size > 0 ? await this.store.read(bm.bitmapDirectoryOffset, size) : new Uint8Array(0);
    this.bitmaps = parseBitmapDirectory(dir, bm.nbBitmaps, this.clusterSize, this.virtualSize, bm.bitmapDirectoryOffset);
  }

  /** (Re)read the snapshot table from the header's nb_snapshots / snapshots_offset. */
  async loadSnapshots(repair: boolean): Promise<void> {
    const h = this.header;
    if (this.checkMode) {
      validateTable(h.snapshotsOffset, h.nbSnapshots, C.SNAPSHOT_HEADER_SIZE, C.SNAPSHOT_HEADER_SIZE * C.MAX_SNAPSHOTS, this.clusterSize, 'Snapshot table', 64);
    }
    if (h.nbSnapshots === 0) {
      this.snapshots = [];
      this.snapshotsSize = 0;
      return;
    }
    // Load a window of the table and grow it while the parser asks for bytes beyond it. The
    // table is bounded (64 MiB plus one entry's overhang); bytes past EOF read as zeros.
    const fileSize = this.store.size();
    const maxSpan = C.MAX_SNAPSHOTS_SIZE + C.SNAPSHOT_HEADER_SIZE + C.MAX_SNAPSHOT_EXTRA_DATA + 2 * 65535 + 8;
    let span = Math.min(maxSpan, Math.max(65536, h.nbSnapshots * 64));
    for (;;) {
      const avail = Math.max(0, Math.min(span, fileSize - h.snapshotsOffset));
      const buf = avail > 0 ? await this.store.read(h.snapshotsOffset, avail) : new Uint8Array(0);
      let needMore = false;
      const base = h.snapshotsOffset;
      // A view where the bytes are in the window (no copy: a table of 65535 entries is 300 000
      // reads), zero-padded copies where they run past it.
      const read = (offset: number, length: number): Uint8Array => {
        const rel = offset - base;
        if (rel + length > span && offset + length <= fileSize) needMore = true;
        if (rel + length <= buf.length) return buf.subarray(rel, rel + length);
        const out = new Uint8Array(length);
        if (rel < buf.length) out.set(buf.subarray(rel, Math.min(buf.length, rel + length)));
        return out;
      };
      const res = parseSnapshotTable(read, base, h.nbSnapshots, {
        virtualSize: this.virtualSize,
        repair,
        onRepair: (m) => this.note(m),
      });
      if (needMore && span < maxSpan) {
        span = Math.min(maxSpan, span * 4);
        continue;
      }
      this.snapshots = res.snapshots;
      this.snapshotsSize = res.size;
      return;
    }
  }

  note(message: string): void {
    this.messages.push(message);
    this.onMessage?.(message);
  }

  // ---- geometry -----------------------------------------------------------------------------

  /** Virtual size as QEMU sees it (floored to 512-byte sectors). */
  get virtualSize(): number {
    return Math.floor(this.header.size / 512) * 512;
  }

  get version(): number {
    return this.header.version;
  }

  get refcountOrder(): number {
    return this.header.refcountOrder;
  }

  get l1Size(): number {
    return this.header.l1Size;
  }

  get isDirty(): boolean {
    return (this.header.incompatibleFeatures & C.INCOMPAT_DIRTY) !== 0n;
  }

  get isCorrupt(): boolean {
    return (this.header.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n;
  }

  get hasDataFile(): boolean {
    return this.geometry.dataFile;
  }

  get subclusterSize(): number {
    return this.geometry.extendedL2 ? this.clusterSize / C.SUBCLUSTERS_PER_CLUSTER : this.clusterSize;
  }

  /** Guest bytes mapped by one L2 table. */
  get l2Span(): number {
    return this.clusterSize * this.l2Entries;
  }

  activeView(): L1View {
    return { table: this.l1Table, size: this.header.l1Size, offset: this.header.l1TableOffset, virtualSize: this.virtualSize };
  }

  // ---- tables -------------------------------------------------------------------------------

  /** An L2 table through the cache. `l2Offset` must be cluster aligned. */
  async readL2(l2Offset: number): Promise<Uint8Array> {
    let t = this.l2Cache.get(l2Offset);
    if (!t) {
      t = new Uint8Array(this.clusterSize);
      await readInto(this.store, l2Offset, t);
      this.l2Cache.set(l2Offset, t);
    }
    return t;
  }

  /**
   * An L2 table for a one-pass scan (map, export): the cached copy if there is one, else the
   * store's bytes in a buffer reused by every scan of this image, not cached — a walk over every
   * table of a big image would only evict the tables in use, memory stays at one table, and no
   * fresh memory is touched per table (dearer than the read). Valid until the next scanL2 or write.
   */
  async scanL2(l2Offset: number): Promise<Uint8Array> {
    const cached = this.l2Cache.get(l2Offset);
    if (cached) return cached;
    this.scanBuffer ??= new Uint8Array(this.clusterSize);
    await readInto(this.store, l2Offset, this.scanBuffer);
    return this.scanBuffer;
  }

  private scanBuffer: Uint8Array | null = null;

  /** L2 offset for an L1 index of a view, validated (QEMU's fatal "L2 table offset unaligned"). */
  l2OffsetAt(view: L1View, l1Index: number): number {
    if (l1Index >= view.size) return 0;
    const off = offsetOf(be32(view.table, l1Index * 8), be32(view.table, l1Index * 8 + 4));
    if (off !== 0 && off % this.clusterSize !== 0) {
      throw new QcowError('METADATA_CORRUPT', `L2 table offset ${qemuHex(off)} unaligned (L1 index: ${qemuHex(l1Index)})`, {
        structure: 'L1 table', offset: view.offset + l1Index * 8, l1Index, l2Offset: off,
      });
    }
    return off;
  }

  /** Find a snapshot by ID first, then by name (QEMU's find_snapshot_by_id_or_name). */
  findSnapshot(idOrName: string): Snapshot | undefined {
    return this.snapshots.find((s) => s.idStr === idOrName) ?? this.snapshots.find((s) => s.name === idOrName);
  }

  /** Validate a snapshot's L1 (QEMU's checks before goto/delete/load_tmp). */
  validateSnapshotL1(sn: Snapshot): void {
    validateTable(sn.l1TableOffset, sn.l1Size, 8, C.MAX_L1_SIZE_BYTES, this.clusterSize, 'Snapshot L1 table', sn.entryOffset);
  }

  /** A read-only view of a snapshot (QEMU's load_tmp: the snapshot's own l1_size). */
  async snapshotView(sn: Snapshot): Promise<L1View> {
    this.validateSnapshotL1(sn);
    // disk_size comes from the snapshot's extra data: no qcow2 disk is larger than the biggest
    // L1 table maps (what QEMU's revert would refuse as "Active L1 table too large").
    if (sizeToL1(this.header, sn.diskSize) * 8 > C.MAX_L1_SIZE_BYTES) {
      throw new QcowError('IMAGE_TOO_BIG', `Snapshot ${sn.idStr} has a disk size of ${sn.diskSize} bytes, more than a qcow2 image can map`, {
        structure: 'snapshot table', offset: sn.entryOffset, diskSize: sn.diskSize,
      });
    }
    const table = sn.l1Size > 0 ? (await this.store.read(sn.l1TableOffset, sn.l1Size * 8)).slice() : new Uint8Array(0);
    return { table, size: sn.l1Size, offset: sn.l1TableOffset, virtualSize: Math.floor(sn.diskSize / 512) * 512 };
  }

  // ---- guest reads --------------------------------------------------------------------------

  read(guestOffset: number, length: number): Promise<Uint8Array> {
    return this.readView(this.activeView(), guestOffset, length);
  }

  /**
   * Guest bytes through a view. Each L2 table is fetched once and walked without awaiting;
   * contiguous host runs (and runs that fall through to the backing chain) are read in one call.
   */
  async readView(view: L1View, guestOffset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    const end = Math.min(guestOffset + length, view.virtualSize);
    // pending run: RUN_DATA (host bytes of runStore) or RUN_BACKING (guest bytes of the backing chain)
    let runKind = RUN_NONE;
    let runHost = 0;
    let runPos = 0;
    let runLen = 0;
    let runStore: ImageStore = this.store;
    const flushRun = async (): Promise<void> => {
      if (runKind === RUN_DATA) {
        out.set(await runStore.read(runHost, runLen), runPos - guestOffset);
      } else if (runKind === RUN_BACKING && this.backing) {
        const bEnd = Math.min(runPos + runLen, this.backing.virtualSize);
        if (bEnd > runPos) out.set(await this.backing.read(runPos, bEnd - runPos), runPos - guestOffset);
      }
      runKind = RUN_NONE;
    };
    const cs = this.clusterSize;
    let pos = guestOffset;
    while (pos < end) {
      const l1Index = Math.floor(Math.floor(pos / cs) / this.l2Entries);
      const spanEnd = Math.min(end, (l1Index + 1) * this.l2Span);
      const l2Offset = this.l2OffsetAt(view, l1Index);
      if (l2Offset === 0) {
        if (runKind !== RUN_BACKING) {
          await flushRun();
          runKind = RUN_BACKING;
          runPos = pos;
          runLen = 0;
        }
        runLen += spanEnd - pos;
        pos = spanEnd;
        continue;
      }
      const l2 = await this.readL2(l2Offset);
      while (pos < spanEnd) {
        const m = this.mapInTable(l2, l2Offset, l1Index, pos, spanEnd - pos);
        const n = m.length;
        if (m.kind === 'data') {
          const store = this.dataFile && this.geometry.dataFile ? this.dataFile : this.store;
          if (this.header.cryptMethod !== 0) {
            throw new QcowError('ENCRYPTED', 'Reading encrypted guest data is not supported', { structure: 'header', offset: 32 });
          }
          if (this.geometry.dataFile && !this.dataFile) {
            throw new QcowError('DATA_FILE_REQUIRED', "'data-file' is required for this image", { structure: 'data file' });
          }
          if (runKind === RUN_DATA && runHost + runLen === m.hostOffset && runStore === store) {
            runLen += n;
          } else {
            await flushRun();
            runKind = RUN_DATA;
            runHost = m.hostOffset;
            runPos = pos;
            runLen = n;
            runStore = store;
          }
        } else if (m.kind === 'backing') {
          if (runKind !== RUN_BACKING) {
            await flushRun();
            runKind = RUN_BACKING;
            runPos = pos;
            runLen = 0;
          }
          runLen += n;
        } else {
          await flushRun();
          if (m.kind === 'compressed') {
            const cluster = await this.readCompressed(m.l2Hi, m.l2Lo);
            const inCluster = pos % cs;
            out.set(cluster.subarray(inCluster, inCluster + n), pos - guestOffset);
          }
          // zero: already zeros
        }
        pos += n;
      }
    }
    await flushRun();
    return out;
  }

  async readCompressed(hi: number, lo: number): Promise<Uint8Array> {
    if (this.geometry.dataFile) {
      throw new QcowError('METADATA_CORRUPT', 'Compressed cluster entry found in image with external data file', { structure: 'L2 table' });
    }
    const d = compressedDescriptor(hi, lo, this.clusterBits);
    const key = -(d.hostOffset + 1); // compressed clusters share the cache under negative keys
    const cached = this.l2Cache.get(key);
    if (cached) return cached;
    const fileSize = this.store.size();
    if (d.hostOffset >= fileSize) {
      throw new QcowError('COMPRESSED_DATA_INVALID', `Compressed cluster at host offset ${hex(d.hostOffset)} is past the end of the file`, { structure: 'compressed cluster', offset: d.hostOffset });
    }
    const len = Math.min(d.compressedSize, fileSize - d.hostOffset);
    const data = await this.store.read(d.hostOffset, len);
    const cluster = decompressCluster(data, this.clusterSize, this.header.compressionType, d.hostOffset);
    this.l2Cache.set(key, cluster.slice());
    return cluster;
  }

  /**
   * What the guest range starting at `pos` (up to `maxLen` bytes, never crossing a cluster, or a
   * subcluster with extended L2) maps to. The caller does the I/O.
   */
  async mapAt(view: L1View, pos: number, maxLen: number): Promise<GuestMapping> {
    const cs = this.clusterSize;
    const clusterIndex = Math.floor(pos / cs);
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    const l2Offset = this.l2OffsetAt(view, l1Index);
    if (l2Offset === 0) {
      const len = Math.min(maxLen, cs - (pos % cs));
      return { kind: 'backing', length: len, l1Index, l2Index: clusterIndex % this.l2Entries, l2Offset, hostOffset: 0, l2Hi: 0, l2Lo: 0 };
    }
    return this.mapInTable(await this.readL2(l2Offset), l2Offset, l1Index, pos, maxLen);
  }

  /** `mapAt` once the L2 table (at `l2Offset`, for L1 entry `l1Index`) is loaded: never awaits. */
  mapInTable(l2: Uint8Array, l2Offset: number, l1Index: number, pos: number, maxLen: number): GuestMapping {
    const cs = this.clusterSize;
    const inCluster = pos % cs;
    const l2Index = Math.floor(pos / cs) % this.l2Entries;
    let len = Math.min(maxLen, cs - inCluster);
    const at = l2Index * this.l2EntrySize;
    const hi = be32(l2, at);
    const lo = be32(l2, at + 4);
    const type = clusterType(hi, lo, this.geometry);
    const base = { l1Index, l2Index, l2Offset, l2Hi: hi, l2Lo: lo };
    if (type === ClusterType.Compressed) return { kind: 'compressed', length: len, hostOffset: 0, ...base };
    const host = offsetOf(hi, lo);
    if (this.geometry.extendedL2) {
      const zeroBm = be32(l2, at + 8);
      const allocBm = be32(l2, at + 12);
      const scs = this.subclusterSize;
      const sc = Math.floor(inCluster / scs);
      len = Math.min(len, scs - (inCluster % scs));
      const invalid = type === ClusterType.Normal ? (zeroBm & allocBm) !== 0 : allocBm !== 0;
      if (invalid) {
        throw new QcowError('METADATA_CORRUPT', `Invalid cluster entry found  (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
          structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index,
        });
      }
      // QEMU checks the cluster's alignment for every subcluster type that has a host offset
      // (normal, zero and unallocated subclusters of an allocated cluster)
      if (host !== 0) this.checkDataAligned(host, l2Offset, l2Index, at);
      const bit = 2 ** sc;
      if (Math.floor(zeroBm / bit) % 2 === 1) return { kind: 'zero', length: len, hostOffset: host ? host + inCluster : 0, ...base };
      if (type === ClusterType.Normal && Math.floor(allocBm / bit) % 2 === 1) {
        return { kind: 'data', length: len, hostOffset: host + inCluster, ...base };
      }
      // an unallocated subcluster: of an allocated cluster, it still has a host offset (QEMU's
      // QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC, which qemu-img map prints when nothing backs it)
      return { kind: 'backing', length: len, hostOffset: host ? host + inCluster : 0, ...base };
    }
    if (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc) {
      if (this.header.version < 3) throw this.zeroInV2Error(l2Offset, l2Index, at);
      // reads report an unaligned preallocated zero cluster as any unaligned cluster (QEMU's
      // qcow2_get_host_offset); "Preallocated zero cluster offset … unaligned" is a write-path message
      if (type === ClusterType.ZeroAlloc) this.checkDataAligned(host, l2Offset, l2Index, at);
      return { kind: 'zero', length: len, hostOffset: type === ClusterType.ZeroAlloc ? host + inCluster : 0, ...base };
    }
    if (type === ClusterType.Unallocated) return { kind: 'backing', length: len, hostOffset: 0, ...base };
    this.checkDataAligned(host, l2Offset, l2Index, at);
    return { kind: 'data', length: len, hostOffset: host + inCluster, ...base };
  }

  private zeroInV2Error(l2Offset: number, l2Index: number, at: number): QcowError {
    return new QcowError('METADATA_CORRUPT', `Zero cluster entry found in pre-v3 image (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
      structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index,
    });
  }

  private checkDataAligned(host: number, l2Offset: number, l2Index: number, at: number): void {
    if (host % this.clusterSize !== 0) {
      throw new QcowError('METADATA_CORRUPT', `Cluster allocation offset ${qemuHex(host)} unaligned (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
        structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index, hostOffset: host,
      });
    }
  }

  // ---- block status (qemu-img map) -----------------------------------------------------------

  /**
   * Where this image's file has holes, asked for lazily when the image serves as a backing layer
   * (set by the platform: QEMU looks for holes in every metadata-preallocated qcow2 of a chain).
   */
  holesForLayer?: () => Promise<HoleMap | undefined>;
  private layerHoles?: Promise<HoleMap | undefined>;

  async extents(start: number, length: number): Promise<Extent[]> {
    const holes = this.holesForLayer ? await (this.layerHoles ??= this.holesForLayer()) : undefined;
    return this.extentsView(this.activeView(), start, length, holes);
  }

  /**
   * Block status like qemu-img map: per cluster (or subcluster) of this layer, falling through to
   * the backing chain for unallocated ranges. `holes` (metadata-preallocated images, where QEMU
   * asks the file system for holes) marks data ranges that are holes in the file as zero.
   */
  async extentsView(view: L1View, start: number, length: number, holes?: HoleMap): Promise<Extent[]> {
    const out: Extent[] = [];
    await this.walkExtents(view, start, length, (e) => { out.push(e); }, holes);
    return out;
  }

  /**
   * The extents of `extentsView`, handed to `onExtent` in guest order as soon as each is final, so
   * memory stays bounded by one L2 table whatever the image size. Each L2 table is walked as bytes
   * in one synchronous loop (no promise and no object per cluster): clusters of the same kind with
   * contiguous host offsets become one piece first, and only pieces become extents.
   */
  async walkExtents(view: L1View, start: number, length: number, onExtent: (e: Extent) => void, holes?: HoleMap): Promise<void> {
    const merger = new ExtentMerger(onExtent);
    const end = Math.min(start + length, view.virtualSize);
    const cs = this.clusterSize;
    const pieces: number[] = [];
    let pos = start;
    while (pos < end) {
      const l1Index = Math.floor(Math.floor(pos / cs) / this.l2Entries);
      const spanEnd = Math.min(end, (l1Index + 1) * this.l2Span);
      const l2Offset = this.l2OffsetAt(view, l1Index);
      if (l2Offset === 0) {
        // whole L1 entries unallocated (and everything past the end of the table, which a
        // snapshot's disk size may reach far beyond): one piece for the whole run, so the loop
        // never steps through a hostile virtual size one L2 span at a time
        let next = l1Index + 1;
        while (next < view.size && next * this.l2Span < end && offsetOf(be32(view.table, next * 8), be32(view.table, next * 8 + 4)) === 0) next++;
        const runEnd = next >= view.size ? end : Math.min(end, next * this.l2Span);
        await this.backingExtents(merger, pos, runEnd - pos);
        pos = runEnd;
        continue;
      } else {
        const l2 = await this.scanL2(l2Offset);
        pieces.length = 0;
        if (this.geometry.extendedL2) this.piecesByMapping(l2, l2Offset, l1Index, pos, spanEnd, pieces);
        else this.piecesStandard(l2, l2Offset, pos, spanEnd, pieces);
        for (let k = 0; k < pieces.length; k += 4) {
          const kind = pieces[k]!;
          const pStart = pieces[k + 1]!;
          const pLen = pieces[k + 2]!;
          const pHost = pieces[k + 3]!;
          if (kind === P_BACKING) await this.backingExtents(merger, pStart, pLen);
          else if (kind === P_BACKING_AT) await this.backingExtents(merger, pStart, pLen, pHost);
          else if (kind === P_DATA && holes !== undefined) {
            // QEMU limits the status to the file's own data or hole extent (file-posix's
            // SEEK_DATA/SEEK_HOLE), so a data run splits exactly where the file's holes begin and end
            holes.split(pHost, pLen, (host, n, hole) => {
              merger.push({ start: pStart + (host - pHost), length: n, depth: 0, present: true, zero: hole, data: true, compressed: false, offset: host });
            });
          } else merger.push(pieceExtent(kind, pStart, pLen, pHost));
        }
      }
      pos = spanEnd;
    }
    merger.end();
  }

  /**
   * Pieces of [pos, spanEnd) inside one standard L2 table: (kind, start, length, host) quadruples.
   * The same decisions (and errors) as `mapInTable`, decoded inline from the entry bytes.
   */
  private piecesStandard(l2: Uint8Array, l2Offset: number, pos: number, spanEnd: number, out: number[]): void {
    const cs = this.clusterSize;
    const v3 = this.header.version >= 3;
    const dataFile = this.geometry.dataFile;
    // The loop runs on int32 entry indices and int32 words only: offsets above 2^31 are doubles,
    // slower to compare and (with `%`) a libm call each. The low word `lo` is kept signed; host
    // offsets are compared as (hiOff, loOff) pairs. Alignment needs the low word only.
    const lowMask = (cs - 1) & 0xfffffe00;
    const clusterIndex = Math.floor(pos / cs);
    const i0 = (clusterIndex % this.l2Entries) | 0;
    const tableBase = (clusterIndex - i0) * cs; // guest offset of entry 0
    const i1 = Math.ceil((spanEnd - tableBase) / cs) | 0;
    const dv = new DataView(l2.buffer, l2.byteOffset, l2.byteLength);
    let rKind = -1;
    let rI = 0; // first entry of the run
    let rHi = 0; // host offset of that entry, as words
    let rLo = 0;
    // The raw words an entry must have to continue the current run unchanged: for data and
    // preallocated zeros the previous entry's words with the offset one cluster on, for
    // unallocated and plain zeros the previous entry's words again. Such an entry needs no
    // decoding at all (same flags, offset still aligned and non-zero): two compares, which also
    // keeps the loop cheap while it still runs unoptimized in a short-lived process.
    let nHi = 0;
    let nLo = 0;
    let nValid = false;
    let nStep = false; // whether the expected offset moves on by a cluster per entry
    for (let i = i0; i < i1; i++) {
      const hi = dv.getInt32(i * 8);
      const lo = dv.getInt32(i * 8 + 4);
      if (nValid && hi === nHi && lo === nLo) {
        if (nStep) {
          const next = (lo + cs) | 0;
          if (lo < 0 && next >= 0) {
            nHi = hi + 1;
            if ((nHi & 0x00ffffff) === 0) nValid = false; // the offset would leave its 56 bits
          }
          nLo = next;
        }
        continue;
      }
      const hiOff = hi & 0x00ffffff;
      const loOff = lo & 0xfffffe00;
      let kind: number;
      if ((hi & QCOW_OFLAG_COMPRESSED_HI) !== 0) {
        kind = P_COMPRESSED;
      } else if ((lo & 1) !== 0) {
        if (!v3) throw this.zeroInV2Error(l2Offset, i, i * 8);
        if (hiOff !== 0 || loOff !== 0) {
          if ((lo & lowMask) !== 0) this.checkDataAligned(hiOff * 4294967296 + (loOff >>> 0), l2Offset, i, i * 8);
          kind = P_ZERO_AT;
        } else {
          kind = P_ZERO;
        }
      } else if (hiOff === 0 && loOff === 0 && !(dataFile && hi < 0)) {
        kind = P_BACKING; // (hi < 0: QCOW_OFLAG_COPIED, a data-file cluster at offset 0)
      } else {
        if ((lo & lowMask) !== 0) this.checkDataAligned(hiOff * 4294967296 + (loOff >>> 0), l2Offset, i, i * 8);
        kind = P_DATA;
      }
      const hasOffset = kind === P_DATA || kind === P_ZERO_AT;
      // an entry with other flags (COPIED) may still continue the run: same kind, offset one cluster on
      if (kind !== rKind || (hasOffset && !(nValid && nStep && hiOff === (nHi & 0x00ffffff) && loOff === (nLo & 0xfffffe00)))) {
        if (rKind >= 0) this.pushPiece(out, rKind, rI, i, rHi, rLo, i0, pos, tableBase, spanEnd);
        rKind = kind;
        rI = i;
        rHi = hiOff;
        rLo = loOff;
      }
      if (hasOffset) {
        const next = (lo + cs) | 0;
        nHi = lo < 0 && next >= 0 ? hi + 1 : hi;
        nLo = next;
        nValid = (nHi & 0x00ffffff) !== 0 || hiOff === 0;
        nStep = true;
      } else {
        nHi = hi;
        nLo = lo;
        nValid = kind !== P_COMPRESSED;
        nStep = false;
      }
    }
    if (rKind >= 0) this.pushPiece(out, rKind, rI, i1, rHi, rLo, i0, pos, tableBase, spanEnd);
  }

  /** One piece of `piecesStandard`: entries [iStart, iEnd) of kind `kind`, clipped to [pos, spanEnd). */
  private pushPiece(out: number[], kind: number, iStart: number, iEnd: number, hiOff: number, loOff: number,
    i0: number, pos: number, tableBase: number, spanEnd: number): void {
    const cs = this.clusterSize;
    const s0 = tableBase + iStart * cs;
    const start = iStart === i0 ? pos : s0;
    const end = Math.min(spanEnd, tableBase + iEnd * cs);
    const host = kind === P_DATA || kind === P_ZERO_AT ? hiOff * 4294967296 + (loOff >>> 0) + (start - s0) : 0;
    out.push(kind, start, end - start, host);
  }

  /** Pieces through `mapInTable` (extended L2: subcluster granularity). */
  private piecesByMapping(l2: Uint8Array, l2Offset: number, l1Index: number, pos: number, spanEnd: number, out: number[]): void {
    let rKind = -1;
    let rStart = 0;
    let rLen = 0;
    let rHost = 0;
    while (pos < spanEnd) {
      const m = this.mapInTable(l2, l2Offset, l1Index, pos, spanEnd - pos);
      const n = m.length;
      let kind: number;
      let host = 0;
      if (m.kind === 'data') {
        host = m.hostOffset;
        kind = P_DATA;
      } else if (m.kind === 'compressed') {
        kind = P_COMPRESSED;
      } else if (m.kind === 'zero') {
        host = m.hostOffset;
        kind = host ? P_ZERO_AT : P_ZERO;
      } else {
        host = m.hostOffset;
        kind = host ? P_BACKING_AT : P_BACKING;
      }
      if (kind === rKind && (kind === P_BACKING || kind === P_ZERO || kind === P_COMPRESSED || rHost + rLen === host)) {
        rLen += n;
      } else {
        if (rKind >= 0) out.push(rKind, rStart, rLen, rHost);
        rKind = kind;
        rStart = pos;
        rLen = n;
        rHost = host;
      }
      pos += n;
    }
    if (rKind >= 0) out.push(rKind, rStart, rLen, rHost);
  }

  /**
   * A range unallocated in this layer: the backing chain's status, or (no backing file, or past
   * its end) unallocated zeros here. `host`: the host offset of `pos` when the range is an
   * unallocated subcluster of an allocated cluster (extended L2), which QEMU reports as the
   * offset of those zeros (QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC keeps BDRV_BLOCK_OFFSET_VALID).
   */
  private async backingExtents(out: ExtentMerger, pos: number, n: number, host?: number): Promise<void> {
    const b = this.backing;
    const zeros = (s: number, len: number): void => {
      const e: Extent = { start: s, length: len, depth: 0, present: false, zero: true, data: false, compressed: false };
      if (host !== undefined) e.offset = host + (s - pos);
      out.push(e);
    };
    if (!b) {
      zeros(pos, n);
      return;
    }
    const bEnd = Math.min(pos + n, b.virtualSize);
    if (bEnd > pos) {
      for (const e of await b.extents(pos, bEnd - pos)) out.push({ ...e, depth: e.depth + 1 });
    }
    if (bEnd < pos + n) {
      const s = Math.max(pos, bEnd);
      zeros(s, pos + n - s);
    }
  }

  // ---- writing: every write of every operation goes through these three ------------------

  /** The journal of the operation in progress, if the caller asked for one. */
  journal: Journal | null = null;

  private assertWritable(): void {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.store.name} is opened read-only`, {});
  }

  /** Write bytes at a host offset, recording the purpose (and whether this is the commit point). */
  async pwrite(hostOffset: number, data: Uint8Array, purpose: string, commit = false): Promise<void> {
    this.assertWritable();
    this.journal?.write(hostOffset, data.length, purpose, commit);
    await this.store.write(hostOffset, data);
  }

  /** Ordering barrier (docs/architecture.md §2): nothing written after may reach the medium before what was written before. */
  async flush(purpose = 'barrier'): Promise<void> {
    this.assertWritable();
    this.journal?.flush(purpose);
    await this.store.flush();
  }

  async truncate(size: number, purpose: string): Promise<void> {
    this.assertWritable();
    this.journal?.truncate(size, purpose);
    await this.store.truncate(size);
  }

  async close(): Promise<void> {
    await this.backing?.close();
    await this.dataFile?.close();
    await this.store.close();
  }

  /** Round a byte count up to whole clusters. */
  clusterAlign(n: number): number {
    return alignUp(n, this.clusterSize);
  }
}

/**
 * The holes of an image file (metadata-preallocated images: qemu-img map asks the file system
 * which data clusters are holes and reports them as zero). Built from the file's data segments;
 * asked once per data cluster in (mostly) increasing host order, so a cursor makes each question
 * O(1), and a question behind the cursor falls back to binary search.
 */
export class HoleMap {
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;
  private cur = 0; // first segment whose end is beyond the last queried offset
  private last = 0;

  /** `segments`: sorted, disjoint [start, end) host ranges that hold data. */
  constructor(segments: ReadonlyArray<readonly [number, number]>) {
    this.starts = new Float64Array(segments.length);
    this.ends = new Float64Array(segments.length);
    segments.forEach(([s, e], i) => {
      this.starts[i] = s;
      this.ends[i] = e;
    });
  }

  /**
   * Split [hostOffset, hostOffset + length) where the file's data and holes begin and end, calling
   * `each(offset, length, hole)` in order.
   */
  split(hostOffset: number, length: number, each: (offset: number, length: number, hole: boolean) => void): void {
    const starts = this.starts;
    const ends = this.ends;
    const count = ends.length;
    const end = hostOffset + length;
    this.isHole(hostOffset, length); // positions the cursor on the first segment ending after hostOffset
    let cur = this.cur;
    let pos = hostOffset;
    while (pos < end) {
      if (cur >= count || starts[cur]! >= end) {
        each(pos, end - pos, true);
        break;
      }
      if (starts[cur]! > pos) {
        each(pos, starts[cur]! - pos, true);
        pos = starts[cur]!;
      }
      const dataEnd = Math.min(ends[cur]!, end);
      each(pos, dataEnd - pos, false);
      pos = dataEnd;
      if (ends[cur]! <= end) cur++;
    }
    this.cur = cur;
    this.last = end; // a later question below `end` repositions by binary search
  }

  /** Whether no data segment intersects [hostOffset, hostOffset + length). */
  isHole(hostOffset: number, length: number): boolean {
    const ends = this.ends;
    const count = ends.length;
    let cur = this.cur;
    if (hostOffset < this.last) {
      let lo = 0;
      let hi = count;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ends[mid]! <= hostOffset) lo = mid + 1;
        else hi = mid;
      }
      cur = lo;
    } else {
      while (cur < count && ends[cur]! <= hostOffset) cur++;
    }
    this.cur = cur;
    this.last = hostOffset;
    return cur >= count || this.starts[cur]! >= hostOffset + length;
  }
}

// Pending run kinds of readView.
const RUN_NONE = 0;
const RUN_DATA = 1;
const RUN_BACKING = 2;

// Piece kinds of the extents walk: each is one combination of qemu-img map's flags.
const P_BACKING = 0; // unallocated here: the backing chain decides (or present: false, zero: true)
const P_ZERO = 1; // zero, no host offset
const P_ZERO_AT = 2; // zero with a preallocated host cluster
const P_DATA = 3;
const P_COMPRESSED = 5;
const P_BACKING_AT = 6; // extended L2: unallocated subclusters of an allocated cluster (host offset known)

function pieceExtent(kind: number, start: number, length: number, host: number): Extent {
  switch (kind) {
    case P_ZERO: return { start, length, depth: 0, present: true, zero: true, data: false, compressed: false };
    case P_ZERO_AT: return { start, length, depth: 0, present: true, zero: true, data: false, compressed: false, offset: host };
    case P_DATA: return { start, length, depth: 0, present: true, zero: false, data: true, compressed: false, offset: host };
    default: return { start, length, depth: 0, present: true, zero: false, data: true, compressed: true };
  }
}

/** Merges adjacent extents as qemu-img map does and hands each on once nothing more can join it. */
class ExtentMerger {
  private pending: Extent | null = null;
  private readonly emit: (e: Extent) => void;

  constructor(emit: (e: Extent) => void) {
    this.emit = emit;
  }

  /** Takes ownership of `e`. */
  push(e: Extent): void {
    const p = this.pending;
    if (p !== null && canMergeExtents(p, e)) {
      p.length += e.length;
      return;
    }
    if (p !== null) this.emit(p);
    this.pending = e;
  }

  end(): void {
    if (this.pending !== null) this.emit(this.pending);
    this.pending = null;
  }
}

export interface GuestMapping {
  kind: 'data' | 'zero' | 'compressed' | 'backing';
  /** Bytes from the queried position this mapping covers (within one cluster/subcluster). */
  length: number;
  /** Host offset of the queried position for 'data' (and allocated zero). */
  hostOffset: number;
  l1Index: number;
  l2Index: number;
  l2Offset: number;
  l2Hi: number;
  l2Lo: number;
}
