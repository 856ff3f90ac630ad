// The fuzz harness's deterministic work budget, in place of wall-clock deadlines: every step of a
// case (open, map, check, a snapshot create, ...) may read, allocate and decode only a stated multiple
// of the metadata the image itself declares, plus a constant. Going over fails the case on any
// machine and under any load, at the read or allocation that goes over (so a runaway loop that
// reads or allocates is stopped there, not killed later by a timer).
//
// What the image declares is found by this file's own reading of the raw bytes (never by the
// engine under test):
//   declared = one cluster (the header)
//            + active L1 (l1_size · 8) + refcount table (refcount_table_clusters · CS)
//            + snapshot table (as its entries say, up to 65 535) + every snapshot's L1 (l1_size · 8)
//            + one cluster per non-zero entry of every L1 table (an L2 table each)
//            + one cluster per non-zero refcount table entry (a refcount block each)
// Tables are counted at most at the sizes QEMU accepts (bigger ones are refused before reading).
//   bytes read per step  ≤ READ_FACTOR  · declared + STEP_CONSTANT_BYTES
//   bytes allocated      ≤ ALLOC_FACTOR · declared + STEP_CONSTANT_BYTES
//   reads and allocations (calls) ≤ CALLS_FACTOR · (declared / 512) + STEP_CONSTANT_CALLS
//   entries decoded      ≤ ENTRY_FACTOR · (declared / 8) + STEP_CONSTANT_ENTRIES
// Entries decoded are counted by the engine (core/work-count.ts): each table a batched scan hands
// out and each cached L2 table or refcount block taken from a cache, at its bytes / 8, and each
// snapshot table entry; declared / 8 is the number of 8-byte entries the image declares.
// STEP_CONSTANT_BYTES covers an export's guest data (run-case.ts reads at most 16 MiB per view,
// compressed clusters at most twice that) and a repair's new structures. The factors cover the
// passes an operation makes over its metadata (a repair: check, rebuild, re-walk, double check).
// STEP_CONSTANT_ENTRIES covers a guest read's L2 lookups: each takes its L2 table from the cache,
// counted whole (cluster / 8 entries per cluster read), so an export's 16 MiB per view count 2 Mi
// entries whatever the cluster size, twice that for compressed clusters.
import { countEntriesWith } from '../../core/work-count.ts';
import { FuzzViolation } from './violation.ts';

export const READ_FACTOR = 8;
export const ALLOC_FACTOR = 16;
export const CALLS_FACTOR = 64;
export const STEP_CONSTANT_BYTES = 48 * 1024 * 1024;
export const STEP_CONSTANT_CALLS = 200_000;
export const ENTRY_FACTOR = 16;
export const STEP_CONSTANT_ENTRIES = 16 * 1024 * 1024;

const MAX_L1_BYTES = 32 * 1024 * 1024; // QCOW_MAX_L1_SIZE
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024; // QCOW_MAX_REFTABLE_SIZE
const MAX_SNAPSHOTS = 65535;

export interface Declared {
  fileSize: number;
  clusterSize: number;
  /** The sum described above, in bytes. */
  bytes: number;
  snapshots: number;
  l2Tables: number;
  refblocks: number;
}

export interface Budget {
  readBytes: number;
  allocBytes: number;
  calls: number;
  entries: number;
  declared: Declared;
}

const u32 = (b: Uint8Array, o: number): number => (o + 4 <= b.length ? ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0 : 0);
const u16 = (b: Uint8Array, o: number): number => (o + 2 <= b.length ? (b[o]! << 8) | b[o + 1]! : 0);
/** A u64 as a number (values above 2^53 are past any file anyway). */
const u64 = (b: Uint8Array, o: number): number => u32(b, o) * 4294967296 + u32(b, o + 4);

/** Non-zero 8-byte entries of the table at `offset` (entries past the end of the bytes read as zero). */
function nonZeroEntries(b: Uint8Array, offset: number, entries: number): number {
  let n = 0;
  const end = Math.min(b.length, offset + entries * 8);
  for (let p = offset; p + 8 <= end; p += 8) if (u32(b, p) !== 0 || u32(b, p + 4) !== 0) n++;
  return n;
}

