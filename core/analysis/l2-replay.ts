// What walking one L2 table added to the reference walk, recorded so that the table's later
// references (more L1 entries naming the same table) add it again without reading and decoding
// it: the references it counted, in order, and the findings, corruptions and fragmentation
// statistics it added. QEMU's check_refcounts_l1 reads and walks such a table once per reference;
// replaying the record gives the same counts, messages and order (docs/fuzz-campaign.md, case 17558).
import type { Finding } from './findings.ts';
import type { FragStats } from './refcount-walk.ts';

/** A log's steps: (offset, size, kind, repeats) per reference counted; kind FINDING: `offset` indexes `findings`. */
const FINDING = -1;

/**
 * The record of one L2 table's walk, per reference (the walk's multiplicity divided out): replayed
 * through the walk's own `inc` and `report`, so overflows and references past the end of the file
 * are found and reported again where a walk of the table would find them.
 */
export class L2Log {
  /** (offset, size, kind, repeats): a reference counted `repeats` times, or (index, 0, FINDING, 1) a finding reported. */
  readonly steps: number[] = [];
  readonly findings: Finding[] = [];
  /** Corruptions the table itself added (not those of `inc`, which its replay counts again). */
  corruptions = 0;
  readonly frag: FragStats = { totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0 };

  /**
   * A reference to [offset, offset+size). A whole cluster inside the file (`inFile`) that follows
   * the last reference of the same kind is merged into it, and one that repeats the last reference
   * (many entries naming one cluster) adds to its repeats: counting them together touches the same
   * clusters in the same order, with the same checks, as counting them one by one.
   */
  inc(offset: number, size: number, kind: number, cs: number, inFile: boolean): void {
    const s = this.steps;
    const n = s.length;
    if (inFile && size === cs && offset % cs === 0 && n > 0 && s[n - 2] === kind && s[n - 4]! % cs === 0) {
      if (s[n - 1] === 1 && s[n - 4]! + s[n - 3]! === offset) {
        s[n - 3] = s[n - 3]! + size;
        return;
      }
      if (s[n - 4] === offset && s[n - 3] === cs) {
        s[n - 1] = s[n - 1]! + 1;
        return;
      }
    }
    s.push(offset, size, kind, 1);
  }

  finding(f: Finding): void {
    this.steps.push(this.findings.length, 0, FINDING, 1);
    this.findings.push(f);
  }

  /** Replay: `inc` for every reference (with its repeats) and `report` for every finding, in the order walked. */
  replay(inc: (offset: number, size: number, kind: number, repeats: number) => void, report: (f: Finding) => void): void {
    const s = this.steps;
    for (let q = 0; q < s.length; q += 4) {
      const kind = s[q + 2]!;
      if (kind === FINDING) report(this.findings[s[q]!]!);
      else inc(s[q]!, s[q + 1]!, kind, s[q + 3]!);
    }
  }

  /** Work a replay does (for the work budget): its steps. */
  get size(): number {
    return this.steps.length / 4;
  }
}
