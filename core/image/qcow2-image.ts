// Qcow2Image: opening and validating an image as QEMU's qcow2_do_open does (docs/qcow2-format.md
// §2.1), its header and tables in memory, the table caches, and the entry points for guest reads
// (guest-read.ts: active layer, snapshots read-only, backing chains) and block status for `map`
// (block-status.ts). Writes, allocation and snapshots live in their own
// modules and act on this object; its header and tables change only through setTables and reload,
// which also drop what the allocator derived from them (allocator-state.ts).
import { QcowError } from '../errors.ts';
import { readInto, type ImageStore } from '../io/store.ts';
import { alignUp, qemuHex } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { l2EntrySize, offsetOf, type L2Geometry } from '../format/entries.ts';
import { be32 } from '../format/bytes.ts';
import { headerBytesNeeded, parseHeader, sizeToL1, validateTable, l2EntriesOf, l2GeometryOf, type Qcow2Header } from '../format/header.ts';
import { parseSnapshotTable, type Snapshot } from '../format/snapshot-table.ts';
import { parseBitmapDirectory, type BitmapEntry } from '../format/bitmaps.ts';
import { TableCache } from './table-cache.ts';
import { type Extent, type Layer } from './layer.ts';
import { mapAt, mapInTable, readCompressed, readView, type GuestMapping } from './guest-read.ts';
import { walkExtents, type HoleMap } from './block-status.ts';
import type { Journal } from './journal.ts';
import { AllocatorState } from './allocator-state.ts';

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

const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;
const DEFAULT_REFBLOCK_CACHE_BYTES = 4 * 1024 * 1024;
const DEFAULT_COMMIT_REFBLOCK_BYTES = 4 * 1024 * 1024;

/** Which L1 table a read goes through: the active one, or a snapshot's (read-only). */
export interface L1View {
  table: Uint8Array;
  size: number;
  /** Host offset of the table (for messages). */
  offset: number;
  /** Virtual size seen through this view. */
  virtualSize: number;
}

/**
 * A change of the in-memory header and tables, made after the caller has written it to disk:
 * header fields, and whichever tables were replaced.
 */
export interface TablesChange {
  header?: Partial<Qcow2Header>;
  l1Table?: Uint8Array;
  reftable?: Uint8Array;
  snapshots?: Snapshot[];
  snapshotsSize?: number;
}

export class Qcow2Image implements Layer {
  readonly store: ImageStore;
  private hdr: Qcow2Header;
  /** The header as parsed (changed through setTables only). */
  get header(): Readonly<Qcow2Header> {
    return this.hdr;
  }
  readonly clusterBits: number;
  readonly clusterSize: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  readonly l2EntrySize: number;
  readonly geometry: L2Geometry;
  /** Active L1 table bytes (l1Size · 8, exactly); entries are updated in place, the table replaced through setTables. */
  get l1Table(): Uint8Array {
    return this.l1;
  }
  /** Refcount table bytes (refcount_table_clusters · CS); entries are updated in place, the table replaced through setTables. */
  get reftable(): Uint8Array {
    return this.rt;
  }
  get snapshots(): Snapshot[] {
    return this.snaps;
  }
  /** Bytes of the snapshot table as stored (QEMU's snapshots_size). */
  get snapshotsSize(): number {
    return this.snapsSize;
  }
  private l1: Uint8Array;
  private rt: Uint8Array;
  private snaps: Snapshot[] = [];
  private snapsSize = 0;
  /** Persistent bitmaps (directory entries), when the image has a consistent bitmaps extension. */
  bitmaps: BitmapEntry[] = [];
  /**
   * Set while a writer keeps the persistent bitmaps in step with its writes (they are marked
   * in-use on disk first, as QEMU does, and stored with the written ranges afterwards): guest
   * writes are then allowed on an image with bitmaps (commit.ts).
   */
  bitmapsTracked = false;
  /** What the allocator knows about this image; dropped whenever the header or tables change. */
  readonly allocation = new AllocatorState();
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
  /** What QEMU warns of when it opens the image (warn_report in qcow2_do_open), in its words. */
  readonly openWarnings: string[] = [];
  private readonly onMessage?: (m: string) => void;

