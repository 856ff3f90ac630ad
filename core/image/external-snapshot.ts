// External snapshots: a new, empty overlay image whose backing file is the current image (what
// QEMU's blockdev-snapshot-sync and `qemu-img create -b IMAGE -F qcow2 OVERLAY` make). The base
// is not modified; the guest goes on in the overlay, and reads fall through to the base.
//
// For one image or a group, all or none: every overlay is first written under a name nobody
// uses and made durable (OverlayTarget.open / the store's flush), then each is published (an
// atomic rename or link on a file system); if one fails, the overlays written or published so
// far are discarded, so none is left behind. The engine never touches file names: the caller's
// OverlayTarget does (cli/commands/snapshot-ops.ts for files).
import { QcowError, isQcowError } from '../errors.ts';
import type { ImageStore } from '../io/store.ts';
import { createImage, type CreateOptions } from './create.ts';
import type { Qcow2Image } from './qcow2-image.ts';

/** Where a new overlay goes. */
export interface OverlayTarget {
  /** Display name (the overlay's final file name). */
  readonly name: string;
  /** A new, empty, writable store not yet visible under `name`. */
  open(): Promise<ImageStore>;
  /** Make it visible under `name`; must fail (not replace) if `name` exists by then. */
  publish(): Promise<void>;
  /** Remove whatever open()/publish() made. Safe to call in any state. */
  discard(): Promise<void>;
}

export interface ExternalSnapshotItem {
  /** The current image, which becomes the overlay's backing file (read-only here). */
  base: Qcow2Image;
  /** The backing file name stored in the overlay, as seen from the overlay's location. */
  backingFile: string;
  target: OverlayTarget;
  /** Options of the new overlay (cluster size, refcount width, ...); size = the base's. */
  options?: Omit<CreateOptions, 'size' | 'backingFile' | 'backingFormat'>;
}

/** Write one overlay into an empty store (left open and flushed). */
async function writeOverlay(store: ImageStore, item: Omit<ExternalSnapshotItem, 'target'>): Promise<void> {
  if (item.backingFile === '') throw new QcowError('INVALID_ARGUMENT', 'The backing file name of an overlay cannot be empty', {});
  await createImage(store, {
    ...item.options,
    size: item.base.virtualSize,
    backingFile: item.backingFile,
    backingFormat: 'qcow2',
  });
  await store.flush();
}

/**
 * Create an overlay for every item, all or none. Returns the overlays' names. On failure, the
 * error names the image it happened on and no overlay is left.
 */
export async function createExternalSnapshots(items: readonly ExternalSnapshotItem[]): Promise<string[]> {
  if (items.length === 0) throw new QcowError('INVALID_ARGUMENT', 'No image given', {});
  const names = new Set(items.map((i) => i.target.name));
  if (names.size !== items.length) throw new QcowError('INVALID_ARGUMENT', 'Two overlays have the same name', {});
  const started: OverlayTarget[] = [];
  const fail = async (e: unknown, item: ExternalSnapshotItem): Promise<never> => {
    for (const t of started.reverse()) {
      try {
        await t.discard();
      } catch {
        // best effort: the original error matters more
      }
    }
    if (isQcowError(e)) {
      throw new QcowError(e.code, `${item.target.name}: ${e.message}`, { ...e.details, overlay: item.target.name, image: item.base.store.name });
    }
    throw e;
  };
  for (const item of items) {
    started.push(item.target);
    try {
      const store = await item.target.open();
      try {
        await writeOverlay(store, item);
      } finally {
        await store.close();
      }
    } catch (e) {
      await fail(e, item);
    }
  }
  for (const item of items) {
    try {
      await item.target.publish();
    } catch (e) {
      await fail(e, item);
    }
  }
  return items.map((i) => i.target.name);
}
