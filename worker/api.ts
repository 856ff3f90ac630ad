// The engine API as the UI sees it, declared once, as types only. worker/engine.worker.ts
// implements it (checked with `satisfies`), web/lib/engine.ts wraps it with Comlink. Every DTO is
// plain and structured-clone safe; offsets are numbers (the engine converts u64 fields once);
// big arrays (cluster map kinds, raw bytes) are transferred, not copied.
import type { QcowErrorCode } from '../core/errors.ts';
import type { Qcow2Header } from '../core/format/header.ts';
import type { Translation, TranslationStep, TranslationResult } from '../core/analysis/translate.ts';
import type { SnapshotSpace } from '../core/analysis/snapshot-space.ts';
import type { ClusterUsers, ClusterUse } from '../core/analysis/cluster-users.ts';
import type { LayoutChanges, LayoutKindName } from '../core/analysis/layout.ts';
import type { DiffResult, DiffRange } from '../core/analysis/diff.ts';
import type { CrashOperation, CrashRehearsalDTO, CrashStopDTO, RuleBreak } from './crash-stage-api.ts';
import type { VerbsApi } from './verbs-api.ts';
import type { AnnotatedRegion, FieldReading as FieldReadingDTO, Landmark } from '../core/analysis/annotate.ts';
import type { FieldLayout, BitLayout } from '../core/format/layouts.ts';

export type { AnnotatedRegion, FieldReadingDTO, Landmark, FieldLayout, BitLayout };

/** The structures in one host cluster, laid out field by field (Hex, Annotate), and where each kind starts. */
export interface ClusterAnnotationDTO {
  clusterStart: number;
  regions: AnnotatedRegion[];
  landmarks: Landmark[];
  /**
   * One code per byte of the cluster: the index in `roles` of the role of the field holding it,
   * | 0x20 on every other table item, | 0x40 on a field's first byte; 0xff where no structure is.
   */
  bytes: Uint8Array;
  roles: FieldLayout['role'][];
}

export type { MeasureDTO, CompareDTO, CompareSideRef, BitmapDTO, VerbsDetails, RebaseTarget, CompareOptionsDTO } from './verbs-api.ts';
export type { QcowErrorCode, Translation, TranslationStep, TranslationResult, SnapshotSpace, DiffResult, DiffRange, ClusterUsers, ClusterUse };

/** Opaque handle of an image opened in the worker. */
export type ImageId = string;

/**
 * Where an image's bytes live, which decides how changes are saved:
 * - `handle`: a File System Access handle; changes wait in the tab until `save` writes them all to
 *   the person's file in one atomic writable session (or `discardChanges` drops them).
 * - `file`: a File (drop, file input, browsers without the picker) under a copy-on-write overlay;
 *   changes are saved with "Download image".
 * - `memory`: the demo image, built in memory.
 */
export type StoreKind = 'handle' | 'file' | 'memory';

export interface ImageState {
  id: ImageId;
  /** The file name (downloads are offered under this name). */
  name: string;
  kind: StoreKind;
  /** File size in bytes, as it now is. */
  fileSize: number;
  /** Writes are possible in principle (a handle may still need permission, see `needsPermission`). */
  writable: boolean;
  /** Why the image is read-only, when it is. */
  readOnlyReason?: string;
  /** Read-only, but a repair may write it (the corrupt or dirty bit, tables only a repair reads). */
  repairable?: boolean;
  /** A handle whose write permission has not been granted yet: the page must ask on a user gesture. */
  needsPermission: boolean;
  /** Changes exist that are in no file yet: Save (a handle) or "Download image" keeps them. */
  unsaved: boolean;
  /** Operations whose changes are in no file yet (since opening, the last save or download). */
  pendingChanges: number;
  /** Set after a download of an image opened from a File: the name it was offered under. */
  downloadedAs?: string;
  /** Changes an earlier tab kept for this very file (a reload, a crashed tab): `keptChanges` takes them back or drops them. */
  restorable?: { changes: number; at: number };
  /** The header names a backing file: the name of the file opened for it, or null while none is. */
  backing?: string | null;
  /** The image failed validation and was opened only as far as it can be read. */
  damage?: OpenDamage;
}

