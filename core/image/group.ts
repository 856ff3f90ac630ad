// Group snapshot operations: one create, revert or delete over several images, all or none (what
// QEMU's bdrv_all_* functions and blockdev-group-snapshot-sync promise; docs/qcow2-format.md §3).
//
// 1. Plan on every image: every check and allocation, nothing written. A refusal on any image
//    (unknown snapshot, refcount width, corrupt image, read-only, limits) ends the group here and
//    no image has been touched. (Except where an image changes more refcount blocks than its plan
//    keeps in memory, OpenOptions.commitRefblockBytes: those go early to clusters it does not use,
//    past the file's end, and a refusal met after that cuts the file back to its old length.)
// 2. Prepare every image: write its new structures into clusters it does not use, flush. A
//    failure here leaves only unreferenced bytes in free clusters, and every file is cut back to
//    its old length: every image is as it was.
// 3. Publish image by image (one header write + flush each). If image k fails, images 0..k−1
//    (and k, in case its header write landed) get their previous header bytes back, which
//    restores them exactly: the shadow commit never overwrites what the old state uses.
// This holds for revert and delete too, whose old trees are still intact until the next write.
// A crash of the process between two publications leaves the images published so far with the
// new state and the others with the old one, each of them consistent (no journal spans files).
import { QcowError, isQcowError } from '../errors.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import {
  planCreate, planDelete, planRevert, snapshotTimestamp, type CreateOptions, type PlannedSnapshotOp, type SnapshotOpResult, type SnapshotRef,
} from './snapshot.ts';

/** Re-throw an image's error with the image named (same code, details kept). */
function forImage(e: unknown, img: Qcow2Image, index: number): never {
  if (isQcowError(e)) {
    const msg = e.message.includes(img.store.name) ? e.message : `${img.store.name}: ${e.message}`;
    throw new QcowError(e.code, msg, { ...e.details, image: img.store.name, groupIndex: index });
  }
  throw e;
}

export async function runGroup(
  imgs: readonly Qcow2Image[],
  plan: (img: Qcow2Image) => Promise<PlannedSnapshotOp>,
): Promise<SnapshotOpResult[]> {
  if (imgs.length === 0) throw new QcowError('INVALID_ARGUMENT', 'No image given', {});
  const stores = new Set(imgs.map((i) => i.store));
  if (stores.size !== imgs.length) {
    throw new QcowError('INVALID_ARGUMENT', 'The same image appears twice in the group', {});
  }
  const plans: PlannedSnapshotOp[] = [];
  for (const [i, img] of imgs.entries()) {
    try {
      plans.push(await plan(img));
    } catch (e) {
      for (const p of plans) await p.abandon();
      forImage(e, img, i);
    }
  }
  for (const [i, p] of plans.entries()) {
    try {
      await p.prepare();
    } catch (e) {
      for (const q of plans) await q.abandon();
      forImage(e, p.img, i);
    }
  }
  for (const [k, p] of plans.entries()) {
    try {
      await p.publish();
    } catch (e) {
      const failed: string[] = [];
      // Image k first: its header write may have landed before the failure.
      for (let j = k; j >= 0; j--) {
        try {
          await plans[j]!.rollback();
        } catch {
          if (j < k) failed.push(plans[j]!.img.store.name);
        }
      }
      if (failed.length > 0 && isQcowError(e)) {
        throw new QcowError(e.code, `${p.img.store.name}: ${e.message}; could not roll back ${failed.join(', ')}`, {
          ...e.details, image: p.img.store.name, groupIndex: k, notRolledBack: failed,
        });
      }
      forImage(e, p.img, k);
    }
  }
  // 4. Every image published: each moves into QEMU's layout (a second header write each; no
  //    rollback is needed past this point, and a crash leaves each image published either way).
  for (const [k, p] of plans.entries()) {
    try {
      await p.settle();
    } catch (e) {
      forImage(e, p.img, k);
    }
  }
  return plans.map((p) => ({ snapshot: p.snapshot, journal: p.journal }));
}

export function groupCreate(imgs: readonly Qcow2Image[], name: string, opts: CreateOptions = {}): Promise<SnapshotOpResult[]> {
  // One timestamp for the whole group, as QEMU's savevm gives every device the same one.
  const o: CreateOptions = { ...snapshotTimestamp(), ...opts };
  return runGroup(imgs, (img) => planCreate(img, name, o));
}

export function groupRevert(imgs: readonly Qcow2Image[], ref: SnapshotRef): Promise<SnapshotOpResult[]> {
  return runGroup(imgs, (img) => planRevert(img, ref));
}

export function groupDelete(imgs: readonly Qcow2Image[], ref: SnapshotRef): Promise<SnapshotOpResult[]> {
  return runGroup(imgs, (img) => planDelete(img, ref));
}