/** What the image in `b` declares (see the file comment). */
export function declaredBy(b: Uint8Array): Declared {
  const bits = u32(b, 20);
  const cs = bits >= 9 && bits <= 21 ? 2 ** bits : 65536;
  const l1Entries = Math.min(u32(b, 36), MAX_L1_BYTES / 8);
  const l1Offset = u64(b, 40);
  const reftableBytes = Math.min(u32(b, 56) * cs, MAX_REFTABLE_BYTES);
  const reftableOffset = u64(b, 48);
  const nbSnapshots = Math.min(u32(b, 60), MAX_SNAPSHOTS);
  let bytes = cs + l1Entries * 8 + reftableBytes;
  let l2Tables = nonZeroEntries(b, l1Offset, l1Entries);
  const refblocks = nonZeroEntries(b, reftableOffset, reftableBytes / 8);
  // snapshot table: 40 bytes + extra data + id + name per entry, 8-aligned
  let pos = u64(b, 64);
  for (let i = 0; i < nbSnapshots; i++) {
    const l1Off = u64(b, pos);
    const l1n = Math.min(u32(b, pos + 8), MAX_L1_BYTES / 8);
    const entry = 40 + u32(b, pos + 36) + u16(b, pos + 12) + u16(b, pos + 14);
    const len = Math.ceil(Math.min(entry, 1 << 20) / 8) * 8;
    bytes += len + l1n * 8;
    l2Tables += nonZeroEntries(b, l1Off, l1n);
    pos += len;
  }
  bytes += (l2Tables + refblocks) * cs;
  return { fileSize: b.length, clusterSize: cs, bytes, snapshots: nbSnapshots, l2Tables, refblocks };
}

export function budgetFor(b: Uint8Array): Budget {
  const declared = declaredBy(b);
  return {
    readBytes: READ_FACTOR * declared.bytes + STEP_CONSTANT_BYTES,
    allocBytes: ALLOC_FACTOR * declared.bytes + STEP_CONSTANT_BYTES,
    calls: CALLS_FACTOR * Math.ceil(declared.bytes / 512) + STEP_CONSTANT_CALLS,
    entries: ENTRY_FACTOR * Math.ceil(declared.bytes / 8) + STEP_CONSTANT_ENTRIES,
    declared,
  };
}

/** Work counted for the step in progress. */
export interface Work {
  readBytes: number;
  allocBytes: number;
  calls: number;
  entries: number;
}

/**
 * The meter of the step in progress: GuardStore charges reads to it, the allocation guard charges
 * typed-array allocations. One per thread (a worker runs one case at a time).
 */
export class WorkMeter {
  work: Work = { readBytes: 0, allocBytes: 0, calls: 0, entries: 0 };
  private budget: Budget | null = null;
  private step = '';
  /** First overrun of the step (kept even if the engine catches the error and throws another). */
  overrun: FuzzViolation | null = null;

  start(step: string, budget: Budget | null): void {
    this.step = step;
    this.budget = budget;
    this.work = { readBytes: 0, allocBytes: 0, calls: 0, entries: 0 };
    this.overrun = null;
  }

  /** The largest share of the step's budget used so far (read bytes, allocated bytes or calls). */
  share(): number {
    const b = this.budget;
    if (!b) return 0;
    return Math.max(this.work.readBytes / b.readBytes, this.work.allocBytes / b.allocBytes, this.work.calls / b.calls, this.work.entries / b.entries);
  }

  stop(): Work {
    this.budget = null;
    return this.work;
  }

  chargeRead(bytes: number): void {
    this.work.readBytes += bytes;
    this.work.calls++;
    this.check();
  }

  chargeAlloc(bytes: number): void {
    this.work.allocBytes += bytes;
    this.work.calls++;
    this.check();
  }

  chargeEntries(entries: number): void {
    this.work.entries += entries;
    this.check();
  }

  private check(): void {
    const b = this.budget;
    if (!b || this.overrun) return;
    const w = this.work;
    const what = w.readBytes > b.readBytes ? `read ${w.readBytes} bytes (budget ${b.readBytes})`
      : w.allocBytes > b.allocBytes ? `allocated ${w.allocBytes} bytes (budget ${b.allocBytes})`
      : w.calls > b.calls ? `made ${w.calls} reads and allocations (budget ${b.calls})`
      : w.entries > b.entries ? `decoded ${w.entries} entries (budget ${b.entries})` : null;
    if (!what) return;
    const d = b.declared;
    this.overrun = new FuzzViolation('over-budget',
      `${this.step} ${what}; the image declares ${d.bytes} bytes of metadata (file ${d.fileSize}, cluster ${d.clusterSize}, ${d.l2Tables} L2 tables, ${d.refblocks} refcount blocks, ${d.snapshots} snapshots)`,
    );
    throw this.overrun;
  }
}

/** The meter of this thread; the engine's count of decoded entries goes to it. */
export const meter = new WorkMeter();
countEntriesWith((n) => meter.chargeEntries(n));
