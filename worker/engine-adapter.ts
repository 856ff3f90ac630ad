// The one module of the worker that talks to the engine (core/). Everything the worker needs from
// an open image goes through the EngineImage interface below, so wiring a new engine capability
// is a change here only. DTOs are built here: plain numbers and strings, no bigint, no class.
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import * as C from '../core/format/constants.ts';
import { decodeL1Entry, decodeL2Entry, ClusterType, l1ReservedHex, l2EntrySize } from '../core/format/entries.ts';
import { decodeRefblock, reftableEntry } from '../core/format/refcount.ts';
import { rawHex } from '../core/format/entries.ts';
import { be32, be64n } from '../core/format/bytes.ts';
import { l2EntriesOf, l2GeometryOf, type Qcow2Header } from '../core/format/header.ts';
import type { Snapshot } from '../core/format/snapshot-table.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import { RawLayer, type Layer } from '../core/image/layer.ts';
import { loadRefblock, reftableSize } from '../core/image/refcount.ts';
import { buildInfo, formatFixed, readEncryptInfo, type EncryptInfo } from '../core/analysis/info.ts';
import { translate, type Translation } from '../core/analysis/translate.ts';
import { allSnapshotsSpace, snapshotSpace, type SnapshotSpace } from '../core/analysis/snapshot-space.ts';
import { clusterUsers, type ClusterUsers } from '../core/analysis/cluster-users.ts';
import { runCheck, type CheckResult, type Finding } from '../core/analysis/check.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot, snapshotLayer, type SnapshotOpResult } from '../core/image/snapshot.ts';
import { groupCreate, groupDelete, groupRevert } from '../core/image/group.ts';
import { findWriteDamage } from '../core/image/snapshot-precheck.ts';
import { BudgetedStore } from './job-budget.ts';
import { buildLayout } from '../core/analysis/layout.ts';
import { diffViews, type DiffResult } from '../core/analysis/diff.ts';
import { Journal } from '../core/image/journal.ts';
import { writeGuest } from '../core/image/write.ts';
import { buildDemoImage } from '../core/image/demo.ts';
import { MemoryStore } from '../core/io/memory-store.ts';
import { createExternalSnapshots, type OverlayTarget } from '../core/image/external-snapshot.ts';
import type {
  CheckFindingDTO,
  CheckReportDTO,
  ClusterMapDTO,
  DamageArea,
  JournalDTO,
  HeaderDTO,
  L1EntryDTO,
  L2EntryDTO,
  OpenDamage,
  Progress,
  RefcountTableEntryDTO,
  SnapshotDTO,
} from './api.ts';

/** Passed to long engine jobs. */
export { layoutChanges } from '../core/analysis/layout.ts';

export interface JobContext {
  signal: AbortSignal;
  /** Throttled by the worker; call as often as you like. */
  progress(p: Progress): void;
}

export interface EngineImage {
  header(): HeaderDTO;
  snapshots(): SnapshotDTO[];
  /** qemu-img info --output=json field names. */
  info(fileSize: number, filename: string): Record<string, unknown>;
  l1Page(start: number, count: number): Promise<L1EntryDTO[]>;
  l2Table(l2Offset: number): Promise<L2EntryDTO[]>;
  refcountTableSize(): number;
  refcountTablePage(start: number, count: number): Promise<RefcountTableEntryDTO[]>;
  refcountBlock(refblockIndex: number): Promise<Float64Array>;
  translate(guestOffset: number, snapshotId?: string): Promise<Translation>;
  snapshotSpace(snapshotId: string | null, job: JobContext): Promise<SnapshotSpace>;
  clusterUsers(cluster: number, job: JobContext): Promise<ClusterUsers>;
  diff(a: string | null, b: string | null, job: JobContext): Promise<DiffResult>;
  exportRaw(snapshotId: string | null, job: JobContext): Promise<Blob>;
  clusterMap(job: JobContext): Promise<ClusterMapDTO>;
  check(job: JobContext, filename: string, repair?: 'leaks' | 'all'): Promise<CheckReportDTO>;
  createSnapshot(name: string, job: JobContext): Promise<JournalDTO>;
  revertSnapshot(idOrName: string, job: JobContext): Promise<JournalDTO>;
  deleteSnapshot(idOrName: string, job: JobContext): Promise<JournalDTO>;
  /** Close the engine object and its store. */
  close(): Promise<void>;
}

