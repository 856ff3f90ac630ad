// An engine slowed on purpose, for the work-budget tests (tests/fuzz/budget.test.ts and
// tests/interop/job-budget.test.ts): a store that makes every read `times` times, as a
// read-amplification bug would. Imports only the engine's ImageStore type (the storage contract).
import type { ImageStore } from '../../core/io/store.ts';

export class AmplifyingStore implements ImageStore {
  constructor(readonly inner: ImageStore, readonly times: number) {}
  get name(): string { return this.inner.name; }
  get writable(): boolean { return this.inner.writable; }
  size(): number { return this.inner.size(); }
  async read(offset: number, length: number): Promise<Uint8Array> {
    for (let i = 1; i < this.times; i++) await this.inner.read(offset, length);
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Uint8Array): Promise<void> { return this.inner.write(offset, data); }
  flush(): Promise<void> { return this.inner.flush(); }
  truncate(size: number): Promise<void> { return this.inner.truncate(size); }
  close(): Promise<void> { return this.inner.close(); }
}
