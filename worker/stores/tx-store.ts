// All-or-nothing engine operations on stores that cannot roll back by themselves (a File under a
// copy-on-write overlay, the in-memory demo): the operation's writes go to a pending overlay over
// the committed store; `commit()` applies them in order, `discard()` drops them, so a refused,
// failed or cancelled operation leaves the image exactly as it was. (The FS Access handle store
// holds them the same way, over the person's file, until Save.)
import { OverlayStore, type PageMap } from '../../core/io/overlay-store.ts';
import { checkRange, readInto, type ImageStore } from '../../core/io/store.ts';

export interface Transactional {
  /** Make the pending writes part of the image. */
  commit(): Promise<void>;
  /** Drop the pending writes. */
  discard(): void;
  readonly hasPending: boolean;
}

export function isTransactional<T>(s: T): s is T & Transactional {
  return typeof (s as Transactional).commit === 'function' && typeof (s as Transactional).discard === 'function';
}

export class TxStore implements ImageStore, Transactional {
  readonly name: string;
  readonly writable = true;
  /** The committed image. */
  private committed: ImageStore;
  private pending: OverlayStore;
  /** Operations committed since the image was last saved (or opened): what "unsaved changes" counts. */
  changes = 0;
  /** Moves whenever the image's bytes may have changed (a commit, a new committed image): what was read before is stale. */
  version = 0;

  constructor(base: ImageStore) {
    this.committed = base;
    this.name = base.name;
    this.pending = this.fresh();
  }

  get base(): ImageStore {
    return this.committed;
  }

  /** Start over on another committed image (after a save or a discard); nothing pending, no changes. */
  protected rebase(base: ImageStore): void {
    this.committed = base;
    this.pending = this.fresh();
    this.changes = 0;
    this.version++;
    this.savedAs = undefined;
  }

  /** The name the changes were last saved under (a download), while none came after. */
  savedAs: string | undefined;

  /** The changes were saved somewhere (a download, under `as`): none are unsaved now. */
  markSaved(as: string): void {
    this.changes = 0;
    this.savedAs = as;
  }

  private fresh(): OverlayStore {
    const base = this.base;
    const source = {
      size: base.size(),
      read: (o: number, l: number) => base.read(o, l),
      readInto: (o: number, out: Uint8Array) => readInto(base, o, out),
      // the operation's pages hide the cached file bytes under them (the committed image's cache)
      forget: (o: number, l: number) => (base as Partial<OverlayStore>).forget?.(o, l),
    };
    return new OverlayStore(source, base.name, this.operationPages());
  }

  /** Where an operation's pending pages are held (a Map in memory unless a subclass says; emptied for each use). */
  protected operationPages(): PageMap | undefined {
    return undefined;
  }

  get hasPending(): boolean {
    return !this.pending.pristine;
  }

  size(): number {
    return this.pending.size();
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.pending.read(offset, length);
  }

  readInto(offset: number, out: Uint8Array): Promise<void> {
    return this.pending.readInto(offset, out);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length);
    await this.pending.write(offset, data);
  }

  truncate(size: number): Promise<void> {
    return this.pending.truncate(size);
  }

  /** Ordering within an operation needs nothing: it becomes visible whole, at commit. */
  async flush(): Promise<void> {}

  async commit(): Promise<void> {
    if (!this.hasPending) return;
    const size = this.pending.size();
    const baseSize = this.base.size();
    // A cut below the committed size: cut first, so regrown bytes read as zeros.
    const segs = this.pending.segments();
    const firstZero = segs.find((s) => s.kind === 'zeros' && s.offset < baseSize);
    if (firstZero) await this.base.truncate(firstZero.offset);
    // The pages are handed over, not copied: the pending overlay is dropped below.
    const base = this.base;
    for (const s of segs) if (s.kind === 'patch') await (base instanceof OverlayStore ? base.adopt(s.offset, s.data) : base.write(s.offset, s.data));
    if (this.base.size() !== size) await this.base.truncate(size);
    await this.base.flush();
    this.pending = this.fresh();
    this.changes++;
    this.version++;
    this.savedAs = undefined;
  }

  discard(): void {
    this.pending = this.fresh();
  }

  close(): Promise<void> {
    return this.base.close();
  }
}
