// A guest-visible disk layer: what a backing chain is made of. Qcow2Image implements it, and so
// does RawLayer for raw backing files. Extents carry qemu-img map's fields.
import type { ImageStore } from '../io/store.ts';

/** The status of a guest range, with qemu-img map's meaning. */
export interface Extent {
  start: number;
  length: number;
  /** Layer index in the chain where the range was found (0 = this image). */
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed: boolean;
  /** Host offset in the file of the layer at `depth`, when known (not for compressed clusters). */
  offset?: number;
}

export interface Layer {
  readonly virtualSize: number;
  /** Guest bytes; past the virtual size reads as zeros. */
  read(guestOffset: number, length: number): Promise<Uint8Array>;
  /** Status of [start, start+length), depth relative to this layer, adjacent equal extents merged. */
  extents(start: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/**
 * A layer lent by the one that owns it (an image open in the browser, read as another image's
 * backing file): reads go to `lent`, and closing it closes nothing of the owner's.
 */
export interface LentLayer extends Layer {
  readonly lent: Layer;
}

/** The layer itself under any lending wrappers (a Qcow2Image or a RawLayer), for walks that look inside it. */
export function ownLayer(layer: Layer): Layer {
  let l = layer;
  while ('lent' in l) l = (l as LentLayer).lent;
  return l;
}

/**
 * The data segments of a file: sorted, disjoint [start, end) ranges that may hold data; the rest
 * is holes (reads as zeros). Resolved lazily, and only when block status is asked for.
 */
export type DataSegments = () => Promise<ReadonlyArray<readonly [number, number]> | null>;

/**
 * A raw file as a backing layer: every byte is at the same offset in the file. With the file's
 * data segments (`segments`, from the platform), holes are reported as QEMU's file-posix does
 * (SEEK_DATA/SEEK_HOLE): `present: true, zero: true, data: false` with their offset; without
 * them, everything is data.
 */
export class RawLayer implements Layer {
  readonly store: ImageStore;
  private readonly segmentsSource?: DataSegments;
  private segments?: Promise<ReadonlyArray<readonly [number, number]> | null>;
  constructor(store: ImageStore, segments?: DataSegments) {
    this.store = store;
    this.segmentsSource = segments;
  }
  /** The file's length in whole 512-byte sectors, as QEMU's block layer sees a raw file. */
  get virtualSize(): number {
    return Math.ceil(this.store.size() / 512) * 512;
  }
  /** Bytes past the end of the file, in its last sector, read as zeros. */
  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const fileEnd = this.store.size();
    if (guestOffset + length <= fileEnd) return this.store.read(guestOffset, length);
    const out = new Uint8Array(length);
    if (guestOffset < fileEnd) out.set(await this.store.read(guestOffset, fileEnd - guestOffset));
    return out;
  }
  async extents(start: number, length: number): Promise<Extent[]> {
    const end = Math.min(start + length, this.virtualSize);
    const out: Extent[] = [];
    const segs = this.segmentsSource ? await (this.segments ??= this.segmentsSource()) : null;
    const push = (s: number, e: number, data: boolean): void => {
      if (e > s) pushExtent(out, { start: s, length: e - s, depth: 0, present: true, zero: !data, data, compressed: false, offset: s });
    };
    if (start < end) {
      if (!segs) {
        push(start, end, true);
      } else {
        // first segment ending after `start`
        let lo = 0;
        let hi = segs.length;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if (segs[mid]![1] <= start) lo = mid + 1;
          else hi = mid;
        }
        let pos = start;
        for (let i = lo; i < segs.length && pos < end; i++) {
          const [s, e] = segs[i]!;
          push(pos, Math.min(s, end), false);
          pos = Math.max(pos, Math.min(s, end));
          push(pos, Math.min(e, end), true);
          pos = Math.max(pos, Math.min(e, end));
        }
        push(pos, end, false);
      }
    }
    if (end < start + length) {
      const s = Math.max(start, end);
      out.push({ start: s, length: start + length - s, depth: 0, present: false, zero: true, data: false, compressed: false });
    }
    return out;
  }
  close(): Promise<void> {
    return this.store.close();
  }
}

/** Whether `e` continues `p` as one qemu-img map extent. */
export function canMergeExtents(p: Extent, e: Extent): boolean {
  return p.start + p.length === e.start && p.depth === e.depth && p.present === e.present && p.zero === e.zero &&
    p.data === e.data && p.compressed === e.compressed &&
    ((p.offset === undefined && e.offset === undefined) ||
     (p.offset !== undefined && e.offset !== undefined && p.offset + p.length === e.offset));
}

/** Append an extent, merging with the previous one when qemu-img map would. */
export function pushExtent(out: Extent[], e: Extent): void {
  const p = out[out.length - 1];
  if (p && canMergeExtents(p, e)) {
    p.length += e.length;
    return;
  }
  out.push({ ...e });
}
