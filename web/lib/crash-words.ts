// The crash stage in plain words (docs/crash-stage.md): the verdict of one power cut, what the disk
// then holds (the image before, after, or a mix), and why the order of the writes makes it so.
import type { CrashEntryDTO, CrashHolds, CrashRehearsalDTO, CrashStopDTO, CrashTables } from '../../worker/crash-stage-api.ts';
import { hex } from './format.ts';

export interface CrashWords {
  tone: 'ok' | 'warn' | 'bad';
  headline: string;
  /** What the verdict means for data and space. */
  meaning: string;
  /** What the disk holds. */
  holds: string;
  /** When old and new are mixed: each header pointer, old or new. */
  tables: string[];
  /** Why the order of the writes makes it so, a sentence each. */
  why: string[];
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** "step 3", "steps 3 and 4", "steps 3 to 6". */
export function stepsText(steps: readonly number[]): string {
  if (steps.length === 1) return `step ${steps[0]}`;
  const contiguous = steps.every((s, i) => i === 0 || s === steps[i - 1]! + 1);
  if (steps.length === 2) return `steps ${steps[0]} and ${steps[1]}`;
  return contiguous ? `steps ${steps[0]} to ${steps[steps.length - 1]}` : `steps ${steps.join(', ')}`;
}

function sameTables(a: CrashTables | null, b: CrashTables | null): boolean {
  return !!a && !!b && a.l1TableOffset === b.l1TableOffset && a.refcountTableOffset === b.refcountTableOffset &&
    a.snapshotsOffset === b.snapshotsOffset && a.nbSnapshots === b.nbSnapshots;
}

/** Each header pointer as old or new: "active L1 table: the new copy at 0x2e0000". */
function mixedTables(now: CrashTables, before: CrashTables, after: CrashTables): string[] {
  const rows: Array<[string, number, number, number]> = [
    ['the active L1 table', now.l1TableOffset, before.l1TableOffset, after.l1TableOffset],
    ['the refcount table', now.refcountTableOffset, before.refcountTableOffset, after.refcountTableOffset],
    ['the snapshot table', now.snapshotsOffset, before.snapshotsOffset, after.snapshotsOffset],
  ];
  return rows
    .filter(([, , b, a]) => a !== b)
    .map(([what, n, b, a]) => `${what[0]!.toUpperCase()}${what.slice(1)}: the ${n === a ? 'new' : n === b ? 'old' : 'unknown'} one, at ${hex(n)}`);
}

function holdsText(r: CrashRehearsalDTO, h: CrashHolds, committed: boolean, hasCommit: boolean): string {
  const list = h.snapshots.length ? `snapshots: ${h.snapshots.join(', ')}` : 'no snapshot';
  if (!h.tables) return 'A header the check cannot read.';
  const b = r.before.tables;
  const a = r.after.tables;
  if (b && a && !sameTables(b, a)) {
    if (sameTables(h.tables, b)) return `The image as it was before the operation (${list}).`;
    if (sameTables(h.tables, a)) return `The image as it is after the operation (${list}).`;
    const p = r.published?.tables;
    if (p && sameTables(h.tables, p)) {
      return `The image as it is after the operation, in the tables it first published (${list}); the move to where QEMU keeps them had not reached the disk.`;
    }
    return `A mix of old and new: the header names the tables below (${list}).`;
  }
  if (!hasCommit) return `The image with the writes that reached the disk (${list}).`;
  return committed
    ? `The image with the new data visible: the commit write is on the disk (${list}).`
    : `The image as it was: the write that makes the change visible is not on the disk (${list}).`;
}

/** The verdict, what the disk holds and why, for one power cut. */
export function crashWords(r: CrashRehearsalDTO, entries: readonly CrashEntryDTO[], s: CrashStopDTO): CrashWords {
  const steps = entries.filter((e) => e.step !== undefined);
  const commitSteps = steps.filter((e) => e.commit).map((e) => e.step!);
  const onDisk = new Set(s.onDisk);
  const committed = commitSteps.length > 0 && commitSteps.every((c) => onDisk.has(c));
  const broken = steps.filter((e) => e.broken);

  let tone: CrashWords['tone'];
  let headline: string;
  let meaning: string;
  if (s.exitCode === 0) {
    tone = 'ok';
    headline = 'Clean: no error, no leak';
    meaning = 'Every cluster in use is counted exactly as often as it is referenced. Nothing to repair.';
  } else if (s.exitCode === 3) {
    tone = 'warn';
    headline = `Leaks only: ${plural(s.leaks, 'cluster')} counted but not used`;
    meaning = 'A leaked cluster costs space, never data: nothing points at it. Check → “Repair leaks” (qemu-img check -r leaks) gives the space back.';
  } else if (s.exitCode === 2) {
    tone = 'bad';
    headline = `Corrupt: ${plural(s.corruptions, 'error')}${s.leaks ? `, ${plural(s.leaks, 'leak')}` : ''}`;
    const copiedOnly = s.findings.filter((f) => f.kind === 'corruption').every((f) => /^ERROR OFLAG_COPIED/.test(f.message)) && s.moreFindings === 0;
    meaning = copiedOnly
      ? 'A COPIED flag disagrees with its cluster\'s refcount. No reference is lost (every cluster in use is counted), but a write could go to a cluster in place that a snapshot shares; qemu-img counts it as an error and “Repair all” sets the flag right.'
      : 'A cluster still in use has a refcount lower than the number of references to it. The next write that needs a free cluster can be handed this one and overwrite data that is still in use.';
  } else {
    tone = 'bad';
    headline = 'The check could not complete';
    meaning = s.failure ? `The image cannot be read as a whole: ${s.failure}.` : 'The image cannot be read as a whole.';
  }

  const why: string[] = [];
  if (s.stop === 0) why.push('The power went before the first write: the disk holds the image untouched.');
  if (s.lost.length > 0) {
    why.push(`${stepsText(s.lost)} came after the last flush and never reached the disk. ` +
      'The flush before them is a barrier: everything written before it reached the disk first, so the disk holds the state of that flush.');
  }
  if (broken.length > 0) {
    const b = broken.map((e) => e.step!);
    const some = b.some((x) => onDisk.has(x));
    const all = b.every((x) => onDisk.has(x)) && commitSteps.every((c) => onDisk.has(c));
    why.push(`The rule is broken on purpose here: ${stepsText(b)} — ${broken[0]!.broken}.`);
    if (s.exitCode === 2) {
      why.push('The refcounts on the disk no longer cover every reference on the disk: the check counts each such cluster as a corruption.');
    } else if (!some) {
      why.push('At this cut the moved writes have not reached the disk yet, so the harm is not visible. Cut the power right after the first of them.');
    } else if (all) {
      why.push('At this cut every write of the pair is on the disk, so the harm is over. Cut between them to see it.');
    }
  } else if (commitSteps.length === 0) {
    why.push('This operation publishes no new reference: it only lowers refcounts of clusters nothing points at, or rewrites data in place. A cut anywhere leaves at worst what was not yet repaired.');
  } else if (s.stop > 0) {
    const c = stepsText(commitSteps);
    if (!committed) {
      why.push(`The commit write (${c}) is not on the disk, so the header and the tables still lead to the old state. ` +
        (s.leaks > 0
          ? 'What reached the disk before it raised refcounts of clusters nothing points at yet: they leak, which costs space, never a reference.'
          : 'What reached the disk before it went where the old image does not look (new copies in clusters its refcounts still call free): not even a leak.'));
    } else {
      const after = steps.filter((e) => e.step! > Math.max(...commitSteps) && e.kind === 'write' && /^refcount/.test(e.purpose)).map((e) => e.step!);
      const missing = after.filter((x) => !onDisk.has(x));
      why.push(`The commit write (${c}) is on the disk: it made the change visible in one write of one sector, which a disk writes whole or not at all. ` +
        'The flush before it made sure everything it points at had reached the disk first.');
      if (missing.length > 0 && s.leaks > 0) {
        why.push(`The refcount decreases after it (${stepsText(missing)}) are not on the disk: the clusters the operation stopped using are still counted. Leaks, never a lost reference: a refcount only comes down after its reference is gone.`);
      } else if (missing.length > 0) {
        why.push(`The refcount writes after it (${stepsText(missing)}) are not on the disk: they belong to the move of the tables to where QEMU keeps them, and the state the commit published is complete without them.`);
      }
    }
  }
  const b = r.before.tables;
  const a = r.after.tables;
  const p = r.published?.tables;
  const known = (t: NonNullable<typeof b>) => sameTables(t, b!) || sameTables(t, a!) || (p !== undefined && p !== null && sameTables(t, p));
  const mixed = s.holds.tables && b && a && !known(s.holds.tables) ? mixedTables(s.holds.tables, b, a) : [];
  return { tone, headline, meaning, holds: holdsText(r, s.holds, committed, commitSteps.length > 0), tables: mixed, why };
}
