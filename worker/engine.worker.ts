// The engine's home in the browser: a module Web Worker exposing EngineApi (worker/api.ts) with
// Comlink. It owns every open image (its store and its engine object), runs long jobs with
// throttled progress and cancellation, and makes each write operation all-or-nothing in the tab;
// a person's file (a File System Access handle) is written only by `save`, all changes at once.
import * as Comlink from 'comlink';
import './transfer.ts';
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import type {
  EngineApi,
  ImageDownload,
  ImageId,
  ImageState,
  ImageSummary,
  JobId,
  ProgressFn,
  JournalDTO,
  ExternalOverlay,
  OpenDamage,
  Progress,
  StoreKind,
} from './api.ts';
import {
  backingBaseName, buildDemoStore, journalDTO, openAsBacking, openDamaged, openForWrite, openImage,
  openWithChosenBacking, type ClusterKinds, type EngineImage, type JobContext,
  layoutChanges,
} from './engine-adapter.ts';
import type { Layer } from '../core/image/layer.ts';
import type { Journal } from '../core/image/journal.ts';
import type { Qcow2Image } from '../core/image/qcow2-image.ts';
import { groupSnapshotOp, overlaysInMemory, snapshotOp, type SnapshotVerb } from '../core/ops/snapshot.ts';
import { guestWrite } from '../core/ops/write.ts';
import { FileStore } from './stores/file-store.ts';
import { kindsAfter, kindsBefore } from './change-map.ts';
import { HandleStore, saveAllOrNone } from './stores/handle-store.ts';
import { TxStore, isTransactional } from './stores/tx-store.ts';
import { openGalleryFiles } from './gallery.ts';
import { MemoryStore } from '../core/io/memory-store.ts';
import { crashImage, crashRehearse, crashStop } from './crash-stage.ts';
import type { CrashOperation } from './crash-stage-api.ts';
import { dropStaleLender, verbsApi } from './verbs.ts';
import { annotationOf, fieldReadingOf } from './annotate.ts';
import { cancelJob, runJob } from './jobs.ts';

export interface OpenImage {
  id: ImageId;
  name: string;
  kind: StoreKind;
  store: ImageStore;
  engine: EngineImage;
  readOnlyReason?: string;
  /** The layer chosen for the header's backing file, and the name of its file. */
  backing: Layer | null;
  backingName: string | null;
  /** The corrupt bit is set: only a repair may write. */
  corrupt: boolean;
  /** The dirty bit is set (stale lazy refcounts): only a repair may write, then anything may. */
  dirty: boolean;
  /** A write operation is running: operations on one image are serialised. */
  queue: Promise<unknown>;
  /** Open overlays reading through this image (it is their backing layer): it stays read-only. */
  borrowers: Set<OpenImage>;
  /** The open image whose store this one's backing layer reads (an overlay opened by openOverlay). */
  lender: OpenImage | null;
  /** Closed by the page while still lent: its store is closed when the last borrower closes. */
  closed: boolean;
  /** The image failed validation and is open only as far as it can be read (read-only). */
  damage?: OpenDamage;
}

const images = new Map<ImageId, OpenImage>();
let nextId = 1;

/**
 * Close an image's engine object and store (and its backing layer: a borrowed one closes nothing
 * of its lender). A lender still read by open overlays keeps its store until the last one closes.
 */
async function closeImage(img: OpenImage): Promise<void> {
  img.closed = true;
  if (img.borrowers.size) return;
  await img.engine.close().catch(() => img.store.close());
  const lender = img.lender;
  if (lender) {
    lender.borrowers.delete(img);
    if (lender.closed && !images.has(lender.id)) await closeImage(lender);
  }
}

/** The image as it now is, as a Blob under its name ("Download image"). */
async function downloadOf(img: OpenImage): Promise<ImageDownload> {
  const s = img.store;
  let blob: Blob;
  if (s instanceof FileStore) blob = s.toBlob(); // a handle's too: the file with the changes held in the tab
  else if (s instanceof TxStore && s.base instanceof MemoryStore) blob = new Blob([s.base.bytes().slice()], { type: 'application/octet-stream' });
  else if (s instanceof MemoryStore) blob = new Blob([s.bytes().slice()], { type: 'application/octet-stream' });
  else throw new QcowError('NOT_SUPPORTED', 'This image cannot be downloaded');
  return { name: img.name, blob };
}

