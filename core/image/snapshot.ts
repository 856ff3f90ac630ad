// Internal snapshots (docs/qcow2-format.md §3): list, find (by ID, by name, by both, by ID-or-name
// with the ID first), create, revert ("goto"), delete, and a read-only view of a snapshot. Each
// operation is checked completely and planned before its first write, then carried out by the
// shadow commit in snapshot-commit.ts (new structures in free clusters, one atomic header write),
// and records its journal. Operations come in two steps, plan*() then run(), so that group
// operations (group.ts) can plan every image before touching any.
import { QcowError } from '../errors.ts';
import { encodeString } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { sizeToL1 } from '../format/header.ts';
import { makeSnapshot, type Snapshot } from '../format/snapshot-table.ts';
import { Journal } from './journal.ts';
import type { Extent, Layer } from './layer.ts';
import type { L1View, Qcow2Image } from './qcow2-image.ts';
import { ShadowCommit, type CommitRequest } from './snapshot-commit.ts';
import { precheckSnapshotOp } from './snapshot-precheck.ts';
import { planQemuLayout, settleToQemuLayout, type QemuLayout } from './snapshot-settle.ts';

/** QEMU's QEMUSnapshotInfo.name is 256 bytes with the NUL; qemu-img truncates longer names. We refuse them. */
const MAX_SNAPSHOT_NAME_BYTES = 255;

/** A snapshot given by ID-or-name (a string: the ID first, then the name), or by ID and/or name. */

/** The wall clock as QEMU stamps a snapshot (g_get_real_time: microseconds; date_nsec a multiple of 1000). */
export function snapshotTimestamp(): { dateSec: number; dateNsec: number } {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { dateSec: Math.floor(us / 1_000_000), dateNsec: (us % 1_000_000) * 1000 };
}

export type SnapshotRef = string | { id?: string; name?: string };

/**
 * Find a snapshot. A string is looked up as an ID first, then as a name (QEMU's
 * find_snapshot_by_id_or_name, used by `-a` and our `-d`); an object matches every field given
 * (QEMU's find_snapshot_by_id_and_name). Duplicate names: the first match wins.
 */
export function findSnapshot(img: Qcow2Image, ref: SnapshotRef): Snapshot | undefined {
  if (typeof ref === 'string') return img.snapshots.find((s) => s.idStr === ref) ?? img.snapshots.find((s) => s.name === ref);
  if (ref.id === undefined && ref.name === undefined) return undefined;
  return img.snapshots.find((s) => (ref.id === undefined || s.idStr === ref.id) && (ref.name === undefined || s.name === ref.name));
}

/** A snapshot ID or name for a one-line message: control characters (a damaged table's bytes) as \xNN. */
function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function describeRef(ref: SnapshotRef): string {
  if (typeof ref === 'string') return `'${printable(ref)}'`;
  const parts: string[] = [];
  if (ref.id !== undefined) parts.push(`ID '${printable(ref.id)}'`);
  if (ref.name !== undefined) parts.push(`name '${printable(ref.name)}'`);
  return parts.join(' and ');
}

function requireSnapshot(img: Qcow2Image, ref: SnapshotRef): Snapshot {
  const sn = findSnapshot(img, ref);
  if (!sn) {
    throw new QcowError('SNAPSHOT_NOT_FOUND', `Snapshot ${describeRef(ref)} not found in ${img.store.name}`, {
      snapshot: typeof ref === 'string' ? ref : { ...ref }, image: img.store.name,
    });
  }
  return sn;
}

/** What every writing snapshot operation needs (refused before anything is read or written). */
function assertCanModify(img: Qcow2Image, what: string): void {
  if (!img.writable || !img.store.writable) {
    throw new QcowError('READ_ONLY', `Cannot ${what}: ${img.store.name} is opened read-only`, { image: img.store.name });
  }
  if (img.isCorrupt) {
    throw new QcowError('IMAGE_CORRUPT', `Cannot ${what}: the image is marked corrupt; repair it first (check --repair all)`, {
      structure: 'header', offset: 72, image: img.store.name,
    });
  }
  if (img.hasDataFile) {
    throw new QcowError('NOT_SUPPORTED', `Cannot ${what}: internal snapshots are not supported with an external data file`, {
      structure: 'header', offset: 72, reason: 'data-file', image: img.store.name,
    });
  }
  if (img.isDirty) {
    throw new QcowError('NOT_SUPPORTED', `Cannot ${what}: the image is dirty (lazy refcounts not written back); repair it first (check --repair all)`, {
      structure: 'header', offset: 72, reason: 'dirty', image: img.store.name,
    });
  }
  if (img.snapshotTableError) throw img.snapshotTableError;
}

