// Changing an overlay's backing link as `qemu-img rebase` does. The link itself (unsafe mode,
// -u) is the header's backing file name and backing format extension: cluster 0 rewritten in
// QEMU's order (qcow2_update_header) by one write, then flushed; a crash leaves the old link or
// the new one. Safe mode first copies into the overlay, for every range the overlay does not
// allocate, the old chain's data wherever the new chain reads differently (QEMU's img_rebase
// loop, compared 512 bytes at a time), through ordinary guest writes (crash-safe, docs/architecture.md §3);
// only then is the link changed, so a crash at any point leaves the overlay reading as before.
// The overlay's persistent bitmaps go as QEMU's go (rebaseImage).
import { QcowError } from '../errors.ts';
import { encodeHeader, type Qcow2Header } from '../format/header.ts';
import { MAX_BACKING_FILE_NAME } from '../format/constants.ts';
import type { Layer } from './layer.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { BME_FLAG_IN_USE } from '../format/bitmaps.ts';
import { assertCanWriteTracked, beginTrackedWrites, finishTrackedWrites } from './bitmap-tracking.ts';
import { writeGuest } from './write.ts';

/** The new link: a file name and its format, or none (a standalone image). */
export type BackingLink = { file: string; format: string } | null;

/** Rewrite the header with `link` as the backing file (the whole of unsafe rebase). */
export async function setBackingLink(img: Qcow2Image, link: BackingLink): Promise<void> {
  if (link && new TextEncoder().encode(link.file).length > MAX_BACKING_FILE_NAME) {
    throw new QcowError('BACKING_FILE_NAME_TOO_LONG', 'Invalid argument', { structure: 'header' });
  }
  const h: Qcow2Header = { ...img.header, backingFile: link?.file, backingFormat: link?.format };
  await img.pwrite(0, encodeHeader(h), 'header: backing file', true);
  await img.flush('header: backing file');
  img.setTables({ header: { backingFile: h.backingFile, backingFormat: h.backingFormat } });
}

/** qemu-img rebase's buffer: ranges are looked at 2 MiB at a time. */
const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

/**
 * qemu-img rebase on an opened image: in safe mode (`copyFrom` given: the new chain, null for
 * none) first the copy (copyBackingDifferences), then the new link. The persistent bitmaps go as
 * QEMU's go through its read-write open and close, in safe and unsafe mode alike: marked in use in
 * place first, then stored again with the copied ranges set in the enabled ones (bitmap-tracking.ts),
 * and the link written last (the order whose bytes are qemu-img's, compared on its images). Bitmaps a crash left in use are refused by the copy, and left alone by a
 * link change (nothing is written that they would miss).
 */
export async function rebaseImage(
  img: Qcow2Image, link: BackingLink | undefined, opts: { copyFrom?: Layer | null; onProgress?: (done: number) => void } = {},
): Promise<void> {
  const safe = opts.copyFrom !== undefined;
  if (safe) assertCanWriteTracked(img); // refused up front, not after part of the copy
  const track = img.bitmaps.length > 0 && !img.bitmaps.some((b) => b.flags & BME_FLAG_IN_USE);
  if (track) await beginTrackedWrites(img);
  const written = safe ? await copyBackingDifferences(img, opts.copyFrom!, opts.onProgress) : [];
  if (track) await finishTrackedWrites(img, written);
  if (link !== undefined) await setBackingLink(img, link); // undefined: qemu-img refuses the link after the copy
}

/**
 * Safe rebase's copy: where `img` (whose `backing` is the old chain) allocates nothing, the old
 * chain's bytes are written into it wherever `newChain` (null: none, reads zeros) reads
 * differently, then flushed. Returns the guest ranges written.
 */
async function copyBackingDifferences(img: Qcow2Image, newChain: Layer | null, onProgress?: (done: number) => void): Promise<Array<[number, number]>> {
  const size = img.virtualSize;
  const oldChain = img.backing;
  const written: Array<[number, number]> = [];
  const write = async (offset: number, data: Uint8Array): Promise<void> => {
    await writeGuest(img, offset, data);
    written.push([offset, data.length]);
  };
  for (let pos = 0; pos < size; pos += IO_BUF_SIZE) {
    const n = Math.min(IO_BUF_SIZE, size - pos);
    for (const e of await img.extents(pos, n)) {
      if (e.depth === 0 && e.present) continue; // the overlay's own data stays
      if (!e.zero) {
        await copyRange(write, oldChain, newChain, e.start, e.length);
        continue;
      }
      // the old chain reads zeros here: only where the new one may not is there anything to compare
      if (!newChain) continue;
      for (const ne of await newChain.extents(e.start, e.length)) {
        if (!ne.zero) await copyRange(write, oldChain, newChain, ne.start, ne.length);
      }
    }
    onProgress?.(pos + n);
  }
  if (written.length > 0) await img.flush('rebased data before the link changes');
  return written;
}

async function copyRange(
  write: (offset: number, data: Uint8Array) => Promise<void>, oldChain: Layer | null, newChain: Layer | null, start: number, length: number,
): Promise<void> {
  const oldBytes = oldChain && start < oldChain.virtualSize ? await oldChain.read(start, length) : new Uint8Array(length);
  const newBytes = newChain && start < newChain.virtualSize ? await newChain.read(start, length) : new Uint8Array(length);
  // runs of differing sectors, each written as one guest write
  let runStart = -1;
  for (let off = 0; off <= length; off += SECTOR) {
    const differs = off < length && !sameBytes(oldBytes, newBytes, off, Math.min(length, off + SECTOR));
    if (differs && runStart < 0) runStart = off;
    if (!differs && runStart >= 0) {
      const end = Math.min(off, length);
      await write(start + runStart, oldBytes.subarray(runStart, end));
      runStart = -1;
    }
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (a[i] !== b[i]) return false;
  return true;
}