/**
 * Why an image could be opened only in part, and how far. The views that need what could not be
 * read show `line` next to the structure instead of their content; the rest stay explorable.
 */
export interface OpenDamage {
  /**
   * - `tables`: every view works; a structure checked on open (the snapshot table, the refcount
   *   table) failed and is shown empty, as qemu-img check sees the image.
   * - `header`: the header is valid but its tables cannot be interpreted: Header and Hex only.
   * - `raw`: the header itself fails validation: its fields as stored, and Hex.
   */
  level: 'tables' | 'header' | 'raw';
  code: QcowErrorCode;
  /** The structure the damage is in, as a code: the UI shows the note in the view that draws it. */
  area: DamageArea;
  message: string;
  /** The structure the error is about (the spec's names) and the byte offset it names. */
  structure?: string;
  offset?: number;
  /** For a table: the header field that points at it. */
  headerOffset?: number;
  /** The readable one-line form: the message, the structure and the offset. */
  line: string;
}

/** The qcow2 structures an open error can be in (OpenDamage.area). */
export type DamageArea = 'header' | 'l1-table' | 'l2-table' | 'refcount-table' | 'refcount-block' | 'snapshot-table' | 'bitmaps';

/**
 * The header fields the DTO copies as core/format/header.ts declares them: numbers and strings
 * only (the bigint feature masks are converted below), so the DTO stays structured-clone safe.
 */
type HeaderScalars = Pick<Qcow2Header,
  'magic' | 'version' | 'backingFileOffset' | 'backingFileSize' | 'clusterBits' | 'size' | 'cryptMethod' |
  'l1Size' | 'l1TableOffset' | 'refcountTableOffset' | 'refcountTableClusters' | 'nbSnapshots' |
  'snapshotsOffset' | 'refcountOrder' | 'headerLength' | 'compressionType' | 'backingFile' | 'backingFormat'>;

/** Decoded header (docs/qcow2-format.md §1.2), spec names camel-cased. */
export interface HeaderDTO extends HeaderScalars {
  clusterSize: number;
  /**
   * L2 geometry, worked out by the engine (core/format/entries.ts) so views need not: bytes per
   * L2 entry (16 with extended L2), entries per L2 table, subclusters per cluster (32 with
   * extended L2, else 1).
   */
  l2EntrySize: number;
  l2Entries: number;
  subclusters: number;
  /** Feature bit masks as numbers (only low bits are defined; unknown high bits are reported separately). */
  incompatibleFeatures: number;
  compatibleFeatures: number;
  autoclearFeatures: number;
  /** Unknown feature bits, as hex strings (they can sit above bit 31). */
  unknownIncompatible: string;
  unknownCompatible: string;
  unknownAutoclear: string;
  refcountBits: number;
  extensions: HeaderExtensionDTO[];
}

export interface HeaderExtensionDTO {
  type: number;
  /** Byte offset of the extension's type field in the file. */
  offset: number;
  length: number;
  /** Short name ("backing file format", "feature name table", ..., "unknown"). */
  name: string;
}

export interface SnapshotDTO {
  id: string;
  name: string;
  l1TableOffset: number;
  l1Size: number;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** Virtual disk size when the snapshot was taken (extra data), when recorded. */
  diskSize?: number;
  icount?: number;
  extraDataSize: number;
}

/** What the top bar and the Header/Snapshots views need right after opening. */
export interface ImageSummary {
  state: ImageState;
  header: HeaderDTO;
  snapshots: SnapshotDTO[];
  /** qemu-img's `info --output=json` object, as the engine's analysis/info.ts builds it. */
  info: Record<string, unknown>;
  /** After a write operation: every write it made, in order (docs/architecture.md "A journal of writes"). */
  journal?: JournalDTO;
}

export interface JournalEntryDTO {
  kind: 'write' | 'flush' | 'truncate';
  /** Host offset (write) or new size (truncate). */
  offset: number;
  length: number;
  purpose: string;
  /** The one write that makes the operation visible. */
  commit?: boolean;
}

