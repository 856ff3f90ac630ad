// A File System Access handle (the person's own file) as an ImageStore. It is a FileStore over
// the handle's File: each engine operation is all-or-nothing in the tab (TxStore), and the changes
// of every operation wait in the tab (the overlay) until Save writes them to the file in ONE
// atomic writable session, with progress and cancel. Chromium's writable is a swap file moved into
// place on close(): until then the file is byte for byte as it was, and abort() drops the swap
// file, so a cancelled or failed save leaves the file as it was and the changes still pending.
// Discard takes the file as it now is on disk. A Web Lock held from the first change until close
// keeps a second tab from changing the same image. The changed pages live in the origin private
// file system (pending-pages.ts), not in memory, from the first change until they are saved or
// dropped: after a reload or a crashed tab, opening the same file offers them back (`kept`).
//
// Two ways to save, both atomic (BENCHMARKS.md "A person's file in the browser"; Save streams):
// - 'stream': a fresh writable (no keepExistingData) fed with the untouched ranges as slices of
//   the original File (Chromium copies those without passing them through script) and the
//   changed pages, in file order: real progress, cancel between chunks;
// - 'keep': `createWritable({keepExistingData: true})` (Chromium copies the whole file before the
//   call returns: no progress, no cancel during the copy), then only the changed pages.
//
// Write permission is NOT requested here: requestPermission needs a user gesture in the page, so
// the page asks first and the worker only checks (`queryPermission`).
import { QcowError } from '../../core/errors.ts';
import { OVERLAY_PAGE_SIZE, OverlayStore, type PageMap } from '../../core/io/overlay-store.ts';
import { FileStore } from './file-store.ts';
import { OpfsPageMap, dropPending, findPending, pendingKey, type PendingState } from './pending-pages.ts';
import type { SpillPageMap } from './spill-pages.ts';

interface PermissionHandle {
  queryPermission?(d: { mode: 'read' | 'readwrite' }): Promise<PermissionState>;
}

export type SaveMode = 'stream' | 'keep';

export interface SaveOptions {
  mode?: SaveMode;
  /** Keep the changes held after writing the file, for putBack() or settle() (a group save). */
  hold?: boolean;
  signal?: AbortSignal;
  /** Bytes written so far of the bytes the save writes. */
  progress?: (done: number, total: number) => void;
}

/** The old bytes of every range a save changed, to put a saved file back (a group save that failed later). */
export interface SavedUndo {
  size: number;
  ranges: Array<{ offset: number; data: Blob }>;
}

const ZERO_CHUNK = 1 << 20;
/** Bytes of the file compared to tell whether another program changed it (the header cluster of small clusters). */
const HEAD_BYTES = 4096;

async function headOf(f: File): Promise<Uint8Array> {
  return new Uint8Array(await f.slice(0, HEAD_BYTES).arrayBuffer());
}
/** Untouched bytes are written this many at a time (the progress and cancel step). */
const STREAM_CHUNK = 16 << 20;
/** Changed pages written in one call at most. */
const PATCH_BATCH = 4 << 20;

export class HandleStore extends FileStore {
  readonly handle: FileSystemFileHandle;
  private releaseLock: (() => void) | undefined;
  private closed = false;
  /** Saves made (each one atomic writable session). */
  saves = 0;

  /** The first bytes of the file the changes are over (the header: another program's snapshot changes it). */
  private head: Uint8Array;

  private constructor(handle: FileSystemFileHandle, file: File, head: Uint8Array) {
    super(file);
    this.handle = handle;
    this.head = head;
  }

  static async open(handle: FileSystemFileHandle): Promise<HandleStore> {
    const file = await handle.getFile();
    const store = new HandleStore(handle, file, await headOf(file));
    store.kept = await findPending(handle.name, file);
    return store;
  }

  /** Changes an earlier tab kept for this very file (a reload, a crash), until restored or declined. */
  kept: PendingState | null = null;
  /** Where the changed pages are kept (null: none yet, or the browser has no synchronous access handles). */
  private pages: OpfsPageMap | null = null;

  /** Take back the changes an earlier tab kept (`kept`): they are pending again. */
  async restoreKept(): Promise<void> {
    if (!this.kept) return;
    if (this.unsaved || this.hasPending) throw new QcowError('INVALID_ARGUMENT', `${this.name} has changes already`);
    if (!this.releaseLock) await this.acquireLock();
    await this.keepPages(true);
    this.kept = null;
  }

  /** Drop the changes an earlier tab kept. */
  async declineKept(): Promise<void> {
    if (!this.kept) return;
    this.kept = null;
    await dropPending(pendingKey(this.name, this.file));
  }

