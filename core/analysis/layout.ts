// The layout map: who owns every host cluster (header, L1/L2 tables, refcount structures,
// snapshot table, data shared or not, compressed, bitmaps, crypto header, free, leaked, corrupt),
// computed by the check's own reference walk (refcount-walk.ts) and compared with the on-disk
// refcounts. The result is one byte per cluster (a typed array the web app's cluster map draws and
// that crosses the worker boundary by transfer), a summary by kind and a range list.
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { FindingSink, zeroCounters, CheckAbort } from './findings.ts';
import { Imrt, MAX_IMRT_BYTES, decodeInto, refblocksInOrder, type Counts } from './imrt.ts';
import { Kind, LAYOUT_KIND_NAMES, type LayoutKindName } from './owners.ts';
import { ReferenceWalk } from './refcount-walk.ts';
import { QcowError } from '../errors.ts';

export { Kind, LAYOUT_KIND_NAMES, type LayoutKindName } from './owners.ts';

export interface Layout {
  clusterSize: number;
  /** Host clusters in the file (the last one may be partial). */
  clusterCount: number;
  /** One Kind code per host cluster; LAYOUT_KIND_NAMES[code] names it. */
  kinds: Uint8Array;
  legend: readonly LayoutKindName[];
  /** Clusters per kind (every kind present, zeros included). */
  summary: Record<LayoutKindName, number>;
}

export interface LayoutRanges {
  /** Runs of equal kind: start cluster, length in clusters, kind code (parallel typed arrays). */
  starts: Float64Array;
  counts: Float64Array;
  kinds: Uint8Array;
  length: number;
}

export interface LayoutOptions {
  onProgress?: (phase: string, done: number, total: number) => void;
  isCancelled?: () => boolean;
}

/**
 * Walk the image as the check does and classify every host cluster. Clusters with references get
 * their owner's kind (a cluster with owners of different kinds, or with a refcount below its
 * references, is Corrupt); clusters without references are Leaked when their refcount is
 * non-zero, else Free.
 */
