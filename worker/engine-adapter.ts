// The one module of the worker that talks to the engine (core/). Images are opened and every
// operation runs through the engine layer (core/ops/, the same the command line uses); what the
// page reads of an open image goes through the EngineImage interface below. DTOs are built here:
// plain numbers and strings, no bigint, no class.
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import * as C from '../core/format/constants.ts';
import { decodeL1Entry, decodeL2Entry, ClusterType, l1ReservedHex, l2EntrySize, rawHex } from '../core/format/entries.ts';
import { decodeRefblock, reftableEntry } from '../core/format/refcount.ts';
import { be32 } from '../core/format/bytes.ts';
import { l2EntriesOf, l2GeometryOf, readHeaderFields, type HeaderFields, type Qcow2Header } from '../core/format/header.ts';
import type { Snapshot } from '../core/format/snapshot-table.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import type { Layer, LentLayer } from '../core/image/layer.ts';
import type { Journal } from '../core/image/journal.ts';
import { loadRefblock, reftableSize } from '../core/image/refcount.ts';
import { buildInfo, readEncryptInfo, type EncryptInfo } from '../core/analysis/info.ts';
import { translate, type Translation } from '../core/analysis/translate.ts';
import { allSnapshotsSpace, snapshotSpace, type SnapshotSpace } from '../core/analysis/snapshot-space.ts';
import { clusterUsers, type ClusterUsers } from '../core/analysis/cluster-users.ts';
import { findWriteDamage } from '../core/image/snapshot-precheck.ts';
import { BudgetedStore, openBudgeted } from './job-budget.ts';
import { buildLayout } from '../core/analysis/layout.ts';
import { diffViews, type DiffResult } from '../core/analysis/diff.ts';
import { buildDemoImage } from '../core/image/demo.ts';
import { MemoryStore } from '../core/io/memory-store.ts';
import { openImage as openOp, type BackingResolver, type ChainLink } from '../core/ops/open.ts';
import { checkJson, checkReport, type Finding } from '../core/ops/check.ts';
import { rawExport } from '../core/ops/export.ts';
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
  /** The engine object behind the views, for operations; null when only the header could be read. */
  readonly image: Qcow2Image | null;
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

/** The header as the page shows it; `h` may be a header the engine refused (its fields as stored). */
function headerDTO(h: HeaderFields & Partial<Pick<Qcow2Header, 'extensions' | 'backingFile' | 'backingFormat'>>): HeaderDTO {
  const d: HeaderDTO = {
    magic: h.magic,
    version: h.version,
    backingFileOffset: h.backingFileOffset,
    backingFileSize: h.backingFileSize,
    clusterBits: h.clusterBits,
    clusterSize: 2 ** Math.min(h.clusterBits, 63),
    ...geometryDTO({ clusterBits: Math.min(h.clusterBits, 63), incompatibleFeatures: h.incompatibleFeatures }),
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
    refcountBits: 2 ** Math.min(h.refcountOrder, 63),
    headerLength: h.headerLength,
    compressionType: h.compressionType,
    extensions: (h.extensions ?? []).map((x) => ({ type: x.type, offset: x.offset, length: x.data.length, name: EXT_NAMES[x.type] ?? 'unknown' })),
  };
  if (h.backingFile !== undefined) d.backingFile = h.backingFile;
  if (h.backingFormat !== undefined) d.backingFormat = h.backingFormat;
  return d;
}

