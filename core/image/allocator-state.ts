// What the allocator knows about an image between calls (QEMU's free_cluster_index, and where
// metadata lives for the allocation guard). The image owns one (Qcow2Image.allocation) and drops
// what it knows whenever its header or tables change through its own methods, so no writer has to
// remember to tell the allocator; a module that changes refcounts by other means calls forget().
import type { MetadataClusters } from './metadata.ts';

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
