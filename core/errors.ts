// The one error type of the engine: an image that cannot be interpreted, or an operation refused.
// Every error carries a stable `code` (tests and the UI branch on it, never on message text), a
// one-line message naming the structure and offset, and structured `details` the UI can link to.
// Problems *inside* a readable image are check findings, not errors (see analysis/check.ts).

export type QcowErrorCode =
  // header and open-time validation (qcow2-reference.md §2.1)
  | 'NOT_QCOW2'
  | 'UNSUPPORTED_VERSION'
  | 'UNSUPPORTED_CLUSTER_SIZE'
  | 'HEADER_TOO_SHORT'
  | 'HEADER_EXCEEDS_CLUSTER'
  | 'INVALID_BACKING_FILE_OFFSET'
  | 'BACKING_FILE_NAME_TOO_LONG'
  | 'UNKNOWN_COMPRESSION_TYPE'
  | 'COMPRESSION_TYPE_BIT'
  | 'UNSUPPORTED_FEATURE'
  | 'IMAGE_CORRUPT'
  | 'UNSUPPORTED_SUBCLUSTER_SIZE'
  | 'REFCOUNT_WIDTH_TOO_LARGE'
  | 'NO_REFCOUNT_TABLE'
  | 'TABLE_TOO_LARGE'
  | 'TABLE_OFFSET_INVALID'
  | 'IMAGE_TOO_BIG'
  | 'L1_TABLE_TOO_SMALL'
  | 'HEADER_EXTENSION_INVALID'
  | 'SNAPSHOT_TABLE_INVALID'
  | 'ENCRYPTED'
  | 'DATA_FILE_REQUIRED'
  // runtime metadata problems met while reading or writing
  | 'METADATA_CORRUPT'
  | 'COMPRESSED_DATA_INVALID'
  | 'BACKING_MISSING'
  | 'BACKING_CHAIN_TOO_DEEP'
  // refused operations
  | 'READ_ONLY'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_LIMIT'
  | 'REFCOUNT_OVERFLOW'
  | 'NOT_SUPPORTED'
  | 'INVALID_ARGUMENT'
  | 'CANCELLED'
  /** A worker job read more than its budget allows (worker/job-budget.ts). */
  | 'WORK_BUDGET'
  | 'IO_ERROR'
  | 'CRASH_INJECTED'
  | 'INTERNAL';

export class QcowError extends Error {
  override readonly name = 'QcowError';
  readonly code: QcowErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: QcowErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.code = code;
    this.details = details;
  }

  /** Plain, structured-clone-safe form (for Comlink and JSON). */
  toJSON(): { name: string; code: QcowErrorCode; message: string; details: Record<string, unknown> } {
    return { name: this.name, code: this.code, message: this.message, details: this.details };
  }

  /** The same error (code, details, stack) with `prefix` in front of its message. */
  prefixed(prefix: string): QcowError {
    const e = new QcowError(this.code, prefix + this.message, this.details);
    e.stack = this.stack;
    return e;
  }

  static fromJSON(v: { code: QcowErrorCode; message: string; details?: Record<string, unknown> }): QcowError {
    return new QcowError(v.code, v.message, v.details ?? {});
  }
}

export function isQcowError(e: unknown): e is QcowError {
  return e instanceof QcowError;
}

/** Hex formatting used in every message that names an offset (QEMU prints offsets as %#x). */
export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}
