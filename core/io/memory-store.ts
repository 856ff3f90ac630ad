// An ImageStore held in memory: tests, the demo image, and the fallback for small images.
import { QcowError } from '../errors.ts';
import { checkRange, checkReadRange, type ImageStore } from './store.ts';

export class MemoryStore implements ImageStore {
  readonly name: string;
  readonly writable: boolean;
  private buf: Uint8Array;
  private length: number;

  constructor(initial: Uint8Array = new Uint8Array(0), opts: { name?: string; writable?: boolean } = {}) {
    this.name = opts.name ?? 'memory';
    this.writable = opts.writable ?? true;
    this.buf = initial;
    this.length = initial.length;
  }

  size(): number {
    return this.length;
  }

  /** The current contents (a copy-free view; do not keep across writes). */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkReadRange(this, offset, length);
    const out = new Uint8Array(length);
    if (offset < this.length) out.set(this.buf.subarray(offset, Math.min(this.length, offset + length)));
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<void> {
    checkReadRange(this, offset, out.length);
    const n = offset < this.length ? Math.min(out.length, this.length - offset) : 0;
    if (n > 0) out.set(this.buf.subarray(offset, offset + n));
    out.fill(0, n);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, offset, data.length);
    const end = offset + data.length;
    this.ensure(end);
    this.buf.set(data, offset);
    if (end > this.length) this.length = end;
  }

  async flush(): Promise<void> {}

  async truncate(size: number): Promise<void> {
    if (!this.writable) throw new QcowError('READ_ONLY', `${this.name} is read-only`);
    checkRange(this, size, 0);
    if (size > this.length) this.ensure(size);
    else this.buf.fill(0, size, this.length);
    this.length = size;
  }

  async close(): Promise<void> {}

  private ensure(end: number): void {
    if (end <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(end, Math.min(this.buf.length * 2, end + (256 << 20))));
    grown.set(this.buf.subarray(0, this.length));
    this.buf = grown;
  }
}
