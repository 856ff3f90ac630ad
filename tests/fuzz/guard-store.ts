// A store wrapper that turns the fuzzer's resource rules into failures the harness can see:
//  - no single read, write or truncate may ask for more than MAX_REQUEST_BYTES (hostile sizes must
//    be refused before anything is allocated for them);
//  - total bytes read are bounded (no read amplification that would hang a browser tab), and every
//    read is charged to the work budget of the step in progress (budget.ts);
//  - a store opened for reading must never see a write (read-only commands never write), and a
//    writable one records every write so "no write to a file that failed validation" can be
//    asserted after the fact.
import type { ImageStore } from '../../core/io/store.ts';
import { meter } from './budget.ts';
import { FuzzViolation, type ViolationKind } from './violation.ts';

/** No request to the store may exceed this (256 MiB): the engine must refuse larger sizes first. */
export const MAX_REQUEST_BYTES = 256 * 1024 * 1024;
/** Total bytes one case may read through one store. */
export const MAX_TOTAL_READ_BYTES = 2 * 1024 * 1024 * 1024;
/** Largest size a fuzz case may grow the file to. */
export const MAX_TRUNCATE_BYTES = MAX_REQUEST_BYTES;

export { FuzzViolation, type ViolationKind };

export class GuardStore implements ImageStore {
  readonly name: string;
  readonly writable: boolean;
  reads = 0;
  bytesRead = 0;
  writes = 0;
  bytesWritten = 0;
  truncates = 0;
  flushes = 0;
  /** First violation seen (kept even if the engine catches and rethrows something else). */
  violation: FuzzViolation | null = null;

  constructor(readonly inner: ImageStore, opts: { writable: boolean }) {
    this.name = inner.name;
    this.writable = opts.writable;
  }

  private fail(kind: ViolationKind, message: string): never {
    const v = new FuzzViolation(kind, message);
    this.violation ??= v;
    throw v;
  }

  size(): number {
    return this.inner.size();
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    if (length > MAX_REQUEST_BYTES) this.fail('oversized-request', `read of ${length} bytes at ${offset}`);
    this.reads++;
    this.bytesRead += length;
    meter.chargeRead(length);
    if (this.bytesRead > MAX_TOTAL_READ_BYTES) this.fail('read-amplification', `more than ${MAX_TOTAL_READ_BYTES} bytes read`);
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) this.fail('write-on-read-only', `write of ${data.length} bytes at ${offset} to a read-only store`);
    if (data.length > MAX_REQUEST_BYTES) this.fail('oversized-request', `write of ${data.length} bytes at ${offset}`);
    this.writes++;
    this.bytesWritten += data.length;
    return this.inner.write(offset, data);
  }

  flush(): Promise<void> {
    this.flushes++;
    return this.inner.flush();
  }

  truncate(size: number): Promise<void> {
    if (!this.writable) this.fail('write-on-read-only', `truncate to ${size} on a read-only store`);
    if (size > MAX_TRUNCATE_BYTES) this.fail('huge-truncate', `truncate to ${size} bytes`);
    this.truncates++;
    return this.inner.truncate(size);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Allocation violations seen since the last reset (the engine may wrap the thrown error). */
export const allocationViolations: FuzzViolation[] = [];

/**
 * Make every typed-array and ArrayBuffer construction above MAX_REQUEST_BYTES throw a
 * FuzzViolation (and record it, in case the engine catches and rewraps it): an allocation sized
 * from an image field without a bound fails the case even when it never reaches a store. For
 * worker threads that run only fuzz cases. Every allocation by length is also charged to the work
 * budget of the step in progress (budget.ts).
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
        // views over an existing buffer allocate nothing
        if (typeof n === 'number') meter.chargeAlloc(n * per);
        return Reflect.construct(target, args, newTarget);
      },
    });
  }
}
