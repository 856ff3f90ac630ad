// The crash stage in the worker (docs/crash-stage.md): an operation rehearsed on a copy-on-write
// overlay of an open image (its writes never reach the image or the person's file), kept here by
// id so the page can ask for the disk's state after any write, kept or lost, in the engine's order
// or with the rule broken, each judged by our check as qemu-img check would judge those bytes.
import { QcowError } from '../core/errors.ts';
import type { ImageStore } from '../core/io/store.ts';
import type { Layer } from '../core/image/layer.ts';
import { Journal } from '../core/image/journal.ts';
import { Qcow2Image } from '../core/image/qcow2-image.ts';
import { breakRule, crashAt, rehearse, stepIndexes, type Rehearsal, type RuleBreak, type StageEntry } from '../core/image/crash-replay.ts';
import { judgeCrash, tablesOf } from '../core/analysis/crash-verdict.ts';
import { checkReport } from '../core/ops/check.ts';
import { snapshotOp } from '../core/ops/snapshot.ts';
import { guestWrite } from '../core/ops/write.ts';
import { openForWrite } from './engine-adapter.ts';
import type { ImageDownload } from './api.ts';
import type { CrashEntryDTO, CrashHolds, CrashOperation, CrashRehearsalDTO, CrashStopDTO } from './crash-stage-api.ts';

interface Staged {
  base: ImageStore;
  rehearsal: Rehearsal;
  orders: Map<RuleBreak | null, StageEntry[]>;
}

/** Rehearsals kept (the newest): each holds the bytes of its writes. */
const KEPT = 4;
const staged = new Map<string, Staged>();
let counter = 0;

/** Run `op` on `store` (a recording overlay) and return its journal. */
async function runOn(store: ImageStore, backing: Layer | null, op: CrashOperation): Promise<Journal> {
  if (op.kind === 'repair') {
    const img = await Qcow2Image.open(store, { checkMode: true, writable: true });
    const journal = new Journal(`repair (qemu-img check -r ${op.mode})`);
    img.journal = journal;
    await checkReport(img, { repair: op.mode });
    img.journal = null;
    return journal;
  }
  const img = await openForWrite(store, backing);
  if (op.kind === 'write') {
    const label = `guest write of ${op.length} bytes of 0x${op.pattern.toString(16).padStart(2, '0')} at guest offset 0x${op.offset.toString(16)}`;
    return (await guestWrite(img, { kind: 'pattern', offset: op.offset, length: op.length, pattern: op.pattern }, { journal: label }))!;
  }
  return snapshotOp(img, op.kind, op.kind === 'create' ? op.name : op.snapshot);
}

function entriesDTO(entries: readonly StageEntry[]): CrashEntryDTO[] {
  const steps = stepIndexes(entries);
  return entries.map((e, i) => {
    const d: CrashEntryDTO = { kind: e.kind, offset: e.offset, length: e.length, purpose: e.purpose };
    if (e.commit) d.commit = true;
    if (e.broken) d.broken = e.broken;
    const step = steps.indexOf(i);
    if (step >= 0) d.step = step + 1;
    return d;
  });
}

/** Where the header of `store` points and the snapshots it lists, read as the check reads them. */
async function holdsOf(store: ImageStore): Promise<CrashHolds> {
  try {
    const img = await Qcow2Image.open(store, { checkMode: true });
    return { tables: tablesOf(img), snapshots: img.snapshots.map((s) => s.name) };
  } catch (e) {
    if (e instanceof QcowError) return { tables: null, snapshots: [] };
    throw e;
  }
}

function sameHolds(x: CrashHolds, y: CrashHolds): boolean {
  return JSON.stringify(x) === JSON.stringify(y);
}

