// A store wrapper that keeps a copy of every write (its bytes), flush and truncate in order, so
// that an operation run once can be replayed later write by write (the crash stage,
// core/image/crash-replay.ts). The writes still reach the inner store.
import { ForwardingStore } from './forwarding-store.ts';

export type RecordedCall =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'flush' }
  | { kind: 'truncate'; size: number };

export class RecordingStore extends ForwardingStore {
  readonly calls: RecordedCall[] = [];

  override async write(offset: number, data: Uint8Array): Promise<void> {
    await this.inner.write(offset, data);
    this.calls.push({ kind: 'write', offset, data: data.slice() });
  }

  override async flush(): Promise<void> {
    await this.inner.flush();
    this.calls.push({ kind: 'flush' });
  }

  override async truncate(size: number): Promise<void> {
    await this.inner.truncate(size);
    this.calls.push({ kind: 'truncate', size });
  }
}
