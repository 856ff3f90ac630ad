// Active L2 tables kept as runs of consecutive host clusters (L2Runs), so the snapshots sharing
// them and the COPIED pass of the check count them without reading and decoding them again.
import { OFFSET_MASK_HI } from '../format/entries.ts';
import type { Counts } from './imrt.ts';
/** Runs a table may have to be kept by L2Runs (more: the table is read again when needed). */
const MAX_RUNS_PER_TABLE = 64;

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
  const offHi = OFFSET_MASK_HI;
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
    const k = ((hi & offHi) << hiShift) | (lo >>> clusterBits);
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