export interface JournalDTO {
  operation: string;
  entries: JournalEntryDTO[];
  /** When the operation ran (ms since the epoch). */
  at: number;
  /** Who owned which host clusters before and after (absent for files too large to map twice). */
  changes?: LayoutChanges;
}

export interface L1EntryDTO {
  index: number;
  /** The raw 64-bit entry as 16 hex digits. */
  raw: string;
  l2Offset: number;
  copied: boolean;
  /** Reserved bits set (L1E_RESERVED_MASK), hex; empty when clean. */
  reserved: string;
}

export interface L2EntryDTO {
  index: number;
  raw: string;
  /** NORMAL, ZERO_ALLOC, ZERO_PLAIN, COMPRESSED, UNALLOCATED (QEMU's cluster types). */
  type: 'normal' | 'zero-alloc' | 'zero-plain' | 'compressed' | 'unallocated';
  hostOffset: number;
  copied: boolean;
  compressedSize?: number;
  /** Extended L2: the subcluster bitmap as 16 hex digits. */
  bitmap?: string;
}

export interface RefcountTableEntryDTO {
  index: number;
  raw: string;
  refblockOffset: number;
}

export interface TablePage<T> {
  /** Total entries in the table. */
  total: number;
  start: number;
  entries: T[];
}

/** What owns a host cluster: the engine's layout kinds (core/analysis/layout.ts); one colour each. */
export type ClusterKindName = LayoutKindName;

export interface ClusterMapDTO {
  clusterSize: number;
  clusterCount: number;
  /** One byte per host cluster, an index into `legend` (transferred, not copied). */
  kinds: Uint8Array;
  legend: ClusterKindName[];
  /** Clusters per kind. */
  summary: Record<ClusterKindName, number>;
}

export interface CheckFindingDTO {
  /** qemu-img check's classes: corruption, leak, check-error (the check's own failed read), info. */
  kind: 'corruption' | 'leak' | 'check-error' | 'info';
  /** qemu-img check's own wording. */
  message: string;
  /** Which structure it is about (the spec's names). */
  structure?: string;
  hostOffset?: number;
  cluster?: number;
  l1Index?: number;
  l2Index?: number;
}

/** qemu-img check's JSON names where the two overlap. */
export interface CheckReportDTO {
  filename: string;
  format: 'qcow2';
  'check-errors': number;
  corruptions: number;
  leaks: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
  findings: CheckFindingDTO[];
  /** Findings beyond those kept. */
  droppedFindings: number;
  /** Findings of the repair pass, when a repair ran (the report itself is the re-check after it). */
  repairFindings?: CheckFindingDTO[];
  /** Why the check could not complete (qemu-img: "Check failed: …"). */
  failure?: string;
  /** The refcount structure was rebuilt by the repair. */
  rebuilt?: boolean;
  /** qemu-img check's closing percentages as it prints them ("3.12"; printf's rounding), when clusters are allocated. */
  percent?: { allocated: string; fragmented: string; compressed: string };
}

export interface Progress {
  /** What is being done ("Reading refcount blocks", ...). */
  phase: string;
  done: number;
  total: number;
}

/** Progress callback (passed through Comlink.proxy by the client; throttled in the worker). */
export type ProgressFn = (p: Progress) => void;

/**
 * Long jobs take a job id (`cancel(jobId)` aborts the job, which then rejects with code CANCELLED)
 * and a progress callback. Both are separate, top-level arguments: Comlink proxies a callback only
 * when it is an argument itself, never inside an object. Every job (runJob in engine.worker.ts)
 * checks the signal before it starts and turns any failure after a cancel into CANCELLED; the long
 * ones poll it as they go (tests/interop/job-cancel.test.ts cancels each read-only kind):
 *   check (and repair)   between tables and phases (checkReport's isCancelled)
 *   clusterMap           between tables (buildLayout's isCancelled)
 *   diff                 between L2 tables (diffViews)
 *   snapshotSpace        between trees and every 4,096 clusters (snapshot-space.ts)
 *   exportRaw            between chunks (rawExport)
 *   clusterUsers         between trees (returns the trees walked so far)
 *   externalSnapshot     between images, before anything is written
 *   save                 between files (saveAllOrNone: all or none)
 *   create/revert/deleteSnapshot, groupSnapshot: checked before the first write only; once writing,
 *   they run to the end (a half-done snapshot operation is what the write ordering avoids).
 */
