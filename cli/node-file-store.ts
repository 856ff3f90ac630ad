// The Node file store: an ImageStore over a file descriptor, used by the CLI, tests and
// benchmarks. Synchronous positioned I/O (≈12 µs a call, docs/platform.md) behind the async contract;
// flush() is fdatasync. Honours QCOWSCOPE_CRASH_AFTER_WRITES for crash testing (docs/architecture.md §6).
import * as fs from 'node:fs';
import { QcowError } from '../core/errors.ts';
import { checkRange, checkReadRange, type ImageStore } from '../core/io/store.ts';

/** Exit code the crash hook ends the process with. */
export const CRASH_EXIT_CODE = 75;

export class NodeFileStore implements ImageStore {
  readonly name: string;
  readonly writable: boolean;
  private fd: number;
  private length: number;
  private writes = 0;
  private readonly crashAfter: number | undefined;

  private constructor(path: string, fd: number, writable: boolean) {
    this.name = path;
    this.fd = fd;
    this.writable = writable;
    this.length = fs.fstatSync(fd).size;
    const env = process.env.QCOWSCOPE_CRASH_AFTER_WRITES;
    this.crashAfter = env !== undefined && env !== '' ? Number(env) : undefined;
  }

  static open(path: string, opts: { writable?: boolean } = {}): NodeFileStore {
    let fd: number;
    try {
      fd = fs.openSync(path, opts.writable ? 'r+' : 'r');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code === 'ENOENT' ? 'No such file or directory'
        : err.code === 'EACCES' || err.code === 'EPERM' ? 'Permission denied'
        : err.code === 'EISDIR' ? 'Is a directory' : err.message;
      throw new QcowError('IO_ERROR', `Could not open '${path}': ${why}`, { path, errno: err.code });
    }
    return new NodeFileStore(path, fd, !!opts.writable);
  }

  /** Create (or replace) a file and open it for writing. */
  static create(path: string): NodeFileStore {
    let fd: number;
    try {
      fd = fs.openSync(path, 'w+');
    } catch (e) {
      throw new QcowError('IO_ERROR', `Could not create '${path}': ${(e as Error).message}`, { path });
    }
    return new NodeFileStore(path, fd, true);
  }

  size(): number {
    return this.length;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.readSync(offset, length);
  }

  readSync(offset: number, length: number): Uint8Array {
    checkReadRange(this, offset, length);
    const out = new Uint8Array(length);
    this.fill(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<void> {
    checkReadRange(this, offset, out.length);
    out.fill(0, this.fill(offset, out));
  }

  /** Read what the file holds of [offset, offset + out.length) into `out`; returns the bytes read. */
  private fill(offset: number, out: Uint8Array): number {
    const avail = Math.min(out.length, Math.max(0, this.length - offset));
    let done = 0;
    while (done < avail) {
      const n = fs.readSync(this.fd, out, done, avail - done, offset + done);
      if (n <= 0) break;
      done += n;
    }
    return done;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is opened read-only`);
    checkRange(this, offset, data.length);
    if (this.crashAfter !== undefined && this.writes >= this.crashAfter) {
      // Simulated power cut: nothing of this write reaches the file.
      fs.closeSync(this.fd);
      process.exit(CRASH_EXIT_CODE);
    }
    this.writes++;
    let done = 0;
    while (done < data.length) {
      done += fs.writeSync(this.fd, data, done, data.length - done, offset + done);
    }
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  async flush(): Promise<void> {
    if (this.writable) fs.fdatasyncSync(this.fd);
  }

  async truncate(size: number): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is opened read-only`);
    checkRange(this, size, 0);
    fs.ftruncateSync(this.fd, size);
    this.length = size;
  }

  async close(): Promise<void> {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}
