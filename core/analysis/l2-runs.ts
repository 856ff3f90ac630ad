// Active L2 tables kept as runs of consecutive host clusters (L2Runs), so the snapshots sharing
// them and the COPIED pass of the check count them without reading and decoding them again.
import type { Counts } from './imrt.ts';
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

  /**
   * Keep a table whose every entry countPlainRun just counted, from the runs it gathered on the way
   * (`gathered`: the number of runs, −1 if too many, then first cluster, end, COPIED per run; the
   * last run's end is `lastEnd`, the cluster after the table's last entry).
   */
  keep(l2Offset: number, gathered: Int32Array, lastEnd: number): void {
    const m = gathered[0]!;
    if (m < 0 || this.at.has(l2Offset)) return;
    this.at.set(l2Offset, this.runs.length);
    this.runs.push(m);
    for (let j = 0; j < m; j++) {
      const first = gathered[1 + 3 * j]!;
      const end = j === m - 1 ? lastEnd : gathered[2 + 3 * j]!;
      this.runs.push(first, end - first, gathered[3 + 3 * j]!);
    }
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
    const bytes = times === 1 && max === 255 && counts instanceof Uint8Array ? counts : null;
    for (let q = p + 1; q < end; q += 3) {
      const first = runs[q]!;
      const last = first + runs[q + 1]!;
      // one-byte counts: four at a time up to a count that would overflow, which the loop reports
      for (let c = bytes ? addOneBytes(bytes, first, last) : first; c < last; c++) {
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
      const from = refcounts instanceof Uint8Array ? agreeBytes(refcounts, first, last, copied) : first;
      for (let c = from; c < last; c++) if ((refcounts[c] === 1) !== copied) return false;
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

// One-byte counts four at a time (SWAR on 32-bit words; any byte order): the snapshots sharing a
// metadata-preallocated disk's tables add 1 to millions of consecutive counts.
const ONES = 0x01010101;
const HIGHS = 0x80808080;

/**
 * Add 1 to counts[c ..) while no count is 255 (which the caller's loop reports as an overflow):
 * from `c` up to a multiple of 4, then a word at a time. Returns the first cluster not counted.
 */
export function addOneBytes(counts: Uint8Array, c: number, last: number): number {
  if ((counts.byteOffset & 3) !== 0) return c;
  for (; c < last && (c & 3) !== 0; c++) {
    if (counts[c] === 255) return c;
    counts[c] = counts[c]! + 1;
  }
  const words = new Uint32Array(counts.buffer, counts.byteOffset, counts.length >>> 2);
  for (; c + 4 <= last; c += 4) {
    const w = words[c >>> 2]!;
    if ((((~w - ONES) | 0) & w & HIGHS) !== 0) break; // a byte is 0xff
    words[c >>> 2] = (w + ONES) | 0;
  }
  return c;
}

/**
 * Whether counts[c ..) say what `copied` says (set ⇔ 1), a word at a time while they do. Returns
 * the first cluster not yet known to agree (the caller's loop decides from there).
 */
function agreeBytes(counts: Uint8Array, c: number, last: number, copied: boolean): number {
  if ((counts.byteOffset & 3) !== 0) return c;
  for (; c < last && (c & 3) !== 0; c++) if ((counts[c] === 1) !== copied) return c;
  const words = new Uint32Array(counts.buffer, counts.byteOffset, counts.length >>> 2);
  for (; c + 4 <= last; c += 4) {
    const x = words[c >>> 2]! ^ ONES; // a zero byte where a count is 1
    const ones = (((x - ONES) | 0) & ~x & HIGHS) !== 0;
    if (copied ? x !== 0 : ones) break;
  }
  return c;
}