const EXT_NAMES: Record<number, string> = {
  [C.EXT_BACKING_FORMAT]: 'backing file format name',
  [C.EXT_FEATURE_TABLE]: 'feature name table',
  [C.EXT_BITMAPS]: 'bitmaps',
  [C.EXT_CRYPTO]: 'full disk encryption header pointer',
  [C.EXT_DATA_FILE]: 'external data file name',
};

function unknownBits(v: bigint, known: bigint): string {
  const u = v & ~known;
  return u === 0n ? '' : '0x' + u.toString(16);
}

/** The L2 geometry fields of a HeaderDTO. */
function geometryDTO(h: Pick<Qcow2Header, 'clusterBits' | 'incompatibleFeatures'>): Pick<HeaderDTO, 'l2EntrySize' | 'l2Entries' | 'subclusters'> {
  const g = l2GeometryOf(h);
  return { l2EntrySize: l2EntrySize(g), l2Entries: l2EntriesOf(h), subclusters: g.extendedL2 ? C.SUBCLUSTERS_PER_CLUSTER : 1 };
}

export function headerDTO(h: Qcow2Header): HeaderDTO {
  const d: HeaderDTO = {
    magic: h.magic,
    version: h.version,
    backingFileOffset: h.backingFileOffset,
    backingFileSize: h.backingFileSize,
    clusterBits: h.clusterBits,
    clusterSize: 2 ** h.clusterBits,
    ...geometryDTO(h),
    size: h.size,
    cryptMethod: h.cryptMethod,
    l1Size: h.l1Size,
    l1TableOffset: h.l1TableOffset,
    refcountTableOffset: h.refcountTableOffset,
    refcountTableClusters: h.refcountTableClusters,
    nbSnapshots: h.nbSnapshots,
    snapshotsOffset: h.snapshotsOffset,
    incompatibleFeatures: Number(h.incompatibleFeatures & 0xffffffffn),
    compatibleFeatures: Number(h.compatibleFeatures & 0xffffffffn),
    autoclearFeatures: Number(h.autoclearFeatures & 0xffffffffn),
    unknownIncompatible: unknownBits(h.incompatibleFeatures, C.INCOMPAT_MASK),
    unknownCompatible: unknownBits(h.compatibleFeatures, C.COMPAT_MASK),
    unknownAutoclear: unknownBits(h.autoclearFeatures, C.AUTOCLEAR_MASK),
    refcountOrder: h.refcountOrder,
    refcountBits: 2 ** h.refcountOrder,
    headerLength: h.headerLength,
    compressionType: h.compressionType,
    extensions: h.extensions.map((x) => ({ type: x.type, offset: x.offset, length: x.data.length, name: EXT_NAMES[x.type] ?? 'unknown' })),
  };
  if (h.backingFile !== undefined) d.backingFile = h.backingFile;
  if (h.backingFormat !== undefined) d.backingFormat = h.backingFormat;
  return d;
}

export function snapshotDTO(s: Snapshot): SnapshotDTO {
  const d: SnapshotDTO = {
    id: s.idStr,
    name: s.name,
    l1TableOffset: s.l1TableOffset,
    l1Size: s.l1Size,
    vmStateSize: s.vmStateSize,
    dateSec: s.dateSec,
    dateNsec: s.dateNsec,
    vmClockNsec: s.vmClockNsec,
    diskSize: s.diskSize,
    extraDataSize: s.extraDataSize,
  };
  if (s.icount !== -1) d.icount = s.icount;
  return d;
}

const L2_TYPES: Record<number, L2EntryDTO['type']> = {
  [ClusterType.Unallocated]: 'unallocated',
  [ClusterType.ZeroPlain]: 'zero-plain',
  [ClusterType.ZeroAlloc]: 'zero-alloc',
  [ClusterType.Normal]: 'normal',
  [ClusterType.Compressed]: 'compressed',
};

