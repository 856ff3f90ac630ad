// The engine operations a fuzz case runs beyond reading: check (in check mode, read-only) and the
// writing operations (each on its own writable copy). Kept in one place so the harness follows
// the engine's API as it grows.
import type { ImageStore } from '../../core/io/store.ts';
import type { Layer } from '../../core/image/layer.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';

export interface WriteOp {
  name: string;
  run(img: Qcow2Image, store: ImageStore): Promise<unknown>;
}

/** `check` on a read-only store: must produce a report (or a QcowError when it cannot start). */
export const checkOp: ((store: ImageStore, backing: (() => Promise<Layer | null>) | null) => Promise<unknown>) | null = null;

export const writeOps: WriteOp[] = [
  { name: 'snapshot create', run: (img) => createSnapshot(img, 'fuzz') },
  {
    name: 'snapshot revert',
    run: async (img) => {
      const sn = img.snapshots[0];
      if (sn) await revertSnapshot(img, { id: sn.idStr });
    },
  },
  {
    name: 'snapshot delete',
    run: async (img) => {
      const sn = img.snapshots[img.snapshots.length - 1];
      if (sn) await deleteSnapshot(img, { id: sn.idStr });
    },
  },
];
