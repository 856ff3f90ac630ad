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

/** A raw file as a backing layer: every byte is data at the same offset. */
export class RawLayer implements Layer {
  readonly store: ImageStore;
  constructor(store: ImageStore) {
    this.store = store;
  }
  get virtualSize(): number {
    return this.store.size();
  }
  read(guestOffset: number, length: number): Promise<Uint8Array> {
    return this.store.read(guestOffset, length);
  }
  async extents(start: number, length: number): Promise<Extent[]> {
    const end = Math.min(start + length, this.virtualSize);
    const out: Extent[] = [];
    if (start < end) out.push({ start, length: end - start, depth: 0, present: true, zero: false, data: true, compressed: false, offset: start });
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