function snapshotDTO(s: Snapshot): SnapshotDTO {
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
 * reads in flight at once (a browser File read costs ~1 ms whatever its size, docs/platform.md).
 */
async function prefetchMetadata(img: Qcow2Image, signal?: AbortSignal): Promise<void> {
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

function findIn(img: Qcow2Image, id: string): Snapshot {
  const sn = img.snapshots.find((x) => x.idStr === id);
  if (!sn) throw new QcowError('SNAPSHOT_NOT_FOUND', `Snapshot with ID ${id} not found`, { id });
  return sn;
}

/** A job's own open of an image (openBudgeted): check mode, over the image's backing layer. */
const budgetedOpen = (store: ImageStore, backing: Layer | null): Promise<Qcow2Image> => openOp(link(store), { checkMode: true, backing });

/** Wrap an opened Qcow2Image as the worker's EngineImage. */
function wrap(img: Qcow2Image, encrypt?: EncryptInfo): EngineImage {
  const header = headerDTO(img.header);
  const findById = (id: string): Snapshot => findIn(img, id);
  const snapshots = img.snapshots.map(snapshotDTO);
  return {
    image: img,
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
      const c = await openBudgeted(img, 'export', budgetedOpen, 2 * img.store.size());
      const exp = await rawExport(c, {
        ...(snapshotId === null ? {} : { snapshot: { id: snapshotId } }),
        onProgress: (done, total) => job.progress({ phase: 'Exporting', done, total }),
        isCancelled: () => job.signal.aborted,
      });
      // the ranges without data read as zeros: one shared block of zeros fills them
      const ZEROS = 4 << 20;
      const zeros = new Uint8Array(Math.min(ZEROS, exp.size));
      const parts: BlobPart[] = [];
      let at = 0;
      const zeroFill = (to: number): void => {
        for (; at < to; at = Math.min(to, at + ZEROS)) parts.push(to - at >= ZEROS ? zeros : zeros.subarray(0, to - at));
      };
      await exp.run((pos, bytes) => {
        zeroFill(pos);
        parts.push(bytes.slice() as Uint8Array<ArrayBuffer>);
        at = pos + bytes.length;
      });
      zeroFill(exp.size);
      return new Blob(parts, { type: 'application/octet-stream' });
    },
    async diff(a, b, job) {
      const c = await openBudgeted(img, 'diff', budgetedOpen);
      const view = async (id: string | null) => (id === null ? c.activeView() : c.snapshotView(findIn(c, id)));
      return diffViews(c, await view(a), await view(b), {
        onProgress: (phase, done, total) => job.progress({ phase, done, total }),
        isCancelled: () => job.signal.aborted,
      });
    },
    async snapshotSpace(snapshotId, job) {
      const c = await openBudgeted(img, 'snapshot space', budgetedOpen);
      const stop = () => job.signal.aborted;
      return snapshotId === null ? allSnapshotsSpace(c, stop) : snapshotSpace(c, findIn(c, snapshotId), stop);
    },
    clusterUsers: (cluster, job) => clusterUsers(img, cluster, () => job.signal.aborted),
    async clusterMap(job) {
      // Check mode: the map must also draw images only a repair could open for writing.
      const c = await openBudgeted(img, 'cluster map', budgetedOpen);
      await prefetchMetadata(c, job.signal);
      const l = await buildLayout(c, {
        onProgress: (phase, done, total) => job.progress({ phase, done, total }),
        isCancelled: () => job.signal.aborted,
      });
      return { clusterSize: l.clusterSize, clusterCount: l.clusterCount, kinds: l.kinds, legend: [...l.legend], summary: { ...l.summary } };
    },
    check: (job, filename, repair) => check(img.store, job, filename, repair),
    close: () => img.close(),
  };
}

/** The store as the engine layer names it. */
function link(store: ImageStore): ChainLink {
  return { name: store.name, store };
}

/**
 * Open an image for the views, read-only. `backing` is the layer the person chose for the
 * header's backing file, or null: then reads of unallocated clusters return zeros and a raw
 * export is refused.
 */
export async function openImage(store: ImageStore, backing: Layer | null = null): Promise<EngineImage> {
  return viewOf(await openOp(link(store), { backing }));
}

async function viewOf(img: Qcow2Image): Promise<EngineImage> {
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
function damageLine(e: QcowError): string {
  const d = e.details as { structure?: unknown; offset?: unknown; headerOffset?: unknown };
  const where: string[] = [];
  if (typeof d.structure === 'string') where.push(typeof d.offset === 'number' ? `${d.structure} at byte 0x${d.offset.toString(16)}` : d.structure);
  else if (typeof d.offset === 'number') where.push(`byte 0x${d.offset.toString(16)}`);
  if (typeof d.headerOffset === 'number') where.push(`header field at byte 0x${d.headerOffset.toString(16)}`);
  return where.length ? `${e.message} (${where.join(', ')})` : e.message;
}

/** The header fields that point at each table (docs/qcow2-format.md §1.2), by byte offset. */
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
function damageArea(e: QcowError): DamageArea {
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

/** An image of which only the header can be shown: every other request fails as the open did. */
function headerOnly(header: HeaderDTO, error: QcowError): EngineImage {
  const fail = (): never => {
    throw new QcowError(error.code, error.message, error.details);
  };
  return {
    image: null,
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
    const img = await openOp(link(store), { checkMode: true, backing });
    return { engine: wrap(img), damage: damageOf(error, 'tables') };
  } catch {
    // fall through to the header alone
  }
  try {
    return { engine: headerOnly(headerDTO(await Qcow2Image.readHeader(store)), error), damage: damageOf(error, 'header') };
  } catch {
    // the header itself is refused: its fields as stored (display only: a u64 beyond 2^53 shows
    // rounded, which is enough to see that it is wrong)
  }
  const first = await store.read(0, 4096);
  return { engine: headerOnly(headerDTO(readHeaderFields(first)), error), damage: damageOf(error, 'raw') };
}

/** The last part of a backing file name as the header stores it (a path on the machine that made it). */
export function backingBaseName(name: string): string {
  return name.split(/[\\/]/).pop() ?? name;
}

/**
 * Backing files from the files the person chose (the browser's resolver for the engine layer's
 * open): the file of the name the header gives (its last part), or for the image's own backing
 * file the first chosen when none has that name. A missing link is refused with the name of the
 * file to choose as well. The chain's depth is limited by the engine layer, as on the command line.
 */
function chosenFilesResolver(files: ReadonlyArray<ChainLink>): BackingResolver {
  const chosen: string[] = [];
  return {
    async backing(image, name, format, depth) {
      const want = backingBaseName(name);
      const next = files.find((f) => f.name === want) ?? (depth === 1 ? files[0] : undefined);
      if (!next) {
        throw new QcowError('BACKING_MISSING', `${image.name} reads through its own backing file ${want}: choose it together with ${chosen.join(', ')}`, {
          structure: 'header', backingFile: name,
        });
      }
      chosen.push(next.name);
      return { name: next.name, store: next.store, format };
    },
  };
}

/** Reopen an image with the backing chain from the chosen files (core/ops/open.ts follows it). */
export async function openWithChosenBacking(store: ImageStore, files: ReadonlyArray<ChainLink>): Promise<EngineImage> {
  return viewOf(await openOp(link(store), { resolver: chosenFilesResolver(files) }));
}

/** A borrowed layer: reads go through, closing it leaves the lender's store open. */
function borrowedLayer(layer: Layer): LentLayer {
  return {
    lent: layer,
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
  return borrowedLayer(await openOp(link(store), { backing: backing ? borrowedLayer(backing) : null }));
}

/** The engine's demo image (core/image/demo.ts) in a writable memory store. */
export async function buildDemoStore(): Promise<MemoryStore> {
  return new MemoryStore(await buildDemoImage(), { name: 'demo.qcow2' });
}

export function journalDTO(j: Journal): JournalDTO {
  return { operation: j.operation, entries: j.entries.map((e) => ({ ...e })), at: Date.now() };
}

/**
 * The engine object a write operation runs on: writable, over the image's store and its backing
 * layer (a partial-cluster write reads what lies below). The store stays the worker's: this
 * object is never closed (closing would close the store); the worker reopens its views after.
 */
export function openForWrite(store: ImageStore, backing: Layer | null): Promise<Qcow2Image> {
  return openOp(link(store), { writable: true, backing });
}

/** Host clusters mapped before and after a write, for its "what changed" (files up to this many clusters). */
const MAX_CHANGE_MAP_CLUSTERS = 1 << 18;

export type ClusterKinds = { kinds: Uint8Array; clusterSize: number };

/** The owner of every host cluster, or null when the file is too large to map twice per operation or cannot be mapped. */
export async function clusterKinds(img: Qcow2Image | null): Promise<ClusterKinds | null> {
  if (!img || img.store.size() / img.clusterSize > MAX_CHANGE_MAP_CLUSTERS) return null;
  try {
    await prefetchMetadata(img);
    const l = await buildLayout(img);
    return { kinds: l.kinds, clusterSize: l.clusterSize };
  } catch {
    return null;
  }
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
  const img = await openOp(link(budgeted), { checkMode: true, writable: repair !== undefined });
  // a repair also reads the leaked clusters it frees (to empty those that are not): at most the file
  budgeted.setBudget(img, repair ? store.size() : 0);
  await prefetchMetadata(img, job.signal);
  const r = await checkReport(img, {
    ...(repair ? { repair } : {}),
    onProgress: (phase, done, total) => job.progress({ phase, done, total }),
    isCancelled: () => job.signal.aborted,
  });
  // qemu-img's counters (the optional ones only when non-zero), and the findings
  const { filename: _f, format: _q, ...counters } = checkJson(filename, r);
  const out: CheckReportDTO = {
    ...(counters as Partial<CheckReportDTO>),
    filename,
    format: 'qcow2',
    'check-errors': r.checkErrors,
    corruptions: r.corruptions,
    leaks: r.leaks,
    findings: r.findings.map(findingDTO),
    droppedFindings: r.droppedFindings,
  };
  if (r.repairFindings) out.repairFindings = r.repairFindings.map(findingDTO);
  if (r.failure !== undefined) out.failure = r.failure;
  if (r.rebuilt) out.rebuilt = true;
  if (r.percent) out.percent = r.percent;
  return out;
}
