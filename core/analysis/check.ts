// The check: everything `qemu-img check` checks on a qcow2 image, in QEMU's order and wording
// (docs/qcow2-format.md §4; QEMU's qcow2_co_check_locked, qcow2_check_refcounts, check_oflag_copied,
// qcow2_check_read_snapshot_table), with the repairs QEMU makes while checking (`-r leaks`,
// `-r all`). Problems inside a readable image are findings and counters, never exceptions; a
// check that cannot complete says why in `failure` (QEMU's -errno, printed as "Check failed: …").
import { QcowError } from '../errors.ts';
import { be32, put32 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import {
  ClusterType, clusterType, hasOffset, isCompressed, isCopied, offsetOf, OFFSET_MASK_HI, OFFSET_MASK_LO, QCOW_OFLAG_COMPRESSED_HI,
  refcountTableOffset, withCopied,
} from '../format/entries.ts';
import { maxBytesPastEnd } from '../image/alloc-limit.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import {
  markCleanAndConsistent, markCorrupt, preWriteOverlapCheck, rebuildRefcountStructure,
  RefcountWriter, writeL1Entry, writeL2Entry,
} from './rebuild.ts';
import {
  CheckAbort, FindingSink, MAX_REPEATS, altHex, hex64, strerror, zeroCounters, type CheckCounters, type Finding,
} from './findings.ts';
import {
  Imrt, MAX_IMRT_BYTES, highestReferenced, readDiskRefcounts, refcountsMatch, type Counts, type DiskRefcounts,
} from './imrt.ts';
import { L2Runs } from './l2-runs.ts';
import { ReadBuffer, tablesInOrder } from './table-reads.ts';
import { checkReadSnapshotTable, rewriteSnapshotTable } from './check-snapshot-table.ts';
import { ReferenceWalk, type FragStats, type WalkRepairHooks } from './refcount-walk.ts';
import { hex } from '../errors.ts';

export type { Finding, FindingKind } from './findings.ts';

export type RepairMode = 'leaks' | 'all';

export interface CheckOptions {
  /** Repair while checking: 'leaks' (qemu-img check -r leaks) or 'all' (-r all). Needs a writable image. */
  repair?: RepairMode;
  /** Every finding as it is made, in qemu-img's order (the CLI prints them to stderr). */
  onFinding?: (f: Finding) => void;
  onProgress?: (phase: string, done: number, total: number) => void;
  isCancelled?: () => boolean;
}

export interface CheckResult extends CheckCounters, FragStats {
  /** (highest cluster with a refcount or a reference + 1) · cluster size. */
  imageEndOffset: number;
  /** The findings of this pass (capped at MAX_KEPT_FINDINGS; `droppedFindings` says how many more). */
  findings: Finding[];
  droppedFindings: number;
  /** Set when the check could not complete (QEMU's strerror of its -errno). */
  failure?: string;
  /** True when the refcount structure was rebuilt. */
  rebuilt?: boolean;
}

/** qemu-img's exit code for a result: 0 clean, 1 not completed, 2 corruptions, 3 leaks only. */
export function checkExitCode(r: CheckResult): 0 | 1 | 2 | 3 {
  if (r.failure !== undefined || r.checkErrors > 0) return 1;
  if (r.corruptions > 0) return 2;
  if (r.leaks > 0) return 3;
  return 0;
}

function addCounters(out: CheckCounters, src: CheckCounters): void {
  out.corruptions += src.corruptions;
  out.leaks += src.leaks;
  out.checkErrors += src.checkErrors;
  out.corruptionsFixed += src.corruptionsFixed;
  out.leaksFixed += src.leaksFixed;
}

/**
 * One pass of QEMU's qcow2_co_check_locked: the snapshot table, the refcounts (with in-place
 * repairs or a rebuild), the snapshot table rewrite, and — after a clean repair — the dirty and
 * corrupt bits cleared. The image must be opened with checkMode (and writable to repair).
 */
