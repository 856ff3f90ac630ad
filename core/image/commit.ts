// Folding an overlay into its backing file as `qemu-img commit` does: a backing file smaller than
// the overlay is first grown to the overlay's size (QEMU's mirror truncates its target up: a qcow2
// image through resize.ts, a raw file by extending it), then every range the overlay allocates is
// written into it (data as data, zero clusters as zero writes), the backing file flushed, and
// then, unless kept, the overlay emptied (make-empty.ts, QEMU's bdrv_make_empty). Crash-safe by
// order: while the backing file is written the overlay still holds all of its data, so the overlay
// reads as before whatever the backing file has received; the overlay is emptied only after the
// backing file is flushed, each step of that a crash-safe change of its own. Persistent bitmaps
// of a qcow2 backing file are kept as QEMU keeps them (bitmap-tracking.ts).
import { QcowError } from '../errors.ts';
import type { ImageStore } from '../io/store.ts';
import { canMergeExtents, type Extent, type Layer } from './layer.ts';
import { assertCanWriteTracked, beginTrackedWrites, finishTrackedWrites } from './bitmap-tracking.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { writeGuest, writeZeroes } from './write.ts';
import { growImage } from './resize.ts';
import { makeEmpty } from './make-empty.ts';

/** Bytes copied per write into the backing file. */
const CHUNK = 2 * 1024 * 1024;

export interface CommitOptions {
  /** qemu-img commit -d: leave the overlay as it is. */
  keep?: boolean;
  /** How many links of `overlay`'s chain lie above the target (1: the target is its backing file). */
  depth?: number;
  onProgress?: (done: number, total: number) => void;
}

