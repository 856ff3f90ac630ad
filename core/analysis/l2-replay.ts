// What walking one L2 table added to the reference walk, recorded so that the table's later
// references (more L1 entries naming the same table) add it again without reading and decoding
// it: the references it counted, in order, and the findings, corruptions and fragmentation
// statistics it added. QEMU's check_refcounts_l1 reads and walks such a table once per reference;
// replaying the record gives the same counts, messages and order (docs/fuzz-campaign.md, case 17558).
import type { Finding } from './findings.ts';
import type { FragStats } from './refcount-walk.ts';

/** A log's steps: (offset, size, kind) per reference counted; kind FINDING: `offset` indexes `findings`. */
const FINDING = -1;

/**
 * The record of one L2 table's walk, per reference (the walk's multiplicity divided out): replayed
 * through the walk's own `inc` and `report`, so overflows and references past the end of the file
 * are found and reported again where a walk of the table would find them.
 */
export class L2Log {
  /** (offset, size, kind) triples: a reference counted, or (index, 0, FINDING) a finding reported. */
  readonly steps: number[] = [];
  readonly findings: Finding[] = [];
  /** Corruptions the table itself added (not those of `inc`, which its replay counts again). */
  corruptions = 0;
  readonly frag: FragStats = { totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0 };

  /**
   * A reference to [offset, offset+size). Whole clusters that follow the last reference of the
   * same kind, all inside the file (`inFile`), are merged into it: counting them together touches
   * the same clusters in the same order, with the same checks, as counting them one by one.
   */
  inc(offset: number, size: number, kind: number, cs: number, inFile: boolean): void {
    const s = this.steps;
    const n = s.length;
    if (inFile && size === cs && offset % cs === 0 && n > 0 && s[n - 1] === kind && s[n - 3]! + s[n - 2]! === offset && s[n - 3]! % cs === 0) {
      s[n - 2] = s[n - 2]! + size;
      return;
    }
    s.push(offset, size, kind);
  }

  finding(f: Finding): void {
    this.steps.push(this.findings.length, 0, FINDING);
    this.findings.push(f);
  }

  /** Replay: `inc` for every reference and `report` for every finding, in the order walked. */
  replay(inc: (offset: number, size: number, kind: number) => void, report: (f: Finding) => void): void {
    const s = this.steps;
    for (let q = 0; q < s.length; q += 3) {
      const kind = s[q + 2]!;
      if (kind === FINDING) report(this.findings[s[q]!]!);
      else inc(s[q]!, s[q + 1]!, kind);
    }
  }

  /** Work a replay does (for the work budget): its steps. */
  get size(): number {
    return this.steps.length / 3;
  }
}