/** `disk.qcow2` + `-overlay` → `disk-overlay.qcow2` (the suffix goes before the extension). */
function overlayName(name: string, suffix: string): string {
  const dot = name.lastIndexOf('.');
  return dot > 0 ? name.slice(0, dot) + suffix + name.slice(dot) : name + suffix;
}

function get(id: ImageId): OpenImage {
  const img = images.get(id);
  if (!img) throw new QcowError('INVALID_ARGUMENT', `No open image with id ${id}`);
  return img;
}

/** Why writes are refused now, if they are. */
function readOnlyReason(img: OpenImage): string | undefined {
  if (img.readOnlyReason) return img.readOnlyReason;
  if (img.borrowers.size) {
    const names = [...img.borrowers].map((b) => b.name).join(', ');
    return `It is the backing file of ${names}: a write would change what the overlay reads`;
  }
  return undefined;
}

/**
 * A repair may write to an image marked corrupt or dirty, or whose snapshot or refcount table only
 * a repair can read (qemu-img check -r opens it in check mode too), unless an overlay reads it.
 */
function repairable(img: OpenImage): boolean {
  return (img.corrupt || img.dirty || img.damage?.level === 'tables') && !img.borrowers.size;
}

function state(img: OpenImage): ImageState {
  const s: ImageState = {
    id: img.id,
    name: img.name,
    kind: img.kind,
    fileSize: img.store.size(),
    writable: img.store.writable && !readOnlyReason(img),
    needsPermission: false,
    unsaved: img.store instanceof HandleStore ? img.store.unsaved : img.store instanceof TxStore && img.store.changes > 0,
    pendingChanges: img.store instanceof TxStore ? img.store.changes : 0,
  };
  if (img.store instanceof TxStore && img.store.savedAs && !s.unsaved) s.downloadedAs = img.store.savedAs;
  if (img.store instanceof HandleStore && img.store.kept) s.restorable = { changes: img.store.kept.changes, at: img.store.kept.at };
  const ro = readOnlyReason(img);
  if (ro) s.readOnlyReason = ro;
  if (ro && img.store.writable && repairable(img)) s.repairable = true;
  if (img.engine.header().backingFile !== undefined) s.backing = img.backingName;
  if (img.damage) s.damage = img.damage;
  return s;
}

function withoutKey(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const { [key]: _, ...rest } = o;
  return rest;
}

async function summaryOf(img: OpenImage): Promise<ImageSummary> {
  const s = state(img);
  if (img.store instanceof HandleStore) s.needsPermission = !(await img.store.canWrite());
  return {
    state: s,
    header: img.engine.header(),
    snapshots: img.engine.snapshots(),
    // The page reads the list from `snapshots`: info's own copy would double a message that can
    // hold 65,535 entries (decoded in one main-thread task).
    info: withoutKey(img.engine.info(img.store.size(), img.name), 'snapshots'),
  };
}

/** Open an image whole, or else as much of it as can be read (a hostile or damaged image). */
async function openWhatCanBeRead(store: ImageStore, backing: Layer | null): Promise<{ engine: EngineImage; damage?: OpenDamage }> {
  try {
    return { engine: await openImage(store, backing) };
  } catch (e) {
    // A hostile or damaged image: open what can be read, read-only, and say what cannot.
    const partial = await openDamaged(store, e, backing);
    if (!partial) throw e;
    return partial;
  }
}

/** Record how far an image could be opened; a damaged image is read-only (a repair aside). */
function setDamage(img: OpenImage, damage: OpenDamage | undefined): void {
  img.damage = damage;
  const incompatible = img.engine.header().incompatibleFeatures;
  img.corrupt = (incompatible & 2) !== 0;
  img.dirty = (incompatible & 1) !== 0;
  if (damage) img.readOnlyReason = `It could not be opened whole: ${damage.line}`;
  else if (img.corrupt) img.readOnlyReason = 'The image is marked corrupt: it can only be repaired';
  else if (img.dirty) img.readOnlyReason = 'The dirty bit is set (lazy refcounts were not written back): repair it in Check (Repair all) before writing';
  else img.readOnlyReason = undefined;
}

/** Replace an image's engine object with a fresh one over its store (after writes, or a failure). */
async function reopen(img: OpenImage): Promise<void> {
  const { engine, damage } = await openWhatCanBeRead(img.store, img.backing);
  img.engine = engine;
  setDamage(img, damage);
}

