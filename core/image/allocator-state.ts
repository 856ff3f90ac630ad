// What the allocator knows about an image between calls (QEMU's free_cluster_index, and where
// metadata lives for the allocation guard). The image owns one (Qcow2Image.allocation) and drops
// what it knows whenever its header or tables change through its own methods, so no writer has to
// remember to tell the allocator; a module that changes refcounts by other means calls forget().
/**
 * Where metadata lives, by host cluster: single clusters (refcount blocks, L2 tables) in a map,
 * multi-cluster tables (L1 tables, the refcount and snapshot tables) as ranges, so a hostile
 * header claiming huge tables costs one entry per table, not one per cluster.
 */
export class MetadataClusters {
  private readonly singles = new Map<number, string>();
  private readonly ranges: Array<readonly [number, number, string]> = [];

  /** Clusters [first, end) hold `name` (the first name recorded for a cluster wins). */
  addRange(first: number, end: number, name: string): void {
    if (end - first === 1) {
      if (!this.singles.has(first)) this.singles.set(first, name);
    } else if (end > first) {
      this.ranges.push([first, end, name]);
    }
  }

  set(c: number, name: string): void {
    this.singles.set(c, name);
  }

  /** The lowest cluster of [start, start + n) holding metadata, and its owner; null if none. */
  firstIn(start: number, n: number): readonly [number, string] | null {
    let best: [number, string] | null = null;
    for (const [first, end, name] of this.ranges) {
      if (first < start + n && start < end) {
        const c = Math.max(first, start);
        if (!best || c < best[0]) best = [c, name];
      }
    }
    const limit = best ? best[0] : start + n;
    for (let c = start; c < limit; c++) {
      const owner = this.singles.get(c);
      if (owner !== undefined) return [c, owner];
    }
    return best;
  }
}

export class AllocatorState {
  /** QEMU's free_cluster_index: no free cluster below it (0 on open). */
  freeClusterIndex = 0;
  /** Host clusters holding metadata, for the "Preventing invalid allocation" guard; null = rebuild. */
  metadata: MetadataClusters | null = null;
  /** The snapshots' L2 tables (host clusters), for the write guard; null = read them again. */
  inactiveL2: Set<number> | null = null;

  /** Everything derived from the tables is stale: rebuild it when next asked. */
  forget(): void {
    this.freeClusterIndex = 0;
    this.metadata = null;
    this.inactiveL2 = null;
  }
}
