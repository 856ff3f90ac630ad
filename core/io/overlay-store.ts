// A copy-on-write overlay over a read-only byte source (a browser File/Blob, or any reader):
// writes land in fixed-size pages (in memory, or wherever a PageMap keeps them: the browser keeps
// a person's pending changes in its private file system), reads merge the pages over the source. Used where no
// writable handle exists (drag-and-drop, file input, browsers without File System Access); the
// result is saved by streaming `segments()` (source slices + patched pages), never by
// materialising the whole image.
import { checkRange, checkReadRange, type ImageStore } from './store.ts';

/** What an overlay reads from: only random-access reads are needed. */
export interface ByteSource {
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Optional: the same bytes as `read(offset, out.length)`, written into `out` (ImageStore.readInto). */
  readInto?(offset: number, out: Uint8Array): Promise<void>;
  /** Optional: the overlay holds [offset, offset + length) from now on; a read cache may drop its copy. */
  forget?(offset: number, length: number): void;
}

export type Segment =
  | { kind: 'source'; offset: number; length: number }
  | { kind: 'patch'; offset: number; data: Uint8Array }
  | { kind: 'zeros'; offset: number; length: number };

/**
 * Where an overlay keeps its pages: a Map in memory by default. A page handed to set() is the
 * page's whole content; a page got may be a fresh copy, so every change is set() again.
 */
export interface PageMap {
  readonly size: number;
  get(page: number): Uint8Array | undefined;
  has(page: number): boolean;
  set(page: number, data: Uint8Array): void;
  delete(page: number): void;
  keys(): IterableIterator<number>;
  /**
   * Optional: hold a copy of `data` (one whole page) as the page; the caller keeps its buffer. A
   * map that writes the page out at once (a scratch file) then allocates nothing for it.
   */
  setCopy?(page: number, data: Uint8Array): void;
}

/** Overlay page size: small enough that a metadata write copies little, large enough to keep the map small. */
export const OVERLAY_PAGE_SIZE = 64 * 1024;

export class OverlayStore implements ImageStore {
  readonly name: string;
  readonly writable = true;
  private readonly source: ByteSource;
  private readonly pages: PageMap;
  private length: number;
  /** Source bytes beyond this offset are treated as cut off by a truncate. */
  private sourceLimit: number;

  constructor(source: ByteSource, name = 'image', pages: PageMap = new Map<number, Uint8Array>()) {
    this.source = source;
    this.name = name;
    this.pages = pages;
    this.length = source.size;
    this.sourceLimit = source.size;
  }

  /** The size and the end of the source bytes still seen (to keep an overlay and resume it). */
  get extent(): { length: number; sourceLimit: number } {
    return { length: this.length, sourceLimit: this.sourceLimit };
  }

  /** Resume a kept overlay: its pages are in the PageMap given, its extent as it was. */
  resume(extent: { length: number; sourceLimit: number }): void {
    this.length = extent.length;
    this.sourceLimit = Math.min(extent.sourceLimit, this.source.size);
  }

  size(): number {
    return this.length;
  }

  /** True when nothing has been written since the source was opened. */
  get pristine(): boolean {
    return this.pages.size === 0 && this.length === this.source.size;
  }

  /** Bytes held in memory by the overlay. */
  get overlayBytes(): number {
    return this.pages.size * OVERLAY_PAGE_SIZE;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, out: Uint8Array): Promise<void> {
    const length = out.length;
    checkReadRange(this, offset, length);
    const end = Math.min(offset + length, this.length);
    if (offset < end) {
      // The source is read only where no page lies (its read cache drops what the pages hold,
      // see forget), in one call per run of source bytes (cheap in browsers only when few and large).
      let gap = offset;
      if (this.pages.size > 0) {
        const first = Math.floor(offset / OVERLAY_PAGE_SIZE);
        const last = Math.floor((end - 1) / OVERLAY_PAGE_SIZE);
        for (let p = first; p <= last; p++) {
          if (!this.pages.has(p)) continue;
          const pageStart = p * OVERLAY_PAGE_SIZE;
          const a = Math.max(offset, pageStart);
          const b = Math.min(end, pageStart + OVERLAY_PAGE_SIZE);
          if (gap < a) await this.readPlain(gap, a, out, offset);
          out.set(this.pages.get(p)!.subarray(a - pageStart, b - pageStart), a - offset);
          gap = b;
        }
      }
      if (gap < end) await this.readPlain(gap, end, out, offset);
    }
    out.fill(0, Math.max(0, end - offset));
  }

  /** [from, to) of the image where no page lies, into `out` (which starts at `base`): source bytes, zeros past sourceLimit. */
  private async readPlain(from: number, to: number, out: Uint8Array, base: number): Promise<void> {
    const srcTo = Math.min(to, this.sourceLimit);
    if (from < srcTo) {
      const part = out.subarray(from - base, srcTo - base);
      if (this.source.readInto) await this.source.readInto(from, part);
      else part.set(await this.source.read(from, srcTo - from));
    }
    if (Math.max(from, srcTo) < to) out.fill(0, Math.max(from, srcTo) - base, to - base);
  }

