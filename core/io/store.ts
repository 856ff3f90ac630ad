// The storage contract every backend implements (DESIGN.md "The storage contract"): a random-
// access byte store with an ordering barrier. The engine never touches a file, a Blob or a
// handle directly, only this interface.

export interface ImageStore {
  /** A label for messages (file name, "demo image", ...). */
  readonly name: string;
  /** False for stores that must never be written (read-only opens, plain Files without overlay). */
  readonly writable: boolean;
  /** Current size in bytes. Grows with writes past the end. */
  size(): number;
  /**
   * Read `length` bytes at `offset`. Bytes past the end read as zeros (as QEMU's do), so the
   * result always has exactly `length` bytes. The returned array may be a view the caller must
   * not keep across later writes; copy if you need to keep it.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: the same bytes as `read(offset, out.length)`, written into `out`. Scans of many
   * tables reuse one buffer through it (see `readInto` below): where touching fresh memory is
   * dear (a page fault per 4 KiB), a fresh buffer per read costs more than the read itself.
   */
  readInto?(offset: number, out: Uint8Array): Promise<void>;
  /** Write bytes at `offset`, growing the store if needed. Throws QcowError('READ_ONLY') if not writable. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Ordering barrier: nothing written after flush() resolves may reach the medium before what was
   * written before it. The crash-safety rules in DESIGN.md are expressed with this call.
   */
  flush(): Promise<void>;
  /** Set the size (grow with zeros or cut). */
  truncate(size: number): Promise<void>;
  close(): Promise<void>;
}

/** `store.readInto` where the store has it, else a `read` copied into `out`. */
export async function readInto(store: ImageStore, offset: number, out: Uint8Array): Promise<void> {
  if (store.readInto) await store.readInto(offset, out);
  else out.set(await store.read(offset, out.length));
}

/** Largest offset a store accepts: beyond 2^53 numbers stop being exact. */
const MAX_STORE_OFFSET = Number.MAX_SAFE_INTEGER;

/**
 * Reads accept any offset a qcow2 entry can hold (host offsets reach 2^56): a read past the end
 * returns zeros, as QEMU's do, so a hostile L2 or refblock offset above 2^53 reads as an empty
 * table instead of failing deep inside the store. Only the length must be a safe count.
 */
export function checkReadRange(store: { name: string }, offset: number, length: number): void {
  if (!Number.isInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`${store.name}: invalid range offset=${offset} length=${length}`);
  }
}

export function checkRange(store: { name: string }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > MAX_STORE_OFFSET) {
    throw new RangeError(`${store.name}: invalid range offset=${offset} length=${length}`);
  }
}