  /** From the first change on, the changed pages go to the private file system (else they stay in memory). */
  private async keepPages(resume: boolean): Promise<void> {
    if (this.pages) return;
    let opened: Awaited<ReturnType<typeof OpfsPageMap.open>>;
    try {
      opened = await OpfsPageMap.open(pendingKey(this.name, this.file), resume);
    } catch (e) {
      if (resume) throw new QcowError('IO_ERROR', `The kept changes to ${this.name} cannot be read: ${(e as Error).message}`);
      return; // no synchronous access handles here: memory it is
    }
    const overlay = new OverlayStore(this.cache, this.name, opened.pages);
    if (opened.state) overlay.resume(opened.state.extent);
    this.opPages = opened.operation;
    this.useOverlay(overlay);
    if (opened.state) this.changes = opened.state.changes;
    this.pages = opened.pages;
  }

  /** An operation's own pages beyond a budget go to a scratch file (spill-pages.ts). */
  private opPages: SpillPageMap | null = null;

  protected override operationPages(): PageMap | undefined {
    this.opPages?.clear();
    return this.opPages ?? undefined;
  }

  /** An operation's changes join the pending ones, and are kept. */
  override async commit(): Promise<void> {
    const had = this.hasPending;
    await super.commit();
    if (had && this.pages) {
      await this.pages.persist({ name: this.name, fileSize: this.file.size, lastModified: this.file.lastModified, extent: this.overlay.extent, changes: this.changes, at: Date.now() });
    }
  }

  /** Start again from the file as it now is on disk (the kept pages go). */
  private async restart(): Promise<void> {
    await this.pages?.drop();
    this.pages = null;
    this.opPages = null;
    const f = await this.handle.getFile();
    this.head = await headOf(f);
    this.reset(f);
  }

  /** After a save: start again from the file, which now holds the changes (its cached bytes stay where unchanged). */
  private async restartSaved(): Promise<void> {
    // The file's first bytes are the image's as the tab sees it (read before the pages go).
    const head = await this.read(0, Math.min(HEAD_BYTES, this.size()));
    await this.pages?.drop();
    this.pages = null;
    this.opPages = null;
    const f = await this.handle.getFile();
    this.head = head;
    this.resetSaved(f);
  }

  /** Changes wait in the tab that the file does not have. */
  get unsaved(): boolean {
    return this.changes > 0 || !this.overlay.pristine;
  }

  /** Whether the page has been granted write access (never prompts). */
  async canWrite(): Promise<boolean> {
    const h = this.handle as unknown as PermissionHandle;
    if (typeof h.queryPermission !== 'function') return true; // OPFS handles: always writable
    return (await h.queryPermission({ mode: 'readwrite' })) === 'granted';
  }

  /**
   * Before an operation changes the image in the tab: take the write lock, and start from the file
   * as it now is when it changed on disk and nothing is pending (an operation planned on stale
   * tables would undo the other program's changes).
   */
  override async beginWrite(): Promise<void> {
    if (this.closed) throw new QcowError('IO_ERROR', `${this.name} is closed`);
    if (!this.releaseLock) await this.acquireLock();
    await this.refreshIfChanged();
    if (!this.pages && !this.unsaved && !this.hasPending) {
      await this.declineKept(); // a change without restoring: the kept ones are not wanted
      await this.keepPages(false);
    }
  }

  /**
   * Whether `f` (the file as it now is on disk) is still the one the changes are over: the same
   * size, time and header (Chromium's private file system keeps the time of a file written again).
   */
  private async sameFile(f: File): Promise<boolean> {
    if (f.size !== this.file.size || f.lastModified !== this.file.lastModified) return false;
    const head = await headOf(f).catch(() => null);
    return head !== null && head.length === this.head.length && head.every((b, i) => b === this.head[i]);
  }

  /** Take a fresh File if the file changed on disk; true when it did (cached views are stale). */
  async refreshIfChanged(): Promise<boolean> {
    const f = await this.handle.getFile();
    if (await this.sameFile(f)) return false;
    if (this.unsaved || this.hasPending) {
      throw new QcowError('IO_ERROR', `${this.name} was changed on disk by another program while changes to it wait in this tab: save them elsewhere ("Download image") or discard them`, { changedOnDisk: true });
    }
    await this.pages?.drop();
    this.pages = null;
    this.opPages = null;
    this.head = await headOf(f);
    this.reset(f);
    this.changedOnDisk = true;
    return true;
  }

  /** Set when refreshIfChanged found the file changed; the worker reopens its views and clears it. */
  changedOnDisk = false;

