// Recently opened files (File System Access handles) remembered in IndexedDB, so that after a
// reload or a crashed tab the app can offer to reopen a file whose unsaved changes the worker kept
// in the private file system (worker/stores/pending-pages.ts: `pending-changes/NAME-SIZE-TIME.json`).
const DB = 'qcowscope';
const STORE = 'recent-handles';

function db(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Remember a file opened through a handle (by its name: the latest one wins). */
export async function rememberHandle(handle: FileSystemFileHandle): Promise<void> {
  const d = await db();
  try {
    await done(d.transaction(STORE, 'readwrite').objectStore(STORE).put(handle, handle.name));
  } finally {
    d.close();
  }
}

/** Remembered files with changes kept from an earlier visit, and how many operations each holds. */
export async function handlesWithKeptChanges(): Promise<Array<{ handle: FileSystemFileHandle; changes: number }>> {
  let kept: string[];
  try {
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('pending-changes');
    kept = [];
    for await (const name of (dir as unknown as { keys(): AsyncIterable<string> }).keys()) if (name.endsWith('.json')) kept.push(name);
    if (!kept.length) return [];
    const out: Array<{ handle: FileSystemFileHandle; changes: number }> = [];
    const d = await db();
    try {
      const handles = await done(d.transaction(STORE).objectStore(STORE).getAll()) as FileSystemFileHandle[];
      for (const handle of handles) {
        const mine = kept.find((k) => k.startsWith(`${encodeURIComponent(handle.name)}-`));
        if (!mine) continue;
        const idx = JSON.parse(await (await (await dir.getFileHandle(mine)).getFile()).text()) as { changes?: number };
        if ((idx.changes ?? 0) > 0) out.push({ handle, changes: idx.changes! });
      }
    } finally {
      d.close();
    }
    return out;
  } catch {
    return []; // no kept changes (or no IndexedDB): nothing to offer
  }
}
