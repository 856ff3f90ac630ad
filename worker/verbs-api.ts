// The qemu-img verbs as the page reaches them (measure, compare [-s], bitmaps, rebase [-u], commit [-d]):
// types only, implemented by worker/verbs.ts and joined into EngineApi (worker/api.ts).
import type { ImageId, ImageSummary, JobId, ProgressFn } from './api.ts';

/** qemu-img measure -O qcow2 of the active disk (bytes; qemu-img's BlockMeasureInfo). */
export interface MeasureDTO {
  required: number;
  fullyAllocated: number;
  /** Space the persistent bitmaps take in the copy (a v3 image only), as qemu-img reports it. */
  bitmaps?: number;
  /** The header names a backing file that is not open: data there is not counted (qemu-img counts it). */
  backingMissing?: boolean;
}

/** What one side of a comparison is: an open image's active disk, or one of its snapshots. */
export interface CompareSideRef {
  id: ImageId;
  /** A snapshot ID of that image; absent for its active disk. */
  snapshotId?: string;
}

/** How to compare: qemu-img compare -s also requires equal sizes and equal block status. */
export interface CompareOptionsDTO {
  strict?: boolean;
}

/**
 * Where an overlay's backing link goes (qemu-img rebase): an open image (`safe`: the overlay first
 * takes the old chain's data wherever the new one reads differently; otherwise only the link, -u),
 * a file name (only the link), or none (`standalone`: rebase -b "", the old chain's data copied in).
 */
export type RebaseTarget = { baseId: ImageId; safe?: boolean } | { name: string } | { standalone: true };

/** qemu-img compare's verdict. */
export interface CompareDTO {
  identical: boolean;
  /** qemu-img compare's lines, in order ("Images are identical.", "Content mismatch at offset N!", ...). */
  lines: string[];
  /**
   * The first differing byte offset (the start of its 512-byte sector), when there is one; in
   * strict mode also the offset whose block status differs.
   */
  mismatchOffset?: number;
  /** The two disks have different sizes (the longer one's tail was compared with zeros). */
  sizeMismatch: boolean;
}

/** One entry of the bitmap directory (docs/qcow2-format.md §1.9). */
export interface BitmapDTO {
  name: string;
  /** Bytes of guest disk per bit. */
  granularity: number;
  /** The in_use flag: the bitmap was being changed when the image was last open for writing. */
  inUse: boolean;
  /** The auto flag: the bitmap is enabled (tracks writes while the image is in use). */
  auto: boolean;
  /** Entries in its bitmap table. */
  tableSize: number;
}

/** The verbs' part of an image's state the panels need. */
export interface VerbsDetails {
  bitmaps: BitmapDTO[];
  /** The open image this overlay reads as its backing file, when one is. */
  backingImageId?: ImageId;
}

export interface VerbsApi {
  /** What a copy would need: qemu-img measure -O qcow2 of the active disk. */
  measure(id: ImageId, jobId?: JobId, onProgress?: ProgressFn): Promise<MeasureDTO>;
  /** qemu-img compare [-s] of two open images, or an image and one of its snapshots. */
  compare(a: CompareSideRef, b: CompareSideRef, opts: CompareOptionsDTO, jobId?: JobId, onProgress?: ProgressFn): Promise<CompareDTO>;
  details(id: ImageId): Promise<VerbsDetails>;
  /** qemu-img bitmap --remove (a stale in-use bitmap included): a change held in the tab. */
  removeBitmap(id: ImageId, name: string): Promise<ImageSummary>;
  /**
   * Point the overlay's backing link at another file: qemu-img rebase -u -b NAME -F qcow2. With
   * `baseId` the link names that open image and the overlay reads through it from now on (its
   * link is rewritten only when it names another file); with `safe` as qemu-img rebase -b NAME
   * -F qcow2 (the old chain must be open). `standalone`: qemu-img rebase -b "".
   */
  rebase(id: ImageId, target: RebaseTarget, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary>;
  /**
   * qemu-img commit [-d]: the overlay's clusters written into its backing file (the open image it
   * reads through), then, unless `keep`, the overlay emptied. The changes are held in their tabs.
   * Returns the overlay's summary and the backing image's.
   */
  commit(id: ImageId, keep: boolean, jobId?: JobId, onProgress?: ProgressFn): Promise<ImageSummary[]>;
}
