// The crash stage's verdict (docs/crash-stage.md): the check, exactly as `qemu-img check` runs it,
// on the bytes a disk would hold after a power cut (core/image/crash-replay.ts), and what those
// bytes make of the image: where the header points and which snapshots it lists.
import { QcowError } from '../errors.ts';
import type { ImageStore } from '../io/store.ts';
import { Qcow2Image } from '../image/qcow2-image.ts';
import { checkExitCode, runCheck, type Finding } from './check.ts';

/** Findings a verdict keeps (the counters stay exact). */
const KEPT_FINDINGS = 8;

export interface CrashTables {
  l1TableOffset: number;
  refcountTableOffset: number;
  snapshotsOffset: number;
  nbSnapshots: number;
}

export interface CrashVerdict {
  /** qemu-img check's exit code: 0 clean, 1 not completed, 2 corruptions, 3 leaks only. */
  exitCode: 0 | 1 | 2 | 3;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  /** Why the check could not complete (the image could not be opened, or the check stopped). */
  failure?: string;
  /** The first findings, errors before leaks, in qemu-img check's words. */
  findings: Finding[];
  moreFindings: number;
  /** Where the header points, or null when the image could not be opened. */
  tables: CrashTables | null;
  /** The snapshots the image lists (names), as the check reads the table. */
  snapshots: string[];
}

/** The header's table pointers (the ones an internal-snapshot commit switches). */
export function tablesOf(img: Qcow2Image): CrashTables {
  const h = img.header;
  return { l1TableOffset: h.l1TableOffset, refcountTableOffset: h.refcountTableOffset, snapshotsOffset: h.snapshotsOffset, nbSnapshots: h.nbSnapshots };
}

/** Check `store` as qemu-img check does (read-only, check mode) and say what it holds. */
export async function judgeCrash(store: ImageStore): Promise<CrashVerdict> {
  let img: Qcow2Image;
  try {
    img = await Qcow2Image.open(store, { checkMode: true });
  } catch (e) {
    if (!(e instanceof QcowError)) throw e;
    return { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 1, failure: e.message, findings: [], moreFindings: 0, tables: null, snapshots: [] };
  }
  try {
    const r = await runCheck(img);
    // errors first: they are what the stage is about; then leaks, in qemu-img check's order
    const rank = { corruption: 0, 'check-error': 1, leak: 2, info: 3 } as const;
    const shown = r.findings.filter((f) => f.kind !== 'info').sort((x, y) => rank[x.kind] - rank[y.kind]);
    const v: CrashVerdict = {
      exitCode: checkExitCode(r), corruptions: r.corruptions, leaks: r.leaks, checkErrors: r.checkErrors,
      findings: shown.slice(0, KEPT_FINDINGS),
      moreFindings: Math.max(0, shown.length - KEPT_FINDINGS) + r.droppedFindings,
      tables: tablesOf(img), snapshots: img.snapshots.map((s) => s.name),
    };
    if (r.failure !== undefined) v.failure = r.failure;
    return v;
  } finally {
    await img.close();
  }
}
