// The cluster maps a write operation's "what changed" (the Journal) compares: the map before the
// operation and the map after it. Each is a walk of every table of the image (its cost grows with
// the file), so the map after one operation is kept and serves as the map before the next while
// nothing else changed the image in between (TxStore.version: a commit, a save, a discard or a
// restore moves it); each operation then walks the image once instead of twice.
import type { Qcow2Image } from '../core/image/qcow2-image.ts';
import type { ImageStore } from '../core/io/store.ts';
import { clusterKinds, type ClusterKinds } from './engine-adapter.ts';
import { TxStore } from './stores/tx-store.ts';

const kept = new WeakMap<ImageStore, { kinds: ClusterKinds; version: number }>();

/** The map before an operation on `w` (opened over `store`): the kept one when the image is as it was then. */
export function kindsBefore(store: ImageStore, w: Qcow2Image): Promise<ClusterKinds | null> {
  const k = kept.get(store);
  // Pending writes here were made by the open itself (a dirty image repaired): walk it again.
  if (k && store instanceof TxStore && !store.hasPending && k.version === store.version) return Promise.resolve(k.kinds);
  return clusterKinds(w);
}

/** The map after an operation (`img`: the image reopened over `store`), kept for the next one. */
export async function kindsAfter(store: ImageStore, img: Qcow2Image | null): Promise<ClusterKinds | null> {
  const kinds = await clusterKinds(img);
  if (kinds && store instanceof TxStore) kept.set(store, { kinds, version: store.version });
  else kept.delete(store);
  return kinds;
}