/** What a commit writes into: a qcow2 image or a raw file. */
export interface CommitTarget {
  readonly virtualSize: number;
  /** Refuse, before anything is written, what the target cannot take. */
  precheck(): void;
  grow(size: number): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Before the first write: persistent bitmaps marked in use (QEMU's order). */
  begin(): Promise<void>;
  /** After the data is flushed: the guest ranges written, set in the enabled bitmaps. */
  finish(written: ReadonlyArray<readonly [number, number]>): Promise<void>;
  /**
   * A qcow2 target, for QEMU's mirror (mirrorInto): its cluster size, and its own guest bytes and
   * status (through its backing chain) where nothing above it allocates. A raw target has none:
   * the ranges the overlay allocates are written as they are.
   */
  readonly mirror?: {
    clusterSize: number; read(offset: number, length: number): Promise<Uint8Array>; extents(offset: number, length: number): Promise<Extent[]>;
    /** Where the L2 table holding `offset` ends (QEMU's block status answers within one). */
    tableEnd(offset: number): number;
  };
}

export function qcow2Target(img: Qcow2Image): CommitTarget {
  return {
    get virtualSize() { return img.virtualSize; },
    precheck: () => assertCanWriteTracked(img),
    grow: (size) => growImage(img, size),
    write: (offset, data) => writeGuest(img, offset, data),
    // the mirror of qemu-img commit writes zeros with BDRV_REQ_MAY_UNMAP (its unmap is on)
    writeZeroes: (offset, length) => writeZeroes(img, offset, length, { unmap: true }),
    flush: () => img.flush('committed data before the overlay is emptied'),
    begin: () => beginTrackedWrites(img),
    finish: (written) => finishTrackedWrites(img, written),
    mirror: {
      clusterSize: img.clusterSize, read: (o, n) => img.read(o, n), extents: (o, n) => img.extents(o, n),
      tableEnd: (o) => (Math.floor(o / img.l2Span) + 1) * img.l2Span,
    },
  };
}

/** A raw backing file: guest offset = file offset. */
export function rawTarget(store: ImageStore): CommitTarget {
  return {
    get virtualSize() { return store.size(); },
    precheck: () => undefined,
    grow: async (size) => { if (size > store.size()) await store.truncate(size); },
    write: (offset, data) => store.write(offset, data),
    writeZeroes: async (offset, length) => {
      for (let pos = 0; pos < length; pos += CHUNK) await store.write(offset + pos, new Uint8Array(Math.min(CHUNK, length - pos)));
    },
    flush: () => store.flush(),
    begin: async () => undefined,
    finish: async () => undefined,
  };
}

function isTarget(t: Qcow2Image | CommitTarget): t is CommitTarget {
  return typeof (t as Partial<CommitTarget>).grow === 'function';
}

/**
 * Commit `overlay` into `base`, its backing file opened for writing (or, with `depth` > 1, the
 * link that many levels down). `overlay` is opened without its backing chain, or with the links
 * above the target: what they do not allocate is left alone.
 */
export async function commitInto(overlay: Qcow2Image, base: Qcow2Image | CommitTarget, opts: CommitOptions = {}): Promise<void> {
  const target = isTarget(base) ? base : qcow2Target(base);
  // what a guest write would refuse (persistent bitmaps, ...) is refused before anything is written
  target.precheck();
  // the overlay's own bitmaps: kept in use while it is emptied, their bits unchanged (QEMU's
  // qcow2_make_empty discards below the layer that marks bitmaps)
  const emptied = opts.keep ? undefined : qcow2Target(overlay);
  emptied?.precheck();
  const size = overlay.virtualSize;
  const depth = opts.depth ?? 1;
  await target.begin();
  if (target.virtualSize < size) await target.grow(size);
  const written: Array<[number, number]> = [];
  if (target.mirror) {
    await mirrorInto(overlay, target, target.mirror, depth, written, opts.onProgress);
  } else {
    for (let pos = 0; pos < size; pos += CHUNK) {
      const n = Math.min(CHUNK, size - pos);
      for (const e of await overlay.extents(pos, n)) {
        if (!allocatedAbove(e, depth)) continue;
        // as QEMU's mirror: zeros are written as zeros only where the range holds no data
        written.push([e.start, e.length]);
        if (e.zero && !e.data) await target.writeZeroes(e.start, e.length);
        else await target.write(e.start, await overlay.read(e.start, e.length));
      }
      opts.onProgress?.(pos + n, size);
    }
  }
  await target.flush();
  await target.finish(written);
  if (emptied) {
    await emptied.begin();
    await makeEmpty(overlay);
    await emptied.finish([]);
  }
}

/**
 * Whether an extent of the overlay's view lies in a link above the target. A link above it that
 * is shorter than the offset reads zeros there: QEMU counts them as allocated in that link
 * (bdrv_co_common_block_status_above), so they are written.
 */
function allocatedAbove(e: Extent, depth: number): boolean {
  const pastShortLink = !e.present && e.depth + 1 < depth;
  return e.depth < depth && (e.present || pastShortLink);
}

/** QEMU's mirror: at most this many bytes per copy (MAX_IO_BYTES), and its granularity's bounds. */
const MIRROR_MAX_IO = 1024 * 1024;

/**
 * The first extent `layer` reports from `offset` over `length`, asked for a window of
 * MIRROR_MAX_IO at a time: a copy takes at most that much of a stretch with data, so only a
 * stretch without data is followed into the next windows while it goes on (canMergeExtents).
 * Each step of a long dirty run then looks at its own window, not at the whole rest of the run.
 */
async function firstExtent(layer: { extents(offset: number, length: number): Promise<Extent[]> }, offset: number, length: number): Promise<Extent> {
  const end = offset + length;
  let asked = Math.min(end, offset + MIRROR_MAX_IO);
  const e = { ...(await layer.extents(offset, asked - offset))[0]! };
  while (!e.data && e.start + e.length === asked && asked < end) {
    const next = Math.min(end, asked + MIRROR_MAX_IO);
    const n = (await layer.extents(asked, next - asked))[0]!;
    if (!canMergeExtents(e, n)) break;
    e.length += n.length;
    asked = next;
  }
  return e;
}

/**
 * The commit as QEMU's mirror job makes it (block/mirror.c, which qemu-img commit runs): every
 * chunk of the target's granularity (its cluster size within 4 KiB-64 KiB) that the links above
 * the target allocate any part of is dirty; each run of dirty chunks is then taken from its start
 * by the status of the whole chain there (the links above, else the target's own): data is copied
 * (at most 1 MiB at a time); a stretch without data at least one chunk long is written as zeros
 * (whole chunks, where they are whole clusters of the target), and a shorter one is copied with
 * its chunk as data. So the target's allocation is QEMU's, chunk for chunk, and the guest reads
 * the same. (QEMU runs several copies at once: which cluster each takes may still differ.)
 */
async function mirrorInto(
  overlay: Qcow2Image, target: CommitTarget, mirror: NonNullable<CommitTarget['mirror']>, depth: number,
  written: Array<[number, number]>, onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const size = overlay.virtualSize;
  const g = Math.min(65536, Math.max(4096, mirror.clusterSize));
  // the dirty chunks, as sorted disjoint runs
  const runs: Array<[number, number]> = [];
  for (let pos = 0; pos < size; pos += CHUNK) {
    for (const e of await overlay.extents(pos, Math.min(CHUNK, size - pos))) {
      if (!allocatedAbove(e, depth)) continue;
      const start = Math.floor(e.start / g) * g;
      const end = Math.min(size, Math.ceil((e.start + e.length) / g) * g);
      const last = runs.at(-1);
      if (last && start <= last[1]) last[1] = Math.max(last[1], end);
      else runs.push([start, end]);
    }
  }
  /** The chain's status at `offset` (over at most `length` bytes): above the target, else the target's. */
  // QEMU's qcow2 block status answers within one L2 table of each layer it looks at
  const spans: number[] = [];
  for (let l: Layer | null = overlay; l !== null && 'l2Span' in l; l = (l as Qcow2Image).backing) spans.push((l as Qcow2Image).l2Span);
  const tableEnd = (offset: number, layers: number): number => {
    let end = Infinity;
    for (const span of spans.slice(0, layers)) end = Math.min(end, (Math.floor(offset / span) + 1) * span);
    return end;
  };
  const status = async (offset: number, length: number): Promise<{ data: boolean; zero: boolean; length: number }> => {
    const e = await firstExtent(overlay, offset, length);
    if (allocatedAbove(e, depth)) return { data: e.data, zero: e.zero, length: Math.min(e.length, tableEnd(offset, e.depth + 1) - offset) };
    const t = await firstExtent(mirror, offset, Math.min(length, e.length));
    const end = Math.min(tableEnd(offset, depth), mirror.tableEnd(offset));
    return { data: t.data, zero: t.zero && !t.data, length: Math.min(e.length, t.length, end - offset) };
  };
  /** The chain's bytes: the links above where they allocate, the target's own elsewhere. */
  const read = async (offset: number, length: number): Promise<Uint8Array> => {
    const out = new Uint8Array(length);
    for (const e of await overlay.extents(offset, length)) {
      const bytes = allocatedAbove(e, depth) ? await overlay.read(e.start, e.length) : await mirror.read(e.start, e.length);
      out.set(bytes, e.start - offset);
    }
    return out;
  };
  for (const [runStart, runEnd] of runs) {
    for (let offset = runStart; offset < runEnd;) {
      const st = await status(offset, runEnd - offset);
      let io = st.data ? Math.min(st.length, MIRROR_MAX_IO) : st.length;
      io -= io % g;
      let zero = false;
      if (io < g) io = g;
      else if (!st.data && offset % mirror.clusterSize === 0 && (offset + io) % mirror.clusterSize === 0) zero = true;
      io = Math.min(io, size - offset);
      if (zero && st.zero) await target.writeZeroes(offset, io);
      else if (!zero) await target.write(offset, await read(offset, io));
      // (a stretch neither data nor zeros is discarded by QEMU: below a target without a
      // backing file there is none, and a discard of what reads as before changes nothing)
      written.push([offset, io]);
      offset += io;
    }
    onProgress?.(runEnd, size);
  }
}
