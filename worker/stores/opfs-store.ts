// A file in the origin private file system through a synchronous access handle (dedicated
// workers only): in-place positioned writes at memory-like speed, synchronous where a caller
// needs that (the pages of a person's pending changes, pending-pages.ts). One read-write handle
// per file at a time (docs/platform.md).
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
  /** Flush on close (not for files removed right after: a flush is an fsync). */
  private readonly flushOnClose: boolean;

  private constructor(name: string, handle: SyncHandle, writable: boolean, flushOnClose: boolean) {
    this.name = name;
    this.handle = handle;
    this.writable = writable;
    this.flushOnClose = flushOnClose;
  }

  static async open(fileHandle: FileSystemFileHandle, opts: { writable?: boolean; flushOnClose?: boolean } = {}): Promise<OpfsStore> {
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
    return new OpfsStore(fileHandle.name, h, writable, opts.flushOnClose ?? true);
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
    this.readSync(offset, out);
  }

  /** readInto, synchronously. */
  readSync(offset: number, out: Uint8Array): void {
    checkReadRange(this, offset, out.length);
    const size = this.handle.getSize();
    const n = offset < size ? Math.min(out.length, size - offset) : 0;
    if (n > 0) this.handle.read(out.subarray(0, n), { at: offset });
    out.fill(0, n);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.writeSync(offset, data);
  }

  /** write, synchronously. */
  writeSync(offset: number, data: Uint8Array): void {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, offset, data.length);
    const n = this.handle.write(data, { at: offset });
    if (n !== data.length) throw new QcowError('IO_ERROR', `Short write to ${this.name} at offset ${offset}`);
  }

  /** flush, synchronously. */
  flushSync(): void {
    if (this.writable) this.handle.flush();
  }

  async flush(): Promise<void> {
    if (this.writable) this.handle.flush();
  }

  async truncate(size: number): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, size, 0);
    this.handle.truncate(size);
  }

  async close(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writable && (opts.flush ?? this.flushOnClose)) this.handle.flush();
    this.handle.close();
  }
}