/** A store that can warm its cache (worker/stores: File and handle stores). */
interface Prefetching {
  prefetch(ranges: Array<[number, number]>, signal?: AbortSignal): Promise<void>;
}

/**
 * Before a walk that reads every L2 table and refcount block one at a time: fetch them all, a few
 * reads in flight at once (a browser File read costs ~1 ms whatever its size, STACK.md).
 */
export async function prefetchMetadata(img: Qcow2Image, signal?: AbortSignal): Promise<void> {
  const store = img.store as Partial<Prefetching>;
  if (typeof store.prefetch !== 'function') return;
  const cs = img.clusterSize;
  const ranges: Array<[number, number]> = [];
  for (let i = 0; i < reftableSize(img); i++) {
    const off = reftableEntry(img.reftable, i);
    if (off && off % cs === 0) ranges.push([off, cs]);
  }
  for (let i = 0; i < img.header.l1Size; i++) {
    const off = decodeL1Entry(img.l1Table, i).l2Offset;
    if (off && off % cs === 0) ranges.push([off, cs]);
  }
  await store.prefetch(ranges, signal);
}

/** Wrap an opened Qcow2Image as the worker's EngineImage. */
function wrap(img: Qcow2Image, encrypt?: EncryptInfo): EngineImage {
  const header = headerDTO(img.header);
  const findById = (id: string): Snapshot => {
    const sn = img.snapshots.find((x) => x.idStr === id);
    if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', `Snapshot with ID ${id} not found`, { id });
    return sn;
  };
  const snapshots = img.snapshots.map(snapshotDTO);
  return {
    header: () => header,
    snapshots: () => snapshots,
    // actual-size (blocks on the medium) is unknown in a browser, so it is left out.
    info: (_fileSize, filename) => ({ ...buildInfo(img, { filename, encrypt }) }) as Record<string, unknown>,
    async l1Page(start, count) {
      const end = Math.min(img.header.l1Size, start + count);
      const out: L1EntryDTO[] = [];
      for (let i = start; i < end; i++) {
        const e = decodeL1Entry(img.l1Table, i);
        out.push({
          index: i,
          raw: e.raw,
          l2Offset: e.l2Offset,
          copied: e.copied,
          reserved: l1ReservedHex(be32(img.l1Table, i * 8), be32(img.l1Table, i * 8 + 4)),
        });
      }
      return out;
    },
    async l2Table(l2Offset) {
      if (l2Offset === 0 || l2Offset % img.clusterSize !== 0) {
        throw new QcowError('INVALID_ARGUMENT', `No L2 table at offset 0x${l2Offset.toString(16)}`);
      }
      const t = await img.readL2(l2Offset);
      const out: L2EntryDTO[] = [];
      for (let i = 0; i < img.l2Entries; i++) {
        const e = decodeL2Entry(t, i, img.geometry);
        const d: L2EntryDTO = { index: i, raw: e.raw, type: L2_TYPES[e.type]!, hostOffset: e.compressed?.hostOffset ?? e.hostOffset, copied: e.copied };
        if (e.compressed) d.compressedSize = e.compressed.compressedSize;
        if (e.rawBitmap !== undefined) d.bitmap = e.rawBitmap;
        out.push(d);
      }
      return out;
    },
    refcountTableSize: () => reftableSize(img),
    async refcountTablePage(start, count) {
      const end = Math.min(reftableSize(img), start + count);
      const out: RefcountTableEntryDTO[] = [];
      for (let i = start; i < end; i++) {
        out.push({
          index: i,
          raw: rawHex(be32(img.reftable, i * 8), be32(img.reftable, i * 8 + 4)),
          refblockOffset: reftableEntry(img.reftable, i),
        });
      }
      return out;
    },
    async refcountBlock(refblockIndex) {
      const b = await loadRefblock(img, refblockIndex);
      return b ? decodeRefblock(b, img.refcountOrder) : new Float64Array(0);
    },
    async translate(guestOffset, snapshotId) {
      const view = snapshotId === undefined ? img.activeView() : await img.snapshotView(findById(snapshotId));
      return translate(img, view, guestOffset);
    },
    async exportRaw(snapshotId, job) {
      if (img.header.backingFile !== undefined && !img.backing) {
        throw new QcowError('NOT_SUPPORTED', `${img.store.name} has a backing file (${img.header.backingFile}), which is not open here: its raw disk cannot be exported`);
      }
      const layer = snapshotId === null ? img : await snapshotLayer(img, { id: snapshotId });
      const size = layer.virtualSize;
      const CHUNK = 4 << 20;
      const zeros = new Uint8Array(CHUNK);
      const parts: BlobPart[] = [];
      let done = 0;
      for (let pos = 0; pos < size; ) {
        if (job.signal.aborted) throw new QcowError('CANCELLED', 'The export was cancelled');
        const n = Math.min(CHUNK, size - pos);
        const ext = await layer.extents(pos, n);
        for (const e of ext) {
          const len = Math.min(e.length, pos + n - e.start);
          if (len <= 0) continue;
          if (e.data && !e.zero) parts.push((await layer.read(e.start, len)).slice() as Uint8Array<ArrayBuffer>);
          else parts.push(len === CHUNK ? zeros : zeros.subarray(0, len));
        }
        pos += n;
        done += n;
        job.progress({ phase: 'Exporting', done, total: size });
      }
      return new Blob(parts, { type: 'application/octet-stream' });
    },
    async diff(a, b, job) {
      const view = async (id: string | null) => (id === null ? img.activeView() : img.snapshotView(findById(id)));
      return diffViews(img, await view(a), await view(b), {
        onProgress: (phase, done, total) => job.progress({ phase, done, total }),
        isCancelled: () => job.signal.aborted,
      });
    },
    async snapshotSpace(snapshotId) {
      return snapshotId === null ? allSnapshotsSpace(img) : snapshotSpace(img, findById(snapshotId));
    },
    clusterUsers: (cluster, job) => clusterUsers(img, cluster, () => job.signal.aborted),
    async clusterMap(job) {
      // Check mode: the map must also draw images only a repair could open for writing.
      const budgeted = new BudgetedStore(img.store, 'cluster map');
      const c = await Qcow2Image.open(budgeted, { checkMode: true, backing: null });
      budgeted.setBudget(c);
      await prefetchMetadata(c, job.signal);
      const l = await buildLayout(c, {
        onProgress: (phase, done, total) => job.progress({ phase, done, total }),
        isCancelled: () => job.signal.aborted,
      });
      return { clusterSize: l.clusterSize, clusterCount: l.clusterCount, kinds: l.kinds, legend: [...l.legend], summary: { ...l.summary } };
    },
    check: (job, filename, repair) => check(img.store, job, filename, repair),
    createSnapshot: (name) => snapshotOp(img.store, (w) => createSnapshot(w, name)),
    revertSnapshot: (ref) => snapshotOp(img.store, (w) => revertSnapshot(w, ref)),
    deleteSnapshot: (ref) => snapshotOp(img.store, (w) => deleteSnapshot(w, ref)),
    close: () => img.close(),
  };
}

