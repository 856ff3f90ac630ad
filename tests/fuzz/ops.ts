// The engine operations a fuzz case runs beyond reading: check (in check mode, read-only) and the
// writing operations (each on its own writable copy). Kept in one place so the harness follows
// the engine's API as it grows.
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';
import { discard, writeGuest, writeZeroes } from '../../core/image/write.ts';
import { changeBitmaps } from '../../core/image/bitmap-ops.ts';

export interface WriteOp {
  name: string;
  /** Open options for the copy (default: writable). */
  open?: { checkMode?: boolean };
  run(img: Qcow2Image, store: ImageStore): Promise<unknown>;
}

/** `qemu-img check` on a store: its exit code (0 clean, 1 not completed, 2 corruptions, 3 leaks). */
export async function checkStore(store: ImageStore): Promise<0 | 1 | 2 | 3> {
  const img = await Qcow2Image.open(store, { checkMode: true });
  try {
    return checkExitCode(await runCheck(img));
  } finally {
    await img.close();
  }
}

const pattern = (n: number, byte: number): Uint8Array => new Uint8Array(n).fill(byte);

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
  {
    // partial and whole clusters, at the start (where the seeds have data) and in the middle
    name: 'guest write',
    run: async (img) => {
      await writeGuest(img, 0, pattern(Math.min(img.virtualSize, img.clusterSize + 4096), 0xab));
      const mid = Math.floor(img.virtualSize / 2 / 512) * 512;
      if (mid > 0) await writeGuest(img, mid, pattern(Math.min(512, img.virtualSize - mid), 0xcd));
    },
  },
  {
    name: 'zero and discard',
    run: async (img) => {
      const n = Math.min(img.virtualSize, 2 * img.clusterSize);
      await writeZeroes(img, 0, n);
      await discard(img, 0, n);
    },
  },
  { name: 'repair all', open: { checkMode: true }, run: (img) => runCheck(img, { repair: 'all' }) },
  {
    // qemu-img bitmap: a new bitmap stored beside those the image has, then the first one removed
    name: 'bitmap add and remove',
    run: async (img) => {
      await changeBitmaps(img, [{ op: 'add', name: 'fuzz' }]);
      const first = img.bitmaps[0];
      if (first) await changeBitmaps(img, [{ op: 'remove', name: first.name }]);
    },
  },
];
