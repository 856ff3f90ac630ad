// The one module of the worker that talks to the engine (core/). Everything the worker needs from
// an open image goes through the EngineImage interface below, so wiring a new engine capability
// is a change here only.
//
// TODAY: reading is served by worker/interim-decoder.ts (header, snapshot table, L1 and refcount
// table pages) until core/image/qcow2-image.ts lands; writes, check, cluster map and the demo
// image report NOT_SUPPORTED until core provides them.
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import type {
  CheckReportDTO,
  ClusterMapDTO,
  EngineFeatures,
  HeaderDTO,
  L1EntryDTO,
  L2EntryDTO,
  Progress,
  RefcountTableEntryDTO,
  SnapshotDTO,
} from './api.ts';
import { readHeader, readL1Page, readRefcountTablePage, readSnapshots } from './interim-decoder.ts';

/** Passed to long engine jobs. */
export interface JobContext {
  signal: AbortSignal;
  /** Throttled by the worker; call as often as you like. */
  progress(p: Progress): void;
}

export interface EngineImage {
  header(): HeaderDTO;
  snapshots(): SnapshotDTO[];
  /** qemu-img info --output=json field names. */
  info(fileSize: number, filename: string): Record<string, unknown>;
  l1Page(start: number, count: number): Promise<L1EntryDTO[]>;
  l2Table(l2Offset: number): Promise<L2EntryDTO[]>;
  refcountTableSize(): number;
  refcountTablePage(start: number, count: number): Promise<RefcountTableEntryDTO[]>;
  refcountBlock(refblockIndex: number): Promise<number[]>;
  clusterMap(job: JobContext): Promise<ClusterMapDTO>;
  check(job: JobContext, repair?: 'leaks' | 'all'): Promise<CheckReportDTO>;
  createSnapshot(name: string, job: JobContext): Promise<void>;
  revertSnapshot(idOrName: string, job: JobContext): Promise<void>;
  deleteSnapshot(idOrName: string, job: JobContext): Promise<void>;
  close(): Promise<void>;
}

export const engineFeatures: EngineFeatures = {
  info: true,
  snapshots: true,
  snapshotWrite: false,
  check: false,
  repair: false,
  l1: true,
  refcounts: true,
  clusterMap: false,
  demo: false,
};

function notYet(what: string): never {
  throw new QcowError('NOT_SUPPORTED', `${what} is not available in this build of the engine yet`);
}

export async function openImage(store: ImageStore): Promise<EngineImage> {
  const h = await readHeader(store);
  const snaps = await readSnapshots(store, h);
  return {
    header: () => h,
    snapshots: () => snaps,
    info: (fileSize, filename) => interimInfo(h, snaps, fileSize, filename),
    l1Page: (start, count) => readL1Page(store, h, start, count),
    l2Table: () => notYet('Reading L2 tables'),
    refcountTableSize: () => (h.refcountTableClusters * h.clusterSize) / 8,
    refcountTablePage: (start, count) => readRefcountTablePage(store, h, start, count),
    refcountBlock: () => notYet('Reading refcount blocks'),
    clusterMap: () => notYet('The cluster map'),
    check: () => notYet('The check'),
    createSnapshot: () => notYet('Creating snapshots'),
    revertSnapshot: () => notYet('Reverting snapshots'),
    deleteSnapshot: () => notYet('Deleting snapshots'),
    close: async () => {},
  };
}

export async function buildDemoStore(): Promise<ImageStore> {
  notYet('The demo image');
}

function interimInfo(h: HeaderDTO, snaps: SnapshotDTO[], fileSize: number, filename: string): Record<string, unknown> {
  const info: Record<string, unknown> = {
    'virtual-size': h.size,
    filename,
    'cluster-size': h.clusterSize,
    format: 'qcow2',
    'actual-size': fileSize,
    'dirty-flag': (h.incompatibleFeatures & 1) !== 0,
  };
  if (h.backingFile !== undefined) info['backing-filename'] = h.backingFile;
  if (h.backingFormat !== undefined) info['backing-filename-format'] = h.backingFormat;
  if (snaps.length) {
    info.snapshots = snaps.map((s) => ({
      'icount': s.icount,
      'vm-state-size': s.vmStateSize,
      'date-sec': s.dateSec,
      'date-nsec': s.dateNsec,
      'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
      'vm-clock-nsec': s.vmClockNsec % 1e9,
      id: s.id,
      name: s.name,
    }));
  }
  const data: Record<string, unknown> = {
    compat: h.version >= 3 ? '1.1' : '0.10',
    'refcount-bits': h.refcountBits,
    'lazy-refcounts': (h.compatibleFeatures & 1) !== 0,
    corrupt: (h.incompatibleFeatures & 2) !== 0,
    'extended-l2': (h.incompatibleFeatures & 16) !== 0,
  };
  if (h.version >= 3) data['compression-type'] = h.compressionType === 1 ? 'zstd' : 'zlib';
  info['format-specific'] = { type: 'qcow2', data };
  return info;
}