export async function buildLayout(img: Qcow2Image, opts: LayoutOptions = {}): Promise<Layout> {
  const cs = img.clusterSize;
  const clusterCount = Math.ceil(img.store.size() / cs);
  if (clusterCount * (Imrt.bytesPerEntry(img.refcountOrder) + 1) > MAX_IMRT_BYTES) {
    throw new QcowError('TABLE_TOO_LARGE', `The image file is too large for a layout map (${clusterCount} clusters)`, { clusterCount });
  }
  const walk = new ReferenceWalk(img, clusterCount, zeroCounters(), new FindingSink(), {
    trackOwners: true, lenientBitmaps: true, onProgress: opts.onProgress, isCancelled: opts.isCancelled,
  });
  try {
    await walk.calculate();
  } catch (e) {
    // A bitmap directory that cannot be parsed stops QEMU's check; the map still shows the rest.
    if (!(e instanceof CheckAbort)) throw e;
  }
  // The on-disk refcounts one refblock at a time, decoded into one reused array (a whole-file
  // array of them is fresh memory, dearer to touch than the comparison).
  const order = img.refcountOrder;
  const per = 2 ** (img.clusterBits + 3 - order);
  const refs = walk.imrt.counts;
  const owners = walk.owners!;
  const kinds = new Uint8Array(clusterCount);
  const summary = Object.fromEntries(LAYOUT_KIND_NAMES.map((n) => [n, 0])) as Record<LayoutKindName, number>;
  const tally = new Float64Array(LAYOUT_KIND_NAMES.length);
  const disk = Imrt.alloc(order, Math.min(per, clusterCount));
  const unreadable = new Set<number>();
  let next = 0;
  /** Clusters [next, to) have no refblock (refcount 0) or an unreadable one (taken as their references). */
  const noRefblock = (to: number): void => {
    while (next < to) {
      const r = Math.floor(next / per);
      const end = Math.min(to, (r + 1) * per);
      classify(kinds, tally, refs, walk.imrt.size, owners, next, end, null, 0, unreadable.has(r));
      next = end;
    }
  };
  const stopIf = (): void => {
    if (opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The cluster map was cancelled', {});
  };
  stopIf();
  for await (const [r, block] of refblocksInOrder(img, clusterCount, unreadable, walk.readBuffer)) {
    stopIf();
    const base = r * per;
    const count = Math.min(per, clusterCount - base);
    noRefblock(base);
    decodeInto(block, order, disk, 0, count);
    classify(kinds, tally, refs, walk.imrt.size, owners, base, base + count, disk, base, false);
    next = base + count;
  }
  noRefblock(clusterCount);
  LAYOUT_KIND_NAMES.forEach((n, code) => { summary[n] = tally[code]!; });
  return { clusterSize: cs, clusterCount, kinds, legend: LAYOUT_KIND_NAMES, summary };
}

/**
 * The kind of clusters [from, to): their owner's, Corrupt when the on-disk refcount r1 is below
 * the references r2, Leaked or Free without references. r1 is `disk[i - diskBase]`, or without
 * `disk` 0 (no refblock) or r2 (`diskUnknown`: the refblock cannot be read).
 */
function classify(
  kinds: Uint8Array, tally: Float64Array, refs: Counts, refsSize: number, owners: Uint8Array,
  from: number, to: number, disk: Counts | null, diskBase: number, diskUnknown: boolean,
): void {
  for (let i = from; i < to; i++) {
    const r2 = i < refsSize ? refs[i]! : 0;
    const r1 = disk !== null ? disk[i - diskBase]! : diskUnknown ? r2 : 0;
    const k = r2 === 0 ? (r1 > 0 ? Kind.Leaked : Kind.Free) : r1 < r2 ? Kind.Corrupt : owners[i]!;
    kinds[i] = k;
    tally[k]!++;
  }
}

/** Runs of equal kind in a layout. */
export function layoutRanges(kinds: Uint8Array): LayoutRanges {
  let n = 0;
  for (let i = 0; i < kinds.length; i++) if (i === 0 || kinds[i] !== kinds[i - 1]) n++;
  const starts = new Float64Array(n);
  const counts = new Float64Array(n);
  const ks = new Uint8Array(n);
  let r = -1;
  for (let i = 0; i < kinds.length; i++) {
    if (i === 0 || kinds[i] !== kinds[i - 1]) {
      r++;
      starts[r] = i;
      ks[r] = kinds[i]!;
    }
    counts[r]!++;
  }
  return { starts, counts, kinds: ks, length: n };
}

/** The cluster kinds of an image before and after an operation (what the operation changed). */
export interface LayoutChanges {
  clusterSize: number;
  /** Clusters per kind, before and after, for every kind present in either. */
  counts: Array<{ kind: LayoutKindName; before: number; after: number }>;
  /** Runs of clusters whose kind changed (clusters past the old end of the file were free). */
  runs: Array<{ start: number; count: number; before: LayoutKindName; after: LayoutKindName }>;
  /** Runs left out after `maxRuns`. */
  moreRuns: number;
}

/** Compare two layouts of one image (kinds indexed by LAYOUT_KIND_NAMES codes). */
export function layoutChanges(
  before: Pick<Layout, 'kinds' | 'clusterSize'>, after: Pick<Layout, 'kinds' | 'clusterSize'>, maxRuns = 200,
): LayoutChanges {
  // Indexed loops on the typed arrays: an operation on an 8 GiB image compares 65,536 clusters
  // each time (an iterator or a closure per cluster cost several milliseconds there).
  const bk = before.kinds;
  const ak = after.kinds;
  const n = Math.max(bk.length, ak.length);
  const common = Math.min(bk.length, ak.length);
  const kindAt = (k: Uint8Array, c: number): number => (c < k.length ? k[c]! : Kind.Free);
  const cb = new Array<number>(LAYOUT_KIND_NAMES.length).fill(0);
  const ca = new Array<number>(LAYOUT_KIND_NAMES.length).fill(0);
  for (let i = 0; i < bk.length; i++) cb[bk[i]!]!++;
  for (let i = 0; i < ak.length; i++) ca[ak[i]!]!++;
  const runs: LayoutChanges['runs'] = [];
  let moreRuns = 0;
  for (let c = 0; c < n;) {
    while (c < common && bk[c] === ak[c]) c++;
    if (c >= n) break;
    const b = kindAt(bk, c);
    const a = kindAt(ak, c);
    if (a === b) {
      c++;
      continue;
    }
    let end = c + 1;
    while (end < n && kindAt(bk, end) === b && kindAt(ak, end) === a) end++;
    if (runs.length < maxRuns) runs.push({ start: c, count: end - c, before: LAYOUT_KIND_NAMES[b]!, after: LAYOUT_KIND_NAMES[a]! });
    else moreRuns++;
    c = end;
  }
  const counts = LAYOUT_KIND_NAMES.map((kind, i) => ({ kind, before: cb[i]!, after: ca[i]! })).filter((x) => x.before || x.after);
  return { clusterSize: after.clusterSize, counts, runs, moreRuns };
}
