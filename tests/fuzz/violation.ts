// The fuzz harness's own failure: a broken harness rule (an oversized request or allocation, a
// write to a read-only store, a step over its work budget). Never a QcowError, so the engine
// cannot swallow it as one of its own refusals.

export type ViolationKind = 'oversized-request' | 'oversized-allocation' | 'read-amplification' | 'write-on-read-only' | 'over-budget' | 'huge-truncate';

export class FuzzViolation extends Error {
  override readonly name = 'FuzzViolation';
  constructor(readonly kind: ViolationKind, message: string) {
    super(message);
  }
}
