// The reference walk shared by the check, the repair and the layout map: it visits every
// structure that owns host clusters (header, active and snapshot L1/L2 trees, data, compressed
// byte ranges, snapshot table, reftable, crypto header, bitmaps, refblocks) exactly as QEMU's
// calculate_refcounts does (docs/qcow2-format.md §4.1), counting references per host cluster in an
// in-memory refcount table (IMRT) and, for the layout, recording who owns each cluster.
//
// Speed matters (a 256 GiB metadata-preallocated image has 4 Mi data clusters): tables are read
// in large coalesced reads (up to 4 MiB) into one reused buffer, common entries are counted by
// module-level loops on int32 words with no objects per entry, counts live in typed arrays (a
// byte per cluster until one passes 255), active L2 tables are kept as runs of host clusters for
// the snapshots that share them, and the on-disk refcounts are compared refblock by refblock.
// BENCHMARKS.md says what each of these saved and how it was measured.
import { QcowError, hex } from '../errors.ts';
import { be32, be64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { ClusterType, clusterType, compressedDescriptor, l1ReservedBits, l2StdReservedBits, offsetOf } from '../format/entries.ts';
import { getRefcount, refcountMax } from '../format/refcount.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { readInto } from '../io/store.ts';

// ---- owners (the layout's kinds) ---------------------------------------------------------------

/** What owns a host cluster. Codes index LAYOUT_KIND_NAMES; the layout map stores one per cluster. */
export const Kind = {
  Free: 0,
  Header: 1,
  ActiveL1: 2,
  SnapshotL1: 3,
  L2Active: 4,
  L2Shared: 5,
  L2Snapshot: 6,
  Reftable: 7,
  Refblock: 8,
  SnapshotTable: 9,
  VmState: 10,
  DataExclusive: 11,
  DataShared: 12,
  DataSnapshot: 13,
  Compressed: 14,
  Bitmap: 15,
  Crypto: 16,
  Leaked: 17,
  Corrupt: 18,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

/** Stable names of the kinds, by code (the web app's ClusterKindName where the two overlap). */
export const LAYOUT_KIND_NAMES = [
  'free', 'header', 'l1', 'snapshot-l1', 'l2', 'l2-shared', 'l2-snapshot', 'refcount-table', 'refcount-block',
  'snapshot-table', 'vm-state', 'data', 'data-shared', 'data-snapshot', 'compressed', 'bitmap', 'crypto',
  'leaked', 'corrupt',
] as const;
export type LayoutKindName = (typeof LAYOUT_KIND_NAMES)[number];

/** A second owner of a cluster: shared variants where sharing is legal, else an overlap. */
function mergeOwner(prev: number, next: number): number {
  if (prev === Kind.Free) return next;
  const l2 = (k: number) => k === Kind.L2Active || k === Kind.L2Shared || k === Kind.L2Snapshot;
  const data = (k: number) => k === Kind.DataExclusive || k === Kind.DataShared || k === Kind.DataSnapshot || k === Kind.VmState;
  if (l2(prev) && l2(next)) return Kind.L2Shared;
  if (data(prev) && data(next)) return prev === Kind.VmState && next === Kind.VmState ? Kind.VmState : Kind.DataShared;
  if (prev === Kind.Compressed && next === Kind.Compressed) return Kind.Compressed;
  if (prev === Kind.SnapshotL1 && next === Kind.SnapshotL1) return Kind.Corrupt;
  return Kind.Corrupt;
}

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

// ---- the in-memory refcount table ----------------------------------------------------------------

/** Largest IMRT we build: beyond this the image is refused with a check error (memory bound). */
export const MAX_IMRT_BYTES = 1024 * 1024 * 1024;

export type Counts = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/**
 * One counter per host cluster, as wide as the image's refcounts (overflow is a finding, as in
 * QEMU). Wider refcounts start as one byte per cluster and widen the first time a count passes
 * 255: almost no image needs it, and every byte of this array is fresh memory, which costs more
 * to touch than the whole walk (about 4 ms per MiB where this was measured).
 */
export class Imrt {
  counts: Counts;
  /** Clusters covered (QEMU's nb_clusters, grows for references just past EOF and allocations). */
  size: number;
  readonly max: number;
  readonly order: number;
  /** The largest count `counts` holds as it is now (`max` once wide). */
  storeMax: number;

  constructor(order: number, size: number) {
    this.order = order;
    this.max = refcountMax(order);
    this.size = size;
    this.counts = new Uint8Array(Imrt.capacityFor(size));
    this.storeMax = Math.min(255, this.max);
  }

  static bytesPerEntry(order: number): number {
    return order <= 3 ? 1 : order === 4 ? 2 : order === 5 ? 4 : 8;
  }

  private static capacityFor(n: number): number {
    return Math.max(64, Math.ceil(n / 64) * 64);
  }

  /** `n` zeroed counters wide enough for refcounts of 2^order bits. */
  static alloc(order: number, n: number): Counts {
    return order <= 3 ? new Uint8Array(n) : order === 4 ? new Uint16Array(n) : order === 5 ? new Uint32Array(n) : new Float64Array(n);
  }

  /** Hold counts up to `max` from now on (the writers call this before storing a count above storeMax). */
  widen(): void {
    if (this.storeMax === this.max) return;
    const next = Imrt.alloc(this.order, this.counts.length);
    next.set(this.counts as never);
    this.counts = next;
    this.storeMax = this.max;
  }

  /** Make clusters [0, n) addressable (zero-filled). */
  ensure(n: number): void {
    if (n <= this.size) return;
    if (n > this.counts.length) {
      const len = Imrt.capacityFor(Math.max(n, this.counts.length * 1.25));
      const next = this.storeMax === this.max ? Imrt.alloc(this.order, len) : new Uint8Array(len);
      next.set(this.counts as never);
      this.counts = next;
    }
    this.size = n;
  }

  get(i: number): number {
    return i < this.size ? this.counts[i]! : 0;
  }

  clear(): void {
    this.counts.fill(0);
  }
}

// ---- batched table reads ---------------------------------------------------------------------------

/** Largest single read when loading many tables: 4 MiB (docs/platform.md: big reads are what browsers do well). */
export const BATCH_BYTES = 4 * 1024 * 1024;

/**
 * The read buffer of one job's table scans (tablesInOrder), grown on demand, so that the scans
 * that follow one another touch the same memory. One scan at a time may use it.
 */
export class ReadBuffer {
  private buf = new Uint8Array(0);

  /** `bytes` bytes of the buffer (their contents are whatever the last scan left). */
  take(bytes: number): Uint8Array {
    if (this.buf.length < bytes) this.buf = new Uint8Array(bytes);
    return this.buf.subarray(0, bytes);
  }
}

/**
 * Yield the tables at `offsets` (each `tableSize` bytes, any alignment), in the given order, after
 * reading them in coalesced batches of at most BATCH_BYTES. Offsets at or past the end of the file
 * (or beyond what a number holds exactly) read as zeros without I/O, as QEMU's reads past EOF do.
 *
 * Every batch is read into the same buffer, `buffer`'s: a table yielded is valid until the next
 * one is asked for, so callers that keep one must copy it. (Fresh memory for every batch was most
 * of the check's time: touching a new page costs more than reading it from the page cache.)
 */
export async function* tablesInOrder(
  img: Qcow2Image, offsets: readonly number[], tableSize: number, buffer = new ReadBuffer(),
): AsyncGenerator<[number, Uint8Array]> {
  const fileSize = img.store.size();
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / tableSize));
  const scratch = buffer.take(Math.min(offsets.length, perBatch) * tableSize);
  const zero = new Uint8Array(tableSize);
  const at = new Map<number, number>(); // table offset -> its place in the scratch buffer
  for (let start = 0; start < offsets.length; start += perBatch) {
    const end = Math.min(offsets.length, start + perBatch);
    const uniq = Array.from(new Set(offsets.slice(start, end))).filter((o) => o < fileSize && o + tableSize <= Number.MAX_SAFE_INTEGER).sort((a, b) => a - b);
    at.clear();
    let used = 0;
    let i = 0;
    while (i < uniq.length) {
      let j = i + 1;
      while (j < uniq.length && uniq[j] === uniq[j - 1]! + tableSize) j++;
      await readInto(img.store, uniq[i]!, scratch.subarray(used, used + (j - i) * tableSize));
      for (let k = i; k < j; k++, used += tableSize) at.set(uniq[k]!, used);
      i = j;
    }
    for (let k = start; k < end; k++) {
      const p = at.get(offsets[k]!);
      yield [k, p === undefined ? zero : scratch.subarray(p, p + tableSize)];
    }
  }
}