async function register(name: string, kind: StoreKind, store: ImageStore, lender: OpenImage | null = null): Promise<ImageSummary> {
  let engine: EngineImage;
  let backing: Layer | null = null;
  let damage: OpenDamage | undefined;
  try {
    if (lender) backing = await openAsBacking(lender.store, lender.backing);
    ({ engine, damage } = await openWhatCanBeRead(store, backing));
    if (lender && engine.header().backingFile === undefined) {
      throw new QcowError('INVALID_ARGUMENT', `${name} names no backing file: it is not an overlay of ${lender.name}`);
    }
  } catch (e) {
    await store.close().catch(() => {});
    throw e;
  }
  const h = engine.header();
  const corrupt = (h.incompatibleFeatures & 2) !== 0;
  const img: OpenImage = {
    id: `img${nextId++}`, name, kind, store, engine, corrupt, dirty: false, backing, backingName: lender?.name ?? null,
    queue: Promise.resolve(), borrowers: new Set(), lender, closed: false,
  };
  setDamage(img, damage);
  lender?.borrowers.add(img);
  images.set(img.id, img);
  return summaryOf(img);
}

/** Before an operation on a handle store: its write session, and fresh engine objects if the file changed on disk. */
async function beginWrite(img: OpenImage): Promise<void> {
  const store = img.store;
  if (!(store instanceof FileStore)) return;
  await store.beginWrite();
  if (store instanceof HandleStore && store.changedOnDisk) {
    store.changedOnDisk = false;
    await reopen(img);
  }
}

function assertWritable(img: OpenImage, repairing = false): void {
  const ro = readOnlyReason(img);
  if (ro && !(repairing && repairable(img))) throw new QcowError('READ_ONLY', `${img.name} is read-only: ${ro}`);
}

/** A summary after a journaled operation, with what it changed in the cluster map. */
async function summaryWithJournal(img: OpenImage, journal: Journal, before: ClusterKinds | null): Promise<ImageSummary> {
  const summary = await summaryOf(img);
  const dto = journalDTO(journal);
  const after = before && (await kindsAfter(img.store, img.engine.image));
  if (before && after) dto.changes = layoutChanges(before, after);
  summary.journal = dto;
  return summary;
}

/**
 * Run `body` on the images of `group` (one or more), serialised with their other writes. Its
 * writes join each image's changes in the tab only if it succeeds (a person's file is written by
 * `save` alone); if anything fails nothing is committed and the engines are reopened from the
 * images as they were. After success each image's views are reopened over the changed image.
 */
function serialised<T>(group: OpenImage[], body: () => Promise<T>, repairing = false): Promise<T> {
  const run = async (): Promise<T> => {
    for (const img of group) assertWritable(img, repairing);
    for (const img of group) await beginWrite(img);
    const tx = group.map((g) => g.store).filter(isTransactional);
    let result: T;
    try {
      result = await body();
      for (const img of group) await img.store.flush();
      // Each store commits atomically; a group is all-or-none up to here (core/image/group.ts).
      for (const t of tx) await t.commit();
    } catch (e) {
      // Nothing of a failed, refused or cancelled operation reaches the image.
      for (const t of tx) t.discard();
      // The engine's caches may hold state that never reached the file: start again from it.
      for (const img of group) await reopen(img);
      throw e;
    }
    // Reopen so header, snapshots and caches describe the committed image.
    for (const img of group) await reopen(img);
    return result;
  };
  const p = Promise.all(group.map((g) => g.queue)).then(run, run);
  for (const g of group) g.queue = p.catch(() => {});
  return p;
}

/**
 * A journaled write operation on one image (snapshot create/revert/delete, a guest write) through
 * the engine layer, on one writable engine object: the cluster map before is read from it, the
 * one after from the reopened views.
 */
async function writeOp(img: OpenImage, op: (w: Qcow2Image) => Promise<Journal>): Promise<ImageSummary> {
  let before: ClusterKinds | null = null;
  const journal = await serialised([img], async () => {
    const w = await openForWrite(img.store, img.backing);
    before = await kindsBefore(img.store, w);
    return op(w);
  });
  return summaryWithJournal(img, journal, before);
}

