// One colour per cluster kind, the same in the map, the lists and the hex view (docs/architecture.md §7).
import type { ClusterKindName } from '../../worker/api.ts';

export const KIND_INFO: Record<ClusterKindName, { label: string; color: string; explain: string }> = {
  free: { label: 'Free', color: 'var(--k-free)', explain: 'Refcount 0 and no reference: space the next allocation may reuse.' },
  header: { label: 'Header', color: 'var(--k-header)', explain: 'Cluster 0: the header, its extensions and the backing file name.' },
  l1: { label: 'Active L1 table', color: 'var(--k-l1)', explain: 'The first level of guest → host translation for the active disk.' },
  'snapshot-l1': { label: 'Snapshot L1 table', color: 'var(--k-snapshot-l1)', explain: "A snapshot's own copy of the L1 table." },
  l2: { label: 'L2 table (active only)', color: 'var(--k-l2)', explain: 'An L2 table only the active disk uses: written in place.' },
  'l2-shared': { label: 'L2 table (shared)', color: 'var(--k-l2-shared)', explain: 'An L2 table the active disk shares with snapshots: copied before a write.' },
  'l2-snapshot': { label: 'L2 table (snapshots only)', color: 'var(--k-l2-snapshot)', explain: 'An L2 table only snapshots use (one or several), not the active disk: deleting them all frees it.' },
  'refcount-table': { label: 'Refcount table', color: 'var(--k-refcount-table)', explain: 'Points to the refcount blocks.' },
  'refcount-block': { label: 'Refcount block', color: 'var(--k-refcount-block)', explain: 'Counts the references to each host cluster.' },
  'snapshot-table': { label: 'Snapshot table', color: 'var(--k-snapshot-table)', explain: 'The list of internal snapshots.' },
  'vm-state': { label: 'VM state', color: 'var(--k-vm-state)', explain: 'Saved RAM and device state of a snapshot.' },
  data: { label: 'Data (active only)', color: 'var(--k-data)', explain: 'Guest data only the active disk uses.' },
  'data-shared': { label: 'Data (shared)', color: 'var(--k-data-shared)', explain: 'Guest data the active disk shares with at least one snapshot.' },
  'data-snapshot': { label: 'Data (snapshots only)', color: 'var(--k-data-snapshot)', explain: 'Guest data only snapshots still hold (one or several), not the active disk: deleting them all frees it.' },
  compressed: { label: 'Compressed data', color: 'var(--k-compressed)', explain: 'Holds compressed guest clusters (byte-granular, may be shared).' },
  bitmap: { label: 'Bitmaps', color: 'var(--k-bitmap)', explain: 'Persistent dirty bitmaps: directory, tables and data.' },
  crypto: { label: 'Encryption header', color: 'var(--k-crypto)', explain: 'The LUKS header of an encrypted image.' },
  leaked: { label: 'Leaked', color: 'var(--k-leaked)', explain: 'A refcount but no reference: wasted space, no harm to data (check --repair leaks).' },
  corrupt: { label: 'Corrupt or overlapping', color: 'var(--k-corrupt)', explain: 'Owned twice, or referenced more than its refcount says.' },
};