// ---- the walk -----------------------------------------------------------------------------------

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

export interface FragStats {
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

/** Hooks through which the walk repairs what QEMU repairs while counting (check -r all). */
export interface WalkRepairHooks {
  /** Rewrite an unaligned preallocated-zero L2 entry as zero (QEMU's fix_l2_entry_by_zero). True if written. */
  fixL2EntryByZero(l2Offset: number, l2Table: Uint8Array, l2Index: number, active: boolean): Promise<boolean>;
  /** Grow the file to `size` bytes (a refblock past the end of the file). Throws on failure. */
  growFile(size: number): Promise<void>;
}

export interface WalkOptions {
  /** Repair what can be repaired during the walk (only with -r all). */
  fixErrors?: boolean;
  repair?: WalkRepairHooks;
  /** Record the owner of every cluster (for the layout). */
  trackOwners?: boolean;
  /** Count an invalid bitmap table as a corruption instead of refusing the image as QEMU's open does. */
  lenientBitmaps?: boolean;
  onProgress?: (phase: string, done: number, total: number) => void;
  isCancelled?: () => boolean;
}

/**
 * The state of one reference walk: counts per host cluster, owners (optional), the fragmentation
 * statistics of the active tree, and the findings with their counters.
 */
export class ReferenceWalk {
  readonly img: Qcow2Image;
  readonly cs: number;
  readonly clusterBits: number;
  readonly imrt: Imrt;
  owners: Uint8Array | null;
  readonly frag: FragStats;
  readonly res: CheckCounters;
  readonly sink: FindingSink;
  /** Set when the refcount structures need rebuilding (QEMU's `rebuild`). */
  rebuild = false;
  /** Active L2 tables kept as runs (a walk that neither repairs nor records owners), for the snapshots and the COPIED pass. */
  readonly runs: L2Runs | null;
  private readonly opts: WalkOptions;
  private fileSize: number;
  /** The buffer of the walk's table reads, for the check's later scans too. */
  readonly readBuffer = new ReadBuffer();
  /** Entries that took countEntry (not countPlainRun) so far: a table that added none is plain. */
  private slowEntries = 0;

  constructor(img: Qcow2Image, nbClusters: number, res: CheckCounters, sink: FindingSink, opts: WalkOptions = {}) {
    this.img = img;
    this.cs = img.clusterSize;
    this.clusterBits = img.clusterBits;
    this.imrt = new Imrt(img.refcountOrder, nbClusters);
    this.owners = opts.trackOwners ? new Uint8Array(Math.max(nbClusters, 1)) : null;
    this.frag = { totalClusters: Math.ceil(img.virtualSize / img.clusterSize), allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0 };
    this.res = res;
    this.sink = sink;
    this.opts = opts;
    this.fileSize = img.store.size();
    const plainGeometry = !img.geometry.extendedL2 && !img.geometry.dataFile;
    this.runs = plainGeometry && !opts.fixErrors && !opts.repair && !opts.trackOwners ? new L2Runs() : null;
  }

  /**
   * How many references the structure being walked stands for. A table referenced k times (the
   * same L2 table from several L1 entries, the same L1 table from several snapshots) is walked
   * once with times = k instead of k times: counts, counters and overflow are as if walked k
   * times, so a hostile image cannot make the walk quadratic. (Only the order of its repeated
   * messages differs from QEMU's.) Repairs walk every reference (times stays 1).
   */
  private times = 1;

  private corruption(message: string, extra: Partial<Finding> = {}): void {
    this.res.corruptions += this.times;
    this.report({ kind: 'corruption', message, ...extra });
  }