  /** Whether pages hold every byte of [offset, offset + length) (nothing of it is read from the source). */
  covers(offset: number, length: number): boolean {
    if (length <= 0 || this.pages.size === 0) return length <= 0;
    for (let p = Math.floor(offset / OVERLAY_PAGE_SIZE), last = Math.floor((offset + length - 1) / OVERLAY_PAGE_SIZE); p <= last; p++) {
      if (!this.pages.has(p)) return false;
    }
    return true;
  }

  /**
   * Take `data` (one whole page at a page boundary) as the page's content without copying it: the
   * caller hands it over and never changes it again (a committed operation's pages,
   * TxStore.commit). Anything else (the last page's part at the end, an unaligned range) is
   * written as write() does, copied.
   */
  async adopt(offset: number, data: Uint8Array): Promise<void> {
    if (offset % OVERLAY_PAGE_SIZE !== 0 || data.length !== OVERLAY_PAGE_SIZE) return this.write(offset, data);
    checkRange(this, offset, data.length);
    const p = offset / OVERLAY_PAGE_SIZE;
    if (!this.pages.has(p)) this.source.forget?.(offset, OVERLAY_PAGE_SIZE);
    this.pages.set(p, data);
    if (offset + data.length > this.length) this.length = offset + data.length;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length);
    const end = offset + data.length;
    let pos = offset;
    while (pos < end) {
      const p = Math.floor(pos / OVERLAY_PAGE_SIZE);
      const pageStart = p * OVERLAY_PAGE_SIZE;
      const n = Math.min(end, pageStart + OVERLAY_PAGE_SIZE) - pos;
      if (n === OVERLAY_PAGE_SIZE && this.pages.setCopy) {
        // A whole page to a map that copies it itself: no page of our own (a snapshot operation on
        // a big image writes hundreds of MiB of whole tables, mostly straight to scratch files).
        if (!this.pages.has(p)) this.source.forget?.(pageStart, OVERLAY_PAGE_SIZE);
        this.pages.setCopy(p, data.subarray(pos - offset, pos - offset + n));
        pos += n;
        continue;
      }
      let page = this.pages.get(p);
      if (!page) {
        // A write over the whole page needs nothing of what it held: no read (in a browser a read
        // of a page the cache lacks is a File read; a snapshot operation writes hundreds of pages).
        // read() returns a fresh array, safe to keep as the page.
        page = pos === pageStart && end >= pageStart + OVERLAY_PAGE_SIZE ? new Uint8Array(OVERLAY_PAGE_SIZE) : await this.read(pageStart, OVERLAY_PAGE_SIZE);
        this.source.forget?.(pageStart, OVERLAY_PAGE_SIZE);
      }
      page.set(data.subarray(pos - offset, pos - offset + n), pos - pageStart);
      this.pages.set(p, page);
      pos += n;
    }
    if (end > this.length) this.length = end;
  }

  async flush(): Promise<void> {}

  /** Passed down to the source (a read cache under an overlay over this one may drop what that overlay now holds). */
  forget(offset: number, length: number): void {
    this.source.forget?.(offset, length);
  }

  async truncate(size: number): Promise<void> {
    checkRange(this, size, 0);
    if (size < this.length) {
      this.sourceLimit = Math.min(this.sourceLimit, size);
      for (const p of [...this.pages.keys()]) {
        const pageStart = p * OVERLAY_PAGE_SIZE;
        if (pageStart >= size) this.pages.delete(p);
        else if (pageStart + OVERLAY_PAGE_SIZE > size) this.pages.set(p, this.pages.get(p)!.fill(0, size - pageStart));
      }
    }
    this.length = size;
  }

  async close(): Promise<void> {}

  /**
   * The image as it now is, as an ordered list of segments covering [0, size): untouched source
   * ranges, patched pages, and zero-filled gaps. A browser turns this into a Blob of File slices.
   */
  segments(): Segment[] {
    const out: Segment[] = [];
    const pageIdx = [...this.pages.keys()].sort((a, b) => a - b);
    let pos = 0;
    const pushPlain = (from: number, to: number): void => {
      if (from >= to) return;
      const srcTo = Math.min(to, this.sourceLimit);
      if (from < srcTo) out.push({ kind: 'source', offset: from, length: srcTo - from });
      const z = Math.max(from, srcTo);
      if (z < to) out.push({ kind: 'zeros', offset: z, length: to - z });
    };
    for (const p of pageIdx) {
      const pageStart = p * OVERLAY_PAGE_SIZE;
      if (pageStart >= this.length) break;
      pushPlain(pos, pageStart);
      const n = Math.min(OVERLAY_PAGE_SIZE, this.length - pageStart);
      const pages = this.pages;
      // Read when used: a PageMap outside memory then holds one page at a time in memory.
      out.push({ kind: 'patch', offset: pageStart, get data() { return pages.get(p)!.subarray(0, n); } });
      pos = pageStart + n;
    }
    pushPlain(pos, this.length);
    return out;
  }
}
