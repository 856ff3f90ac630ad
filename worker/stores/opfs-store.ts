// A file in the origin private file system through a synchronous access handle (dedicated
// workers only): in-place positioned writes at memory-like speed, the place for a working copy of
// an image too big to rewrite on every save. One read-write handle per file at a time (docs/platform.md).
import { QcowError } from '../../core/errors.ts';
import { checkRange, checkReadRange, type ImageStore } from '../../core/io/store.ts';

/** The parts of FileSystemSyncAccessHandle this store uses (typed here: lib.dom lags behind). */
interface SyncHandle {
  read(buffer: Uint8Array, opts: { at: number }): number;
  write(buffer: Uint8Array, opts: { at: number }): number;
  flush(): void;
  truncate(size: number): void;
  getSize(): number;
  close(): void;
}

export class OpfsStore implements ImageStore {
  readonly name: string;
  readonly writable: boolean;
  private readonly handle: SyncHandle;
  private closed = false;

  private constructor(name: string, handle: SyncHandle, writable: boolean) {
    this.name = name;
    this.handle = handle;
    this.writable = writable;
  }

  static async open(fileHandle: FileSystemFileHandle, opts: { writable?: boolean } = {}): Promise<OpfsStore> {
    const writable = opts.writable ?? true;
    const create = (fileHandle as unknown as {
      createSyncAccessHandle(o?: { mode: string }): Promise<SyncHandle>;
    }).createSyncAccessHandle;
    if (typeof create !== 'function') {
      throw new QcowError('NOT_SUPPORTED', 'This browser cannot open files in private storage synchronously');
    }
    let h: SyncHandle;
    try {
      h = await create.call(fileHandle, writable ? { mode: 'readwrite' } : { mode: 'read-only' });
    } catch (e) {
      throw new QcowError('IO_ERROR', `Cannot open ${fileHandle.name}: ${(e as Error).message}`);
    }
    return new OpfsStore(fileHandle.name, h, writable);
  }

  /** Copy a File into OPFS under `name` and open it there (a working copy). */
  static async copyFrom(file: Blob, name: string, onProgress?: (done: number, total: number) => void): Promise<OpfsStore> {
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle('working-copies', { create: true });
    const fh = await dir.getFileHandle(name, { create: true });
    const store = await OpfsStore.open(fh);
    store.handle.truncate(0);
    const reader = file.stream().getReader();
    let at = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      store.handle.write(value, { at });
      at += value.length;
      onProgress?.(at, file.size);
    }
    store.handle.flush();
    return store;
  }

  size(): number {
    return this.handle.getSize();
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<void> {
    checkReadRange(this, offset, out.length);
    const size = this.handle.getSize();
    const n = offset < size ? Math.min(out.length, size - offset) : 0;
    if (n > 0) this.handle.read(out.subarray(0, n), { at: offset });
    out.fill(0, n);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, offset, data.length);
    const n = this.handle.write(data, { at: offset });
    if (n !== data.length) throw new QcowError('IO_ERROR', `Short write to ${this.name} at offset ${offset}`);
  }

  async flush(): Promise<void> {
    if (this.writable) this.handle.flush();
  }

  async truncate(size: number): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, size, 0);
    this.handle.truncate(size);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writable) this.handle.flush();
    this.handle.close();
  }

  /** The current bytes as a Blob (for "Download image" of a working copy). */
  async toBlob(): Promise<Blob> {
    const size = this.size();
    const parts: BlobPart[] = [];
    const CHUNK = 16 << 20;
    for (let at = 0; at < size; at += CHUNK) {
      const buf = new Uint8Array(Math.min(CHUNK, size - at));
      this.handle.read(buf, { at });
      parts.push(buf);
    }
    return new Blob(parts, { type: 'application/octet-stream' });
  }
}