/** Rehearse `op` on the image in `base` (with its backing layer, if attached). */
export async function crashRehearse(base: ImageStore, backing: Layer | null, op: CrashOperation): Promise<CrashRehearsalDTO> {
  const rehearsal = await rehearse(base, (s) => runOn(s, backing, op));
  const id = `crash${++counter}`;
  const orders = new Map<RuleBreak | null, StageEntry[]>([[null, rehearsal.entries]]);
  const broken: CrashRehearsalDTO['broken'] = {};
  for (const how of ['lower-first', 'publish-first'] as const) {
    const b = breakRule(rehearsal, how);
    if (!b) continue;
    orders.set(how, b);
    broken[how] = entriesDTO(b);
  }
  staged.set(id, { base, rehearsal, orders });
  for (const k of staged.keys()) if (staged.size > KEPT) staged.delete(k);
  const indexes = stepIndexes(rehearsal.entries);
  const steps = indexes.length;
  const holdsAt = async (stop: number) => holdsOf((await crashAt(base, rehearsal.entries, stop, true)).store);
  const after = await holdsAt(steps);
  // The first published state (right after the commit write), when the operation moves on from it.
  const commitStop = indexes.findIndex((i) => rehearsal.entries[i]!.commit) + 1;
  const published = commitStop > 0 && commitStop < steps ? await holdsAt(commitStop) : undefined;
  return {
    id, operation: rehearsal.operation, entries: entriesDTO(rehearsal.entries), broken,
    before: await holdsAt(0), after,
    ...(published && !sameHolds(published, after) ? { published } : {}),
  };
}

/** The disk after a power cut right after step `stop` of rehearsal `id`, with the steps kept and lost. */
async function pointOf(id: string, stop: number, keep: boolean, how: RuleBreak | null) {
  const s = staged.get(id);
  if (!s) throw new QcowError('INVALID_ARGUMENT', 'That rehearsal is no longer kept: rehearse the operation again');
  const head = await s.base.read(0, s.rehearsal.headerBefore.length);
  if (head.some((b, i) => b !== s.rehearsal.headerBefore[i])) {
    throw new QcowError('INVALID_ARGUMENT', 'The image changed since the rehearsal: rehearse the operation again');
  }
  const entries = s.orders.get(how);
  if (!entries) throw new QcowError('INVALID_ARGUMENT', 'This operation has nothing to reorder that way');
  return { name: s.base.name, point: await crashAt(s.base, entries, stop, keep) };
}

/** That disk judged by the check, as qemu-img check would judge it. */
export async function crashStop(id: string, stop: number, keep: boolean, how: RuleBreak | null): Promise<CrashStopDTO> {
  const { point } = await pointOf(id, stop, keep, how);
  const v = await judgeCrash(point.store);
  const out: CrashStopDTO = {
    stop, keep, how, onDisk: point.onDisk, lost: point.lost,
    exitCode: v.exitCode, corruptions: v.corruptions, leaks: v.leaks, checkErrors: v.checkErrors,
    findings: v.findings.map((f) => ({ kind: f.kind, message: f.message })), moreFindings: v.moreFindings,
    holds: { tables: v.tables, snapshots: v.snapshots },
  };
  if (v.failure !== undefined) out.failure = v.failure;
  return out;
}

/** Bytes per read when a crashed disk is downloaded. */
const CHUNK = 4 << 20;

/** That disk as a file to download (to run qemu-img check on it, say). */
export async function crashImage(id: string, stop: number, keep: boolean, how: RuleBreak | null): Promise<ImageDownload> {
  const { name, point } = await pointOf(id, stop, keep, how);
  const parts: BlobPart[] = [];
  const size = point.store.size();
  for (let at = 0; at < size; at += CHUNK) parts.push((await point.store.read(at, Math.min(CHUNK, size - at))) as Uint8Array<ArrayBuffer>);
  const stem = name.replace(/\.(qcow2?|img)$/i, '');
  return { name: `${stem}-crash-after-write-${stop}${keep ? '' : '-unflushed-lost'}${how ? `-${how}` : ''}.qcow2`, blob: new Blob(parts, { type: 'application/octet-stream' }) };
}