export type JobId = string | undefined;

/** A download built from the image's store: File slices + patch pages, never one big copy. */
export interface ImageDownload {
  name: string;
  blob: Blob;
}

/**
 * One overlay of an external snapshot (core/image/external-snapshot.ts), built in the worker's
 * memory for the page to save next to its original, then open with `openOverlay`.
 */
export interface ExternalOverlay {
  /** The image it was taken of: the overlay's backing file. */
  baseId: ImageId;
  /** The overlay's file name: the original's name with the suffix before its extension. */
  name: string;
  /** The backing file name written into the overlay: the original's file name (relative). */
  backingFile: string;
  blob: Blob;
  /**
   * The original as it now is, when its bytes are in no file on disk (the demo image, a copy with
   * changes not downloaded): to be saved under `backingFile` too, or the chain has no base.
   */
  base?: ImageDownload;
}

export interface EngineApi extends VerbsApi {
  /** Open a File (drop, file input): read-only source under a copy-on-write overlay. */
  openFile(file: File): Promise<ImageSummary>;
  /** Open a File System Access handle; changes wait in the tab until `save`. */
  openHandle(handle: FileSystemFileHandle): Promise<ImageSummary>;
  /**
   * Write the pending changes of every image in `ids` (opened through handles) to their files, all
   * or none: each file in one atomic writable session; if a later one fails, the ones saved are
   * put back. Progress counts bytes written. Cancelled or failed: every file as it was, the
   * changes still pending.
   */
  save(ids: ImageId[], jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary[]>;
  /** Drop an image's pending changes: it reads the file as it now is on disk. */
  discardChanges(id: ImageId): Promise<ImageSummary>;
  /** Take back (`restore`) or drop the changes an earlier tab kept for this file (ImageState.restorable). */
  keptChanges(id: ImageId, restore: boolean): Promise<ImageSummary>;
  /** Build and open the demo image in memory. */
  openDemo(): Promise<ImageSummary>;
  /** Build a gallery image (core/gallery) in memory and open its files, bases first (the one to show is last). */
  openGallery(id: string): Promise<ImageSummary[]>;
  close(id: ImageId): Promise<void>;
  /**
   * Open the file an image's header names as its backing file (a qcow2 image, read-only, whose
   * own backing file is not followed; or a raw file), so reads of clusters the image does not
   * hold reach it.
   */
  /**
   * Open the image's backing file: the chosen file named as the header names it (else the first);
   * further chosen files serve as the backing files of qcow2 backing files that name them.
   */
  attachBacking(id: ImageId, files: File | File[]): Promise<ImageSummary>;
  summary(id: ImageId): Promise<ImageSummary>;
  /**
   * External snapshot of one image or a group, all or none: a new empty overlay per image, named
   * like it with `suffix` before the extension, whose backing file is the image. Nothing is
   * opened or saved here: the page saves the overlays, then opens each with `openOverlay`.
   */
  externalSnapshot(ids: ImageId[], suffix: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ExternalOverlay[]>;
  /**
   * Open a saved overlay (a File, or a handle: writes go to that file) with the open image
   * `baseId` as its backing layer, so reads of clusters the overlay lacks fall through. While the
   * overlay is open the base is read-only (a write to it would change what the overlay reads).
   */
  openOverlay(baseId: ImageId, source: File | FileSystemFileHandle): Promise<ImageSummary>;
  l1Page(id: ImageId, start: number, count: number): Promise<TablePage<L1EntryDTO>>;
  l2Table(id: ImageId, l2Offset: number): Promise<L2EntryDTO[]>;
  refcountTablePage(id: ImageId, start: number, count: number): Promise<TablePage<RefcountTableEntryDTO>>;
  /** Refcounts of one refcount block (empty when the reftable entry is 0), transferred. */
  refcountBlock(id: ImageId, refblockIndex: number): Promise<Float64Array>;
  /** Follow a guest offset through L1 and L2, each step explained (the active disk, or a snapshot by ID). */
  translate(id: ImageId, guestOffset: number, snapshotId?: string): Promise<Translation>;
  /**
   * Guest clusters that differ between two views, each a snapshot (by ID) or the active disk
   * (null), with the host clusters that hold them on either side.
   */
  diff(id: ImageId, a: string | null, b: string | null, jobId?: JobId, onProgress?: ProgressFn): Promise<DiffResult>;
  /** What a snapshot holds alone (freed by deleting it) and what it shares; null: all snapshots together (freed by deleting every one). */
  snapshotSpace(id: ImageId, snapshotId: string | null, jobId?: JobId, onProgress?: ProgressFn): Promise<SnapshotSpace>;
  /** Who uses host cluster `cluster`: its refcount, and the active disk's and each snapshot's references to it (Inspector). */
  clusterUsers(id: ImageId, cluster: number, jobId?: JobId, onProgress?: ProgressFn): Promise<ClusterUsers>;
  clusterMap(id: ImageId, jobId?: JobId, onProgress?: ProgressFn): Promise<ClusterMapDTO>;
  check(id: ImageId, repair?: 'leaks' | 'all', jobId?: JobId, onProgress?: ProgressFn): Promise<CheckReportDTO>;
  createSnapshot(id: ImageId, name: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary>;
  revertSnapshot(id: ImageId, idOrName: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary>;
  deleteSnapshot(id: ImageId, idOrName: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary>;
  /**
   * One snapshot operation over several images as a group: all or none (core/image/group.ts).
   * `arg` is the new name (create) or the snapshot's tag (revert, delete: looked up by name in
   * each image, since IDs differ between images).
   */
  groupSnapshot(ids: ImageId[], op: 'create' | 'revert' | 'delete', arg: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary[]>;
  /**
   * Playground: write `length` bytes of `pattern` at a guest offset of the active disk (a change
   * held in the tab like any other, until saved or downloaded); the result carries the
   * journal of what the write did (allocation, copy-on-write, refcounts).
   */
  writePattern(id: ImageId, guestOffset: number, length: number, pattern: number): Promise<ImageSummary>;
  readBytes(id: ImageId, hostOffset: number, length: number): Promise<Uint8Array>;
  /** Hex, Annotate: the structures in the cluster at `clusterStart`, field by field. */
  annotate(id: ImageId, clusterStart: number): Promise<ClusterAnnotationDTO>;
  /** Hex, Annotate: the field under host byte `hostOffset` (in the cluster at `clusterStart`), its value decoded; null when no structure holds it. */
  readField(id: ImageId, clusterStart: number, hostOffset: number): Promise<FieldReadingDTO | null>;
  download(id: ImageId): Promise<ImageDownload>;
  /**
   * The guest disk as a raw file (the active disk, or a snapshot by ID), as a Blob: data read in
   * chunks, zero and unallocated ranges sharing one zero buffer, so memory holds only the data.
   * Refused for images with a backing file (it is not opened in the browser).
   */
  exportRaw(id: ImageId, snapshotId: string | null, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageDownload>;
  cancel(jobId: string): Promise<void>;
  /** Crash stage (worker/crash-stage.ts): rehearse an operation on a copy; nothing reaches the image. */
  crashRehearse(id: ImageId, op: CrashOperation): Promise<CrashRehearsalDTO>;
  /** The disk after a power cut right after write `stop` of a rehearsal, judged by the check. */
  crashStop(rehearsalId: string, stop: number, keep: boolean, how: RuleBreak | null): Promise<CrashStopDTO>;
  /** The same disk as a file to download. */
  crashImage(rehearsalId: string, stop: number, keep: boolean, how: RuleBreak | null): Promise<ImageDownload>;
}

/** The plain form of a QcowError on the wire (core/errors.ts toJSON). */
export interface WireQcowError {
  name: 'QcowError';
  code: QcowErrorCode;
  message: string;
  details: Record<string, unknown>;
}
