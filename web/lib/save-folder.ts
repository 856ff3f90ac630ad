// Saving several files into one folder the person chose (File System Access), all or none: no
// name may exist already, each file is one atomic createWritable session, and if one fails the
// files written so far are removed.
import { QcowError } from '../../core/errors.ts';

export interface FileToSave {
  name: string;
  blob: Blob;
}

async function exists(dir: FileSystemDirectoryHandle, name: string): Promise<boolean> {
  try {
    await dir.getFileHandle(name);
    return true;
  } catch (e) {
    if ((e as DOMException).name === 'NotFoundError') return false;
    if ((e as DOMException).name === 'TypeMismatchError') return true; // a folder of that name
    throw e;
  }
}

/** Write every file into `dir`; returns their handles by name. */
export async function saveAllToFolder(dir: FileSystemDirectoryHandle, files: FileToSave[]): Promise<Map<string, FileSystemFileHandle>> {
  for (const f of files) {
    if (await exists(dir, f.name)) {
      throw new QcowError('INVALID_ARGUMENT', `${f.name} already exists in the folder ${dir.name}: nothing was saved`, { name: f.name });
    }
  }
  const made = new Map<string, FileSystemFileHandle>();
  try {
    for (const f of files) {
      const h = await dir.getFileHandle(f.name, { create: true });
      made.set(f.name, h);
      await writeBlob(h, f.blob);
    }
  } catch (e) {
    for (const name of made.keys()) await dir.removeEntry(name).catch(() => {});
    if (e instanceof QcowError) throw e;
    throw new QcowError('IO_ERROR', `Could not save into the folder ${dir.name}: ${(e as Error).message}; nothing was kept`, {});
  }
  return made;
}

/** Whether `handle` is directly inside `dir` (so a relative backing file name finds it). */
export async function isInFolder(dir: FileSystemDirectoryHandle, handle: FileSystemFileHandle): Promise<boolean> {
  const path = await dir.resolve(handle).catch(() => null);
  return path !== null && path.length === 1;
}

/** Write `blob` as the whole content of the file behind `handle`: one writable session, aborted on failure. */
export async function writeBlob(handle: FileSystemFileHandle, blob: Blob): Promise<void> {
  const w = await handle.createWritable();
  try {
    await w.write(blob);
    await w.close();
  } catch (e) {
    await w.abort().catch(() => {});
    throw e;
  }
}