  /** Bytes a save writes: the whole file as it will be (the browser rewrites it whole). */
  saveBytes(mode: SaveMode = 'stream'): number {
    if (mode === 'stream') return this.size();
    let n = 0;
    for (const s of this.overlay.segments()) if (s.kind === 'patch') n += this.patchLength(s.offset);
    return this.size() + n;
  }

  /** The length of the patch segment at `offset` (one overlay page, or less at the end), without reading it. */
  private patchLength(offset: number): number {
    return Math.min(OVERLAY_PAGE_SIZE, this.size() - offset);
  }

  /** The old bytes of every range a save would change (read before saving; see SavedUndo). */
  async undoRecord(): Promise<SavedUndo> {
    const ranges: SavedUndo['ranges'] = [];
    const old = this.file;
    for (const s of this.overlay.segments()) {
      if (s.kind === 'source' || s.offset >= old.size) continue;
      const len = Math.min(s.kind === 'patch' ? this.patchLength(s.offset) : s.length, old.size - s.offset);
      // A copy: after the save the old File cannot be read any more.
      ranges.push({ offset: s.offset, data: new Blob([await old.slice(s.offset, s.offset + len).arrayBuffer()]) });
    }
    return { size: old.size, ranges };
  }

  /**
   * After a save with `hold` whose group failed later: put the old bytes back (one atomic session)
   * and hold the changes again, over the file as restored.
   */
  async putBack(undo: SavedUndo): Promise<void> {
    const w = await this.handle.createWritable({ keepExistingData: true });
    try {
      for (const r of undo.ranges) await w.write({ type: 'write', position: r.offset, data: r.data });
      await w.truncate(undo.size);
      await w.close();
    } catch (e) {
      await w.abort().catch(() => {});
      throw new QcowError('IO_ERROR', `${this.name} could not be put back as it was (${(e as Error).message}): it holds the saved changes`);
    }
    this.rebind(await this.handle.getFile());
    this.held = false;
  }

  /** After a save with `hold` whose group saved whole: start afresh from the file as saved. */
  async settle(): Promise<void> {
    this.held = false;
    await this.restartSaved();
  }

  /** A save with `hold` wrote the file and neither settle() nor putBack() ran yet. */
  private held = false;

  /**
   * Write every pending change to the file in one atomic session, then read the file afresh. A
   * cancelled or failed save leaves the file as it was and the changes pending.
   */
  async save(opts: SaveOptions = {}): Promise<void> {
    if (this.closed) throw new QcowError('IO_ERROR', `${this.name} is closed`);
    if (this.hasPending || this.held) throw new QcowError('INVALID_ARGUMENT', `An operation on ${this.name} is still running`);
    if (!this.unsaved) return;
    if (!(await this.canWrite())) {
      throw new QcowError('READ_ONLY', `Permission to write ${this.name} was not granted: nothing was saved, the changes are still pending`, { needsPermission: true });
    }
    if (!this.releaseLock) await this.acquireLock();
    const now = await this.handle.getFile();
    if (!(await this.sameFile(now))) {
      throw new QcowError('IO_ERROR', `${this.name} was changed on disk by another program since it was opened: nothing was saved, the changes are still pending ("Download image" keeps them in a new file)`, { changedOnDisk: true });
    }
    // The same bytes, in a File taken now: one taken before an earlier session on this file (a
    // cancelled or failed save) may no longer be readable, and the untouched ranges are its slices.
    this.rebind(now);
    const mode = opts.mode ?? 'stream';
    const segments = this.overlay.segments();
    const size = this.size();
    const total = this.saveBytes(mode);
    let done = 0;
    const cancelled = (): QcowError => new QcowError('CANCELLED', `Saving ${this.name} was cancelled: the file is unchanged, the changes are still pending`);
    const step = (n: number): void => {
      done += n;
      opts.progress?.(done, total);
      if (opts.signal?.aborted) throw cancelled();
    };
    let w: FileSystemWritableFileStream;
    try {
      w = await this.handle.createWritable({ keepExistingData: mode === 'keep' });
    } catch (e) {
      throw new QcowError('IO_ERROR', `Cannot write to ${this.name} (${(e as Error).message}): the file is unchanged, the changes are still pending`);
    }
    try {
      if (mode === 'keep') step(this.file.size);
      let zeros: Uint8Array<ArrayBuffer> | undefined;
      // Changed pages that follow each other are written together, up to PATCH_BATCH at a time.
      let batch: Uint8Array<ArrayBuffer>[] = [];
      let batchAt = 0;
      let batchLen = 0;
      const flushBatch = async (): Promise<void> => {
        if (!batchLen) return;
        await w.write({ type: 'write', position: batchAt, data: new Blob(batch) });
        step(batchLen);
        batch = [];
        batchLen = 0;
      };
      for (const s of segments) {
        if (s.kind !== 'patch') await flushBatch();
        if (s.kind === 'patch') {
          if (batchLen && (batchAt + batchLen !== s.offset || batchLen >= PATCH_BATCH)) await flushBatch();
          if (!batchLen) batchAt = s.offset;
          const data = s.data as Uint8Array<ArrayBuffer>;
          batch.push(data);
          batchLen += data.length;
        } else if (s.kind === 'source') {
          if (mode === 'keep') continue;
          for (let at = s.offset, end = s.offset + s.length; at < end; at += STREAM_CHUNK) {
            const n = Math.min(STREAM_CHUNK, end - at);
            await w.write({ type: 'write', position: at, data: this.file.slice(at, at + n) });
            step(n);
          }
        } else if (mode === 'stream') {
          // A fresh writable is written in file order: a write past its end, or the closing
          // truncate, fills the gap with zeros.
          step(s.length);
        } else {
          // Bytes cut by a truncate and regrown: the old file still holds data there.
          const end = Math.min(s.offset + s.length, this.file.size);
          zeros ??= new Uint8Array(ZERO_CHUNK);
          for (let at = s.offset; at < end; at += ZERO_CHUNK) {
            await w.write({ type: 'write', position: at, data: zeros.subarray(0, Math.min(ZERO_CHUNK, end - at)) });
          }
        }
      }
      await flushBatch();
      await w.truncate(size);
      opts.signal?.throwIfAborted();
      await w.close(); // the commit point: all or nothing
    } catch (e) {
      await w.abort().catch(() => {});
      if (opts.signal?.aborted) throw cancelled();
      if (e instanceof QcowError) throw e;
      throw new QcowError('IO_ERROR', `Saving ${this.name} failed (${(e as Error).message}): the file is unchanged, the changes are still pending`);
    }
    this.saves++;
    if (opts.hold) this.held = true;
    else await this.restartSaved();
  }

