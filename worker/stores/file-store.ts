// A browser File (drop, file input, browsers without File System Access) as an ImageStore: the
// File is read through an aligned block cache and never written; writes land in the core
// OverlayStore's pages, and "Download image" turns the overlay's segments into a Blob of File
// slices + patch pages, so a 100 GiB image is saved without ever being held in memory.
import { QcowError } from '../../core/errors.ts';
import { OverlayStore, type Segment } from '../../core/io/overlay-store.ts';
import { BlockCache, type RawSource } from './block-cache.ts';
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
 * The File under a copy-on-write overlay (the committed image), itself under a TxStore so that an
 * engine operation is all-or-nothing (worker/stores/tx-store.ts).
 */
export class FileStore extends TxStore {
  readonly file: File;
  readonly cache: BlockCache;
  readonly overlay: OverlayStore;

  constructor(file: File, blockSize?: number) {
    const cache = new BlockCache(fileReader(file), file.size, blockSize ? { blockSize } : {});
    const overlay = new OverlayStore(cache, file.name);
    super(overlay);
    this.file = file;
    this.cache = cache;
    this.overlay = overlay;
  }

  /** Nothing was changed since the file was opened. */
  get pristine(): boolean {
    return this.overlay.pristine && !this.hasPending;
  }

  /** Warm the block cache with ranges a walk will read (see BlockCache.prefetch). */
  prefetch(ranges: Array<[number, number]>, signal?: AbortSignal): Promise<void> {
    return this.cache.prefetch(ranges, signal);
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
