// A store wrapper that turns the fuzzer's resource rules into failures the harness can see:
//  - no single read, write or truncate may ask for more than MAX_REQUEST_BYTES (hostile sizes must
//    be refused before anything is allocated for them);
//  - total bytes read are bounded (no read amplification that would hang a browser tab);
//  - a store opened for reading must never see a write (read-only commands never write), and a
//    writable one records every write so "no write to a file that failed validation" can be
//    asserted after the fact.
import type { ImageStore } from '../../core/io/store.ts';
import { ForwardingStore } from '../helpers/forwarding-store.ts';

/** No request to the store may exceed this (256 MiB): the engine must refuse larger sizes first. */
export const MAX_REQUEST_BYTES = 256 * 1024 * 1024;
/** Total bytes one case may read through one store. */
export const MAX_TOTAL_READ_BYTES = 2 * 1024 * 1024 * 1024;
/** Largest size a fuzz case may grow the file to. */
export const MAX_TRUNCATE_BYTES = MAX_REQUEST_BYTES;

export type ViolationKind = 'oversized-request' | 'oversized-allocation' | 'read-amplification' | 'write-on-read-only' | 'deadline' | 'huge-truncate';

/** A broken harness rule (never a QcowError: the engine must not be able to swallow it as one). */
export class FuzzViolation extends Error {
  override readonly name = 'FuzzViolation';
  constructor(readonly kind: ViolationKind, message: string) {
    super(message);
  }
}

export class GuardStore extends ForwardingStore {
  reads = 0;
  bytesRead = 0;
  writes = 0;
  bytesWritten = 0;
  truncates = 0;
  flushes = 0;
  /** First violation seen (kept even if the engine catches and rethrows something else). */
  violation: FuzzViolation | null = null;

  constructor(inner: ImageStore, opts: { writable: boolean; deadline?: number }) {
    super(inner, opts.writable);
    this.deadline = opts.deadline ?? Infinity;
  }
  private readonly deadline: number;

  private fail(kind: ViolationKind, message: string): never {
    const v = new FuzzViolation(kind, message);
    this.violation ??= v;
    throw v;
  }

  private tick(): void {
    if (Date.now() > this.deadline) this.fail('deadline', 'case ran past its deadline');
  }

  override read(offset: number, length: number): Promise<Uint8Array> {
    this.tick();
    if (length > MAX_REQUEST_BYTES) this.fail('oversized-request', `read of ${length} bytes at ${offset}`);
    this.reads++;
    this.bytesRead += length;
    if (this.bytesRead > MAX_TOTAL_READ_BYTES) this.fail('read-amplification', `more than ${MAX_TOTAL_READ_BYTES} bytes read`);
    return this.inner.read(offset, length);
  }

  override write(offset: number, data: Uint8Array): Promise<void> {
    this.tick();
    if (!this.writable) this.fail('write-on-read-only', `write of ${data.length} bytes at ${offset} to a read-only store`);
    if (data.length > MAX_REQUEST_BYTES) this.fail('oversized-request', `write of ${data.length} bytes at ${offset}`);
    this.writes++;
    this.bytesWritten += data.length;
    return this.inner.write(offset, data);
  }

  override flush(): Promise<void> {
    this.flushes++;
    return this.inner.flush();
  }

  override truncate(size: number): Promise<void> {
    this.tick();
    if (!this.writable) this.fail('write-on-read-only', `truncate to ${size} on a read-only store`);
    if (size > MAX_TRUNCATE_BYTES) this.fail('huge-truncate', `truncate to ${size} bytes`);
    this.truncates++;
    return this.inner.truncate(size);
  }

}

/** Allocation violations seen since the last reset (the engine may wrap the thrown error). */
export const allocationViolations: FuzzViolation[] = [];

/**
 * Make every typed-array and ArrayBuffer construction above MAX_REQUEST_BYTES throw a
 * FuzzViolation (and record it, in case the engine catches and rewraps it): an allocation sized
 * from an image field without a bound fails the case even when it never reaches a store. For
 * worker threads that run only fuzz cases.
 */
export function installAllocationGuard(): void {
  const g = globalThis as unknown as Record<string, unknown>;
  if (g.__qcowscopeAllocGuard) return;
  g.__qcowscopeAllocGuard = true;
  const names = ['ArrayBuffer', 'SharedArrayBuffer', 'Uint8Array', 'Uint8ClampedArray', 'Int8Array', 'Uint16Array', 'Int16Array',
    'Uint32Array', 'Int32Array', 'Float32Array', 'Float64Array', 'BigUint64Array', 'BigInt64Array'];
  for (const name of names) {
    const Ctor = g[name] as (new (...a: unknown[]) => unknown) & { BYTES_PER_ELEMENT?: number };
    if (!Ctor) continue;
    const per = Ctor.BYTES_PER_ELEMENT ?? 1;
    g[name] = new Proxy(Ctor, {
      construct(target, args, newTarget) {
        const n = args[0];
        if (typeof n === 'number' && n * per > MAX_REQUEST_BYTES) {
          const v = new FuzzViolation('oversized-allocation', `new ${name}(${n}) (${n * per} bytes)`);
          allocationViolations.push(v);
          throw v;
        }
        return Reflect.construct(target, args, newTarget);
      },
    });
  }
}
