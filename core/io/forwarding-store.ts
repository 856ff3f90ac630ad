// The base of store wrappers (the worker's job budget, the tests' crash injection and counting):
// an ImageStore that passes every call to an inner store, so a wrapper overrides only the calls
// it watches. `readInto` is deliberately not forwarded: a wrapper that watches reads sees them all.
import type { ImageStore } from './store.ts';

export class ForwardingStore implements ImageStore {
  constructor(readonly inner: ImageStore) {}

  get name(): string {
    return this.inner.name;
  }
  get writable(): boolean {
    return this.inner.writable;
  }
  size(): number {
    return this.inner.size();
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.inner.write(offset, data);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
