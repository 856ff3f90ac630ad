// Scratch files for the changes of a dropped file (file-store.ts), so the tab's memory stays
// bounded however many pages an operation writes (a snapshot create on a 256 GiB image writes
// about 72 MiB of tables before the settle): two files in the origin private file system, one for
// the pages held since the file was opened and one for the running operation's own pages, each a
// SpillPageMap (spill-pages.ts: the first pages in memory, the rest in 64 KiB slots). Nothing in
// them is worth keeping (a dropped file cannot be opened again after a reload): they are removed
// when the image closes, and a scratch file left by a crashed tab is removed by the next tab that
// opens one (a file another tab still uses has an open synchronous access handle, so removing it
// fails and it stays).
import { OpfsStore } from './opfs-store.ts';
import { SpillPageMap } from './spill-pages.ts';

const DIR = 'scratch-pages';
/** Bytes of each map's pages kept in memory before the rest go to its file. */
export const SCRATCH_MEMORY_BYTES = 16 << 20;

export interface ScratchPages {
  /** The pages held since the file was opened (the committed overlay). */
  held: SpillPageMap;
  /** The running operation's pages (TxStore's pending overlay), cleared for each operation. */
  operation: SpillPageMap;
  /** Close and remove both files. */
  close(): Promise<void>;
}

/** Two fresh scratch files, or null where the browser has no synchronous access handles (memory it is). */
export async function openScratchPages(budgetBytes = SCRATCH_MEMORY_BYTES): Promise<ScratchPages | null> {
  let dir: FileSystemDirectoryHandle;
  try {
    dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(DIR, { create: true });
  } catch {
    return null;
  }
  await removeStale(dir);
  const key = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const names = [`${key}.held`, `${key}.op`];
  const opened: OpfsStore[] = [];
  const remove = async (): Promise<void> => {
    for (const f of opened) await f.close().catch(() => {});
    for (const n of names) await dir.removeEntry(n).catch(() => {});
  };
  try {
    for (const n of names) opened.push(await OpfsStore.open(await dir.getFileHandle(n, { create: true }), { flushOnClose: false }));
  } catch {
    await remove();
    return null;
  }
  const [held, operation] = opened as [OpfsStore, OpfsStore];
  return { held: new SpillPageMap(held, budgetBytes), operation: new SpillPageMap(operation, budgetBytes), close: remove };
}

/** Remove the scratch files no tab has open (left by a crashed or killed tab). */
async function removeStale(dir: FileSystemDirectoryHandle): Promise<void> {
  try {
    const names: string[] = [];
    for await (const name of (dir as unknown as { keys(): AsyncIterable<string> }).keys()) names.push(name);
    for (const n of names) await dir.removeEntry(n).catch(() => {});
  } catch {
    // nothing to clean, or the folder cannot be listed: the new files work all the same
  }
}