  /** Drop every change held in the tab and read the file as it now is on disk. */
  async discardChanges(): Promise<void> {
    if (this.hasPending) throw new QcowError('INVALID_ARGUMENT', `An operation on ${this.name} is still running`);
    await this.restart();
  }

  private lockName(): string {
    return `qcowscope:write:${this.name}`;
  }

  private acquireLock(): Promise<void> {
    const locks = (globalThis.navigator as Navigator | undefined)?.locks;
    if (!locks) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      locks
        .request(this.lockName(), { mode: 'exclusive', ifAvailable: true }, (lock) => {
          if (!lock) {
            reject(new QcowError('READ_ONLY', `${this.name} is being written in another tab or window`, { locked: true }));
            return undefined;
          }
          // Hold the lock until close(): the callback's promise settles then.
          return new Promise<void>((release) => {
            this.releaseLock = release;
            resolve();
          });
        })
        .catch(reject);
    });
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pages?.drop();
    this.pages = null;
    this.opPages = null;
    this.releaseLock?.();
    this.releaseLock = undefined;
  }
}

/**
 * Save the changes of several images, all or none: each file in one atomic session, holding its
 * changes until every file is written; if one fails, the files saved before it get their old bytes
 * back (read before saving), every change is pending again, and the error says what was put back.
 */
export async function saveAllOrNone(stores: HandleStore[], signal: AbortSignal, progress: (phase: string, done: number, total: number) => void): Promise<void> {
  const todo = stores.filter((s) => s.unsaved);
  const total = todo.reduce((n, s) => n + s.saveBytes(), 0);
  const saved: Array<{ store: HandleStore; undo: SavedUndo | null }> = [];
  let before = 0;
  try {
    for (const store of todo) {
      const undo = todo.length > 1 ? await store.undoRecord() : null;
      await store.save({ hold: true, signal, progress: (done) => progress(`Saving ${store.name}`, before + done, total) });
      saved.push({ store, undo });
      before += store.saveBytes();
    }
  } catch (e) {
    const back: string[] = [];
    const stuck: string[] = [];
    for (const { store, undo } of saved.reverse()) {
      try {
        await store.putBack(undo!);
        back.push(store.name);
      } catch (err) {
        stuck.push((err as Error).message);
      }
    }
    if (!back.length && !stuck.length) throw e;
    const err = e as QcowError;
    const more = [back.length ? `${back.join(', ')} put back as ${back.length === 1 ? 'it was' : 'they were'}` : '', ...stuck].filter(Boolean).join('; ');
    throw new QcowError(err.code ?? 'IO_ERROR', `${err.message}; ${more}`, err.details ?? {});
  }
  for (const s of todo) await s.settle();
}