/**
 * Open an image for the views, read-only (writes open their own writable object). `backing` is
 * the layer the person chose for the header's backing file, or null: then reads of unallocated
 * clusters return zeros and a raw export is refused.
 */
export async function openImage(store: ImageStore, backing: Layer | null = null): Promise<EngineImage> {
  const img = await Qcow2Image.open(store, { writable: false, backing });
  // Structures every write must trust, damaged (a table cut off by the end of the file, an L1 not
  // cluster-aligned): not opened whole, so the image is read-only with the reason (repairable).
  const damage = findWriteDamage(img);
  if (damage) {
    await img.close();
    throw new QcowError('METADATA_CORRUPT', `${damage.message[0]!.toUpperCase()}${damage.message.slice(1)}; run Check`, { structure: damage.structure, offset: damage.offset });
  }
  return wrap(img, await readEncryptInfo(img).catch(() => undefined));
}

/** The one-line form of an open error: the message, the structure and the offsets it names. */
export function damageLine(e: QcowError): string {
  const d = e.details as { structure?: unknown; offset?: unknown; headerOffset?: unknown };
  const where: string[] = [];
  if (typeof d.structure === 'string') where.push(typeof d.offset === 'number' ? `${d.structure} at byte 0x${d.offset.toString(16)}` : d.structure);
  else if (typeof d.offset === 'number') where.push(`byte 0x${d.offset.toString(16)}`);
  if (typeof d.headerOffset === 'number') where.push(`header field at byte 0x${d.headerOffset.toString(16)}`);
  return where.length ? `${e.message} (${where.join(', ')})` : e.message;
}

