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
// the snapshots that share them, an L2 table named by several L1 entries is walked once and its
// record replayed (l2-replay.ts), and the on-disk refcounts are compared refblock by refblock.
// BENCHMARKS.md says what each of these saved and how it was measured.
// Over 600 lines on purpose: ReferenceWalk is one object whose passes (L1/L2 trees, bitmaps,
// refblocks) share its counts and findings, and its int32 hot loop (countPlainRun) must be a
// module function beside it; findings, the IMRT, batched reads, L2 runs and records have their own files.
import { QcowError, hex } from '../errors.ts';
import { be32, be64 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import {
  bitmapTableEntryInvalid, ClusterType, clusterType, compressedDescriptor, hasZeroFlag, isCopied, l1ReservedBits, l2StdReservedBits, L2E_FLAGS_56_62_HI,
  offsetOf, OFFSET_MASK_HI, refcountTableOffset, refcountTableReservedBits, sameRunEnd, withCopied,
} from '../format/entries.ts';
import { usedReftableIndices } from '../format/refcount.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { readInto } from '../io/store.ts';
import { entriesDecoded } from '../work-count.ts';
import {
  altHex, CheckAbort, FindingSink, hex64, MAX_REPEATS, strerror, type CheckCounters, type Finding,
} from './findings.ts';
import { Imrt, type Counts } from './imrt.ts';
import { L2Log } from './l2-replay.ts';
import { L2Runs, MAX_RUNS_PER_TABLE, addOneBytes } from './l2-runs.ts';
import { Kind, LAYOUT_KIND_NAMES, mergeOwner } from './owners.ts';
import { ReadBuffer, tablesInOrder } from './table-reads.ts';

// ---- the walk -----------------------------------------------------------------------------------

/**
 * Steps of an L2 walk's record (L2Log) replayed at every later reference when only checking; a
 * longer record is replayed once for all of them (see walkL1). Linear in the L1 size either way.
 */
const REPLAY_MAX = 256;

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
  /**
   * Let the walk treat the file as `size` bytes long (a refblock past the end of the file, which
   * QEMU's repair grows the file to hold); returns the size the walk sees. Throws on failure.
   */
  growFile(size: number): Promise<number>;
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
   * How many references the structure being walked stands for. An L1 table shared by k snapshots
   * (same offset and size) is walked once with times = k instead of k times, and so is a busy L2
   * table's record replayed for all its later references (walkL1): counts, counters and overflow
   * are as if walked k times, so a hostile image cannot make the walk quadratic. (Only the order
   * of the repeated messages differs from QEMU's.) Repairs walk every snapshot (times stays 1).
   */
  private times = 1;

  private corruption(message: string, extra: Partial<Finding> = {}): void {
    this.res.corruptions += this.times;
    if (this.rec !== null) this.rec.corruptions++;
    this.report({ kind: 'corruption', message, ...extra });
  }

  /** Add a finding once per reference walked (at most MAX_REPEATS copies; counters stay exact). */
  private report(f: Finding): void {
    if (this.rec !== null) this.rec.finding(f);
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
    const rec = this.rec;
    if (rec !== null) {
      // recorded as a reference; what counting it reports is not (a replay counts it again)
      rec.inc(offset, size, kind, cs, offset + size - this.fileSize < cs);
      this.rec = null;
      try {
        this.inc(offset, size, kind);
      } finally {
        this.rec = rec;
      }
      return;
    }
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

  /**
   * QEMU's check_refcounts_l1 (+ check_refcounts_l2 for every L2 table), entry by entry in QEMU's
   * order. A table named by several entries is read and walked at its first reference and its
   * walk recorded (L2Log); each later reference replays the record, which adds the same counts
   * and messages in the same place as walking the table again. Only when checking, a record of
   * more than REPLAY_MAX steps is replayed once for all the later references at the first (with
   * their multiplicity: a hostile L1 of 4 Mi entries naming one busy table stays linear; only the
   * order of its repeated messages differs from QEMU's). A repair that writes an L2 entry drops
   * every record (the tables may have changed), and the next reference reads its table again.
   */
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
      indices.push(i);
      offsets.push(offsetOf(hi, lo));
    }
    // References left per table (per vmState: its data clusters are counted as VM state or not).
    const left = [new Map<number, number>(), new Map<number, number>()];
    for (let k = 0; k < offsets.length; k++) {
      const m = left[indices[k]! >= vmIndex ? 1 : 0]!;
      m.set(offsets[k]!, (m.get(offsets[k]!) ?? 0) + 1);
    }
    // Tables the active walk kept as runs are counted from them, without reading them again.
    const runs = this.runs;
    const isKept = (o: number): boolean => runs !== null && !active && runs.has(o);
    // The tables read at their first reference, in order (others, if needed, are read alone).
    const planned = new Uint8Array(offsets.length);
    const toRead: number[] = [];
    {
      const firsts = [new Set<number>(), new Set<number>()];
      for (let k = 0; k < offsets.length; k++) {
        const f = firsts[indices[k]! >= vmIndex ? 1 : 0]!;
        const o = offsets[k]!;
        if (f.has(o)) continue;
        f.add(o);
        if (isKept(o)) continue;
        planned[k] = 1;
        toRead.push(o);
      }
    }
    const tables = tablesInOrder(img, toRead, cs, this.readBuffer)[Symbol.asyncIterator]();
    // After a table's first reference: its record, or null when every reference is counted.
    const memo = [new Map<number, L2Log | null>(), new Map<number, L2Log | null>()];
    const repairing = !!this.opts.fixErrors;
    const outer = this.times;
    for (let k = 0; k < offsets.length; k++) {
      this.cancelled();
      const i = indices[k]!;
      const l2Offset = offsets[k]!;
      const hi = be32(l1, i * 8);
      const lo = be32(l1, i * 8 + 4);
      if (l1ReservedBits(hi, lo)) {
        this.corruption(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`, { structure: active ? 'active L1 table' : 'snapshot L1 table', table: active ? 'active L1' : hex(l1Offset), l1Index: i, hostOffset: l1Offset + i * 8 });
      }
      this.inc(l2Offset, cs, active ? Kind.L2Active : Kind.L2Snapshot);
      if (l2Offset % cs !== 0) {
        this.corruption(`ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`, { structure: 'L1 table', l1Index: i, hostOffset: l2Offset });
      }
      if (((k + 1) & 63) === 0) this.opts.onProgress?.(active ? 'Active L2 tables' : 'Snapshot L2 tables', k + 1, offsets.length);
      const vm = i >= vmIndex ? 1 : 0;
      const refs = left[vm]!;
      const rest = refs.get(l2Offset)! - 1; // references after this one
      refs.set(l2Offset, rest);
      const seen = memo[vm]!.get(l2Offset);
      if (seen === null) continue;
      if (seen !== undefined) {
        this.replay(seen, outer);
        continue;
      }
      if (isKept(l2Offset)) {
        // every reference at once: a kept table has no messages, only counts (or an overflow, walked)
        this.times = outer * (rest + 1);
        if (!runs!.count(l2Offset, this.imrt.counts, this.imrt.storeMax, this.times)) await this.walkL2(l2Offset, await this.readTable(l2Offset), active, vm === 1);
        this.times = outer;
        memo[vm]!.set(l2Offset, null);
        continue;
      }
      const table = planned[k] ? (await tables.next()).value![1] : await this.readTable(l2Offset);
      const log = rest > 0 ? new L2Log() : null;
      const frag0 = log ? { ...this.frag } : null;
      const slow = this.slowEntries;
      const fixes = this.fixesTried;
      this.rec = log;
      try {
        await this.walkL2(l2Offset, table, active, vm === 1);
      } finally {
        this.rec = null;
      }
      // every entry plain: countPlainRun gathered its runs in one call; the last ends where the next cluster would be
      if (active && runs && this.slowEntries === slow) runs.keep(l2Offset, this.runBuf, this.fragNext[0]!);
      if (this.fixesTried !== fixes) {
        // the repair wrote to the file: the tables recorded so far may have changed
        memo[0]!.clear();
        memo[1]!.clear();
        continue;
      }
      if (!log || !frag0) continue;
      log.frag.allocatedClusters = (this.frag.allocatedClusters - frag0.allocatedClusters) / outer;
      log.frag.fragmentedClusters = (this.frag.fragmentedClusters - frag0.fragmentedClusters) / outer;
      log.frag.compressedClusters = (this.frag.compressedClusters - frag0.compressedClusters) / outer;
      if (repairing || log.size <= REPLAY_MAX) {
        memo[vm]!.set(l2Offset, log);
      } else {
        this.replay(log, outer * rest);
        memo[vm]!.set(l2Offset, null);
      }
    }
  }

  /** A table read alone (zeros at or past the end of the file, as tablesInOrder reads it). */
  private async readTable(offset: number): Promise<Uint8Array> {
    const t = new Uint8Array(this.cs);
    if (offset < this.img.store.size() && offset + this.cs <= Number.MAX_SAFE_INTEGER) await readInto(this.img.store, offset, t);
    entriesDecoded(this.cs / 8);
    return t;
  }

  /** Add a recorded L2 walk again, `times` references at once. */
  private replay(log: L2Log, times: number): void {
    const saved = this.times;
    this.times = times;
    log.replay(this.incBound, this.reportBound);
    this.res.corruptions += log.corruptions * times;
    this.frag.allocatedClusters += log.frag.allocatedClusters * times;
    this.frag.fragmentedClusters += log.frag.fragmentedClusters * times;
    this.frag.compressedClusters += log.frag.compressedClusters * times;
    this.times = saved;
    entriesDecoded(log.size);
  }

  /** A recorded reference counted `repeats` times (one cluster inside the file when repeats > 1). */
  private readonly incBound = (offset: number, size: number, kind: number, repeats: number): void => {
    if (repeats === 1) return this.inc(offset, size, kind);
    const k = offset / this.cs;
    const times = this.times;
    if (k < this.imrt.size && this.imrt.counts[k]! + times * repeats <= this.imrt.max) {
      // no overflow: one count of all the repeats (an overflow is reported one by one, below)
      this.times = times * repeats;
      this.inc(offset, size, kind);
      this.times = times;
      return;
    }
    for (let r = 0; r < repeats; r++) this.inc(offset, size, kind);
  };
  private readonly reportBound = (f: Finding): void => this.report(f);

  /** The record of the L2 walk going on, when its table has more references (see walkL1). */
  private rec: L2Log | null = null;
  /** Entries the repair was asked to rewrite so far (a walk that asked for one is not recorded). */
  private fixesTried = 0;

  /** QEMU's check_refcounts_l2 on one table already in memory. */
  private async walkL2(l2Offset: number, table: Uint8Array, active: boolean, vmState: boolean): Promise<void> {
    // The scan is synchronous (an async loop would box every 64-bit offset it keeps across
    // iterations); it stops only at an entry the repair rewrites, and resumes after it.
    const state = { next: 0 };
    let i = this.scanL2(l2Offset, table, active, vmState, 0, state);
    while (i >= 0) {
      this.fixesTried++;
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
    // a walk being recorded takes every entry through countEntry, which reports each reference to inc
    const fast = !g.extendedL2 && !g.dataFile && this.rec === null;
    const step = g.extendedL2 ? 16 : 8;
    const n = this.img.l2Entries;
    const frag = active ? this.frag : null;
    const dataKind = vmState ? Kind.VmState : active ? Kind.DataExclusive : Kind.DataSnapshot;
    const imrt = this.imrt;
    const fileClusters = Math.ceil(this.fileSize / this.cs);
    const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const acc = frag ? this.fragAcc : null;
    const next = this.fragNext;
    // runs of an active table, gathered while counting (kept by walkL1 if no entry was slow)
    const runBuf = acc && this.runs && start === 0 ? this.runBuf : null;
    if (runBuf) runBuf[0] = 0;
    if (acc) {
      acc[0] = 0;
      acc[1] = 0;
      next[0] = this.nextClusterOf(state.next);
    }
    let stop = -1;
    for (let i = start; i < n; i++) {
      if (fast) {
        // the arrays are passed afresh after every slow entry: a reference past the end grows them
        const from = i;
        if (acc) acc[2] = 0;
        i = countPlainRun(dv, i, n, imrt.counts, Math.min(imrt.size, fileClusters), imrt.storeMax, this.times, this.clusterBits, this.owners, dataKind, acc, next, runBuf);
        if (acc) this.afterPlainRun(dv, from, i, acc, next);
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

  /**
   * The fragmentation state after countPlainRun counted entries [from, to) of the active tree: the
   * allocated count (every entry but the zeros it counted in acc[2]) and the cluster a contiguous
   * entry would have next (after the last nonzero one), which the loop keeps in locals only.
   */
  private afterPlainRun(dv: DataView, from: number, to: number, acc: Float64Array, next: Int32Array): void {
    acc[0] += (to - from - acc[2]!) * this.times;
    const hiShift = 32 - this.clusterBits;
    for (let j = to - 1; j >= from; j--) {
      const hi = dv.getInt32(j * 8);
      const lo = dv.getInt32(j * 8 + 4);
      if ((hi | lo) === 0) continue;
      next[0] = (((hi & OFFSET_MASK_HI) << hiShift) | (lo >>> this.clusterBits)) + 1;
      return;
    }
  }

  /** The runs of the active table being counted (see countPlainRun), for L2Runs.keep. */
  private readonly runBuf = new Int32Array(1 + 3 * MAX_RUNS_PER_TABLE);

  /** The fragmentation counters of the active walk's fast path: allocated, fragmented, and the zero entries of one countPlainRun call. */
  private readonly fragAcc = new Float64Array(3);
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
        if (isCopied(hi)) {
          const coff = (hi & hiOffMask) * 4294967296 + lo;
          this.corruption(`ERROR: coffset=${hex(coff)}: copied flag must never be set for compressed clusters`, { structure: 'L2 table', hostOffset: l2Offset + at, l2Index: i });
          hi = withCopied(hi, false);
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
          if (this.rec !== null) this.rec.corruptions++;
          const containsData = ext ? bmAlloc !== 0 : !hasZeroFlag(lo);
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
        const off = offsetOf(hi, lo);
        if (bitmapTableEntryInvalid(hi, lo, cs)) {
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
    const fix = !!this.opts.fixErrors;
    for (const i of usedReftableIndices(rt)) {
      const hi = be32(rt, i * 8);
      const lo = be32(rt, i * 8 + 4);
      const at = img.header.refcountTableOffset + i * 8;
      if (refcountTableReservedBits(lo)) {
        this.corruption(`ERROR refcount table entry ${i} has reserved bits set`, { structure: 'refcount table', hostOffset: at });
        this.rebuild = true;
        continue;
      }
      const offset = refcountTableOffset(hi, lo);
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
              this.fileSize = await this.opts.repair.growFile(offset + cs);
            } catch (e) {
              why = e instanceof QcowError && e.details.errno === 'EFBIG' ? strerror('EFBIG') : strerror('EINVAL');
            }
          }
          if (!why) {
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
 * anything else, or `n`. With `acc` ([allocated, fragmented, zeros]) and `next` (the cluster a
 * contiguous entry would have, read once) it keeps the active tree's fragmentation statistics, with
 * ReferenceWalk.afterPlainRun, as QEMU's
 * check_refcounts_l2 does, in cluster indices (int32) rather than offsets; with `runs` as well, it
 * gathers the table's runs of consecutive clusters for L2Runs (startRun) in the same pass.
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
  runs: Int32Array | null,
): number {
  let runCopied = -1; // the COPIED bit of the current run (-1: none yet, so the first entry starts one)
  let expected = next[0]!; // the cluster a contiguous entry would have (the caller recomputes next[0])
  const lowMask = (1 << clusterBits) - 1; // zero flag, reserved bits 1..8, offset bits below the cluster size
  const hiOffLimit = 1 << (clusterBits - 1);
  const hiShift = 32 - clusterBits;
  const flagsHi = L2E_FLAGS_56_62_HI;
  const offHi = OFFSET_MASK_HI;
  const cs = 1 << clusterBits;
  const bytes = times === 1 && max === 255 && owners === null && counts instanceof Uint8Array ? counts : null;
  for (let i = start; i < n; i++) {
    const hi = dv.getInt32(i * 8);
    const lo = dv.getInt32(i * 8 + 4);
    if ((hi | lo) === 0) {
      if (acc !== null) acc[2] += 1;
      continue;
    }
    // bits 56..62 clear: not compressed, no reserved bit
    if ((hi & flagsHi) !== 0 || (lo & lowMask) !== 0) return i;
    const hiOff = hi & offHi;
    if (hiOff >= hiOffLimit) return i;
    const k = (hiOff << hiShift) | (lo >>> clusterBits);
    if (k === 0 || k >= limit) return i;
    const r = counts[k]!;
    if (r + times > max) return i;
    counts[k] = r + times;
    if (owners !== null) owners[k] = r === 0 ? (times === 1 ? dataKind : mergeOwner(dataKind, dataKind)) : mergeOwner(owners[k]!, dataKind);
    if (acc !== null) {
      if (k !== expected) {
        if (expected !== -1) acc[1] += times;
        if (runs !== null) runCopied = startRun(runs, k, hi < 0 ? 1 : 0, expected);
      } else if (runs !== null && (hi < 0 ? 1 : 0) !== runCopied) {
        runCopied = startRun(runs, k, hi < 0 ? 1 : 0, expected);
      }
      expected = k + 1;
    }
    // the entries after it that go on with the next clusters, the same flags, inside the file:
    // counted together (one-byte counts four at a time)
    const stretchEnd = sameRunEnd(dv, i, Math.min(n, i + (limit - k)), cs);
    if (stretchEnd > i + 1) {
      const cEnd = k + (stretchEnd - i);
      let c = bytes !== null ? addOneBytes(bytes, k + 1, cEnd) : k + 1;
      for (; c < cEnd; c++) {
        const rc = counts[c]!;
        if (rc + times > max) return i + (c - k); // the overflow is reported by the caller
        counts[c] = rc + times;
        if (owners !== null) owners[c] = rc === 0 ? (times === 1 ? dataKind : mergeOwner(dataKind, dataKind)) : mergeOwner(owners[c]!, dataKind);
      }
      expected = cEnd;
      i = stretchEnd - 1;
    }
  }
  return n;
}

/**
 * countPlainRun's runs of an active table, as L2Runs keeps them: runs[0] the number of runs so far
 * (−1 once there are more than MAX_RUNS_PER_TABLE), then (first cluster, end, COPIED) per run. A
 * run starts at cluster `k` with COPIED bit `copied`; the one before it ended at `end`. The last
 * run's end is the walk's next expected cluster once the table is done. Returns `copied`.
 */
function startRun(runs: Int32Array, k: number, copied: number, end: number): number {
  const m = runs[0]!;
  if (m < 0) return copied;
  if (m > 0) runs[3 * m - 1] = end;
  if (m === MAX_RUNS_PER_TABLE) {
    runs[0] = -1;
    return copied;
  }
  runs[1 + 3 * m] = k;
  runs[3 + 3 * m] = copied;
  runs[0] = m + 1;
  return copied;
}