export async function checkImage(img: Qcow2Image, opts: CheckOptions = {}): Promise<CheckResult> {
  const fixLeaks = opts.repair !== undefined;
  const fixErrors = opts.repair === 'all';
  if (fixLeaks && !img.writable) throw new QcowError('READ_ONLY', `${img.store.name} is opened read-only; a repair needs write access`, {});
  const sink = new FindingSink(opts.onFinding);
  const result: CheckResult = {
    ...zeroCounters(), imageEndOffset: 0, totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
    findings: sink.findings, droppedFindings: 0,
  };
  const snapRes = zeroCounters();
  const done = (failure?: string): CheckResult => {
    result.droppedFindings = sink.dropped;
    if (failure !== undefined) result.failure = failure;
    return result;
  };
  try {
    await checkReadSnapshotTable(img, snapRes, fixErrors, sink);
  } catch (e) {
    if (!(e instanceof CheckAbort)) throw e;
    addCounters(result, snapRes);
    return done(e.message);
  }
  const refRes = zeroCounters();
  try {
    const r = await checkRefcounts(img, refRes, fixLeaks, fixErrors, sink, opts);
    Object.assign(result, r.frag);
    result.imageEndOffset = r.imageEndOffset;
    result.rebuilt = r.rebuilt;
    addCounters(result, refRes);
  } catch (e) {
    if (!(e instanceof CheckAbort)) throw e;
    addCounters(result, refRes);
    addCounters(result, snapRes);
    return done(e.message);
  }
  if (snapRes.corruptions > 0 && fixErrors) {
    try {
      await rewriteSnapshotTable(img, (m) => sink.add({ kind: 'info', message: m }));
      snapRes.corruptionsFixed += snapRes.corruptions;
      snapRes.corruptions = 0;
    } catch (e) {
      if (!(e instanceof QcowError)) throw e;
      snapRes.checkErrors++;
      sink.add({ kind: 'check-error', message: `ERROR failed to update snapshot table: ${e.message}`, structure: 'snapshot table' });
      addCounters(result, snapRes);
      return done(e.message);
    }
  }
  addCounters(result, snapRes);
  if (fixLeaks && result.checkErrors === 0 && result.corruptions === 0) await markCleanAndConsistent(img);
  return done();
}

/**
 * What qemu-img check does with one image: a pass with the requested repair and, if anything
 * was repaired, a second pass without repair whose result is reported (with the first pass's
 * fixed counters). `repairFindings` holds the first pass's findings in that case.
 */
export async function runCheck(img: Qcow2Image, opts: CheckOptions = {}): Promise<CheckResult & { repairFindings?: Finding[] }> {
  const first = await checkImage(img, opts);
  if (first.failure !== undefined || (first.corruptionsFixed === 0 && first.leaksFixed === 0)) return first;
  await img.reload();
  const second = await checkImage(img, { ...opts, repair: undefined });
  return { ...second, corruptionsFixed: first.corruptionsFixed, leaksFixed: first.leaksFixed, repairFindings: first.findings, rebuilt: first.rebuilt };
}


// ---- step 2: refcounts -----------------------------------------------------------------------------

interface RefcountPass {
  frag: FragStats;
  imageEndOffset: number;
  rebuilt: boolean;
}

