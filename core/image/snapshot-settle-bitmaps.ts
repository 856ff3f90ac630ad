// The persistent bitmaps in QEMU's layout after an internal-snapshot operation (issue 16): when
// QEMU closes an image it opened for writing, qcow2_store_persistent_dirty_bitmaps stores every
// bitmap again. For each bitmap in directory order it allocates one cluster for each non-zero
// bitmap cluster (store_bitmap_data: the whole cluster written) and then its table (exactly its
// bytes written); then the directory (bitmap_list_store, exactly its bytes); the header's bitmaps
// extension names the new directory (update_header_sync); only then are the old directory,
// tables and data clusters freed. All of it comes after the operation's own allocations, first
// fit as the rest of QEMU's allocator (snapshot-settle.ts models it). Verified on qemu-img 7.2
// (docs/architecture.md). A bitmap marked in use (inconsistent, left by a crash) QEMU neither
// loads nor stores: its table and data stay where they are and its entry keeps its flags; when
// every bitmap is in use, QEMU writes nothing for them (no directory either). Only known flags
// and plain cluster entries are modelled; anything else keeps the shadow layout. The bitmap verbs
// (bitmap-ops.ts) take what QEMU finds and leaves from here too.
import { be32 } from '../format/bytes.ts';
import { bitmapTableEntryOffset, putEntry } from '../format/entries.ts';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, encodeBitmapDirectory, type BitmapEntry } from '../format/bitmaps.ts';
import * as C from '../format/constants.ts';
import type { Qcow2Image } from './qcow2-image.ts';

/** The bitmaps as found, with their tables: what QEMU stores again. */
export interface QemuBitmaps {
  entries: BitmapEntry[];
  /** Whether QEMU stores each again (not in use); an in-use one stays as it is. */
  stored: boolean[];
  tables: Uint8Array[];
  directorySize: number;
  /** Old data clusters, tables and directory (freed after the new ones are named), as [offset, bytes]. */
  old: Array<[number, number]>;
  /** The old data clusters: QEMU frees them with a hole punched (zeros), the rest without. */
  oldData: number[];
}

/** Where QEMU puts the bitmaps it stores again: new data clusters by bitmap and entry (0: none), tables, directory. */
export interface BitmapPlacement {
  data: number[][];
  tables: number[];
  directory: number;
}

/**
 * The image's bitmaps when QEMU's rewrite of them is modelled; undefined without bitmaps (or none
 * QEMU stores), null when not modelled. `inUseOurs`: the in-use flags are the ones this process
 * set (QEMU loaded those bitmaps consistent and stores them all).
 */
