// The pages of a person's pending changes (handle-store.ts) kept in the origin private file
// system, not in the tab's memory: a snapshot create on a 1 TiB image writes over 100 MiB of
// tables, and the changes must outlive a reload or a crashed tab. Two files per image, named after
// the file the changes are over (its name, size and time): `KEY.pages`, 64 KiB slots written
// through a synchronous access handle (opfs-store.ts), and `KEY.json`, the index (which page is in
// which slot, the overlay's extent, how many operations); and `KEY.op`, the scratch file of the
// running operation's own pages beyond its memory budget (spill-pages.ts). After each operation the slots are
// flushed before the index is written, and a slot the last index names is never overwritten
// before the next index: a crash leaves the last index whole with its pages, or an unreadable
// index (no restore offered), never a mix.
import { OVERLAY_PAGE_SIZE, type PageMap } from '../../core/io/overlay-store.ts';
import { OpfsStore } from './opfs-store.ts';
import { SpillPageMap, readSlot } from './spill-pages.ts';

const DIR = 'pending-changes';

/** What is kept of an image's pending changes besides its pages. */
export interface PendingState {
  /** The file they are over: its name, size and time. */
  name: string;
  fileSize: number;
  lastModified: number;
  extent: { length: number; sourceLimit: number };
  /** Operations they hold. */
  changes: number;
  /** When they were last kept (ms since the epoch). */
  at: number;
}

interface PendingIndex extends PendingState {
  /** [page, slot] pairs. */
  pages: Array<[number, number]>;
}

/** The files of the changes over this file (a name, its size and time). */
export function pendingKey(name: string, file: { size: number; lastModified: number }): string {
  return `${encodeURIComponent(name)}-${file.size}-${file.lastModified}`;
}

/** The folder of kept changes (made on the first change kept; looking does not make it). */
async function folder(create = false): Promise<FileSystemDirectoryHandle> {
  return (await navigator.storage.getDirectory()).getDirectoryHandle(DIR, { create });
}

/** Changes kept for this file by an earlier tab, if any (a readable index for the same file). */
export async function findPending(name: string, file: File): Promise<PendingState | null> {
  try {
    const text = await (await (await (await folder()).getFileHandle(`${pendingKey(name, file)}.json`)).getFile()).text();
    const idx = JSON.parse(text) as PendingIndex;
    if (idx.name !== name || idx.fileSize !== file.size || idx.lastModified !== file.lastModified || !(idx.changes > 0)) return null;
    return { name: idx.name, fileSize: idx.fileSize, lastModified: idx.lastModified, extent: idx.extent, changes: idx.changes, at: idx.at };
  } catch {
    return null;
  }
}

/** Remove the kept changes of `key` (after a save, a discard, or when the person declines them). */
export async function dropPending(key: string): Promise<void> {
  const d = await folder().catch(() => null);
  for (const ext of ['.pages', '.json', '.op']) await d?.removeEntry(key + ext).catch(() => {});
}

export class OpfsPageMap implements PageMap {
  readonly key: string;
  private readonly data: OpfsStore;
  private readonly index: OpfsStore;
  private readonly slots = new Map<number, number>();
  /** Slots free to write; slots written since the last index; slots the last index names that are replaced. */
  private readonly free: number[] = [];
  private readonly fresh = new Set<number>();
  private toFree: number[] = [];
  private next = 0;
  private closed = false;

  /** The scratch file of one operation's pages beyond its memory budget (spill-pages.ts). */
  private readonly scratch: OpfsStore;

  private constructor(key: string, data: OpfsStore, index: OpfsStore, scratch: OpfsStore) {
    this.key = key;
    this.data = data;
    this.index = index;
    this.scratch = scratch;
  }

  /** Open the files of `key`: empty, or holding the kept pages to resume (`resume`). */
  static async open(key: string, resume: boolean): Promise<{ pages: OpfsPageMap; state: PendingState | null; operation: SpillPageMap }> {
    const d = await folder(true);
    const opened: OpfsStore[] = [];
    try {
      for (const ext of ['.pages', '.json', '.op']) opened.push(await OpfsStore.open(await d.getFileHandle(key + ext, { create: true })));
    } catch (e) {
      for (const f of opened) await f.close();
      throw e;
    }
    const [data, index, scratch] = opened as [OpfsStore, OpfsStore, OpfsStore];
    const m = new OpfsPageMap(key, data, index, scratch);
    let state: PendingState | null = null;
    if (resume) {
      const bytes = await index.read(0, index.size());
      const idx = JSON.parse(new TextDecoder().decode(bytes)) as PendingIndex;
      for (const [p, s] of idx.pages) m.slots.set(p, s);
      m.next = Math.max(-1, ...idx.pages.map(([, s]) => s)) + 1;
      const used = new Set(m.slots.values());
      for (let s = 0; s < m.next; s++) if (!used.has(s)) m.free.push(s);
      state = { name: idx.name, fileSize: idx.fileSize, lastModified: idx.lastModified, extent: idx.extent, changes: idx.changes, at: idx.at };
    } else {
      await data.truncate(0);
      await index.truncate(0);
    }
    return { pages: m, state, operation: new SpillPageMap(scratch) };
  }

  get size(): number {
    return this.slots.size;
  }

  get(page: number): Uint8Array | undefined {
    return readSlot(this.data, this.slots.get(page));
  }

  has(page: number): boolean {
    return this.slots.has(page);
  }

  set(page: number, bytes: Uint8Array): void {
    const old = this.slots.get(page);
    let s: number;
    if (old !== undefined && this.fresh.has(old)) s = old;
    else {
      s = this.free.pop() ?? this.next++;
      this.fresh.add(s);
      if (old !== undefined) this.toFree.push(old);
    }
    this.data.writeSync(s * OVERLAY_PAGE_SIZE, bytes);
    this.slots.set(page, s);
  }

  delete(page: number): void {
    const s = this.slots.get(page);
    if (s === undefined) return;
    this.slots.delete(page);
    if (this.fresh.delete(s)) this.free.push(s);
    else this.toFree.push(s);
  }

  keys(): IterableIterator<number> {
    return this.slots.keys();
  }

  /** Keep the pages as they now are: the slots flushed first, then the index naming them. */
  async persist(state: PendingState): Promise<void> {
    this.data.flushSync();
    const idx: PendingIndex = { ...state, pages: [...this.slots] };
    const bytes = new TextEncoder().encode(JSON.stringify(idx));
    await this.index.truncate(0);
    this.index.writeSync(0, bytes);
    this.index.flushSync();
    this.free.push(...this.toFree);
    this.toFree = [];
    this.fresh.clear();
  }

  /** Close the files, keeping them (a restore may follow). */
  async close(flush = true): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.data.close({ flush });
    await this.index.close({ flush });
    await this.scratch.close({ flush: false });
  }

  /** Close and remove the files: the changes were saved or dropped (no flush: they go). */
  async drop(): Promise<void> {
    await this.close(false);
    await dropPending(this.key);
  }
}
