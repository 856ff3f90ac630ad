// What a check reports (qcow2-reference.md §4): findings with QEMU's wording, the counters
// qemu-img check prints, the sink that keeps them bounded, the hex spellings of QEMU's messages,
// and the abort of a check that cannot go on (QEMU's -errno).
import { hex } from '../errors.ts';

// ---- findings ----------------------------------------------------------------------------------

export type FindingKind = 'corruption' | 'leak' | 'check-error' | 'info';

export interface Finding {
  kind: FindingKind;
  /** qemu-img check's own wording. */
  message: string;
  /** Which structure it is about (the spec's names). */
  structure?: string;
  hostOffset?: number;
  cluster?: number;
  table?: string;
  l1Index?: number;
  l2Index?: number;
  /** Printed by qemu-img through error_report (with its "qemu-img: " prefix). */
  reported?: boolean;
}

/** Copies of one repeated message (a table walked with a multiplicity) at most. */
export const MAX_REPEATS = 64;

/** Findings kept in memory at most (counters stay exact; hostile images can have millions). */
export const MAX_KEPT_FINDINGS = 20000;

export interface CheckCounters {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
}

export function zeroCounters(): CheckCounters {
  return { corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0 };
}

export class FindingSink {
  readonly findings: Finding[] = [];
  dropped = 0;
  constructor(private readonly onFinding?: (f: Finding) => void) {}
  add(f: Finding): void {
    if (this.findings.length < MAX_KEPT_FINDINGS) this.findings.push(f);
    else this.dropped++;
    this.onFinding?.(f);
  }
}

/** C's "%#x": like 0x… but a plain "0" for zero. */
export function altHex(n: number): string {
  return n === 0 ? '0' : hex(n);
}

/** Hex of a u64 given as two u32 halves, like C's PRIx64 (no leading zeros, no 0x). */
export function hex64(hi: number, lo: number): string {
  hi >>>= 0;
  lo >>>= 0;
  return hi === 0 ? lo.toString(16) : hi.toString(16) + lo.toString(16).padStart(8, '0');
}

/** The check cannot go on: QEMU returns -errno from qcow2_check_refcounts. */
export class CheckAbort extends Error {
  constructor(readonly errno: 'EFBIG' | 'EINVAL' | 'EIO' | 'ENOMEM' | 'ENOSPC') {
    super(strerror(errno));
  }
}

export function strerror(errno: string): string {
  switch (errno) {
    case 'EFBIG': return 'File too large';
    case 'EINVAL': return 'Invalid argument';
    case 'EIO': return 'Input/output error';
    case 'ENOMEM': return 'Cannot allocate memory';
    case 'ENOSPC': return 'No space left on device';
    default: return errno;
  }
}
