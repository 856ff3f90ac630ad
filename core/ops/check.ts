// The check as an operation (qemu-img check [-r leaks|all]): the two passes of a repair, the
// counters qemu-img reports (its JSON fields, zero counters left out) and the percentages of its
// summary line, for the command line to print and the worker to hand to the page.
import { QcowError } from '../errors.ts';
import { formatFixed } from '../analysis/info.ts';
import { runCheck, type CheckOptions, type CheckResult, type Finding } from '../analysis/check.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { storeBitmapsAsOnClose } from '../image/bitmap-ops.ts';

export { checkExitCode, type CheckOptions, type CheckResult, type Finding, type RepairMode } from '../analysis/check.ts';

/** qemu-img's "A/T = x.xx% allocated, y.yy% fragmented, z.zz% compressed clusters", as text. */
export interface CheckPercentages {
  allocated: string;
  fragmented: string;
  compressed: string;
}

export interface CheckReport extends CheckResult {
  /** The repairing pass's findings, when a repair fixed something (the result is the second pass's). */
  repairFindings?: Finding[];
  /** Only when qemu-img prints them: some clusters exist and some are allocated. */
  percent?: CheckPercentages;
}

/**
 * qemu-img check on an image opened in check mode (writable to repair). A cancelled check
 * (`isCancelled`) throws CANCELLED instead of returning a partial report.
 */
export async function checkReport(img: Qcow2Image, opts: CheckOptions = {}): Promise<CheckReport> {
  const r: CheckReport = await runCheck(img, opts);
  if (opts.isCancelled?.()) throw new QcowError('CANCELLED', 'The check was cancelled');
  // qemu-img check -r opens the image for writing and, on close, stores its bitmaps again: so
  // here after a repair that leaves the image clean. Not with internal snapshots (QEMU 7.2 then
  // loses the snapshot table: docs/architecture.md, "Where we do better than QEMU").
  if (opts.repair !== undefined && r.failure === undefined && r.corruptions === 0 && r.checkErrors === 0 && img.header.nbSnapshots === 0) {
    await storeBitmapsAsOnClose(img);
  }
  const percent = checkPercentages(r);
  if (percent) r.percent = percent;
  return r;
}

/** The percentages of qemu-img's summary line (dump_human_image_check), or undefined when it prints none. */
function checkPercentages(r: CheckResult): CheckPercentages | undefined {
  if (r.totalClusters === 0 || r.allocatedClusters === 0) return undefined;
  return {
    allocated: formatFixed((r.allocatedClusters * 100) / r.totalClusters, 2),
    fragmented: formatFixed((r.fragmentedClusters * 100) / r.allocatedClusters, 2),
    compressed: formatFixed((r.compressedClusters * 100) / r.allocatedClusters, 2),
  };
}

/** qemu-img check --output=json (QAPI ImageCheck): optional counters only when non-zero. */
export function checkJson(filename: string, r: CheckResult): Record<string, string | number> {
  // qemu-img 7.2's key order (the hash order of its dictionary); zero counts are left out as it does
  const fields: Array<[string, string | number, boolean]> = [
    ['image-end-offset', r.imageEndOffset, false], ['compressed-clusters', r.compressedClusters, false],
    ['total-clusters', r.totalClusters, false], ['corruptions', r.corruptions, false],
    ['corruptions-fixed', r.corruptionsFixed, false], ['check-errors', r.checkErrors, true],
    ['leaks', r.leaks, false], ['leaks-fixed', r.leaksFixed, false],
    ['allocated-clusters', r.allocatedClusters, false], ['filename', filename, true], ['format', 'qcow2', true],
    ['fragmented-clusters', r.fragmentedClusters, false],
  ];
  const o: Record<string, string | number> = {};
  for (const [k, v, always] of fields) if (always || v !== 0) o[k] = v;
  return o;
}
