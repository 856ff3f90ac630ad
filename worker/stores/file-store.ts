// A browser File (drop, file input, browsers without File System Access) as an ImageStore: the
// File is read through an aligned block cache and never written; writes land in the core
// OverlayStore's pages, and "Download image" turns the overlay's segments into a Blob of File
// slices + patch pages, so a 100 GiB image is saved without ever being held in memory.
import { QcowError } from '../../core/errors.ts';
import { OVERLAY_PAGE_SIZE, OverlayStore, type PageMap, type Segment } from '../../core/io/overlay-store.ts';
import { BlockCache, type RawSource } from './block-cache.ts';
import { openScratchPages, type ScratchPages } from './scratch-pages.ts';
import { TxStore } from './tx-store.ts';

/** A Blob or File as the block cache's raw source: one slice per read, one Blob of slices per gathered read. */
export function fileReader(file: Blob): RawSource {
  const bytes = async (blob: Blob, offset: number, length: number): Promise<Uint8Array> => {
    try {
      return new Uint8Array(await blob.arrayBuffer());
    } catch (e) {
      // NotReadableError: the file changed on disk after it was picked (docs/platform.md).
      throw new QcowError('IO_ERROR', `Cannot read ${(file as File).name ?? 'the file'} at offset ${offset}: ${(e as Error).message}`, {
        offset,
        length,
      });
    }
  };
  return {
    read: (offset, length) => bytes(file.slice(offset, offset + length), offset, length),
    // Each arrayBuffer() costs about a millisecond (docs/platform.md); a Blob of many slices is read in one.
    readRanges: (ranges) => bytes(new Blob(ranges.map(([o, l]) => file.slice(o, o + l))), ranges[0]?.[0] ?? 0, ranges.reduce((n, r) => n + r[1], 0)),
  };
}

/**
 * The File under a copy-on-write overlay (the changes held in the tab), itself under a TxStore so
 * that an engine operation is all-or-nothing (worker/stores/tx-store.ts). The handle store
 * (handle-store.ts) is this over a person's file, plus Save.
 */
export class FileStore extends TxStore {
  private current: File;
  readonly cache: BlockCache;
  private changed: OverlayStore;

  constructor(file: File, blockSize?: number) {
    const cache = new BlockCache(fileReader(file), file.size, blockSize ? { blockSize } : {});
    const overlay = new OverlayStore(cache, file.name);
    super(overlay);
    this.current = file;
    this.cache = cache;
    this.changed = overlay;
  }

  /** The file the changes are over. */
  get file(): File {
    return this.current;
  }

  /** The changes held in the tab, over the file. */
  get overlay(): OverlayStore {
    return this.changed;
  }

  /** Nothing was changed since the file was opened (or last saved to it). */
  get pristine(): boolean {
    return this.overlay.pristine && !this.hasPending;
  }

  /** Start again from `file` (as it now is on disk): every change held in the tab is dropped. */
  protected reset(file: File): void {
    this.current = file;
    this.cache.invalidate(file.size, fileReader(file));
    this.changed = new OverlayStore(this.cache, this.name);
    this.rebase(this.changed);
  }

  /**
   * Start again from `file` that now holds every change (a save wrote them): the changes are
   * dropped, and the cached bytes of the ranges they did not touch are kept (no re-read).
   */
  protected resetSaved(file: File): void {
    const size = this.size();
    const changed = this.overlay.segments()
      .filter((s) => s.kind !== 'source')
      .map((s): [number, number] => [s.offset, s.kind === 'zeros' ? s.length : Math.min(OVERLAY_PAGE_SIZE, size - s.offset)]);
    this.current = file;
    this.cache.retarget(fileReader(file), file.size, changed);
    this.changed = new OverlayStore(this.cache, this.name);
    this.rebase(this.changed);
  }

  /** Hold the changes in `overlay` from now on (over the same file; nothing is pending). */
  protected useOverlay(overlay: OverlayStore): void {
    this.changed = overlay;
    this.rebase(overlay);
  }

  /** The same bytes as before, in a new File (the old one is unreadable once the file was written): the changes and the cached bytes stay. */
  protected rebind(file: File): void {
    this.current = file;
    this.cache.retarget(fileReader(file), file.size, []);
  }

  /** Scratch files for the changes (undefined: not tried yet; null: none, they stay in memory). */
  private scratch: ScratchPages | null | undefined;

  /**
   * Before an operation changes the image: from the first change on, its pages beyond a memory
   * budget go to scratch files in the private file system (scratch-pages.ts).
   */
  async beginWrite(): Promise<void> {
    if (this.scratch !== undefined || !this.pristine) return;
    this.scratch = await openScratchPages();
    if (this.scratch) this.useOverlay(new OverlayStore(this.cache, this.name, this.scratch.held));
  }

  protected override operationPages(): PageMap | undefined {
    this.scratch?.operation.clear();
    return this.scratch?.operation;
  }

  override async close(): Promise<void> {
    await this.scratch?.close();
    this.scratch = null;
    await super.close();
  }

  /** Warm the block cache with ranges a walk will read (see BlockCache.prefetch). */
  prefetch(ranges: Array<[number, number]>, signal?: AbortSignal): Promise<void> {
    // Ranges the changes hold whole are read from them, never from the file.
    return this.cache.prefetch(ranges.filter(([o, l]) => !this.overlay.covers(o, l)), signal);
  }

  /** The image as it now is, as a Blob: untouched ranges are slices of the original File. */
  toBlob(): Blob {
    return blobFromSegments(this.overlay.segments(), this.file);
  }
}

const ZERO_CHUNK = 1 << 20;

/** Build a Blob from overlay segments over `source`. Zero runs share one zero buffer. */
export function blobFromSegments(segments: Segment[], source: Blob, type = 'application/octet-stream'): Blob {
  const parts: BlobPart[] = [];
  let zeros: Uint8Array<ArrayBuffer> | undefined;
  for (const s of segments) {
    if (s.kind === 'source') parts.push(source.slice(s.offset, s.offset + s.length));
    else if (s.kind === 'patch') parts.push(new Uint8Array(s.data) as Uint8Array<ArrayBuffer>); // a copy: later writes must not change the download
    else {
      zeros ??= new Uint8Array(ZERO_CHUNK);
      for (let left = s.length; left > 0; left -= ZERO_CHUNK) parts.push(left >= ZERO_CHUNK ? zeros : zeros.subarray(0, left));
    }
  }
  return new Blob(parts, { type });
}