/** Copies of the snapshot entries (the planner assigns new entry offsets to its copies). */
function cloneSnapshots(list: readonly Snapshot[]): Snapshot[] {
  return list.map((s) => ({ ...s }));
}

async function readSnapshotL1(img: Qcow2Image, sn: Snapshot): Promise<Uint8Array> {
  img.validateSnapshotL1(sn);
  return sn.l1Size > 0 ? (await img.store.read(sn.l1TableOffset, sn.l1Size * 8)).slice() : new Uint8Array(0);
}

/** QEMU's find_new_snapshot_id: the largest strtoul(id) + 1 (non-numeric IDs count as 0). */
export function nextSnapshotId(snapshots: readonly Snapshot[]): string {
  let max = 0;
  for (const s of snapshots) {
    const m = /^\s*\+?(\d+)/.exec(s.idStr);
    const v = m ? Number(m[1]) : 0;
    if (v > max) max = v;
  }
  return String(max + 1);
}

// ---- planned operations -------------------------------------------------------------------------

export type SnapshotOperation = 'create' | 'revert' | 'delete';

/** `fn` with `journal` recording the image's writes. */
async function withJournal<T>(img: Qcow2Image, journal: Journal, fn: () => Promise<T>): Promise<T> {
  const prev = img.journal;
  img.journal = journal;
  try {
    return await fn();
  } finally {
    img.journal = prev;
  }
}

/**
 * An operation checked and planned on one image; nothing written until run(), except refcount
 * blocks written early to free clusters when more change than the plan keeps in memory
 * (OpenOptions.commitRefblockBytes): those are in the journal already.
 */
export class PlannedSnapshotOp {
  private constructor(
    readonly img: Qcow2Image,
    readonly operation: SnapshotOperation,
    /** The snapshot created, reverted to, or deleted. */
    readonly snapshot: Snapshot,
    readonly commit: ShadowCommit,
    readonly journal: Journal,
    /** The file's length before the operation: nothing it uses lies beyond. */
    private readonly lengthBefore: number,
    /** Where QEMU would leave things (snapshot-settle.ts), null where the shadow layout stays. */
    private readonly qemu: QemuLayout | null,
  ) {}

  /** Whether the published operation was moved into QEMU's layout (settle()). */
  settled = false;

  /** Plan `req` on `img`, its journal recording from the start. */
  static async plan(img: Qcow2Image, operation: SnapshotOperation, snapshot: Snapshot, req: CommitRequest, qemu: QemuLayout | null = null): Promise<PlannedSnapshotOp> {
    const journal = new Journal(`snapshot ${operation} '${snapshot.name}' (ID ${snapshot.idStr})`);
    const lengthBefore = img.store.size();
    if (qemu) {
      req.reserved = qemu.reserved;
      req.allocFrom = Math.ceil(qemu.fileSizeAfter / img.clusterSize);
    }
    let commit: ShadowCommit;
    try {
      commit = await withJournal(img, journal, () => ShadowCommit.plan(img, req));
    } catch (e) {
      await restoreLength(img, lengthBefore);
      throw e;
    }
    return new PlannedSnapshotOp(img, operation, snapshot, commit, journal, lengthBefore, qemu);
  }

  /**
   * Give up an operation that was not published: cut off what it appended to the file (refcount
   * blocks written early, prepared structures), which nothing references.
   */
  abandon(): Promise<void> {
    return restoreLength(this.img, this.lengthBefore);
  }

  private withJournal<T>(fn: () => Promise<T>): Promise<T> {
    return withJournal(this.img, this.journal, fn);
  }

  /** Write the new structures and flush (invisible until commit). */
  prepare(): Promise<void> {
    return this.withJournal(() => this.commit.prepare());
  }

  /** Publish: one header write, flushed. */
  publish(): Promise<void> {
    return this.withJournal(() => this.commit.commit());
  }

  /** Undo a published operation exactly (only before settle() and while nothing else was written to the image). */
  rollback(): Promise<void> {
    if (this.settled) throw new QcowError('INTERNAL', 'rollback after the settle', {});
    return this.withJournal(() => this.commit.rollback());
  }

  /**
   * Move the published operation into QEMU's layout (a second header write; the result stays
   * as published where the settle's preconditions do not hold). No rollback after this.
   */
  async settle(): Promise<void> {
    if (!this.qemu || !this.commit.committed || this.settled) return;
    this.settled = await this.withJournal(() => settleToQemuLayout(this.img, this.commit, this.qemu!));
  }