/** The header fields that point at each table (qcow2-reference.md §1.2), by byte offset. */
const AREA_OF_HEADER_FIELD: Record<number, DamageArea> = { 36: 'l1-table', 40: 'l1-table', 48: 'refcount-table', 56: 'refcount-table', 60: 'snapshot-table', 64: 'snapshot-table' };
/** The engine's names for the structures its open errors are in (details.structure). */
const AREA_OF_STRUCTURE: Record<string, DamageArea> = {
  header: 'header',
  'active l1 table': 'l1-table',
  'l1 table': 'l1-table',
  'snapshot l1 table': 'snapshot-table',
  'l2 table': 'l2-table',
  'reference count table': 'refcount-table',
  'refcount table': 'refcount-table',
  'refcount block': 'refcount-block',
  'snapshot table': 'snapshot-table',
  'bitmap directory': 'bitmaps',
  'bitmap table': 'bitmaps',
};

/** Which structure an open error is in: by its code, the header field it names, or the structure's name. */
export function damageArea(e: QcowError): DamageArea {
  const d = e.details as { structure?: unknown; headerOffset?: unknown };
  if (e.code === 'SNAPSHOT_TABLE_INVALID') return 'snapshot-table';
  if (e.code === 'NO_REFCOUNT_TABLE') return 'refcount-table';
  if (typeof d.headerOffset === 'number' && AREA_OF_HEADER_FIELD[d.headerOffset]) return AREA_OF_HEADER_FIELD[d.headerOffset]!;
  return (typeof d.structure === 'string' && AREA_OF_STRUCTURE[d.structure.toLowerCase()]) || 'header';
}

function damageOf(e: QcowError, level: OpenDamage['level']): OpenDamage {
  const d = e.details as { structure?: unknown; offset?: unknown; headerOffset?: unknown };
  const out: OpenDamage = { level, code: e.code, area: damageArea(e), message: e.message, line: damageLine(e) };
  if (typeof d.structure === 'string') out.structure = d.structure;
  if (typeof d.offset === 'number') out.offset = d.offset;
  if (typeof d.headerOffset === 'number') out.headerOffset = d.headerOffset;
  return out;
}

/**
 * The header's fixed fields as stored (qcow2-reference.md §1.2), without validation: what the
 * Header view shows of an image whose header the engine refuses. Display only.
 */
function rawHeaderDTO(b: Uint8Array): HeaderDTO {
  // Display only: a u64 beyond 2^53 shows rounded, which is enough to see that it is wrong.
  const u64 = (off: number): number => Number(be64n(b, off));
  const version = be32(b, 4);
  const v3 = version >= 3;
  const clusterBits = be32(b, 20);
  const refcountOrder = v3 ? be32(b, 96) : 4;
  return {
    magic: be32(b, 0), version, backingFileOffset: u64(8), backingFileSize: be32(b, 16), clusterBits,
    clusterSize: 2 ** Math.min(clusterBits, 63),
    ...geometryDTO({ clusterBits: Math.min(clusterBits, 63), incompatibleFeatures: v3 ? be64n(b, 72) : 0n }), size: u64(24), cryptMethod: be32(b, 32), l1Size: be32(b, 36),
    l1TableOffset: u64(40), refcountTableOffset: u64(48), refcountTableClusters: be32(b, 56), nbSnapshots: be32(b, 60),
    snapshotsOffset: u64(64),
    incompatibleFeatures: v3 ? be32(b, 76) : 0, compatibleFeatures: v3 ? be32(b, 84) : 0, autoclearFeatures: v3 ? be32(b, 92) : 0,
    unknownIncompatible: v3 ? unknownBits(be64n(b, 72), C.INCOMPAT_MASK) : '',
    unknownCompatible: v3 ? unknownBits(be64n(b, 80), C.COMPAT_MASK) : '',
    unknownAutoclear: v3 ? unknownBits(be64n(b, 88), C.AUTOCLEAR_MASK) : '',
    refcountOrder, refcountBits: 2 ** Math.min(refcountOrder, 63), headerLength: v3 ? be32(b, 100) : 72,
    compressionType: v3 && be32(b, 100) > 104 ? b[104]! : 0, extensions: [],
  };
}

