// Snapshot operations as the command line and the worker run them: internal snapshot create,
// revert and delete on one image or a group (all or none, core/image/group.ts), and external
// snapshots (a new overlay per image, all or none, core/image/external-snapshot.ts). Each
// returns the journal of every write it made, one per image, in order.
import type { ImageStore } from '../io/store.ts';
import { MemoryStore } from '../io/memory-store.ts';
import type { Journal } from '../image/journal.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot, type SnapshotRef } from '../image/snapshot.ts';
import { groupCreate, groupDelete, groupRevert } from '../image/group.ts';
import { createExternalSnapshots, type ExternalSnapshotItem, type OverlayTarget } from '../image/external-snapshot.ts';

export type { OverlayTarget } from '../image/external-snapshot.ts';

/** qemu-img snapshot -c / -a / -d. */
export type SnapshotVerb = 'create' | 'revert' | 'delete';

/**
 * One internal snapshot operation on one image: `arg` is the new snapshot's name (create) or the
 * snapshot, an ID or a name with the ID tried first as qemu-img does (revert, delete).
 */
export async function snapshotOp(img: Qcow2Image, verb: SnapshotVerb, arg: SnapshotRef): Promise<Journal> {
  const r = verb === 'create' ? await createSnapshot(img, nameOf(arg)) : verb === 'revert' ? await revertSnapshot(img, arg) : await deleteSnapshot(img, arg);
  return r.journal;
}

/** The same operation on every image of a group, all or none; errors name the image. */
export async function groupSnapshotOp(imgs: readonly Qcow2Image[], verb: SnapshotVerb, arg: SnapshotRef): Promise<Journal[]> {
  const r = verb === 'create' ? await groupCreate(imgs, nameOf(arg)) : verb === 'revert' ? await groupRevert(imgs, arg) : await groupDelete(imgs, arg);
  return r.map((x) => x.journal);
}

function nameOf(ref: SnapshotRef): string {
  return typeof ref === 'string' ? ref : ref.name ?? '';
}

/** External snapshots: one new overlay per base, backed by it, all or none; the overlays' names. */
export function externalSnapshots(items: readonly ExternalSnapshotItem[]): Promise<string[]> {
  return createExternalSnapshots(items);
}

/** An overlay written into memory: nothing to publish, nothing left when discarded. */
export class MemoryOverlayTarget implements OverlayTarget {
  store: MemoryStore | null = null;
  constructor(readonly name: string) {}
  async open(): Promise<ImageStore> {
    this.store = new MemoryStore(new Uint8Array(0), { name: this.name });
    return this.store;
  }
  async publish(): Promise<void> {}
  async discard(): Promise<void> {
    this.store = null;
  }
}

/**
 * External snapshots of several images into memory, all or none: the overlays' bytes in order.
 * The bases stay open (and unchanged): they only give their virtual size.
 */
export async function overlaysInMemory(items: ReadonlyArray<{ base: Qcow2Image; name: string; backingFile: string }>): Promise<Uint8Array[]> {
  const targets = items.map((i) => new MemoryOverlayTarget(i.name));
  await createExternalSnapshots(items.map((i, n) => ({ base: i.base, backingFile: i.backingFile, target: targets[n]! })));
  return targets.map((t) => t.store!.bytes().slice());
}