  async run(): Promise<SnapshotOpResult> {
    try {
      await this.prepare();
    } catch (e) {
      await this.abandon();
      throw e;
    }
    await this.publish();
    await this.settle();
    return { snapshot: this.snapshot, journal: this.journal };
  }
}

/**
 * Truncate the file back to `length` after an operation that was refused or failed before its
 * header commit. Only clusters nothing references lie past it; a failure to truncate leaves them,
 * which is harmless, so it is not reported over the operation's own error.
 */
async function restoreLength(img: Qcow2Image, length: number): Promise<void> {
  if (img.store.size() <= length || !img.store.writable) return;
  try {
    await img.store.truncate(length);
    await img.store.flush();
  } catch {
    // unreferenced bytes stay past the old end
  }
}

export interface SnapshotOpResult {
  snapshot: Snapshot;
  journal: Journal;
}

export interface CreateOptions {
  /** Wall-clock time of the snapshot (default: now). */
  dateSec?: number;
  dateNsec?: number;
  /** Guest run time (qemu-img writes 0). */
  vmClockNsec?: number;
  /** qemu-img writes 0; savevm −1 (not recorded). */
  icount?: number;
}

/** Plan `snapshot -c NAME` (docs/qcow2-format.md §3.4). */
export async function planCreate(img: Qcow2Image, name: string, opts: CreateOptions = {}): Promise<PlannedSnapshotOp> {
  assertCanModify(img, `create snapshot '${name}'`);
  if (img.snapshots.length >= C.MAX_SNAPSHOTS) {
    throw new QcowError('SNAPSHOT_LIMIT', `Cannot create snapshot '${name}': the image already has ${img.snapshots.length} snapshots, the most QEMU accepts`, {
      limit: C.MAX_SNAPSHOTS, image: img.store.name,
    });
  }
  if (encodeString(name).length > MAX_SNAPSHOT_NAME_BYTES) {
    throw new QcowError('INVALID_ARGUMENT', `Snapshot name is longer than ${MAX_SNAPSHOT_NAME_BYTES} bytes (QEMU keeps at most ${MAX_SNAPSHOT_NAME_BYTES})`, {
      name, limit: MAX_SNAPSHOT_NAME_BYTES,
    });
  }
  precheckSnapshotOp(img, `create snapshot '${name}'`);
  const now = snapshotTimestamp();
  const sn = makeSnapshot({
    // The current active L1 becomes the snapshot's; the active tree moves to a new L1.
    l1TableOffset: img.header.l1TableOffset,
    l1Size: img.header.l1Size,
    idStr: nextSnapshotId(img.snapshots),
    name,
    dateSec: opts.dateSec ?? now.dateSec,
    dateNsec: opts.dateNsec ?? now.dateNsec,
    vmClockNsec: opts.vmClockNsec ?? 0,
    vmStateSize: 0,
    diskSize: img.virtualSize,
    icount: opts.icount ?? 0,
  });
  const snapshots = [...cloneSnapshots(img.snapshots), sn];
  const req: CommitRequest = {
    operation: 'snapshot create',
    snapshots,
    snapshotsChanged: true,
    activeL1: img.l1Table.slice(),
    removed: [],
  };
  return PlannedSnapshotOp.plan(img, 'create', sn, req, await planQemuLayout(img, { newL1Copy: sn, tableAfter: snapshots }));
}

