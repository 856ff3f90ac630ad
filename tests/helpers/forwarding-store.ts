// The base of the tests' store wrappers (crash injection, counting, the fuzz guard): an ImageStore
// that passes every call to an inner store, so a wrapper overrides only the calls it watches.
import type { ImageStore } from '../../core/io/store.ts';

export class ForwardingStore implements ImageStore {
  readonly name: string;
  readonly writable: boolean;

  constructor(readonly inner: ImageStore, writable = inner.writable) {
    this.name = inner.name;
    this.writable = writable;
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
