// The pages one engine operation writes before it commits (TxStore's pending overlay), for a
// person's file: in memory up to a budget, beyond it in a scratch file of the origin private file
// system (KEY.op beside the kept changes of pending-pages.ts). A snapshot create on a 1 TiB image
// writes over 100 MiB of tables; with this the tab holds at most the budget of them. The scratch
// file holds nothing worth keeping: clear() starts it over (no I/O), and a crash loses only an
// operation that never committed.
import { OVERLAY_PAGE_SIZE, type PageMap } from '../../core/io/overlay-store.ts';
import type { OpfsStore } from './opfs-store.ts';

/** Bytes of an operation's pages kept in memory before the rest go to the scratch file. */
export const OPERATION_MEMORY_BYTES = 32 << 20;

export class SpillPageMap implements PageMap {
  private readonly memory = new Map<number, Uint8Array>();
  /** Page → slot of the scratch file. */
  private readonly slots = new Map<number, number>();
  private next = 0;
  private readonly scratch: OpfsStore;
  private readonly budgetPages: number;

  constructor(scratch: OpfsStore, budgetBytes = OPERATION_MEMORY_BYTES) {
    this.scratch = scratch;
    this.budgetPages = Math.max(0, Math.floor(budgetBytes / OVERLAY_PAGE_SIZE));
  }

  /** Forget every page (the operation committed or was dropped); the scratch file is reused as it is. */
  clear(): void {
    this.memory.clear();
    this.slots.clear();
    this.next = 0;
  }

  get size(): number {
    return this.memory.size + this.slots.size;
  }

  /** Pages held in the scratch file rather than in memory. */
  get spilled(): number {
    return this.slots.size;
  }

  get(page: number): Uint8Array | undefined {
    return this.memory.get(page) ?? readSlot(this.scratch, this.slots.get(page));
  }

  has(page: number): boolean {
    return this.memory.has(page) || this.slots.has(page);
  }

  set(page: number, data: Uint8Array): void {
    if (this.memory.has(page) || (!this.slots.has(page) && this.memory.size < this.budgetPages)) {
      this.memory.set(page, data);
      return;
    }
    let s = this.slots.get(page);
    if (s === undefined) {
      s = this.next++;
      this.slots.set(page, s);
    }
    this.scratch.writeSync(s * OVERLAY_PAGE_SIZE, data.length === OVERLAY_PAGE_SIZE ? data : padded(data));
  }

  /** A copy of a whole page: into its memory page or a fresh one within the budget, else straight from `data` to its slot. */
  setCopy(page: number, data: Uint8Array): void {
    const held = this.memory.get(page);
    if (held) held.set(data);
    else if (!this.slots.has(page) && this.memory.size < this.budgetPages) this.memory.set(page, data.slice());
    else this.set(page, data);
  }

  delete(page: number): void {
    if (!this.memory.delete(page)) this.slots.delete(page); // its slot is left unused until clear()
  }

  *keys(): IterableIterator<number> {
    yield* this.memory.keys();
    yield* this.slots.keys();
  }
}

/** The page in `slot` of a file of 64 KiB slots (a fresh copy), or undefined for no slot. */
export function readSlot(file: OpfsStore, slot: number | undefined): Uint8Array | undefined {
  if (slot === undefined) return undefined;
  const out = new Uint8Array(OVERLAY_PAGE_SIZE);
  file.readSync(slot * OVERLAY_PAGE_SIZE, out);
  return out;
}

function padded(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(OVERLAY_PAGE_SIZE);
  out.set(data.subarray(0, OVERLAY_PAGE_SIZE));
  return out;
}