async function checkRefcounts(
  img: Qcow2Image, res: CheckCounters, fixLeaks: boolean, fixErrors: boolean, sink: FindingSink, opts: CheckOptions,
): Promise<RefcountPass> {
  const cs = img.clusterSize;
  const fileSize = img.store.size();
  const nb = Math.ceil(fileSize / cs);
  if (nb > C.INT_MAX || nb * Imrt.bytesPerEntry(img.refcountOrder) > MAX_IMRT_BYTES) {
    res.checkErrors++;
    sink.add({ kind: 'check-error', message: `ERROR the image file is too large to check (${nb} clusters)`, structure: 'image file' });
    throw new CheckAbort('EFBIG');
  }
  /** The file size the walk counts with after a refcount block past the end (0: none). */
  let grownTo = 0;
  /**
   * L2 tables whose cluster passed the overlap check (as active / inactive): the check is per
   * cluster and the metadata does not move during the walk, so a table with thousands of entries
   * to fix is checked once (each check visits every refcount table entry, as QEMU's does).
   */
  const overlapChecked = new Set<string>();
  const hooks: WalkRepairHooks = {
    async fixL2EntryByZero(l2Offset, table, l2Index, active) {
      const step = img.l2EntrySize;
      const at = l2Index * step;
      const key = `${l2Offset}:${active}`;
      const overlap = overlapChecked.has(key) ? null : await preWriteOverlapCheck(img, l2Offset + at, step, active ? ['active L2 table'] : []);
      if (!overlap) overlapChecked.add(key);
      if (overlap) {
        sink.add({ kind: 'info', message: overlap });
        sink.add({ kind: 'check-error', message: 'ERROR: Overlap check failed' });
        res.checkErrors++;
        throw new CheckAbort('EIO');
      }
      if (img.geometry.extendedL2) {
        const zero = be32(table, at + 8);
        const alloc = be32(table, at + 12);
        put32(table, at + 8, (zero | alloc) >>> 0);
        put32(table, at + 12, 0);
        put32(table, at, 0);
        put32(table, at + 4, 0);
      } else {
        put32(table, at, 0);
        put32(table, at + 4, 1); // QCOW_OFLAG_ZERO
      }
      try {
        await writeL2Entry(img, l2Offset, l2Index, table.slice(at, at + step), 'L2 entry: unaligned preallocated cluster made zero');
        return true;
      } catch (e) {
        if (!(e instanceof QcowError)) throw e;
        res.checkErrors++;
        sink.add({ kind: 'check-error', message: `ERROR: Failed to overwrite L2 table entry: ${e.message}` });
        return false;
      }
    },
    async growFile(size) {
      // A refcount block left past the end by a crash sits a few clusters after it; one far
      // beyond (farther than the allocators ever place anything: alloc-limit.ts) is a hostile
      // offset. Refuse as a file system would (EFBIG): the walk then falls back to rebuilding the
      // refcount structures, as QEMU's does when its resize fails. (QEMU grows the file; its
      // rebuild may then put the new structures that far out: a 10 KiB image repaired to 61 MiB.)
      if (size - img.store.size() > maxBytesPastEnd(img.store.size())) {
        throw new QcowError('IO_ERROR', `Refusing to grow ${img.store.name} to ${size} bytes for a refcount block past its end`, { errno: 'EFBIG', size });
      }
      // QEMU truncates the file up to the block at once; here the walk only counts as if it had
      // (bytes past the end read as zeros either way). Nothing is allocated unless the block is
      // still in use when the repair ends (grownTo below): a rebuild drops it, and QEMU's
      // file stays 64 MiB long for a 64 KiB image where ours ends with its last structure.
      grownTo = Math.max(grownTo, size, img.store.size());
      return grownTo;
    },
  };
  const walkOpts = { fixErrors, repair: fixErrors ? hooks : undefined, onProgress: opts.onProgress, isCancelled: opts.isCancelled };
  const walk = new ReferenceWalk(img, nb, res, sink, walkOpts);
  await walk.calculate();
  let imrt = walk.imrt;
  let rebuild = walk.rebuild;
  const frag = { ...walk.frag };
  const preCompare = { ...res };
  const writer = new RefcountWriter(img);
  opts.onProgress?.('Refcount blocks', 0, 1);
  let disk: DiskRefcounts;
  let cmp: { highest: number; rebuild: boolean };
  if (await refcountsMatch(img, imrt, walk.readBuffer, opts.isCancelled)) {
    // Nothing to report: the on-disk refcounts are the IMRT's, which stands in for them below.
    disk = { counts: imrt.counts.subarray(0, imrt.size), unreadable: new Set() };
    cmp = { highest: highestReferenced(imrt), rebuild: false };
  } else {
    disk = await readDiskRefcounts(img, imrt.size, walk.readBuffer);
    cmp = await compareRefcounts(img, imrt, disk, res, { leaks: false, errors: false }, writer, sink, opts);
  }
  rebuild ||= cmp.rebuild;
  let rebuilt = false;
  if (rebuild && fixErrors) {
    const old = { ...res };
    sink.add({ kind: 'info', message: 'Rebuilding refcount structure', structure: 'refcount table' });
    try {
      await rebuildRefcountStructure(img, imrt);
    } catch (e) {
      if (!(e instanceof QcowError)) throw e;
      res.checkErrors++;
      sink.add({ kind: 'check-error', message: e.message, reported: true });
      throw new CheckAbort('EIO');
    }
    rebuilt = true;
    writer.reset();
    res.corruptions = 0;
    res.leaks = 0;
    const walk2 = new ReferenceWalk(img, imrt.size, res, sink, { onProgress: opts.onProgress, isCancelled: opts.isCancelled });
    await walk2.calculate();
    imrt = walk2.imrt;
    let freshLeaks = 0;
    disk = await readDiskRefcounts(img, imrt.size);
    if (fixLeaks) {
      const tmp = zeroCounters();
      const c2 = await compareRefcounts(img, imrt, disk, tmp, { leaks: true, errors: false }, writer, sink);
      if (c2.rebuild) sink.add({ kind: 'info', message: 'ERROR rebuilt refcount structure is still broken' });
      freshLeaks = tmp.leaks;
      cmp = c2;
    } else {
      cmp = await compareRefcounts(img, imrt, disk, zeroCounters(), { leaks: false, errors: false }, writer, new FindingSink());
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fixLeaks) {
    if (rebuild) {
      res.checkErrors++;
      sink.add({ kind: 'check-error', message: 'ERROR need to rebuild refcount structures', structure: 'refcount table' });
      throw new CheckAbort('EIO');
    }
    if (res.leaks > 0 || res.corruptions > 0) {
      Object.assign(res, preCompare);
      cmp = await compareRefcounts(img, imrt, disk, res, { leaks: fixLeaks, errors: fixErrors }, writer, sink, opts);
    }
  }
  // A refcount block past the end that the repair kept (no rebuild) is made real now, as QEMU's
  // resize made it at once: the file ends where QEMU's does.
  if (!rebuilt && grownTo > img.store.size()) await img.truncate(grownTo, 'grow the file to hold a refcount block past its end');
  // The walk's runs still describe the active L2 tables unless something was written since.
  const runs = fixLeaks || rebuilt ? null : walk.runs;
  await checkOflagCopied(img, res, fixLeaks, fixErrors, disk, writer, sink, runs, walk.readBuffer, opts.onProgress, opts.isCancelled);
  return { frag, imageEndOffset: (cmp.highest + 1) * cs, rebuilt };
}

/**
 * QEMU's compare_refcounts: on-disk refcount (refcount1) against references (refcount2) for every
 * cluster of the file. Higher on disk is a leak, lower a corruption; zero on disk with references
 * asks for a rebuild. With fixes, the refcount is set to the reference count in place.
 */
async function compareRefcounts(
  img: Qcow2Image, imrt: Imrt, disk: { counts: ArrayLike<number> & { [i: number]: number }; unreadable: Set<number> },
  res: CheckCounters, fix: { leaks: boolean; errors: boolean }, writer: RefcountWriter, sink: FindingSink,
  opts: CheckOptions = {},
): Promise<{ highest: number; rebuild: boolean }> {
  const n = imrt.size;
  const ref = imrt.counts;
  const dc = disk.counts;
  const per = writer.per;
  const bad = disk.unreadable;
  let highest = 0;
  let rebuild = false;
  let signalled = false;
  let wrote = false;
  /** Clusters a leak repair left unused (refcount 0). */
  const freed: number[] = [];
  for (let i = 0; i < n; i++) {
    if ((i & 0xfffff) === 0 && i > 0) {
      opts.onProgress?.('Comparing refcounts', i, n);
      if (opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled', {});
    }
    if (bad.size > 0 && bad.has(Math.floor(i / per))) {
      if (!signalled) {
        const r = Math.floor(i / per);
        const off = refcountTableOffset(be32(img.reftable, r * 8), be32(img.reftable, r * 8 + 4));
        const what = `Refblock offset ${altHex(off)} unaligned (reftable index: ${altHex(r)})`;
        if (img.writable) {
          // A fatal corruption event on a writable image marks it corrupt, as QEMU does.
          sink.add({ kind: 'info', message: `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed` });
          await markCorrupt(img);
        } else {
          sink.add({ kind: 'info', message: `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed` });
        }
        signalled = true;
      }
      res.checkErrors++;
      sink.add({ kind: 'check-error', message: `Can't get refcount for cluster ${i}: ${strerror('EIO')}`, cluster: i, hostOffset: i * img.clusterSize });
      continue;
    }
    const r1 = dc[i]!;
    const r2 = ref[i]!;
    if (r1 > 0 || r2 > 0) highest = i;
    if (r1 === r2) continue;
    let fixKind: 'leak' | 'corruption' | null = null;
    if (r1 === 0) rebuild = true;
    else if (r1 > r2 && fix.leaks) fixKind = 'leak';
    else if (r1 < r2 && fix.errors) fixKind = 'corruption';
    const word = fixKind ? 'Repairing' : r1 < r2 ? 'ERROR' : 'Leaked';
    sink.add({ kind: r1 < r2 ? 'corruption' : 'leak', message: `${word} cluster ${i} refcount=${r1} reference=${r2}`, cluster: i, hostOffset: i * img.clusterSize });
    if (fixKind && await writer.set(i, r2)) {
      dc[i] = r2;
      wrote = true;
      if (fixKind === 'leak' && r2 === 0) freed.push(i);
      if (fixKind === 'leak') res.leaksFixed++;
      else res.corruptionsFixed++;
      continue;
    }
    if (r1 < r2) res.corruptions++;
    else res.leaks++;
  }
  if (wrote) await writer.flush('repair');
  if (freed.length > 0) await emptyFreedClusters(img, freed);
  return { highest, rebuild };
}

/**
 * QEMU discards a cluster whose refcount a leak repair drops to 0 (update_refcount with
 * QCOW2_DISCARD_ALWAYS): its file then reads zeros there, and so does ours, written once the
 * refcounts are (nothing refers to those clusters, so a crash at any point is harmless). Only
 * clusters that do not read as zeros already are written: a hole stays a hole (the file's
 * allocated size is what QEMU's metadata-preallocation guess, and so `qemu-img map`, goes by).
 */
async function emptyFreedClusters(img: Qcow2Image, clusters: readonly number[]): Promise<void> {
  const cs = img.clusterSize;
  const end = img.store.size();
  const chunk = Math.max(cs, Math.floor((1 << 20) / cs) * cs);
  const zeros = new Uint8Array(chunk);
  let wrote = false;
  for (let k = 0; k < clusters.length;) {
    let n = 1;
    while (k + n < clusters.length && clusters[k + n] === clusters[k]! + n) n++;
    const to = Math.min(end, (clusters[k]! + n) * cs);
    for (let at = clusters[k]! * cs; at < to; at += chunk) {
      const bytes = await img.store.read(at, Math.min(chunk, to - at));
      // runs of clusters with a non-zero byte, written as zeros
      for (let c = 0; c < bytes.length;) {
        const dirty = (i: number): boolean => bytes.subarray(i, i + cs).some((x) => x !== 0);
        if (!dirty(c)) { c += cs; continue; }
        let e = c + cs;
        while (e < bytes.length && dirty(e)) e += cs;
        const len = Math.min(e, bytes.length) - c;
        await img.pwrite(at + c, zeros.subarray(0, len), 'leaked cluster emptied, as QEMU\'s discard leaves it');
        wrote = true;
        c = e;
      }
    }
    k += n;
  }
  if (wrote) await img.flush('leaked clusters emptied');
}

/** QEMU's check_oflag_copied over the active tree: COPIED ⇔ refcount 1, both directions. */
async function checkOflagCopied(
  img: Qcow2Image, res: CheckCounters, fixLeaks: boolean, fixErrors: boolean,
  disk: DiskRefcounts, writer: RefcountWriter, sink: FindingSink, runs: L2Runs | null, buffer: ReadBuffer,
  onProgress?: CheckOptions['onProgress'], isCancelled?: CheckOptions['isCancelled'],
): Promise<void> {
  const repair = fixErrors ? true : fixLeaks ? res.checkErrors === 0 && res.corruptions === 0 && res.leaks === 0 : false;
  const cs = img.clusterSize;
  const per = writer.per;
  const refcountOf = async (cluster: number): Promise<number | undefined> => {
    if (cluster < disk.counts.length) {
      if (disk.unreadable.size > 0 && disk.unreadable.has(Math.floor(cluster / per))) return undefined;
      return disk.counts[cluster]!;
    }
    return writer.get(cluster);
  };
  const dcounts = disk.counts;
  const hasBad = disk.unreadable.size > 0;
  const l1 = img.l1Table;
  const indices: number[] = [];
  const offsets: number[] = [];
  for (let i = 0; i < img.header.l1Size; i++) {
    const off = offsetOf(be32(l1, i * 8), be32(l1, i * 8 + 4));
    if (off === 0) continue;
    indices.push(i);
    offsets.push(off);
  }
  // An L2 table referenced by several L1 entries is scanned once: with its multiplicity when only
  // checking, and once when repairing (QEMU's later visits read the table it just repaired).
  const mult = new Map<number, number>();
  for (const o of offsets) mult.set(o, (mult.get(o) ?? 0) + 1);
  // Tables kept as runs whose COPIED bits all agree with the refcounts have nothing to report
  // and are not read again; every other table is scanned entry by entry.
  const agree = new Set<number>();
  if (runs && !hasBad) for (const o of mult.keys()) if (runs.copiedAgree(o, dcounts)) agree.add(o);
  const tables = tablesInOrder(img, [...mult.keys()].filter((o) => !agree.has(o)), cs, buffer)[Symbol.asyncIterator]();
  const scanned = new Set<number>();
  for (let k = 0; k < offsets.length; k++) {
    const i = indices[k]!;
    const l2Offset = offsets[k]!;
    const hi = be32(l1, i * 8);
    const lo = be32(l1, i * 8 + 4);
    const rc = await refcountOf(Math.floor(l2Offset / cs));
    if (rc !== undefined && (rc === 1) !== isCopied(hi)) {
      res.corruptions++;
      sink.add({ kind: 'corruption', message: `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(hi, lo)} refcount=${rc}`, structure: 'active L1 table', l1Index: i, hostOffset: img.header.l1TableOffset + i * 8 });
      if (repair) {
        put32(l1, i * 8, withCopied(hi, rc === 1));
        const overlap = await preWriteOverlapCheck(img, img.header.l1TableOffset + i * 8, 8, ['active L1 table']);
        if (overlap) {
          sink.add({ kind: 'info', message: overlap });
          res.checkErrors++;
          throw new CheckAbort('EIO');
        }
        try {
          await writeL1Entry(img, i, 'active L1 entry: OFLAG_COPIED repaired');
        } catch (e) {
          if (!(e instanceof QcowError)) throw e;
          res.checkErrors++;
          throw new CheckAbort('EIO');
        }
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }
    if (scanned.has(l2Offset)) continue;
    scanned.add(l2Offset);
    if ((scanned.size & 63) === 0) {
      onProgress?.('OFLAG_COPIED', scanned.size, mult.size);
      if (isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled', {});
    }
    if (agree.has(l2Offset)) continue;
    const table = (await tables.next()).value![1];
    const st: CopiedScan = { dirty: 0, copy: null, need: -1, times: repair ? 1 : mult.get(l2Offset)! };
    let j = scanCopied(img, table, 0, -1, 0, st, dcounts, hasBad, repair, res, sink, i, l2Offset);
    while (j >= 0) {
      // An entry whose refcount is past the in-memory array (beyond the end of the file).
      const rc2 = await refcountOf(st.need);
      j = scanCopied(img, table, j, rc2 === undefined ? -2 : rc2, j, st, dcounts, hasBad, repair, res, sink, i, l2Offset);
    }
    const dirty = st.dirty;
    const copy = st.copy;
    if (dirty > 0 && copy) {
      const overlap = await preWriteOverlapCheck(img, l2Offset, cs, ['active L2 table']);
      if (overlap) {
        sink.add({ kind: 'info', message: overlap });
        sink.add({ kind: 'check-error', message: `ERROR: Could not write L2 table; metadata overlap check failed: ${strerror('EIO')}` });
        res.checkErrors++;
        throw new CheckAbort('EIO');
      }
      try {
        await img.pwrite(l2Offset, copy, `L2 table ${hex(l2Offset)}: OFLAG_COPIED repaired`);
        await img.flush('L2 table');
        img.l2Cache.delete(l2Offset);
      } catch (e) {
        if (!(e instanceof QcowError)) throw e;
        res.checkErrors++;
        sink.add({ kind: 'check-error', message: `ERROR: Could not write L2 table: ${e.message}` });
        throw new CheckAbort('EIO');
      }
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
}

interface CopiedScan {
  /** References to this table being scanned at once (see checkOflagCopied). */
  times: number;
  dirty: number;
  copy: Uint8Array | null;
  /** The cluster whose refcount the caller must look up before resuming. */
  need: number;
}

/**
 * check_oflag_copied's loop over one L2 table, synchronous so no 64-bit value is boxed per entry.
 * Returns -1 at the end, or the index of an entry whose refcount must be looked up on disk (its
 * cluster in `st.need`); the caller resumes with that refcount as `knownRc` for entry `knownAt`
 * (-2: unreadable, skip it). Runs of entries that agree go through `copiedAgreeRun`.
 */
function scanCopied(
  img: Qcow2Image, table: Uint8Array, start: number, knownRc: number, knownAt: number, st: CopiedScan,
  dcounts: Counts, hasBad: boolean, repair: boolean, res: CheckCounters, sink: FindingSink, l1Index: number, l2Offset: number,
): number {
  const g = img.geometry;
  const step = img.l2EntrySize;
  const n = img.l2Entries;
  const dn = dcounts.length;
  const clusterBits = img.clusterBits;
  const hiScale = 2 ** (32 - clusterBits);
  const fast = !g.dataFile && !hasBad;
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  for (let j = start; j < n; j++) {
    if (fast && j !== knownAt) {
      j = copiedAgreeRun(dv, j, n, step, dcounts, clusterBits);
      if (j >= n) break;
    }
    const at = j * step;
    const eh = be32(table, at);
    const el = be32(table, at + 4);
    if (eh === 0 && el === 0) continue;
    if (g.dataFile) {
      const t = clusterType(eh, el, g);
      if (t !== ClusterType.Normal && t !== ClusterType.ZeroAlloc) continue;
    } else if (isCompressed(eh) || !hasOffset(eh, el)) {
      continue; // compressed, or no host cluster (unallocated / zero plain)
    }
    let drc: number;
    if (g.dataFile) {
      drc = 1;
    } else if (j === knownAt && knownRc !== -1) {
      if (knownRc === -2) continue;
      drc = knownRc;
    } else {
      const c = (eh & OFFSET_MASK_HI) * hiScale + (((el & OFFSET_MASK_LO) >>> 0) >>> clusterBits);
      if (c >= dn || hasBad) {
        st.need = c;
        return j;
      }
      drc = dcounts[c]!;
    }
    if ((drc === 1) !== isCopied(eh)) {
      res.corruptions += st.times;
      const f: Finding = { kind: 'corruption', message: `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(eh, el)} refcount=${drc}`, structure: 'L2 table', l1Index, l2Index: j, hostOffset: l2Offset + at };
      for (let r = 0; r < Math.min(st.times, MAX_REPEATS); r++) sink.add(f);
      if (repair) {
        st.copy ??= table.slice();
        put32(st.copy, at, withCopied(eh, drc === 1));
        st.dirty++;
      }
    }
  }
  return -1;
}

/**
 * The common case of check_oflag_copied over entries [start, n) of an L2 table (`step` bytes
 * each, no data file, every refcount readable): skips entries without a host cluster and
 * compressed ones, and those whose COPIED bit says what `refcounts` says (set ⇔ refcount 1).
 * Returns the first other entry (a disagreement, or a cluster past the array), or `n`. Int32
 * words only, and nothing after the loop but the return (see countPlainRun in refcount-walk.ts).
 */
function copiedAgreeRun(dv: DataView, start: number, n: number, step: number, refcounts: Counts, clusterBits: number): number {
  const hiOffLimit = 1 << (clusterBits - 1);
  const hiShift = 32 - clusterBits;
  const dn = refcounts.length;
  const compressedHi = QCOW_OFLAG_COMPRESSED_HI;
  const offHi = OFFSET_MASK_HI;
  const offLo = OFFSET_MASK_LO;
  for (let j = start; j < n; j++) {
    const hi = dv.getInt32(j * step);
    const lo = dv.getInt32(j * step + 4);
    const hiOff = hi & offHi;
    if ((hi & compressedHi) !== 0 || (hiOff === 0 && (lo & offLo) === 0)) continue;
    if (hiOff >= hiOffLimit) return j;
    const c = (hiOff << hiShift) | (lo >>> clusterBits);
    if (c >= dn || (refcounts[c] === 1) !== (hi < 0)) return j;
  }
  return n;
}