  /** Add a finding once per reference walked (at most MAX_REPEATS copies; counters stay exact). */
  private report(f: Finding): void {
    const n = Math.min(this.times, MAX_REPEATS);
    for (let i = 0; i < n; i++) this.sink.add(f);
  }

  private cancelled(): void {
    if (this.opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled', {});
  }

  /**
   * QEMU's qcow2_inc_refcounts_imrt: +1 for every cluster touched by [offset, offset+size).
   * A range ending a cluster or more past the end of the file is a corruption and is not counted.
   */
  inc(offset: number, size: number, kind: number): void {
    if (size <= 0) return;
    const cs = this.cs;
    if (offset + size - this.fileSize >= cs) {
      this.corruption(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset ${hex(offset)} size ${hex(size)}`,
        { hostOffset: offset, structure: LAYOUT_KIND_NAMES[kind] });
      return;
    }
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + size - 1) / cs);
    const imrt = this.imrt;
    if (last >= imrt.size) this.growTo(last + 1);
    let counts = imrt.counts;
    const owners = this.owners;
    const times = this.times;
    for (let k = first; k <= last; k++) {
      const r = counts[k]!;
      if (r + times > imrt.storeMax && imrt.storeMax < imrt.max) {
        imrt.widen();
        counts = imrt.counts;
      }
      if (r + times > imrt.max) {
        // Each increment past the maximum is one overflow, as QEMU reports them one by one.
        const over = r + times - imrt.max;
        counts[k] = imrt.max;
        this.res.corruptions += over;
        for (let i = 0; i < Math.min(over, MAX_REPEATS); i++) {
          this.sink.add({ kind: 'corruption', message: `ERROR: overflow cluster offset=${hex(k * cs)}`, cluster: k, hostOffset: k * cs });
          this.sink.add({ kind: 'info', message: 'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing' });
        }
        if (owners) owners[k] = r === 0 ? mergeOwner(kind, kind) : mergeOwner(owners[k]!, kind);
        continue;
      }
      counts[k] = r + times;
      if (owners) owners[k] = r === 0 ? (times === 1 ? kind : mergeOwner(kind, kind)) : mergeOwner(owners[k]!, kind);
    }
  }

  /** Walk everything QEMU's calculate_refcounts walks. `reftable` is the in-memory refcount table. */
  async calculate(): Promise<void> {
    const img = this.img;
    const h = img.header;
    const cs = this.cs;
    this.fileSize = img.store.size();
    // header
    this.inc(0, cs, Kind.Header);
    // active L1
    await this.walkL1(h.l1TableOffset, h.l1Size, true, img.l1Table);
    // snapshots
    if (img.hasDataFile && img.snapshots.length > 0) {
      this.corruption(`ERROR ${img.snapshots.length} snapshots in image with data file`, { structure: 'snapshot table' });
    }
    // Snapshots sharing one L1 table (same offset and size) are walked once, `times` = their number.
    const dedup = !this.opts.fixErrors;
    const seen = new Map<string, number>();
    if (dedup) {
      for (const sn of img.snapshots) {
        const key = `${sn.l1TableOffset}:${sn.l1Size}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
    }
    for (let i = 0; i < img.snapshots.length; i++) {
      const sn = img.snapshots[i]!;
      if (sn.l1TableOffset % cs !== 0) {
        this.corruption(`ERROR snapshot ${sn.idStr} (${sn.name}) l1_offset=${altHex(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
          { structure: 'snapshot table', hostOffset: sn.entryOffset, table: `snapshot ${sn.idStr}` });
        continue;
      }
      if (sn.l1Size > C.MAX_L1_SIZE_BYTES / 8) {
        this.corruption(`ERROR snapshot ${sn.idStr} (${sn.name}) l1_size=${altHex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`,
          { structure: 'snapshot table', hostOffset: sn.entryOffset, table: `snapshot ${sn.idStr}` });
        continue;
      }
      if (dedup) {
        const key = `${sn.l1TableOffset}:${sn.l1Size}`;
        const n = seen.get(key)!;
        if (n === 0) continue; // already walked with its multiplicity
        seen.set(key, 0);
        this.times = n;
      }
      await this.walkL1(sn.l1TableOffset, sn.l1Size, false);
      this.times = 1;
    }
    this.inc(h.snapshotsOffset, img.snapshotsSize, Kind.SnapshotTable);
    // refcount table
    this.inc(h.refcountTableOffset, img.reftable.length, Kind.Reftable);
    // encryption header
    if (h.crypto && h.crypto.length > 0) this.inc(h.crypto.offset, h.crypto.length, Kind.Crypto);
    // bitmaps
    await this.walkBitmaps();
    // refcount blocks
    await this.checkRefblocks();
  }

  /** QEMU's check_refcounts_l1 (+ check_refcounts_l2 for every L2 table). */
  private async walkL1(l1Offset: number, l1Size: number, active: boolean, inMemory?: Uint8Array): Promise<void> {
    if (l1Size === 0) return;
    const img = this.img;
    const cs = this.cs;
    const bytes = l1Size * 8;
    this.inc(l1Offset, bytes, active ? Kind.ActiveL1 : Kind.SnapshotL1);
    const l1 = inMemory && inMemory.length >= bytes ? inMemory : (l1Offset < this.fileSize ? await img.store.read(l1Offset, bytes) : new Uint8Array(bytes));
    const vmIndex = Math.ceil(img.virtualSize / (cs * img.l2Entries));
    const indices: number[] = [];
    const offsets: number[] = [];
    for (let i = 0; i < l1Size; i++) {
      const hi = be32(l1, i * 8);
      const lo = be32(l1, i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      if (l1ReservedBits(hi, lo)) {
        this.corruption(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`, { structure: active ? 'active L1 table' : 'snapshot L1 table', table: active ? 'active L1' : hex(l1Offset), l1Index: i, hostOffset: l1Offset + i * 8 });
      }
      const l2Offset = offsetOf(hi, lo);
      this.inc(l2Offset, cs, active ? Kind.L2Active : Kind.L2Snapshot);
      if (l2Offset % cs !== 0) {
        this.corruption(`ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`, { structure: 'L1 table', l1Index: i, hostOffset: l2Offset });
      }
      indices.push(i);
      offsets.push(l2Offset);
    }
    const tableBytes = cs;
    // An L2 table referenced from several entries of this L1 is walked once with its multiplicity.
    const outer = this.times;
    let mult: number[] | null = null;
    if (!this.opts.fixErrors && new Set(offsets).size !== offsets.length) {
      const count = new Map<number, number>();
      for (const o of offsets) count.set(o, (count.get(o) ?? 0) + 1);
      const ui: number[] = [];
      const uo: number[] = [];
      mult = [];
      for (let k = 0; k < offsets.length; k++) {
        const n = count.get(offsets[k]!)!;
        if (n === 0) continue;
        count.set(offsets[k]!, 0);
        ui.push(indices[k]!);
        uo.push(offsets[k]!);
        mult.push(n);
      }
      indices.length = 0;
      indices.push(...ui);
      offsets.length = 0;
      offsets.push(...uo);
    }
    // Tables the active walk kept as runs are counted from them, without reading them again.
    const runs = this.runs;
    const kept = runs && !active ? offsets.map((o) => runs.has(o)) : null;
    const tables = tablesInOrder(img, kept ? offsets.filter((_, k) => !kept[k]) : offsets, tableBytes, this.readBuffer)[Symbol.asyncIterator]();
    for (let k = 0; k < offsets.length; k++) {
      this.cancelled();
      const l2Offset = offsets[k]!;
      const vmState = indices[k]! >= vmIndex;
      this.times = outer * (mult ? mult[k]! : 1);
      if (kept?.[k]) {
        if (!runs!.count(l2Offset, this.imrt.counts, this.imrt.storeMax, this.times)) {
          await this.walkL2(l2Offset, await img.store.read(l2Offset, tableBytes), active, vmState);
        }
      } else {
        const table = (await tables.next()).value![1];
        const slow = this.slowEntries;
        await this.walkL2(l2Offset, table, active, vmState);
        if (active && runs && this.slowEntries === slow) runs.record(l2Offset, table, this.clusterBits);
      }
      this.times = outer;
      if (((k + 1) & 63) === 0) this.opts.onProgress?.(active ? 'Active L2 tables' : 'Snapshot L2 tables', k + 1, offsets.length);
    }
  }

  /** QEMU's check_refcounts_l2 on one table already in memory. */
  private async walkL2(l2Offset: number, table: Uint8Array, active: boolean, vmState: boolean): Promise<void> {
    // The scan is synchronous (an async loop would box every 64-bit offset it keeps across
    // iterations); it stops only at an entry the repair rewrites, and resumes after it.
    const state = { next: 0 };
    let i = this.scanL2(l2Offset, table, active, vmState, 0, state);
    while (i >= 0) {
      const fixed = await this.opts.repair!.fixL2EntryByZero(l2Offset, table, i, active);
      if (fixed) {
        this.res.corruptions--;
        this.res.corruptionsFixed++;
      } else {
        // Not fixed: count the entry as QEMU does after a failed fix.
        const hi = be32(table, i * (this.img.geometry.extendedL2 ? 16 : 8));
        const lo = be32(table, i * (this.img.geometry.extendedL2 ? 16 : 8) + 4);
        const offset = offsetOf(hi, lo);
        if (active) {
          this.frag.allocatedClusters++;
          if (state.next !== 0 && offset !== state.next) this.frag.fragmentedClusters++;
          state.next = offset + this.cs;
        }
        if (!this.img.geometry.dataFile) this.inc(offset, this.cs, vmState ? Kind.VmState : active ? Kind.DataExclusive : Kind.DataSnapshot);
      }
      i = this.scanL2(l2Offset, table, active, vmState, i + 1, state);
    }
  }

  /**
   * Scan entries from `start`; returns the index of an entry waiting for a repair, or -1 at the end.
   * Standard L2 tables go through `countPlainRun`, which counts the common entries and stops at
   * any other; every other entry (and every entry of an extended L2 table or with a data file)
   * gets QEMU's full decision in `countEntry`.
   */
  private scanL2(l2Offset: number, table: Uint8Array, active: boolean, vmState: boolean, start: number, state: { next: number }): number {
    const g = this.img.geometry;
    const fast = !g.extendedL2 && !g.dataFile;
    const step = g.extendedL2 ? 16 : 8;
    const n = this.img.l2Entries;
    const frag = active ? this.frag : null;
    const dataKind = vmState ? Kind.VmState : active ? Kind.DataExclusive : Kind.DataSnapshot;
    const imrt = this.imrt;
    const fileClusters = Math.ceil(this.fileSize / this.cs);
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const acc = frag ? this.fragAcc : null;
    const next = this.fragNext;
    if (acc) {
      acc[0] = 0;
      acc[1] = 0;
      next[0] = this.nextClusterOf(state.next);
    }
    let stop = -1;
    for (let i = start; i < n; i++) {
      if (fast) {
        // the arrays are passed afresh after every slow entry: a reference past the end grows them
        i = countPlainRun(dv, i, n, imrt.counts, Math.min(imrt.size, fileClusters), imrt.storeMax, this.times, this.clusterBits, this.owners, dataKind, acc, next);
        if (i >= n) break;
      } else if (dv.getInt32(i * step) === 0 && dv.getInt32(i * step + 4) === 0 && (step === 8 || (dv.getInt32(i * step + 8) === 0 && dv.getInt32(i * step + 12) === 0))) {
        continue;
      }
      this.slowEntries++;
      if (acc) state.next = this.nextOffsetOf(next[0]!, state.next);
      const waits = this.countEntry(l2Offset, table, i, frag, dataKind, state);
      if (acc) next[0] = this.nextClusterOf(state.next);
      if (waits) {
        stop = i;
        break;
      }
    }
    if (frag && acc) {
      frag.allocatedClusters += acc[0]!;
      frag.fragmentedClusters += acc[1]!;
      state.next = this.nextOffsetOf(next[0]!, state.next);
    }
    return stop;
  }

  /** The fragmentation counters of the active walk's fast path: allocated, fragmented. */
  private readonly fragAcc = new Float64Array(2);
  /** The cluster the fast path expects next (-1: no entry yet, -2: one whose successor no cluster index can be). */
  private readonly fragNext = new Int32Array(1);

  /** QEMU's next_contiguous_offset as the fast path's expected cluster (see fragNext). */
  private nextClusterOf(nextOffset: number): number {
    if (nextOffset === 0) return -1;
    const k = nextOffset / this.cs;
    return Number.isInteger(k) && k <= C.INT_MAX ? k : -2;
  }

  /** Back from fragNext to next_contiguous_offset (`before` when the fast path has not moved it). */
  private nextOffsetOf(nextCluster: number, before: number): number {
    return nextCluster >= 0 ? nextCluster * this.cs : nextCluster === -1 ? 0 : before;
  }

  /**
   * QEMU's check_refcounts_l2 on entry `i` (any kind), counted `times`. True when the entry is an
   * unaligned preallocated cluster the repair is to rewrite (counted after the fix, by the caller).
   */
  private countEntry(l2Offset: number, table: Uint8Array, i: number, frag: FragStats | null, dataKind: number, state: { next: number }): boolean {
    const cs = this.cs;
    const g = this.img.geometry;
    const ext = g.extendedL2;
    const dataFile = g.dataFile;
    const at = i * (ext ? 16 : 8);
    const clusterBits = this.clusterBits;
    const hiOffMask = 2 ** (62 - (clusterBits - 8) - 32) - 1;
    const times = this.times;
    let hi = be32(table, at);
    const lo = be32(table, at + 4);
    const bmZero = ext ? be32(table, at + 8) : 0;
    const bmAlloc = ext ? be32(table, at + 12) : 0;
    const type = clusterType(hi, lo, g);
    if (type !== ClusterType.Compressed && l2StdReservedBits(hi, lo)) {
      this.corruption(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`, { structure: 'L2 table', hostOffset: l2Offset + at, l2Index: i });
    }
    switch (type) {
      case ClusterType.Compressed: {
        if ((hi & 0x80000000) !== 0) {
          const coff = (hi & hiOffMask) * 4294967296 + lo;
          this.corruption(`ERROR: coffset=${hex(coff)}: copied flag must never be set for compressed clusters`, { structure: 'L2 table', hostOffset: l2Offset + at, l2Index: i });
          hi = (hi & 0x7fffffff) >>> 0;
        }
        if (dataFile) {
          this.corruption(`ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`, { structure: 'L2 table', l2Index: i });
          break;
        }
        if (bmZero !== 0 || bmAlloc !== 0) {
          this.corruption(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, lo)}`, { structure: 'L2 table', l2Index: i });
          break;
        }
        const d = compressedDescriptor(hi, lo, clusterBits);
        this.inc(d.hostOffset, d.compressedSize, Kind.Compressed);
        if (frag) {
          frag.allocatedClusters += times;
          frag.compressedClusters += times;
          frag.fragmentedClusters += times;
        }
        break;
      }
      case ClusterType.ZeroAlloc:
      case ClusterType.Normal: {
        const offset = offsetOf(hi, lo);
        if ((bmZero & bmAlloc) !== 0) {
          this.corruption(`ERROR offset=${offset.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`, { structure: 'L2 table', hostOffset: offset, l2Index: i });
        }
        if (offset % cs !== 0) {
          this.res.corruptions += times;
          const containsData = ext ? bmAlloc !== 0 : (lo & 1) === 0;
          if (!containsData) {
            const fix = !!this.opts.fixErrors;
            this.report({ kind: 'corruption', message: `${fix ? 'Repairing' : 'ERROR'} offset=${offset.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`, structure: 'L2 table', hostOffset: offset, l2Index: i });
            if (fix && this.opts.repair) return true;
          } else {
            this.report({ kind: 'corruption', message: `ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`, structure: 'L2 table', hostOffset: offset, l2Index: i });
          }
        }
        if (frag) {
          frag.allocatedClusters += times;
          if (state.next !== 0 && offset !== state.next) frag.fragmentedClusters += times;
          state.next = offset + cs;
        }
        if (!dataFile) this.inc(offset, cs, dataKind);
        break;
      }
      case ClusterType.ZeroPlain:
        break;
      default: // unallocated
        if (bmAlloc !== 0) this.corruption('ERROR: Unallocated cluster has non-zero subcluster allocation map', { structure: 'L2 table', l2Index: i, hostOffset: l2Offset + at });
    }
    return false;
  }

  /** Bitmap directory, tables and data clusters (QEMU's qcow2_check_bitmaps_refcounts). */
  private async walkBitmaps(): Promise<void> {
    const img = this.img;
    const h = img.header;
    const bm = h.bitmaps;
    if (!bm || (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n || bm.nbBitmaps === 0) return;
    const cs = this.cs;
    this.inc(bm.bitmapDirectoryOffset, bm.bitmapDirectorySize, Kind.Bitmap);
    const dir = bm.bitmapDirectoryOffset < this.fileSize && bm.bitmapDirectorySize <= C.MAX_BITMAP_DIRECTORY_SIZE
      ? await img.store.read(bm.bitmapDirectoryOffset, bm.bitmapDirectorySize)
      : null;
    const tables: Array<{ offset: number; size: number; flags: number; name: string }> = [];
    let ok = dir !== null;
    if (dir) {
      let pos = 0;
      let count = 0;
      while (pos < dir.length) {
        if (pos + 24 > dir.length || ++count > bm.nbBitmaps) { ok = false; break; }
        const tableOffset = be64(dir, pos);
        const tableSize = be32(dir, pos + 8);
        const flags = be32(dir, pos + 12);
        const granularity = dir[pos + 17]!;
        const nameSize = (dir[pos + 18]! << 8) | dir[pos + 19]!;
        const extra = be32(dir, pos + 20);
        const next = pos + Math.ceil((24 + extra + nameSize) / 8) * 8;
        if (next > dir.length || extra !== 0 || tableSize > 0x8000000 || granularity < 9 || granularity > 31 ||
            (flags & ~0x7) !== 0 || nameSize === 0 || nameSize > 1023 || tableOffset % cs !== 0 || tableOffset === 0) { ok = false; break; }
        tables.push({ offset: tableOffset, size: tableSize, flags, name: new TextDecoder().decode(dir.subarray(pos + 24 + extra, pos + 24 + extra + nameSize)) });
        pos = next;
      }
      if (ok && count !== bm.nbBitmaps) ok = false;
    }
    if (!ok) {
      this.res.corruptions++;
      this.sink.add({ kind: 'corruption', message: 'ERROR bitmap directory is corrupted', structure: 'bitmap directory', hostOffset: bm.bitmapDirectoryOffset });
      throw new CheckAbort('EINVAL');
    }
    for (const t of tables) {
      this.inc(t.offset, t.size * 8, Kind.Bitmap);
      const bytes = t.size * 8;
      const table = t.offset < this.fileSize ? await img.store.read(t.offset, bytes) : new Uint8Array(bytes);
      for (let i = 0; i < t.size; i++) {
        const hi = be32(table, i * 8);
        const lo = be32(table, i * 8 + 4);
        // BME_TABLE_ENTRY_RESERVED_MASK 0xff000000000001fe; bit 0 only without an offset
        const off = offsetOf(hi, lo);
        if ((hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 || (off !== 0 && ((lo & 1) !== 0 || off % cs !== 0))) {
          if ((t.flags & 1) === 0 && !this.opts.lenientBitmaps) {
            // QEMU loads every consistent (not in-use) bitmap when it opens the image, check mode
            // included, and refuses the image when a table is invalid.
            throw new QcowError('METADATA_CORRUPT', `Could not read bitmap_table table from image for bitmap '${t.name}': Invalid argument`, {
              structure: 'bitmap table', offset: t.offset + i * 8, bitmap: t.name,
            });
          }
          this.res.corruptions++;
          continue;
        }
        if (off !== 0) this.inc(off, cs, Kind.Bitmap);
      }
    }
  }

  /** QEMU's check_refblocks: every refblock is referenced once, aligned and inside the file. */
  private async checkRefblocks(): Promise<void> {
    const img = this.img;
    const cs = this.cs;
    const rt = img.reftable;
    const n = rt.length / 8;
    const fix = !!this.opts.fixErrors;
    for (let i = 0; i < n; i++) {
      const hi = be32(rt, i * 8);
      const lo = be32(rt, i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      const at = img.header.refcountTableOffset + i * 8;
      if ((lo & 0x1ff) !== 0) {
        this.corruption(`ERROR refcount table entry ${i} has reserved bits set`, { structure: 'refcount table', hostOffset: at });
        this.rebuild = true;
        continue;
      }
      const offset = refblockOffsetFromEntry(hi, lo);
      if (offset % cs !== 0) {
        this.corruption(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`, { structure: 'refcount table', hostOffset: at });
        this.rebuild = true;
        continue;
      }
      const cluster = Math.floor(offset / cs);
      if (cluster >= this.imrt.size) {
        this.res.corruptions++;
        this.sink.add({ kind: 'corruption', message: `${fix ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`, structure: 'refcount table', hostOffset: offset });
        if (fix && this.opts.repair) {
          let why = '';
          if (offset + cs > Number.MAX_SAFE_INTEGER) {
            why = strerror('EINVAL');
          } else {
            try {
              await this.opts.repair.growFile(offset + cs);
            } catch (e) {
              why = e instanceof QcowError && e.details.errno === 'EFBIG' ? strerror('EFBIG') : strerror('EINVAL');
            }
          }
          if (!why) {
            this.fileSize = img.store.size();
            this.growTo(Math.ceil(this.fileSize / cs));
            if (cluster < this.imrt.size) {
              this.res.corruptions--;
              this.res.corruptionsFixed++;
              this.inc(offset, cs, Kind.Refblock);
              continue;
            }
            why = strerror('EINVAL');
          }
          this.rebuild = true;
          this.sink.add({ kind: 'info', message: `ERROR could not resize image: ${why}`, structure: 'refcount table', reported: false });
        }
        continue;
      }
      if (offset !== 0) {
        this.inc(offset, cs, Kind.Refblock);
        const r = this.imrt.get(cluster);
        if (r !== 1) {
          this.corruption(`ERROR refcount block ${i} refcount=${r}`, { structure: 'refcount block', hostOffset: offset, cluster });
          this.rebuild = true;
        }
      }
    }
  }

  /** Grow the IMRT (and the owners) to `n` clusters. */
  growTo(n: number): void {
    this.imrt.ensure(n);
    if (this.owners && this.owners.length < this.imrt.size) {
      const o = new Uint8Array(this.imrt.counts.length);
      o.set(this.owners);
      this.owners = o;
    }
  }

}

/**
 * The walk's inner loop over a standard L2 table: counts `times` references for every entry from
 * `start` that is unallocated (skipped) or a normal cluster with no flag but COPIED, cluster
 * aligned, inside the file (below `limit`) and not overflowing; returns the first entry that is
 * anything else, or `n`. With `acc` ([allocated, fragmented]) and `next` (the cluster a contiguous
 * entry would have) it keeps the active tree's fragmentation statistics as QEMU's
 * check_refcounts_l2 does, in cluster indices (int32) rather than offsets.
 *
 * The loop runs on int32 words: an entry is (hi, lo) as read, its cluster index the int32
 * (hi bits 0..23 << (32 − clusterBits)) | (lo >>> clusterBits), taken only when it stays below 2^31.
 * It is a module function whose only code after the loop is its return: V8 compiles a long loop
 * while it first runs (OSR), before code after it has ever run, and such code without type
 * feedback would send the compiled loop back to the interpreter at the end of every table.
 */
function countPlainRun(
  dv: DataView, start: number, n: number, counts: Counts, limit: number, max: number, times: number,
  clusterBits: number, owners: Uint8Array | null, dataKind: number, acc: Float64Array | null, next: Int32Array,
): number {
  const lowMask = (1 << clusterBits) - 1; // zero flag, reserved bits 1..8, offset bits below the cluster size
  const hiOffLimit = 1 << (clusterBits - 1);
  const hiShift = 32 - clusterBits;
  for (let i = start; i < n; i++) {
    const hi = dv.getInt32(i * 8);
    const lo = dv.getInt32(i * 8 + 4);
    if ((hi | lo) === 0) continue;
    // bits 56..62 clear: not compressed, no reserved bit
    if ((hi & 0x7f000000) !== 0 || (lo & lowMask) !== 0) return i;
    const hiOff = hi & 0x00ffffff;
    if (hiOff >= hiOffLimit) return i;
    const k = (hiOff << hiShift) | (lo >>> clusterBits);
    if (k === 0 || k >= limit) return i;
    const r = counts[k]!;
    if (r + times > max) return i;
    counts[k] = r + times;
    if (owners !== null) owners[k] = r === 0 ? (times === 1 ? dataKind : mergeOwner(dataKind, dataKind)) : mergeOwner(owners[k]!, dataKind);
    if (acc !== null) {
      acc[0] += times;
      const expected = next[0]!;
      if (expected !== -1 && k !== expected) acc[1] += times;
      next[0] = k + 1;
    }
  }
  return n;
}

/** Runs a table may have to be kept by L2Runs (more: the table is read again when needed). */
export const MAX_RUNS_PER_TABLE = 64;

/**
 * Active L2 tables kept as runs of consecutive host clusters, so that the snapshots sharing them
 * and the COPIED pass need not read and decode them again: a metadata-preallocated or sequentially
 * written table is one run instead of a cluster of bytes. Only tables whose every entry was a
 * plain one (what countPlainRun counts) and that have at most MAX_RUNS_PER_TABLE runs are kept,
 * and only by a walk that writes nothing, so a kept table is what the disk still holds.
 */
export class L2Runs {
  /** L2 offset → where its runs start in `runs`. */
  private readonly at = new Map<number, number>();
  /** Per kept table: the number of runs, then (first cluster, clusters, COPIED 0/1) per run. */
  private readonly runs: number[] = [];

  has(l2Offset: number): boolean {
    return this.at.has(l2Offset);
  }

  /** Keep `table` (just counted by countPlainRun from its first entry to its last) if it has few runs. */
  record(l2Offset: number, table: Uint8Array, clusterBits: number): void {
    if (this.at.has(l2Offset)) return;
    const start = this.runs.length;
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    if (appendRuns(dv, table.length >>> 3, clusterBits, this.runs, MAX_RUNS_PER_TABLE)) this.at.set(l2Offset, start);
    else this.runs.length = start;
  }

  /**
   * Count `times` references to every cluster of a kept table, as the walk of its entries would.
   * False (and nothing counted) if a refcount would overflow: the caller then walks the entries,
   * which reports each overflow where QEMU does.
   */
  count(l2Offset: number, counts: Counts, max: number, times: number): boolean {
    const p = this.at.get(l2Offset)!;
    const runs = this.runs;
    const end = p + 1 + 3 * runs[p]!;
    for (let q = p + 1; q < end; q += 3) {
      const first = runs[q]!;
      const last = first + runs[q + 1]!;
      for (let c = first; c < last; c++) {
        const r = counts[c]!;
        if (r + times > max) {
          uncount(runs, p + 1, q, c, counts, times);
          return false;
        }
        counts[c] = r + times;
      }
    }
    return true;
  }

  /** For a kept table: whether every COPIED bit says what `refcounts` says (set ⇔ 1); undefined if not kept. */
  copiedAgree(l2Offset: number, refcounts: Counts): boolean | undefined {
    const p = this.at.get(l2Offset);
    if (p === undefined) return undefined;
    const runs = this.runs;
    const end = p + 1 + 3 * runs[p]!;
    for (let q = p + 1; q < end; q += 3) {
      const first = runs[q]!;
      const last = first + runs[q + 1]!;
      const copied = runs[q + 2] === 1;
      if (last > refcounts.length) return false;
      for (let c = first; c < last; c++) if ((refcounts[c] === 1) !== copied) return false;
    }
    return true;
  }
}

/** Undo L2Runs.count's increments made before cluster `stopAt` of the run at `stopRun`. */
function uncount(runs: number[], from: number, stopRun: number, stopAt: number, counts: Counts, times: number): void {
  for (let q = from; q <= stopRun; q += 3) {
    const first = runs[q]!;
    const last = q === stopRun ? stopAt : first + runs[q + 1]!;
    for (let c = first; c < last; c++) counts[c] = counts[c]! - times;
  }
}

/**
 * Append the runs of a standard L2 table of plain entries (unallocated, or a normal cluster with
 * an int32 index and no flag but COPIED: see countPlainRun) to `out`: the count, then (first
 * cluster, clusters, COPIED) per run of consecutive clusters with the same COPIED bit. False if
 * there are more than `maxRuns`; `out` is then left with a partial list for the caller to cut.
 */
function appendRuns(dv: DataView, n: number, clusterBits: number, out: number[], maxRuns: number): boolean {
  const hiShift = 32 - clusterBits;
  const head = out.length;
  out.push(0);
  let runs = 0;
  let first = -1;
  let next = -1;
  let copied = 0;
  for (let i = 0; i < n; i++) {
    const hi = dv.getInt32(i * 8);
    const lo = dv.getInt32(i * 8 + 4);
    if ((hi | lo) === 0) continue;
    const k = ((hi & 0x00ffffff) << hiShift) | (lo >>> clusterBits);
    const c = hi < 0 ? 1 : 0;
    if (k === next && c === copied) {
      next++;
      continue;
    }
    if (first >= 0) {
      if (++runs > maxRuns) return false;
      out.push(first, next - first, copied);
    }
    first = k;
    next = k + 1;
    copied = c;
  }
  if (first >= 0) {
    if (++runs > maxRuns) return false;
    out.push(first, next - first, copied);
  }
  out[head] = runs;
  return true;
}

/** Refblock offset of a reftable entry: REFT_OFFSET_MASK keeps bits 9..63. */
export function refblockOffsetFromEntry(hi: number, lo: number): number {
  return (hi >>> 0) * 4294967296 + ((lo & 0xfffffe00) >>> 0);
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

// ---- on-disk refcounts --------------------------------------------------------------------------

/** On-disk refcounts by cluster, and the reftable indices whose refblock could not be read. */
export interface DiskRefcounts {
  counts: Counts;
  unreadable: Set<number>;
}

/**
 * The refblocks that hold the refcounts of clusters [0, n), in reftable order, read in batches:
 * [reftable index, refblock] (the refblock valid until the next is asked for, as tablesInOrder's).
 * Reftable entries of 0 are left out; unaligned ones cannot be read (QEMU: -EIO) and are added to
 * `unreadable` before the first refblock is yielded.
 */
export async function* refblocksInOrder(
  img: Qcow2Image, n: number, unreadable: Set<number>, buffer?: ReadBuffer,
): AsyncGenerator<[number, Uint8Array]> {
  const cs = img.clusterSize;
  const per = 2 ** (img.clusterBits + 3 - img.refcountOrder);
  const rt = img.reftable;
  const needed = Math.min(rt.length / 8, Math.ceil(n / per));
  const idx: number[] = [];
  const offs: number[] = [];
  for (let r = 0; r < needed; r++) {
    const off = refblockOffsetFromEntry(be32(rt, r * 8), be32(rt, r * 8 + 4));
    if (off === 0) continue;
    if (off % cs !== 0) {
      unreadable.add(r);
      continue;
    }
    idx.push(r);
    offs.push(off);
  }
  for await (const [k, block] of tablesInOrder(img, offs, cs, buffer)) yield [idx[k]!, block];
}

/**
 * The on-disk refcounts of clusters [0, n), read through the in-memory refcount table in batched
 * refblock reads. Reftable entries whose refblock is unaligned cannot be read (QEMU: -EIO); their
 * indices are returned in `unreadable`.
 */
export async function readDiskRefcounts(img: Qcow2Image, n: number, buffer?: ReadBuffer): Promise<DiskRefcounts> {
  const order = img.refcountOrder;
  const counts = Imrt.alloc(order, n);
  const unreadable = new Set<number>();
  const per = 2 ** (img.clusterBits + 3 - order);
  for await (const [r, block] of refblocksInOrder(img, n, unreadable, buffer)) {
    const base = r * per;
    decodeInto(block, order, counts, base, Math.min(per, n - base));
  }
  return { counts, unreadable };
}

/**
 * Whether the on-disk refcounts of clusters [0, imrt.size) are exactly the IMRT's: the refblocks
 * are compared one by one as they are read, without decoding them into a second per-cluster
 * array. This is the answer for a clean image; on any difference, or a refblock that cannot be
 * read, it says false and the caller decodes them all (readDiskRefcounts) to compare and report
 * cluster by cluster as QEMU does.
 */
export async function refcountsMatch(img: Qcow2Image, imrt: Imrt, buffer?: ReadBuffer, isCancelled?: () => boolean): Promise<boolean> {
  const order = img.refcountOrder;
  const n = imrt.size;
  const counts = imrt.counts;
  const per = 2 ** (img.clusterBits + 3 - order);
  const rt = img.reftable;
  const rtEntries = rt.length / 8;
  const needed = Math.ceil(n / per);
  const bases: number[] = [];
  const offs: number[] = [];
  for (let r = 0; r < needed; r++) {
    const base = r * per;
    const off = r < rtEntries ? refblockOffsetFromEntry(be32(rt, r * 8), be32(rt, r * 8 + 4)) : 0;
    if (off === 0) {
      // no refblock: every refcount it would hold is 0
      for (let i = base, end = Math.min(n, base + per); i < end; i++) if (counts[i] !== 0) return false;
      continue;
    }
    if (off % img.clusterSize !== 0) return false;
    bases.push(base);
    offs.push(off);
  }
  for await (const [k, block] of tablesInOrder(img, offs, img.clusterSize, buffer)) {
    if (isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled', {});
    const base = bases[k]!;
    if (!refblockMatches(block, order, counts, base, Math.min(per, n - base))) return false;
  }
  return true;
}

/** Whether `count` refcounts of a refblock equal `counts[base ..]` (one loop per common width). */
function refblockMatches(block: Uint8Array, order: number, counts: Counts, base: number, count: number): boolean {
  const dv = new DataView(block.buffer, block.byteOffset, block.byteLength);
  switch (order) {
    case 3:
      for (let i = 0; i < count; i++) if (block[i] !== counts[base + i]) return false;
      return true;
    case 4:
      if (counts instanceof Uint8Array) {
        // the IMRT still one byte wide: every on-disk refcount must be a zero byte, then the count
        for (let i = 0; i < count; i++) if (block[2 * i] !== 0 || block[2 * i + 1] !== counts[base + i]) return false;
        return true;
      }
      for (let i = 0; i < count; i++) if (dv.getUint16(2 * i) !== counts[base + i]) return false;
      return true;
    case 5:
      for (let i = 0; i < count; i++) if (dv.getUint32(4 * i) !== counts[base + i]) return false;
      return true;
    default:
      for (let i = 0; i < count; i++) if (getRefcount(block, i, order) !== counts[base + i]) return false;
      return true;
  }
}

/** The highest cluster with a reference (0 if none): what compareRefcounts finds when the refcounts match. */
export function highestReferenced(imrt: Imrt): number {
  const counts = imrt.counts;
  for (let i = imrt.size - 1; i > 0; i--) if (counts[i] !== 0) return i;
  return 0;
}

/** Decode `count` refcounts of a refblock into `out` at `base`. */
export function decodeInto(block: Uint8Array, order: number, out: Counts, base: number, count: number): void {
  switch (order) {
    case 0: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 3]! >>> (i & 7)) & 1; break;
    case 1: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 2]! >>> ((i & 3) * 2)) & 3; break;
    case 2: for (let i = 0; i < count; i++) out[base + i] = (block[i >>> 1]! >>> ((i & 1) * 4)) & 15; break;
    case 3: for (let i = 0; i < count; i++) out[base + i] = block[i]!; break;
    case 4: for (let i = 0; i < count; i++) out[base + i] = (block[2 * i]! << 8) | block[2 * i + 1]!; break;
    case 5: for (let i = 0; i < count; i++) out[base + i] = be32(block, 4 * i); break;
    default: for (let i = 0; i < count; i++) out[base + i] = be32(block, 8 * i) * 4294967296 + be32(block, 8 * i + 4);
  }
}