/** An image of which only the header can be shown: every other request fails as the open did. */
function headerOnly(header: HeaderDTO, error: QcowError): EngineImage {
  const fail = (): never => {
    throw new QcowError(error.code, error.message, error.details);
  };
  return {
    header: () => header,
    snapshots: () => [],
    info: (_fileSize, filename) => ({ filename, format: 'qcow2', 'virtual-size': header.size, 'cluster-size': header.clusterSize }),
    l1Page: async () => fail(),
    l2Table: async () => fail(),
    refcountTableSize: () => 0,
    refcountTablePage: async () => fail(),
    refcountBlock: async () => fail(),
    translate: async () => fail(),
    snapshotSpace: async () => fail(),
    clusterUsers: async () => fail(),
    diff: async () => fail(),
    exportRaw: async () => fail(),
    clusterMap: async () => fail(),
    check: async () => fail(),
    createSnapshot: async () => fail(),
    revertSnapshot: async () => fail(),
    deleteSnapshot: async () => fail(),
    close: async () => {},
  };
}

/**
 * After `openImage` refused an image: open as much of it as can be read (OpenDamage's levels),
 * or null when nothing can (not qcow2 at all, or the file cannot be read).
 */
export async function openDamaged(store: ImageStore, error: unknown, backing: Layer | null = null): Promise<{ engine: EngineImage; damage: OpenDamage } | null> {
  if (!(error instanceof QcowError) || error.code === 'NOT_QCOW2' || error.code === 'IO_ERROR') return null;
  try {
    // As qemu-img check opens it: a broken snapshot table reads as none, a missing refcount table as empty.
    const img = await Qcow2Image.open(store, { checkMode: true, writable: false, backing });
    return { engine: wrap(img), damage: damageOf(error, 'tables') };
  } catch {
    // fall through to the header alone
  }
  try {
    return { engine: headerOnly(headerDTO(await Qcow2Image.readHeader(store)), error), damage: damageOf(error, 'header') };
  } catch {
    // the header itself is refused: its fields as stored
  }
  const first = await store.read(0, 4096);
  return { engine: headerOnly(rawHeaderDTO(first), error), damage: damageOf(error, 'raw') };
}

/** A backing layer from a chosen file: a qcow2 image (its own backing file not followed) or raw. */
export async function openBackingLayer(store: ImageStore, backing: Layer | null = null): Promise<Layer> {
  const head = await store.read(0, 4);
  if (be32(head, 0) === C.QCOW_MAGIC) return Qcow2Image.open(store, { writable: false, backing });
  return new RawLayer(store);
}

/** Backing files followed at most (QEMU's own limit on a chain is far larger; this bounds a cycle). */
const MAX_BACKING_CHAIN = 16;

/** The last part of a backing file name as the header stores it (a path on the machine that made it). */
export function backingBaseName(name: string): string {
  return name.split(/[\\/]/).pop() ?? name;
}

/**
 * The backing chain of an image from the files the person chose: `first` is the image's own
 * backing file; a qcow2 file that names a backing file of its own gets the chosen file of that
 * name as its backing layer, and so on. Refused with a one-line reason when a link is missing
 * (the name of the file to choose as well), or the chain loops or is too long.
 */