  private constructor(store: ImageStore, header: Qcow2Header, opts: OpenOptions) {
    this.store = store;
    this.hdr = header;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = l2EntriesOf(header);
    this.geometry = l2GeometryOf(header);
    this.l2EntrySize = l2EntrySize(this.geometry);
    this.l1 = new Uint8Array(0);
    this.rt = new Uint8Array(0);
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
    const b = cs <= first.length ? first.subarray(0, cs) : headerBytesNeeded(first, cs) <= first.length ? first : await store.read(0, cs);
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
    if (h.bitmaps && (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n) {
      this.openWarnings.push('a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent');
    }
    await this.loadTables();
    if (this.checkMode) {
      await this.loadSnapshotsOrNote(!!opts.repairSnapshotTable);
    } else {
      await this.loadSnapshots(false);
    }
    // QEMU loads the bitmap directory on every open, check mode included: a broken one is refused
    await this.loadBitmaps();
  }

  /** The active L1 and the refcount table, as the header places them. */
  private async loadTables(): Promise<void> {
    const h = this.hdr;
    // read into arrays of their own (a read's result may be the store's view, and a copy of it
    // was a second 2 MiB on 2 MiB clusters)
    this.l1 = new Uint8Array(h.l1Size * 8);
    if (h.l1Size > 0) await readInto(this.store, h.l1TableOffset, this.l1);
    this.rt = new Uint8Array(h.refcountTableClusters * this.clusterSize);
    if (h.refcountTableClusters > 0) await readInto(this.store, h.refcountTableOffset, this.rt);
  }

  /** Check mode: a snapshot table that cannot be read is noted in snapshotTableError, not thrown. */
  private async loadSnapshotsOrNote(repair: boolean): Promise<void> {
    try {
      await this.loadSnapshots(repair);
      this.snapshotTableError = undefined;
    } catch (e) {
      if (!(e instanceof QcowError)) throw e;
      this.snapshotTableError = e;
      this.snaps = [];
    }
  }

  /**
   * The in-memory header and tables follow a change the caller has made on disk. Every change of
   * them goes through here (or reload): the allocator's knowledge of the old ones is dropped.
   */
  setTables(change: TablesChange): void {
    if (change.header) Object.assign(this.hdr, change.header);
    if (change.l1Table) this.l1 = change.l1Table;
    if (change.reftable) this.rt = change.reftable;
    if (change.snapshots) this.snaps = change.snapshots;
    if (change.snapshotsSize !== undefined) this.snapsSize = change.snapshotsSize;
    this.allocation.forget();
  }

  /** The header and tables as they are now (for a caller that may have to put them back with setTables). */
  savedTables(): Required<TablesChange> {
    return { header: { ...this.hdr }, l1Table: this.l1, reftable: this.rt, snapshots: this.snaps, snapshotsSize: this.snapsSize };
  }

  /**
   * Re-read the header, the active L1, the refcount table and the snapshot table from disk (after
   * repairs), dropping every cached table and the allocator's knowledge.
   */
  async reload(): Promise<void> {
    this.hdr = await Qcow2Image.readHeader(this.store);
    await this.loadTables();
    this.l2Cache.clear();
    this.refblockCache.clear();
    this.allocation.forget();
    await this.loadSnapshotsOrNote(false);
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
      this.snaps = [];
      this.snapsSize = 0;
      this.allocation.forget();
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
      this.snaps = res.snapshots;
      this.snapsSize = res.size;
      this.allocation.forget();
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
   * A walk that may run beside another on the same image passes its own cluster-sized `into`.
   */
  async scanL2(l2Offset: number, into?: Uint8Array): Promise<Uint8Array> {
    const cached = this.l2Cache.get(l2Offset);
    if (cached) return cached;
    const buf = into ?? (this.scanBuffer ??= new Uint8Array(this.clusterSize));
    await readInto(this.store, l2Offset, buf);
    return buf;
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
   * Guest bytes through a view (guest-read.ts). Each L2 table is fetched once and walked without
   * awaiting; contiguous host runs (and runs that fall through to the backing chain) are read in one call.
   */
  readView(view: L1View, guestOffset: number, length: number): Promise<Uint8Array> {
    return readView(this, view, guestOffset, length);
  }

  /** The guest bytes of a compressed cluster, by its L2 entry words (guest-read.ts). */
  readCompressed(hi: number, lo: number): Promise<Uint8Array> {
    return readCompressed(this, hi, lo);
  }

  /**
   * What the guest range starting at `pos` (up to `maxLen` bytes, never crossing a cluster, or a
   * subcluster with extended L2) maps to (guest-read.ts). The caller does the I/O.
   */
  mapAt(view: L1View, pos: number, maxLen: number): Promise<GuestMapping> {
    return mapAt(this, view, pos, maxLen);
  }

  /** `mapAt` once the L2 table (at `l2Offset`, for L1 entry `l1Index`) is loaded: never awaits. */
  mapInTable(l2: Uint8Array, l2Offset: number, l1Index: number, pos: number, maxLen: number): GuestMapping {
    return mapInTable(this, l2, l2Offset, l1Index, pos, maxLen);
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
   * memory stays bounded by one L2 table whatever the image size (block-status.ts).
   */
  walkExtents(view: L1View, start: number, length: number, onExtent: (e: Extent) => void, holes?: HoleMap): Promise<void> {
    return walkExtents(this, view, start, length, onExtent, holes);
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

  /** Ordering barrier (docs/architecture.md): nothing written after may reach the medium before what was written before. */
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
