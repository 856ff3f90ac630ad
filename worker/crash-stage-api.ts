// The crash stage as the page sees it (worker/crash-stage.ts implements it; docs/crash-stage.md):
// types only, plain and structured-clone safe.
import type { RuleBreak } from '../core/image/crash-replay.ts';
import type { CrashTables } from '../core/analysis/crash-verdict.ts';

export type { RuleBreak, CrashTables };

/** The operation to rehearse, as the person chose it. */
export type CrashOperation =
  | { kind: 'create'; name: string }
  | { kind: 'revert'; snapshot: string }
  | { kind: 'delete'; snapshot: string }
  | { kind: 'write'; offset: number; length: number; pattern: number }
  | { kind: 'repair'; mode: 'leaks' | 'all' };

export interface CrashEntryDTO {
  kind: 'write' | 'flush' | 'truncate';
  /** Host offset (write) or new size (truncate). */
  offset: number;
  length: number;
  purpose: string;
  commit?: boolean;
  /** What breaking the rule changed about this entry. */
  broken?: string;
  /** Writes and truncates: their number, from 1 (the power can be cut after each). */
  step?: number;
}

/** What the image holds in one state: where the header points, the snapshots it lists. */
export interface CrashHolds {
  tables: CrashTables | null;
  snapshots: string[];
}

export interface CrashRehearsalDTO {
  id: string;
  operation: string;
  /** The engine's own order. */
  entries: CrashEntryDTO[];
  /** The same operation with the rule broken, for each way that reorders something. */
  broken: Partial<Record<RuleBreak, CrashEntryDTO[]>>;
  before: CrashHolds;
  after: CrashHolds;
  /**
   * Right after the commit write, when that differs from `after`: a snapshot operation publishes
   * its result first where nothing else looks, then moves it to where QEMU keeps it (the settle).
   */
  published?: CrashHolds;
}

export interface CrashFindingDTO {
  kind: 'corruption' | 'leak' | 'check-error' | 'info';
  message: string;
}

export interface CrashStopDTO {
  stop: number;
  keep: boolean;
  how: RuleBreak | null;
  /** Steps (from 1) that reached the disk, and those lost with the power. */
  onDisk: number[];
  lost: number[];
  /** qemu-img check's exit code on those bytes: 0 clean, 1 not completed, 2 corruptions, 3 leaks only. */
  exitCode: 0 | 1 | 2 | 3;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  failure?: string;
  findings: CrashFindingDTO[];
  moreFindings: number;
  holds: CrashHolds;
}