/** Plan `snapshot -a ID_OR_NAME` (docs/qcow2-format.md §3.5). */
export async function planRevert(img: Qcow2Image, ref: SnapshotRef): Promise<PlannedSnapshotOp> {
  assertCanModify(img, `revert to snapshot ${describeRef(ref)}`);
  // the damage first: a snapshot table cut short may not list the snapshot asked for
  precheckSnapshotOp(img, `revert to snapshot ${describeRef(ref)}`);
  const sn = requireSnapshot(img, ref);
  const h = img.header;
  if (h.bitmaps && h.bitmaps.nbBitmaps > 0 && (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n) {
    throw new QcowError('NOT_SUPPORTED', `Cannot revert to snapshot '${printable(sn.name)}': Device has active dirty bitmaps`, {
      reason: 'dirty-bitmaps', image: img.store.name,
    });
  }
  const table = await readSnapshotL1(img, sn);
  const newSize = Math.floor(sn.diskSize / 512) * 512;
  const sizeChanges = newSize !== img.virtualSize;
  if (sizeChanges && h.version < 3) {
    throw new QcowError('NOT_SUPPORTED', `Cannot revert to snapshot '${printable(sn.name)}' (disk size ${sn.diskSize}): Can't resize a v2 image which has snapshots`, {
      reason: 'v2-resize', image: img.store.name, diskSize: sn.diskSize, currentSize: img.virtualSize,
    });
  }
  if (sizeChanges && sizeToL1(h, newSize) * 8 > C.MAX_L1_SIZE_BYTES) {
    throw new QcowError('TABLE_TOO_LARGE', 'Active L1 table too large', { structure: 'Active L1 table', diskSize: sn.diskSize });
  }
  // QEMU keeps the current L1 length when it is longer (zero padding); a size change takes the
  // length the new size needs, or the snapshot's if longer (it may hold VM state beyond). Growing,
  // QEMU truncates first (qcow2_co_truncate: the L1 grows only where the new size needs more), so
  // it keeps a longer L1 too.
  const grows = sizeChanges && newSize > img.virtualSize;
  const l1Size = sizeChanges && !grows ? Math.max(sn.l1Size, sizeToL1(h, newSize)) : Math.max(sn.l1Size, h.l1Size, grows ? sizeToL1(h, newSize) : 0);
  const activeL1 = new Uint8Array(l1Size * 8);
  activeL1.set(table.subarray(0, Math.min(table.length, activeL1.length)));
  const req: CommitRequest = {
    operation: 'snapshot revert',
    snapshots: cloneSnapshots(img.snapshots),
    snapshotsChanged: false,
    activeL1,
    removed: [],
    ...(sizeChanges ? { size: sn.diskSize } : {}),
  };
  // QEMU shrinks (discarding past the new end), or grows the L1 table, in steps of its own: those
  // keep the shadow layout. Growing the size within the L1 it has only rewrites the header's size.
  const qemu = (!sizeChanges || grows) && l1Size === h.l1Size ? await planQemuLayout(img, { revertTo: sn }) : null;
  return PlannedSnapshotOp.plan(img, 'revert', sn, req, qemu);
}

/** Plan `snapshot -d` (docs/qcow2-format.md §3.6): by ID-or-name (a string), or by ID and/or name. */
export async function planDelete(img: Qcow2Image, ref: SnapshotRef): Promise<PlannedSnapshotOp> {
  assertCanModify(img, `delete snapshot ${describeRef(ref)}`);
  precheckSnapshotOp(img, `delete snapshot ${describeRef(ref)}`);
  const sn = requireSnapshot(img, ref);
  const table = await readSnapshotL1(img, sn);
  const snapshots = cloneSnapshots(img.snapshots.filter((s) => s !== sn));
  const req: CommitRequest = {
    operation: 'snapshot delete',
    snapshots,
    snapshotsChanged: true,
    activeL1: img.l1Table.slice(),
    removed: [{ snapshot: sn, table }],
  };
  return PlannedSnapshotOp.plan(img, 'delete', sn, req, await planQemuLayout(img, { tableAfter: snapshots }));
}

// ---- one-image operations -----------------------------------------------------------------------

/** Create an internal snapshot of the active disk. */
export async function createSnapshot(img: Qcow2Image, name: string, opts: CreateOptions = {}): Promise<SnapshotOpResult> {
  return (await planCreate(img, name, opts)).run();
}

/** Revert the active disk to a snapshot (the snapshot stays). */
export async function revertSnapshot(img: Qcow2Image, ref: SnapshotRef): Promise<SnapshotOpResult> {
  return (await planRevert(img, ref)).run();
}

/** Delete a snapshot. */
export async function deleteSnapshot(img: Qcow2Image, ref: SnapshotRef): Promise<SnapshotOpResult> {
  return (await planDelete(img, ref)).run();
}

// ---- read-only view -----------------------------------------------------------------------------

/**
 * A snapshot's disk as a read-only layer (QEMU's load_tmp: the snapshot's own L1 size and disk
 * size; unallocated ranges fall through to the image's backing file).
 */
export class SnapshotLayer implements Layer {
  constructor(readonly img: Qcow2Image, readonly snapshot: Snapshot, readonly view: L1View) {}

  get virtualSize(): number {
    return this.view.virtualSize;
  }

  read(guestOffset: number, length: number): Promise<Uint8Array> {
    return this.img.readView(this.view, guestOffset, length);
  }

  extents(start: number, length: number): Promise<Extent[]> {
    return this.img.extentsView(this.view, start, length);
  }

  /** The image stays open: it belongs to the caller. */
  async close(): Promise<void> {}
}

export async function snapshotLayer(img: Qcow2Image, ref: SnapshotRef): Promise<SnapshotLayer> {
  const sn = requireSnapshot(img, ref);
  return new SnapshotLayer(img, sn, await img.snapshotView(sn));
}