function notHandle(img: OpenImage): never {
  throw new QcowError('NOT_SUPPORTED', `${img.name} is saved with "Download image": it was not opened from a file it can write`);
}

/** A step on a handle image's pending changes, serialised with its operations; the image is read again after. */
function handleStep(img: OpenImage, step: (s: HandleStore) => Promise<void>): Promise<ImageSummary> {
  const run = async (): Promise<ImageSummary> => {
    await step(img.store instanceof HandleStore ? img.store : notHandle(img));
    await reopen(img);
    return summaryOf(img);
  };
  const p = img.queue.then(run, run);
  img.queue = p.catch(() => {});
  return p;
}

/** One internal snapshot operation through the engine layer, as a journaled write. */
function snapshot(img: OpenImage, verb: SnapshotVerb, arg: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary> {
  return writeOp(img, (w) => runJob(jobId, onProgress, () => snapshotOp(w, verb, arg)));
}

const api = {
  async openFile(file: File) {
    return register(file.name, 'file', new FileStore(file));
  },

  async openHandle(handle: FileSystemFileHandle) {
    return register(handle.name, 'handle', await HandleStore.open(handle));
  },

  async openDemo() {
    return register('demo.qcow2', 'memory', new TxStore(await buildDemoStore()));
  },

  async openGallery(id: string) {
    return openGalleryFiles(id, (name, store, lender) => register(name, 'memory', store, lender ? get(lender.state.id) : null));
  },

  async close(id: ImageId) {
    const img = images.get(id);
    if (!img) return;
    images.delete(id);
    await closeImage(img);
  },

  async attachBacking(id: ImageId, files: File | File[]) {
    const img = get(id);
    const list = Array.isArray(files) ? files : [files];
    if (list.length === 0) throw new QcowError('INVALID_ARGUMENT', 'No backing file was chosen');
    // The image's own backing file is the one of the name its header gives, else the first chosen.
    const named = img.engine.header().backingFile;
    const want = named !== undefined ? backingBaseName(named) : undefined;
    const file = list.find((f) => f.name === want) ?? list[0]!;
    const stores = list.map((f) => ({ name: f.name, store: new FileStore(f) as ImageStore }));
    const engine = await openWithChosenBacking(img.store, stores);
    await img.backing?.close().catch(() => {});
    img.engine = engine;
    img.backing = engine.image?.backing ?? null;
    const rest = list.filter((f) => f !== file).map((f) => f.name);
    img.backingName = rest.length ? `${file.name} (through ${rest.join(', ')})` : file.name;
    return summaryOf(img);
  },

  async summary(id: ImageId) {
    return summaryOf(get(id));
  },

  async externalSnapshot(ids: ImageId[], suffix: string, jobId?: JobId, onProgress?: ProgressFn): Promise<ExternalOverlay[]> {
    const group = ids.map(get);
    if (new Set(ids).size !== ids.length) throw new QcowError('INVALID_ARGUMENT', 'The same image appears twice in the group');
    if (!suffix || /[\\/\u0000-\u001f]/.test(suffix)) {
      throw new QcowError('INVALID_ARGUMENT', 'The overlay suffix must be a non-empty part of a file name (no slash)', { suffix });
    }
    const run = () => runJob(jobId, onProgress, async (job) => {
      // The open images are the bases: an overlay takes only their virtual size.
      const items = group.map((g) => {
        if (!g.engine.image || g.damage) throw new QcowError('NOT_SUPPORTED', `${g.name} could not be opened whole: it cannot be the base of an overlay`);
        return { base: g.engine.image, name: overlayName(g.name, suffix), backingFile: g.name };
      });
      job.progress({ phase: 'Writing overlays', done: 0, total: items.length });
      const bytes = await overlaysInMemory(items);
      if (job.signal.aborted) throw new QcowError('CANCELLED', 'The external snapshot was cancelled');
      job.progress({ phase: 'Writing overlays', done: items.length, total: items.length });
      const out: ExternalOverlay[] = [];
      for (const [i, img] of group.entries()) {
        const o: ExternalOverlay = { baseId: img.id, name: items[i]!.name, backingFile: items[i]!.backingFile, blob: new Blob([bytes[i]! as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }) };
        // The chain needs the base in a file: include it when no file holds these bytes.
        const onDisk = img.store instanceof FileStore && img.store.pristine;
        if (!onDisk) o.base = await downloadOf(img);
        out.push(o);
      }
      return out;
    });
    // After each image's pending writes, so the overlays see the images as they are.
    const p = Promise.all(group.map((g) => g.queue)).then(run, run);
    for (const g of group) g.queue = p.catch(() => {});
    return p;
  },

  async openOverlay(baseId: ImageId, source: File | FileSystemFileHandle) {
    const base = get(baseId);
    if (source instanceof File) return register(source.name, 'file', new FileStore(source), base);
    return register(source.name, 'handle', await HandleStore.open(source), base);
  },

  async l1Page(id: ImageId, start: number, count: number) {
    const img = get(id);
    const total = img.engine.header().l1Size;
    return { total, start, entries: await img.engine.l1Page(start, Math.min(count, 4096)) };
  },

  async l2Table(id: ImageId, l2Offset: number) {
    return get(id).engine.l2Table(l2Offset);
  },

  async refcountTablePage(id: ImageId, start: number, count: number) {
    const img = get(id);
    return { total: img.engine.refcountTableSize(), start, entries: await img.engine.refcountTablePage(start, Math.min(count, 4096)) };
  },

  async refcountBlock(id: ImageId, refblockIndex: number) {
    const counts = await get(id).engine.refcountBlock(refblockIndex);
    return Comlink.transfer(counts, [counts.buffer as ArrayBuffer]);
  },

  async translate(id: ImageId, guestOffset: number, snapshotId?: string) {
    return get(id).engine.translate(guestOffset, snapshotId);
  },

  async diff(id: ImageId, a: string | null, b: string | null, jobId?: JobId, onProgress?: ProgressFn) {
    const img = get(id);
    return runJob(jobId, onProgress, (job) => img.engine.diff(a, b, job));
  },

  async snapshotSpace(id: ImageId, snapshotId: string | null, jobId?: JobId, onProgress?: ProgressFn) {
    const img = get(id);
    return runJob(jobId, onProgress, (job) => img.engine.snapshotSpace(snapshotId, job));
  },

  async clusterUsers(id: ImageId, cluster: number, jobId?: JobId, onProgress?: ProgressFn) {
    const img = get(id);
    return runJob(jobId, onProgress, (job) => img.engine.clusterUsers(cluster, job));
  },

  async clusterMap(id: ImageId, jobId?: JobId, onProgress?: ProgressFn) {
    const img = get(id);
    const map = await runJob(jobId, onProgress, (job) => img.engine.clusterMap(job));
    return Comlink.transfer(map, [map.kinds.buffer as ArrayBuffer]);
  },

  async check(id: ImageId, repair?: 'leaks' | 'all', jobId?: JobId, onProgress?: ProgressFn) {
    const img = get(id);
    if (!repair) return runJob(jobId, onProgress, (job) => img.engine.check(job, img.name));
    // A repair writes: serialised with other writes and committed like them. The corrupt-bit
    // read-only rule does not apply: repairing is what such an image is for.
    return serialised([img], () => runJob(jobId, onProgress, (job) => img.engine.check(job, img.name, repair)), true);
  },

  async createSnapshot(id: ImageId, name: string, jobId?: JobId, onProgress?: ProgressFn) {
    return snapshot(get(id), 'create', name, jobId, onProgress);
  },

  async revertSnapshot(id: ImageId, idOrName: string, jobId?: JobId, onProgress?: ProgressFn) {
    return snapshot(get(id), 'revert', idOrName, jobId, onProgress);
  },

  async deleteSnapshot(id: ImageId, idOrName: string, jobId?: JobId, onProgress?: ProgressFn) {
    return snapshot(get(id), 'delete', idOrName, jobId, onProgress);
  },

  async groupSnapshot(ids: ImageId[], op: SnapshotVerb, arg: string, jobId?: JobId, onProgress?: ProgressFn) {
    const group = ids.map(get);
    if (new Set(ids).size !== ids.length) throw new QcowError('INVALID_ARGUMENT', 'The same image appears twice in the group');
    // Each image's pending writes first, then all of them held for the group's duration.
    const befores: Array<ClusterKinds | null> = [];
    const journals = await serialised(group, () => runJob(jobId, onProgress, async () => {
      const ws: Qcow2Image[] = [];
      for (const g of group) ws.push(await openForWrite(g.store, g.backing));
      for (const [i, w] of ws.entries()) befores.push(await kindsBefore(group[i]!.store, w));
      // -a and -d take an ID or a name, the ID tried first, as qemu-img's do
      return groupSnapshotOp(ws, op, arg);
    }));
    const out: ImageSummary[] = [];
    for (const [i, img] of group.entries()) out.push(await summaryWithJournal(img, journals[i]!, befores[i] ?? null));
    return out;
  },

  async writePattern(id: ImageId, guestOffset: number, length: number, pattern: number) {
    const img = get(id);
    if (!Number.isSafeInteger(length) || length <= 0 || length > 16 << 20) throw new QcowError('INVALID_ARGUMENT', 'Write between 1 byte and 16 MiB');
    if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) throw new QcowError('INVALID_ARGUMENT', 'The pattern is one byte, 0 to 255');
    const label = `guest write of ${length} bytes of 0x${pattern.toString(16).padStart(2, '0')} at guest offset 0x${guestOffset.toString(16)}`;
    return writeOp(img, async (w) => (await guestWrite(w, { kind: 'pattern', offset: guestOffset, length, pattern }, { journal: label }))!);
  },

  async readBytes(id: ImageId, hostOffset: number, length: number) {
    if (length > 16 << 20) throw new QcowError('INVALID_ARGUMENT', 'Read at most 16 MiB at a time');
    const bytes = await get(id).store.read(hostOffset, length);
    const copy = bytes.slice();
    return Comlink.transfer(copy, [copy.buffer]);
  },

  annotate: (id: ImageId, clusterStart: number) => annotationOf(get(id).store, get(id).engine, clusterStart),
  readField: (id: ImageId, clusterStart: number, hostOffset: number) => fieldReadingOf(get(id).store, get(id).engine, clusterStart, hostOffset),

  async download(id: ImageId): Promise<ImageDownload> {
    const img = get(id);
    const d = await downloadOf(img);
    // The download holds every change: none is unsaved (a person's file still waits for Save).
    if (img.store instanceof TxStore && !(img.store instanceof HandleStore)) img.store.markSaved(d.name);
    return d;
  },

  async save(ids: ImageId[], jobId?: JobId, onProgress?: ProgressFn) {
    const group = ids.map(get);
    const stores = group.map((g) => (g.store instanceof HandleStore ? g.store : notHandle(g)));
    const run = () => runJob(jobId, onProgress, async (job) => {
      await saveAllOrNone(stores, job.signal, (phase, done, total) => job.progress({ phase, done, total }));
      for (const img of group) await reopen(img);
      return Promise.all(group.map(summaryOf));
    });
    const p = Promise.all(group.map((g) => g.queue)).then(run, run);
    for (const g of group) g.queue = p.catch(() => {});
    return p;
  },

  async discardChanges(id: ImageId) {
    const img = get(id);
    return handleStep(img, async (s) => {
      const link = img.engine.header().backingFile;
      await s.discardChanges();
      await reopen(img);
      await dropStaleLender(img, link, reopen);
    });
  },

  async keptChanges(id: ImageId, restore: boolean) {
    return handleStep(get(id), (s) => (restore ? s.restoreKept() : s.declineKept()));
  },

  async exportRaw(id: ImageId, snapshotId: string | null, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageDownload> {
    const img = get(id);
    const blob = await runJob(jobId, onProgress, (job) => img.engine.exportRaw(snapshotId, job));
    const base = img.name.replace(/\.(qcow2?|img)$/i, '');
    const sn = snapshotId === null ? undefined : img.engine.snapshots().find((s) => s.id === snapshotId);
    return { name: `${base}${sn ? '-' + sn.name.replace(/[^\w.-]+/g, '_') : ''}.raw`, blob };
  },

  async cancel(jobId: string) {
    cancelJob(jobId);
  },

  // the crash stage (worker/crash-stage.ts): rehearsals on copies, nothing reaches the image
  crashRehearse: (id: ImageId, op: CrashOperation) => crashRehearse(get(id).store, get(id).backing, op),
  crashStop,
  crashImage,
  // measure, compare, bitmaps, rebase, commit (worker/verbs.ts)
  ...verbsApi({ get, has: (id) => images.has(id), runJob, serialised, summaryOf, reopen }),
} satisfies EngineApi;

Comlink.expose(api);