export async function openBackingChain(first: { name: string; store: ImageStore }, others: ReadonlyArray<{ name: string; store: ImageStore }>): Promise<Layer> {
  const chain: Array<{ name: string; store: ImageStore }> = [first];
  for (;;) {
    const cur = chain[chain.length - 1]!;
    const head = await cur.store.read(0, 4);
    if (be32(head, 0) !== C.QCOW_MAGIC) break;
    const h = await Qcow2Image.readHeader(cur.store);
    if (h.backingFile === undefined) break;
    const want = backingBaseName(h.backingFile);
    const next = others.find((o) => o.name === want);
    if (!next) {
      throw new QcowError('BACKING_MISSING', `${cur.name} reads through its own backing file ${want}: choose it together with ${chain.map((c) => c.name).join(', ')}`, {
        structure: 'header', offset: h.backingFileOffset, backingFile: h.backingFile,
      });
    }
    if (chain.includes(next) || chain.length >= MAX_BACKING_CHAIN) {
      throw new QcowError('BACKING_CHAIN_TOO_DEEP', `The backing chain from ${first.name} loops or is longer than ${MAX_BACKING_CHAIN} files`, { structure: 'header' });
    }
    chain.push(next);
  }
  let layer: Layer | null = null;
  for (let i = chain.length - 1; i >= 0; i--) layer = await openBackingLayer(chain[i]!.store, layer);
  return layer!;
}

/** A borrowed layer: reads go through, closing it leaves the lender's store open. */
export function borrowedLayer(layer: Layer): Layer {
  return {
    get virtualSize() { return layer.virtualSize; },
    read: (o, n) => layer.read(o, n),
    extents: (o, n) => layer.extents(o, n),
    close: async () => {},
  };
}

/**
 * An open image as the backing layer of an overlay: its store read through a fresh read-only
 * engine object (with the image's own backing layer, if one is open), closing nothing it borrows.
 */
export async function openAsBacking(store: ImageStore, backing: Layer | null): Promise<Layer> {
  const img = await Qcow2Image.open(store, { writable: false, backing: backing ? borrowedLayer(backing) : null });
  return borrowedLayer(img);
}

/** An overlay written into memory: nothing to publish, nothing left when discarded. */
class MemoryOverlayTarget implements OverlayTarget {
  store: MemoryStore | null = null;
  constructor(readonly name: string) {}
  async open(): Promise<ImageStore> {
    this.store = new MemoryStore(new Uint8Array(0), { name: this.name });
    return this.store;
  }
  async publish(): Promise<void> {}
  async discard(): Promise<void> {
    this.store = null;
  }
}

/**
 * External snapshots of several images, all or none (core/image/external-snapshot.ts): one
 * overlay per base, in memory, returned as the overlays' bytes in order.
 */
export async function buildOverlays(items: { store: ImageStore; name: string; backingFile: string }[]): Promise<Uint8Array[]> {
  const bases: Qcow2Image[] = [];
  const targets = items.map((i) => new MemoryOverlayTarget(i.name));
  // The bases are never closed here: their stores belong to their open images.
  for (const i of items) bases.push(await Qcow2Image.open(i.store, { writable: false, backing: null }));
  await createExternalSnapshots(items.map((i, n) => ({ base: bases[n]!, backingFile: i.backingFile, target: targets[n]! })));
  return targets.map((t) => t.store!.bytes().slice());
}

/** The engine's demo image (core/image/demo.ts) in a writable memory store. */
export async function buildDemoStore(): Promise<MemoryStore> {
  return new MemoryStore(await buildDemoImage(), { name: 'demo.qcow2' });
}

function journalDTO(j: Journal): JournalDTO {
  return { operation: j.operation, entries: j.entries.map((e) => ({ ...e })), at: Date.now() };
}

/**
 * A write operation runs on its own writable Qcow2Image over the same store (fresh caches); the
 * worker then reopens the read-only view. Closing is left to the worker: Qcow2Image.close()
 * would close the store.
 */
async function snapshotOp(store: ImageStore, op: (img: Qcow2Image) => Promise<SnapshotOpResult>): Promise<JournalDTO> {
  const w = await Qcow2Image.open(store, { writable: true, backing: null });
  return journalDTO((await op(w)).journal);
}

