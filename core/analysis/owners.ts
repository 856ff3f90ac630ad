// Who owns a host cluster (the layout map's kinds): the kinds the reference walk records per
// cluster, their names, and how two owners of one cluster combine.
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

/** A second owner of a cluster: shared variants where sharing is legal, else an overlap (the rules, computed once per pair). */
function mergeRule(prev: number, next: number): number {
  if (prev === Kind.Free) return next;
  const l2 = (k: number) => k === Kind.L2Active || k === Kind.L2Shared || k === Kind.L2Snapshot;
  const data = (k: number) => k === Kind.DataExclusive || k === Kind.DataShared || k === Kind.DataSnapshot || k === Kind.VmState;
  // Held by any number of snapshots and not by the active disk stays "snapshots only" (deleting
  // every snapshot frees it), for L2 tables and data alike.
  if (l2(prev) && l2(next)) return prev === Kind.L2Snapshot && next === Kind.L2Snapshot ? Kind.L2Snapshot : Kind.L2Shared;
  if (data(prev) && data(next)) {
    if (prev === next && (prev === Kind.VmState || prev === Kind.DataSnapshot)) return prev;
    return Kind.DataShared;
  }
  if (prev === Kind.Compressed && next === Kind.Compressed) return Kind.Compressed;
  return Kind.Corrupt;
}

const KINDS = LAYOUT_KIND_NAMES.length;
/** mergeRule for every pair of kinds: the walk merges once per reference (millions on a large image). */
const MERGED = (() => {
  const t = new Uint8Array(KINDS * KINDS);
  for (let a = 0; a < KINDS; a++) for (let b = 0; b < KINDS; b++) t[a * KINDS + b] = mergeRule(a, b);
  return t;
})();

/** A second owner of a cluster: shared variants where sharing is legal, else an overlap. */
export function mergeOwner(prev: number, next: number): number {
  return MERGED[prev * KINDS + next]!;
}