export async function loadQemuBitmaps(img: Qcow2Image, opts: { inUseOurs?: boolean } = {}): Promise<QemuBitmaps | null | undefined> {
  const h = img.header;
  if (!h.bitmaps) return undefined;
  if ((h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n || img.bitmaps.length === 0 || img.bitmaps.length !== h.bitmaps.nbBitmaps) return null;
  const cs = img.clusterSize;
  const tables: Uint8Array[] = [];
  const old: Array<[number, number]> = [];
  const oldData: number[] = [];
  const stored: boolean[] = [];
  for (const e of img.bitmaps) {
    if ((e.flags & ~(BME_FLAG_AUTO | BME_FLAG_IN_USE)) !== 0) return null; // more than QEMU writes back
    stored.push(opts.inUseOurs === true || (e.flags & BME_FLAG_IN_USE) === 0);
    if (!stored[stored.length - 1]) {
      tables.push(new Uint8Array(0)); // stays as it is
      continue;
    }
    const t = await img.store.read(e.bitmapTableOffset, e.bitmapTableSize * 8);
    for (let i = 0; i < e.bitmapTableSize; i++) {
      const off = bitmapTableEntryOffset(t, i);
      const raw = t.subarray(i * 8, i * 8 + 8);
      if (off === 0) {
        if (raw.some((x) => x !== 0)) return null; // the all-ones flag or reserved bits
        continue;
      }
      if (off % cs !== 0 || be32(raw, 0) * 2 ** 32 + be32(raw, 4) !== off) return null; // flags or reserved bits
      old.push([off, cs]);
      oldData.push(off);
    }
    tables.push(t.slice());
    old.push([e.bitmapTableOffset, e.bitmapTableSize * 8]);
  }
  if (!stored.includes(true)) return undefined; // QEMU has nothing to write
  const directorySize = h.bitmaps.bitmapDirectorySize;
  if (encodeBitmapDirectory(img.bitmaps).length !== directorySize) return null;
  old.push([h.bitmaps.bitmapDirectoryOffset, directorySize]);
  return { entries: img.bitmaps.map((e) => ({ ...e })), stored, tables, directorySize, old, oldData };
}

/** QEMU's allocations for storing the bitmaps, in its order, through `alloc` (clusters → first cluster, null: not modelled). */
export async function placeBitmaps(b: QemuBitmaps, cs: number, alloc: (clusters: number) => Promise<number | null>): Promise<BitmapPlacement | null> {
  const data: number[][] = [];
  const tables: number[] = [];
  for (const [k, e] of b.entries.entries()) {
    const t = b.tables[k]!;
    const d: number[] = [];
    if (!b.stored[k]) {
      data.push(d);
      tables.push(e.bitmapTableOffset);
      continue;
    }
    for (let i = 0; i < e.bitmapTableSize; i++) {
      if (bitmapTableEntryOffset(t, i) === 0) {
        d.push(0);
        continue;
      }
      const c = await alloc(1);
      if (c === null) return null;
      d.push(c * cs);
    }
    data.push(d);
    const tc = await alloc(Math.ceil((e.bitmapTableSize * 8) / cs));
    if (tc === null) return null;
    tables.push(tc * cs);
  }
  const dc = await alloc(Math.ceil(b.directorySize / cs));
  if (dc === null) return null;
  return { data, tables, directory: dc * cs };
}

/** The clusters a placement takes. */
export function placementClusters(p: BitmapPlacement, b: QemuBitmaps, cs: number): number[] {
  const out: number[] = [];
  const run = (off: number, bytes: number): void => {
    for (let c = off / cs; c < Math.ceil((off + bytes) / cs); c++) out.push(c);
  };
  for (const d of p.data) for (const off of d) if (off !== 0) run(off, cs);
  p.tables.forEach((off, k) => {
    if (b.stored[k]) run(off, b.entries[k]!.bitmapTableSize * 8);
  });
  run(p.directory, b.directorySize);
  return out;
}

/** The new places with what QEMU writes there (data clusters whole, tables and directory exactly), and the directory entries afterwards. */
export async function bitmapWrites(img: Qcow2Image, b: QemuBitmaps, p: BitmapPlacement): Promise<{ writes: Array<{ offset: number; bytes: Uint8Array; purpose: string }>; entries: BitmapEntry[] }> {
  const cs = img.clusterSize;
  const writes: Array<{ offset: number; bytes: Uint8Array; purpose: string }> = [];
  const entries: BitmapEntry[] = [];
  for (const [k, e] of b.entries.entries()) {
    if (!b.stored[k]) {
      entries.push({ ...e });
      continue;
    }
    const old = b.tables[k]!;
    const t = new Uint8Array(old.length);
    for (let i = 0; i < e.bitmapTableSize; i++) {
      const to = p.data[k]![i]!;
      if (to === 0) continue;
      writes.push({ offset: to, bytes: await img.store.read(bitmapTableEntryOffset(old, i), cs), purpose: `bitmap '${e.name}' data cluster ${i} where QEMU stores it on close` });
      putEntry(t, i * 8, Math.floor(to / 2 ** 32), to % 2 ** 32);
    }
    writes.push({ offset: p.tables[k]!, bytes: t, purpose: `bitmap '${e.name}' table where QEMU stores it on close` });
    entries.push({ ...e, bitmapTableOffset: p.tables[k]! });
  }
  writes.push({ offset: p.directory, bytes: encodeBitmapDirectory(entries), purpose: 'bitmap directory where QEMU stores it on close' });
  return { writes, entries };
}

/**
 * The old bitmap clusters, free once the new directory is named, left with QEMU's bytes (so that
 * what a later operation writes into part of one keeps QEMU's bytes after it): zeros in the data
 * clusters (QEMU punches a hole), and the old directory with every bitmap marked in use (QEMU
 * marks them so in place when it opens the image for writing, and frees it without a hole).
 */
export async function leaveOldBitmapsAsQemu(img: Qcow2Image, b: QemuBitmaps, fileSize: number): Promise<void> {
  for (const off of b.oldData) {
    if (off < fileSize) await img.pwrite(off, new Uint8Array(img.clusterSize), 'old bitmap data cluster emptied, as QEMU\'s hole');
  }
  const dir = b.old[b.old.length - 1]![0];
  const inUse = encodeBitmapDirectory(b.entries.map((e) => ({ ...e, flags: e.flags | BME_FLAG_IN_USE })));
  if (dir < fileSize) await img.pwrite(dir, inUse, 'old bitmap directory marked in use, as QEMU leaves it');
  await img.flush('old bitmaps as QEMU leaves them');
}