/** A group operation over several stores, all or none; one journal per store, in order. */
export async function groupSnapshotOp(stores: ImageStore[], op: 'create' | 'revert' | 'delete', arg: string): Promise<JournalDTO[]> {
  const imgs: Qcow2Image[] = [];
  for (const s of stores) imgs.push(await Qcow2Image.open(s, { writable: true, backing: null }));
  const results =
    op === 'create' ? await groupCreate(imgs, arg) : op === 'revert' ? await groupRevert(imgs, { name: arg }) : await groupDelete(imgs, { name: arg });
  return results.map((r) => journalDTO(r.journal));
}

/** A guest write with a journal (the playground). */
export async function guestWriteOp(store: ImageStore, guestOffset: number, length: number, pattern: number): Promise<JournalDTO> {
  const w = await Qcow2Image.open(store, { writable: true, backing: null });
  const j = new Journal(`guest write of ${length} bytes of 0x${pattern.toString(16).padStart(2, '0')} at guest offset 0x${guestOffset.toString(16)}`);
  w.journal = j;
  await writeGuest(w, guestOffset, new Uint8Array(length).fill(pattern));
  await w.flush('write done');
  return journalDTO(j);
}

function findingDTO(f: Finding): CheckFindingDTO {
  const d: CheckFindingDTO = { kind: f.kind, message: f.message };
  if (f.structure !== undefined) d.structure = f.structure;
  if (f.hostOffset !== undefined) d.hostOffset = f.hostOffset;
  if (f.cluster !== undefined) d.cluster = f.cluster;
  if (f.l1Index !== undefined) d.l1Index = f.l1Index;
  if (f.l2Index !== undefined) d.l2Index = f.l2Index;
  return d;
}

/** qemu-img check, in check mode (tolerates what only a repair can fix); writable only to repair. */
async function check(store: ImageStore, job: JobContext, filename: string, repair?: 'leaks' | 'all'): Promise<CheckReportDTO> {
  const budgeted = new BudgetedStore(store, repair ? 'repair' : 'check');
  const img = await Qcow2Image.open(budgeted, { checkMode: true, writable: repair !== undefined, backing: null });
  budgeted.setBudget(img);
  await prefetchMetadata(img, job.signal);
  const r: CheckResult & { repairFindings?: Finding[] } = await runCheck(img, {
    ...(repair ? { repair } : {}),
    onProgress: (phase, done, total) => job.progress({ phase, done, total }),
    isCancelled: () => job.signal.aborted,
  });
  if (job.signal.aborted) throw new QcowError('CANCELLED', 'The check was cancelled');
  const out: CheckReportDTO = {
    filename,
    format: 'qcow2',
    'check-errors': r.checkErrors,
    corruptions: r.corruptions,
    leaks: r.leaks,
    findings: r.findings.map(findingDTO),
    droppedFindings: r.droppedFindings,
  };
  // qemu-img prints the optional counters only when non-zero.
  const opt: Array<[keyof CheckReportDTO, number]> = [
    ['image-end-offset', r.imageEndOffset], ['corruptions-fixed', r.corruptionsFixed], ['leaks-fixed', r.leaksFixed],
    ['total-clusters', r.totalClusters], ['allocated-clusters', r.allocatedClusters],
    ['fragmented-clusters', r.fragmentedClusters], ['compressed-clusters', r.compressedClusters],
  ];
  for (const [k, v] of opt) if (v !== 0) (out as unknown as Record<string, number>)[k] = v;
  if (r.repairFindings) out.repairFindings = r.repairFindings.map(findingDTO);
  if (r.failure !== undefined) out.failure = r.failure;
  if (r.rebuilt) out.rebuilt = true;
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    out.percent = {
      allocated: formatFixed((r.allocatedClusters * 100) / r.totalClusters, 2),
      fragmented: formatFixed((r.fragmentedClusters * 100) / r.allocatedClusters, 2),
      compressed: formatFixed((r.compressedClusters * 100) / r.allocatedClusters, 2),
    };
  }
  return out;
}
