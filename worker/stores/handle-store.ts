// A File System Access handle (the person's own file) as an ImageStore. Reads go through the
// aligned block cache over the handle's current File. Writes of one engine operation are held in
// a copy-on-write overlay and committed together in ONE `createWritable({keepExistingData:true})`
// session: Chromium commits that atomically on close(), so an operation is all-or-nothing on disk
// and the flush() barriers inside it are trivially kept. After a commit a fresh File is taken
// (the old one becomes unreadable, docs/platform.md). A Web Lock held from the first write until close
// keeps a second tab from writing the same image.
//
// Write permission is NOT requested here: requestPermission needs a user gesture in the page, so
// the page asks first and the worker only checks (`queryPermission`).
import { QcowError } from '../../core/errors.ts';
import { OverlayStore } from '../../core/io/overlay-store.ts';
import { checkRange, type ImageStore } from '../../core/io/store.ts';
import { BlockCache } from './block-cache.ts';
import { fileReader } from './file-store.ts';
import type { Transactional } from './tx-store.ts';

interface PermissionHandle {
  queryPermission?(d: { mode: 'read' | 'readwrite' }): Promise<PermissionState>;
}

const ZERO_CHUNK = 1 << 20;

export class HandleStore implements ImageStore, Transactional {
  readonly name: string;
  readonly writable = true;
  readonly handle: FileSystemFileHandle;
  private file: File;
  private readonly cache: BlockCache;
  private pending: OverlayStore;
  private releaseLock: (() => void) | undefined;
  private closed = false;
  /** Number of commits made (each one an atomic createWritable session). */
  commits = 0;

  private constructor(handle: FileSystemFileHandle, file: File) {
    this.handle = handle;
    this.name = handle.name;
    this.file = file;
    this.cache = new BlockCache(fileReader(file), file.size);
    this.pending = new OverlayStore(this.cache, handle.name);
  }

  static async open(handle: FileSystemFileHandle): Promise<HandleStore> {
    return new HandleStore(handle, await handle.getFile());
  }

  /** Whether the page has been granted write access (never prompts). */
  async canWrite(): Promise<boolean> {
    const h = this.handle as unknown as PermissionHandle;
    if (typeof h.queryPermission !== 'function') return true; // OPFS handles: always writable
    return (await h.queryPermission({ mode: 'readwrite' })) === 'granted';
  }

  /** Warm the block cache with ranges a walk will read (see BlockCache.prefetch). */
  prefetch(ranges: Array<[number, number]>, signal?: AbortSignal): Promise<void> {
    return this.cache.prefetch(ranges, signal);
  }

  /** Uncommitted changes exist. */
  get hasPending(): boolean {
    return !this.pending.pristine;
  }

  size(): number {
    return this.pending.size();
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.pending.read(offset, length);
  }

  readInto(offset: number, out: Uint8Array): Promise<void> {
    return this.pending.readInto(offset, out);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length);
    await this.pending.write(offset, data);
  }

  async truncate(size: number): Promise<void> {
    await this.pending.truncate(size);
  }

  /** Within an operation the commit is atomic, so ordering barriers need no I/O. */
  async flush(): Promise<void> {}

  /**
   * Take the write lock and check permission before an operation writes anything, so a refused
   * operation leaves the file untouched.
   */
  async beginWrite(): Promise<void> {
    if (this.closed) throw new QcowError('IO_ERROR', `${this.name} is closed`);
    if (!(await this.canWrite())) {
      throw new QcowError('READ_ONLY', `Write permission for ${this.name} has not been granted`, { needsPermission: true });
    }
    if (!this.releaseLock) await this.acquireLock();
    // Another tab (or program) may have changed the file since we read it: an operation planned
    // on stale tables would undo its changes. Start from the file as it is now.
    await this.refreshIfChanged();
  }

  /** Take a fresh File if the file changed on disk; true when it did (cached views are stale). */
  async refreshIfChanged(): Promise<boolean> {
    const f = await this.handle.getFile();
    if (f.size === this.file.size && f.lastModified === this.file.lastModified) return false;
    if (this.hasPending) throw new QcowError('IO_ERROR', `${this.name} was changed by another program while an operation was running`);
    this.file = f;
    this.cache.invalidate(f.size, fileReader(f));
    this.pending = new OverlayStore(this.cache, this.name);
    this.changedOnDisk = true;
    return true;
  }

  /** Set when refreshIfChanged found the file changed; the worker reopens its views and clears it. */
  changedOnDisk = false;

  /** Write every pending change to the file in one atomic session, then re-read the file. */
  async commit(): Promise<void> {
    if (!this.hasPending) return;
    await this.beginWrite();
    const segments = this.pending.segments();
    const size = this.pending.size();
    let w: FileSystemWritableFileStream;
    try {
      w = await this.handle.createWritable({ keepExistingData: true });
    } catch (e) {
      throw new QcowError('IO_ERROR', `Cannot write to ${this.name}: ${(e as Error).message}`);
    }
    try {
      let zeros: Uint8Array<ArrayBuffer> | undefined;
      for (const s of segments) {
        if (s.kind === 'patch') {
          await w.write({ type: 'write', position: s.offset, data: s.data as Uint8Array<ArrayBuffer> });
        } else if (s.kind === 'zeros' && s.offset < this.file.size) {
          // Bytes cut by a truncate and then regrown: the old file still holds data there.
          zeros ??= new Uint8Array(ZERO_CHUNK);
          const end = Math.min(s.offset + s.length, this.file.size);
          for (let at = s.offset; at < end; at += ZERO_CHUNK) {
            await w.write({ type: 'write', position: at, data: zeros.subarray(0, Math.min(ZERO_CHUNK, end - at)) });
          }
        }
      }
      if (size !== this.file.size) await w.truncate(size);
      await w.close(); // the commit point: all or nothing
    } catch (e) {
      await w.abort().catch(() => {});
      throw new QcowError('IO_ERROR', `Saving ${this.name} failed, the file is unchanged: ${(e as Error).message}`);
    }
    this.commits++;
    await this.reload();
  }

  /** Drop uncommitted changes (a failed operation). */
  discard(): void {
    this.pending = new OverlayStore(this.cache, this.name);
  }

  /** Take a fresh File after the file changed and forget cached blocks. */
  private async reload(): Promise<void> {
    this.file = await this.handle.getFile();
    this.cache.invalidate(this.file.size, fileReader(this.file));
    this.pending = new OverlayStore(this.cache, this.name);
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.releaseLock?.();
    this.releaseLock = undefined;
  }
}
