// layoutChanges (core/analysis/layout.ts), the "what changed" of a write operation's Journal,
// against a plain model: each cluster's kind before and after compared one by one, runs of equal
// (before, after) pairs merged, clusters past a map's end counted as free.
import { describe, expect, it } from 'vitest';
import { Kind, LAYOUT_KIND_NAMES, layoutChanges } from '../../core/analysis/layout.ts';
import { seededRandom } from '../helpers/random.ts';

function model(before: Uint8Array, after: Uint8Array, maxRuns: number) {
  const n = Math.max(before.length, after.length);
  const at = (k: Uint8Array, c: number) => (c < k.length ? k[c]! : Kind.Free);
  const runs: Array<{ start: number; count: number; before: string; after: string }> = [];
  let moreRuns = 0;
  let open: { start: number; count: number; b: number; a: number } | null = null;
  const close = () => {
    if (!open) return;
    if (runs.length < maxRuns) runs.push({ start: open.start, count: open.count, before: LAYOUT_KIND_NAMES[open.b]!, after: LAYOUT_KIND_NAMES[open.a]! });
    else moreRuns++;
    open = null;
  };
  for (let c = 0; c < n; c++) {
    const b = at(before, c);
    const a = at(after, c);
    if (a === b) close();
    else if (open && open.b === b && open.a === a) open.count++;
    else {
      close();
      open = { start: c, count: 1, b, a };
    }
  }
  close();
  const counts = LAYOUT_KIND_NAMES.map((kind, i) => ({
    kind, before: before.filter((k) => k === i).length, after: after.filter((k) => k === i).length,
  })).filter((x) => x.before || x.after);
  return { clusterSize: 65536, counts, runs, moreRuns };
}

describe('layoutChanges', () => {
  it('equals the cluster-by-cluster model on random maps of different lengths, few or many changes', () => {
    const rand = seededRandom(13);
    const kinds = LAYOUT_KIND_NAMES.length;
    for (let round = 0; round < 200; round++) {
      const len = Math.floor(rand() * 3000);
      const before = new Uint8Array(len).map(() => Math.floor(rand() * kinds));
      const after = new Uint8Array(Math.max(0, len + Math.floor(rand() * 200) - 100));
      const changeRate = rand() < 0.5 ? 0.01 : 0.5;
      for (let c = 0; c < after.length; c++) {
        after[c] = c < before.length && rand() > changeRate ? before[c]! : Math.floor(rand() * kinds);
      }
      const maxRuns = rand() < 0.3 ? 5 : 200;
      expect(layoutChanges({ kinds: before, clusterSize: 65536 }, { kinds: after, clusterSize: 65536 }, maxRuns), `round ${round}`)
        .toEqual(model(before, after, maxRuns));
    }
  });
});
