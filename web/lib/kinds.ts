// One colour per cluster kind, the same in the map, the lists and the hex view (DESIGN.md).
import type { ClusterKindName } from '../../worker/api.ts';

export const KIND_INFO: Record<ClusterKindName, { label: string; color: string }> = {
  free: { label: 'Free', color: 'var(--k-free)' },
  header: { label: 'Header', color: 'var(--k-header)' },
  l1: { label: 'Active L1 table', color: 'var(--k-l1)' },
  'snapshot-l1': { label: 'Snapshot L1 table', color: 'var(--k-snapshot-l1)' },
  l2: { label: 'L2 table', color: 'var(--k-l2)' },
  'l2-shared': { label: 'L2 table (shared)', color: 'var(--k-l2-shared)' },
  'refcount-table': { label: 'Refcount table', color: 'var(--k-refcount-table)' },
  'refcount-block': { label: 'Refcount block', color: 'var(--k-refcount-block)' },
  'snapshot-table': { label: 'Snapshot table', color: 'var(--k-snapshot-table)' },
  'vm-state': { label: 'VM state', color: 'var(--k-vm-state)' },
  data: { label: 'Data', color: 'var(--k-data)' },
  'data-shared': { label: 'Data (shared with a snapshot)', color: 'var(--k-data-shared)' },
  compressed: { label: 'Compressed data', color: 'var(--k-compressed)' },
  leaked: { label: 'Leaked', color: 'var(--k-leaked)' },
  corrupt: { label: 'Corrupt or overlapping', color: 'var(--k-corrupt)' },
  other: { label: 'Other', color: 'var(--k-other)' },
};
