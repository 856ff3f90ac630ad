// Repair, as `qemu-img check -r leaks|all` does it (docs/qcow2-format.md §4.2): the check with its
// repairs, then a second, non-repairing check whose result is reported. Also the repair QEMU runs
// when a dirty image (lazy refcounts) is opened for writing. The writes themselves (refcount
// fixes, COPIED flags, the refcount-structure rebuild, the snapshot table rewrite, clearing the
// dirty/corrupt bits) live in rebuild.ts and check.ts and all go through img.pwrite/img.flush.
import { QcowError } from '../errors.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { checkImage, reloadImageState, runCheck, type CheckOptions, type CheckResult, type RepairMode } from './check.ts';

export type { RepairMode } from './check.ts';
export { rebuildRefcountStructure, markCleanAndConsistent, metadataOverlap } from './rebuild.ts';

/**
 * Repair an image opened writable with checkMode: the repairing pass, then (if anything was
 * fixed) the double check. The result is the double check's, with the first pass's fixed counts;
 * `repairFindings` are the first pass's findings ("Repairing …" lines).
 */
export async function repairImage(
  img: Qcow2Image, mode: RepairMode, opts: Omit<CheckOptions, 'repair'> = {},
): Promise<CheckResult & { repairFindings?: CheckResult['findings'] }> {
  return runCheck(img, { ...opts, repair: mode });
}

/**
 * QEMU repairs a dirty image (incompatible bit 0: lazy refcounts left stale) before it is written:
 * a full `-r all` pass, which rebuilds refcounts from the tables and clears the dirty bit. Call
 * before the first write to an image opened writable. Throws (like QEMU's "Could not repair dirty
 * image") when the repair could not complete; a no-op for clean images.
 */
export async function repairDirtyImage(img: Qcow2Image, opts: Omit<CheckOptions, 'repair'> = {}): Promise<CheckResult | null> {
  if (!img.isDirty) return null;
  if (!img.writable) throw new QcowError('READ_ONLY', `${img.store.name} is dirty and opened read-only; it cannot be repaired`, {});
  const r = await checkImage(img, { ...opts, repair: 'all' });
  if (r.failure !== undefined || r.checkErrors > 0) {
    throw new QcowError('METADATA_CORRUPT', `Could not repair dirty image: ${r.failure ?? 'Input/output error'}`, {
      structure: 'header', corruptions: r.corruptions, checkErrors: r.checkErrors,
    });
  }
  await reloadImageState(img);
  return r;
}
