// Persistent dirty bitmaps changed as `qemu-img bitmap` changes them: add (all clear, enabled
// unless disabled), remove, clear, enable, disable, merge (another bitmap's bits, of this image or
// another one, set in this one: a new table and data clusters, as clear does). Crash-safe in QEMU's order (docs/architecture.md): the
// new bitmap tables and the new directory go to freshly allocated clusters (refcounts first),
// flush, then one header write publishes them (the bitmaps extension and its autoclear bit: the
// commit point), flush, and only then are the old directory, the tables and data clusters no
// longer referenced freed. A crash before the commit leaves the old bitmaps and leaked clusters;
// after it, the new bitmaps and at worst leaks.
//
// Where it is modelled (known flags and plain entries: loadQemuBitmaps), the file is the one
// qemu-img leaves: QEMU opens the image, changes the bitmaps in memory (a remove also stores a
// directory without the removed bitmap right away, and frees it), and on close stores every
// consistent bitmap again, first fit (docs/architecture.md, "Bitmap verbs"). Each of those two
// stores is one commit as above.
import { QcowError } from '../errors.ts';
import { bitmapTableEntryOffset, putEntry } from '../format/entries.ts';
import { be32 } from '../format/bytes.ts';
import {
  BME_FLAG_AUTO, BME_FLAG_IN_USE, BME_MAX_NAME_SIZE, BME_MAX_PHYS_SIZE, BME_MAX_TABLE_SIZE, BT_DIRTY_TRACKING_BITMAP,
  dirEntrySize, encodeBitmapDirectory, parseBitmapDirectory, type BitmapEntry,
} from '../format/bitmaps.ts';
import * as C from '../format/constants.ts';
import { encodeHeader, type Qcow2Header } from '../format/header.ts';
import { encodeString } from '../format/bytes.ts';
import { allocClusters, freeClusters } from './allocator.ts';
import { leaveOldBitmapsAsQemu, loadQemuBitmaps, type QemuBitmaps } from './snapshot-settle-bitmaps.ts';
import type { Qcow2Image } from './qcow2-image.ts';

export type BitmapOp =
  | { op: 'add'; name: string; granularity?: number; disabled?: boolean }
  | { op: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  /** Set in `name` every bit set in `source`'s bitmap `from` (this image's when `source` is not given; null: a file without bitmaps). */
  | { op: 'merge'; name: string; from: string; source?: Qcow2Image | null }
  /** Mark the bitmap in use (QEMU does so for every bitmap of an image it opens for writing). */
  | { op: 'in-use'; name: string }
  /** Set the bits of the guest ranges written while the bitmap was in use if it is enabled, and clear in-use. */
  | { op: 'written'; name: string; ranges: ReadonlyArray<readonly [number, number]> };

type Entry = Omit<BitmapEntry, 'entryOffset'>;

/** qemu-img bitmap's default granularity: the cluster size, kept within 4 KiB-64 KiB. */
function defaultGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize));
}

function failed(op: BitmapOp, why: string): QcowError {
  return new QcowError('INVALID_ARGUMENT', `Operation ${op.op} on bitmap ${op.name} failed: ${why}`, { bitmap: op.name });
}

/** QEMU's refusal of a bitmap left in use (bdrv_dirty_bitmap_check), with the hint it appends. */
function inconsistent(op: BitmapOp, name: string): QcowError {
  return Object.assign(failed(op, `Bitmap '${name}' is inconsistent and cannot be used`), { hint: 'Try block-dirty-bitmap-remove to delete this bitmap from disk\n' });
}

/** Entries in the bitmap table of a bitmap over `virtualSize` bytes (one bit per granule). */
function tableSizeFor(virtualSize: number, granularityBits: number, clusterSize: number): number {
  const bytes = Math.ceil(Math.ceil(virtualSize / 2 ** granularityBits) / 8);
  return Math.max(1, Math.ceil(bytes / clusterSize));
}

/** An all-clear bitmap over `virtualSize` bytes: one bit per granule, granule 0 in bit 0 of byte 0. */
function bitsFor(virtualSize: number, granularityBits: number): Uint8Array {
  return new Uint8Array(bitsLength(virtualSize, granularityBits));
}

/**
 * QEMU's name for the image's node in messages (bdrv_get_device_or_node_name): qemu-img's image
 * is the second node it makes, named by id_generate as "#block" + 1 + two random digits.
 */
function nodeName(): string {
  return `#block1${String(Math.floor(Math.random() * 100)).padStart(2, '0')}`;
}

/**
 * Why a new bitmap cannot be stored in the image, in QEMU's order and words
 * (qcow2_co_can_store_new_dirty_bitmap and check_constraints_on_bitmap), or undefined.
 */
function persistentRefusal(img: Qcow2Image, entries: readonly Entry[], name: string, granularity: number): string | undefined {
  if (img.header.version < 3) return 'Cannot store dirty bitmaps in qcow2 v2 files';
  const bytes = bitsLength(img.virtualSize, Math.log2(granularity));
  if (bytes > BME_MAX_PHYS_SIZE || Math.ceil(bytes / img.clusterSize) > BME_MAX_TABLE_SIZE) {
    return 'Too much space will be occupied by the bitmap. Use larger granularity';
  }
  if (encodeString(name).length > BME_MAX_NAME_SIZE) return `Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`;
  if (entries.length >= C.MAX_BITMAPS) return 'Maximum number of persistent bitmaps is already reached';
  const dirSize = entries.reduce((n, e) => n + dirEntrySize(e.name), 0) + dirEntrySize(name);
  if (dirSize > C.MAX_BITMAP_DIRECTORY_SIZE) return 'Not enough space in the bitmap directory';
  return undefined;
}

/** The bytes of a bitmap's bits. */
function bitsLength(virtualSize: number, granularityBits: number): number {
  return Math.ceil(Math.ceil(virtualSize / 2 ** granularityBits) / 8);
}

/**
 * Cluster `k` of a stored bitmap's bits (`table` its table, `length` the bits' bytes): a table
 * entry of 0 reads as clear (null), the all-ones flag as set; past the bits' end, zeros.
 */
async function storedCluster(img: Qcow2Image, table: Uint8Array, k: number, length: number): Promise<Uint8Array | null> {
  const cs = img.clusterSize;
  const n = Math.max(0, Math.min(cs, length - k * cs));
  const off = bitmapTableEntryOffset(table, k);
  if (off === 0 && !(be32(table, k * 8 + 4) & 1)) return null;
  const out = new Uint8Array(cs);
  if (off !== 0) out.set((await img.store.read(off, cs)).subarray(0, n));
  else out.fill(0xff, 0, n);
  return out;
}

/** A stored bitmap's bits. */
async function readBits(img: Qcow2Image, e: Entry): Promise<Uint8Array> {
  const cs = img.clusterSize;
  const bits = bitsFor(img.virtualSize, e.granularityBits);
  const table = await img.store.read(e.bitmapTableOffset, e.bitmapTableSize * 8);
  for (let k = 0; k < e.bitmapTableSize && k * cs < bits.length; k++) {
    const c = await storedCluster(img, table, k, bits.length);
    if (c) bits.set(c.subarray(0, Math.min(cs, bits.length - k * cs)), k * cs);
  }
  return bits;
}

/** QEMU's hbitmap_merge across granularities: every guest range set in `src` set in `dst`. */
function orInto(dst: Uint8Array, dstBits: number, src: Uint8Array, srcBits: number, virtualSize: number): void {
  for (let byte = 0; byte < src.length; byte++) {
    if (src[byte] === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(src[byte]! & (1 << bit))) continue;
      const start = (byte * 8 + bit) * 2 ** srcBits;
      if (start >= virtualSize) break;
      const end = Math.min(virtualSize, start + 2 ** srcBits);
      for (let g = Math.floor(start / 2 ** dstBits); g <= Math.floor((end - 1) / 2 ** dstBits); g++) dst[g >> 3]! |= 1 << (g & 7);
    }
  }
}

/** Host ranges a bitmap owns: its table and every data cluster the table points at. */
async function bitmapClusters(img: Qcow2Image, e: Entry): Promise<Array<[number, number]>> {
  const cs = img.clusterSize;
  const table = await img.store.read(e.bitmapTableOffset, e.bitmapTableSize * 8);
  const out: Array<[number, number]> = [[e.bitmapTableOffset, Math.ceil((e.bitmapTableSize * 8) / cs) * cs]];
  for (let i = 0; i < e.bitmapTableSize; i++) {
    const off = bitmapTableEntryOffset(table, i);
    if (off !== 0) out.push([off, cs]);
  }
  return out;
}

/**
 * Mark every bitmap in use where its directory entry is, as QEMU does when it opens an image for
 * writing (update_ext_header_and_dir_in_place): only flag words change, so a write that lands in
 * part leaves each entry either marked or as it was; flushed before anything else is written.
 * False (nothing written) where the directory is not as QEMU would rewrite it in place.
 */
export async function markInUseInPlace(img: Qcow2Image): Promise<boolean> {
  const ext = img.header.bitmaps;
  if (!ext || (img.header.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n || img.bitmaps.length === 0 || img.bitmaps.length !== ext.nbBitmaps) return false;
  const entries = img.bitmaps.map(({ entryOffset: _o, ...e }) => ({ ...e, flags: e.flags | BME_FLAG_IN_USE }));
  const dir = encodeBitmapDirectory(entries);
  if (dir.length !== ext.bitmapDirectorySize) return false;
  await img.pwrite(ext.bitmapDirectoryOffset, dir, 'bitmap directory: every bitmap in use, in place');
  await img.flush('bitmaps in use before guest writes');
  img.bitmaps = parseBitmapDirectory(dir, entries.length, img.clusterSize, img.virtualSize, ext.bitmapDirectoryOffset);
  return true;
}

/**
 * What QEMU does with the bitmaps of an image it opened for writing and then closes without
 * changing them (qemu-img check -r): every consistent bitmap stored again, first fit, the old
 * clusters freed (storeAsQemu); nothing where QEMU's layout is not modelled. Not marked in use
 * first: nothing written meanwhile touches guest data, so a crash leaves them consistent.
 */
export async function storeBitmapsAsOnClose(img: Qcow2Image): Promise<void> {
  if (img.bitmaps.length > 0) await changeBitmaps(img, []);
}

/**
 * Apply `ops` in order to the image's bitmaps and store the result. As with qemu-img, the
 * operations before a refused one still take effect; the refusal is thrown after they are stored.
 */
export async function changeBitmaps(img: Qcow2Image, ops: BitmapOp[], opts: { inUseOurs?: boolean } = {}): Promise<void> {
  const cs = img.clusterSize;
  // QEMU's layout where it is modelled (loadQemuBitmaps): not for in-use marks (markInUseInPlace
  // is QEMU's), and for the written ranges only after our own marks
  const asQemu = !ops.some((op) => op.op === 'in-use') && (opts.inUseOurs === true || !ops.some((op) => op.op === 'written')) &&
    (await loadQemuBitmaps(img, opts)) !== null;
  /** The bitmaps removed, as they were found. */
  const removed: Entry[] = [];
  const entries: Entry[] = img.bitmaps.map(({ entryOffset: _o, ...e }) => ({ ...e }));
  /** New tables to allocate (all clear), by entry; ranges to free once the new directory is live. */
  const fresh = new Set<Entry>();
  /** The bits of fresh entries that are not all clear (merge results). */
  const content = new Map<Entry, Uint8Array>();
  const dropped: Entry[] = [];
  let refusal: QcowError | undefined;
  for (const op of ops) {
    const i = entries.findIndex((e) => e.name === op.name);
    if (op.op === 'add') {
      if (i >= 0) { refusal = failed(op, `Bitmap already exists: ${op.name}`); break; }
      const g = op.granularity ?? defaultGranularity(cs);
      if (!Number.isInteger(g) || g < 512 || g >= 2 ** 32 || (g & (g - 1)) !== 0) {
        refusal = failed(op, 'Granularity must be power of 2 and at least 512');
        break;
      }
      const cannot = persistentRefusal(img, entries, op.name, g);
      if (cannot) { refusal = failed(op, `Can't make bitmap '${op.name}' persistent in '${nodeName()}': ${cannot}`); break; }
      const bits = Math.log2(g);
      const e: Entry = {
        bitmapTableOffset: 0, bitmapTableSize: tableSizeFor(img.virtualSize, bits, cs),
        flags: op.disabled ? 0 : BME_FLAG_AUTO, type: BT_DIRTY_TRACKING_BITMAP, granularityBits: bits, name: op.name,
      };
      entries.push(e);
      fresh.add(e);
      continue;
    }
    if (i < 0) { refusal = failed(op, `Dirty bitmap '${op.name}' not found`); break; }
    const e = entries[i]!;
    if (op.op === 'in-use') {
      e.flags |= BME_FLAG_IN_USE;
      continue;
    }
    if (op.op === 'written') {
      e.flags &= ~BME_FLAG_IN_USE;
      // an image grown meanwhile: every bitmap takes the new size (QEMU resizes them, new bits clear)
      const tableSize = tableSizeFor(img.virtualSize, e.granularityBits, cs);
      const mark = (e.flags & BME_FLAG_AUTO) !== 0 && op.ranges.length > 0;
      if (!mark && tableSize === e.bitmapTableSize) continue;
      const bits = fresh.has(e) ? content.get(e) ?? bitsFor(img.virtualSize, e.granularityBits) : await readBits(img, e);
      const g = 2 ** e.granularityBits;
      for (const [start, length] of mark ? op.ranges : []) {
        for (let k = Math.floor(start / g); k <= Math.floor((start + length - 1) / g); k++) bits[k >> 3]! |= 1 << (k & 7);
      }
      if (!fresh.has(e)) {
        dropped.push({ ...e }); // with the table size it was stored with
        fresh.add(e);
      }
      e.bitmapTableSize = tableSize;
      content.set(e, bits);
      continue;
    }
    if (op.op === 'merge') {
      const src = op.source;
      const se = src === null ? undefined : src ? src.bitmaps.find((b) => b.name === op.from) : entries.find((b) => b.name === op.from);
      if (!se) { refusal = failed(op, `Dirty bitmap '${op.from}' not found`); break; }
      const bad = [e, se].find((b) => b.flags & BME_FLAG_IN_USE);
      if (bad) { refusal = inconsistent(op, bad.name); break; }
      const srcSize = (src ?? img).virtualSize; // src is not null here
      if (srcSize !== img.virtualSize) {
        refusal = failed(op, `Bitmaps are of different sizes (destination size is ${img.virtualSize}, source size is ${srcSize}) and can't be merged`);
        break;
      }
      const srcBits = fresh.has(se as Entry) ? content.get(se as Entry) : await readBits(src ?? img, se);
      const bits = fresh.has(e) ? content.get(e) ?? bitsFor(img.virtualSize, e.granularityBits) : await readBits(img, e);
      if (srcBits) orInto(bits, e.granularityBits, srcBits, se.granularityBits, img.virtualSize);
      if (!fresh.has(e)) {
        dropped.push({ ...e });
        fresh.add(e);
      }
      content.set(e, bits);
      continue;
    }
    if (op.op !== 'remove' && e.flags & BME_FLAG_IN_USE) {
      refusal = inconsistent(op, op.name);
      break;
    }
    if (op.op === 'remove') {
      const found = img.bitmaps.find((b) => b.name === op.name);
      if (found && !removed.some((r) => r.name === op.name)) removed.push(found);
      entries.splice(i, 1);
      if (fresh.has(e)) fresh.delete(e);
      else dropped.push(e);
    } else if (op.op === 'clear') {
      content.delete(e);
      if (!fresh.has(e)) {
        dropped.push({ ...e });
        fresh.add(e);
      }
    } else if (op.op === 'enable') {
      e.flags |= BME_FLAG_AUTO;
    } else {
      e.flags &= ~BME_FLAG_AUTO;
    }
  }
  const changed = fresh.size > 0 || dropped.length > 0 ||
    entries.some((e, k) => e.flags !== img.bitmaps[k]?.flags) || entries.length !== img.bitmaps.length;
  if (asQemu && removedFirst(img, entries, removed)) await storeAsQemu(img, entries, fresh, content, removed[0], opts.inUseOurs === true);
  else if (changed) await store(img, entries, fresh, content, dropped);
  if (refusal) throw refusal;
}

const listing = (e: Entry): string => `${e.name}/${e.flags}/${e.granularityBits}`;

/**
 * Whether QEMU's two stores (the remove's, then the close's) each leave a state the operation
 * may crash into: at most one bitmap removed from the file, and the bitmaps after the whole
 * operation listed as after the remove alone (a crash between the two stores lists them so).
 */
function removedFirst(img: Qcow2Image, entries: Entry[], removed: Entry[]): boolean {
  if (removed.length === 0) return true;
  if (removed.length > 1) return false;
  const kept = img.bitmaps.filter((b) => b.name !== removed[0]!.name);
  return kept.length === entries.length && kept.every((b, k) => listing(b) === listing(entries[k]!));
}

/**
 * qemu-img bitmap's layout: the removed bitmap (if any) goes first in a store of its own (QEMU's
 * qcow2_co_remove_persistent_dirty_bitmap: the directory without it, first fit, then its old
 * directory, table and data freed); then every bitmap is stored again in directory order
 * (qcow2_store_persistent_dirty_bitmaps on close), first fit from the lowest free cluster, the
 * old ones freed after the header names the new directory. A bitmap a crash left in use QEMU
 * neither loads nor stores: its table and entry stay; with nothing else to store, nothing is
 * written. The clusters QEMU frees keep its bytes (leaveOldBitmapsAsQemu): data zeroed as by its
 * punched hole, the old directory as QEMU marked it in use on open.
 */
async function storeAsQemu(
  img: Qcow2Image, entries: Entry[], fresh: Set<Entry>, content: Map<Entry, Uint8Array>, removed: Entry | undefined, inUseOurs: boolean,
): Promise<void> {
  const consistent = (e: Entry): boolean => (e.flags & BME_FLAG_IN_USE) === 0;
  // the bitmaps not changed are copied where they are (their clusters stay until the end)
  const bits = new Map<Entry, Uint8Array | Entry>(content);
  for (const e of entries) if (!fresh.has(e) && consistent(e)) bits.set(e, { ...e });
  const strip = ({ entryOffset: _o, ...e }: BitmapEntry): Entry => ({ ...e });
  if (removed) {
    const found = await asQemuLeftThem(img);
    const data = (await bitmapClusters(img, removed)).slice(1).map(([off]) => off);
    await store(img, img.bitmaps.filter((b) => b.name !== removed.name).map(strip), new Set(), new Map(), [removed]);
    await leaveOldBitmapsAsQemu(img, { ...found, oldData: data }, img.store.size());
  }
  const stored = entries.filter(consistent);
  if (stored.length === 0) return;
  const now = await asQemuLeftThem(img, inUseOurs);
  await store(img, entries, new Set(stored), bits, img.bitmaps.filter((b) => inUseOurs || consistent(b)).map(strip));
  if (now.entries.length > 0) await leaveOldBitmapsAsQemu(img, now, img.store.size());
}

/** The bitmaps as found (loadQemuBitmaps), also when QEMU stores none of them (all in use, or none). */
async function asQemuLeftThem(img: Qcow2Image, inUseOurs = false): Promise<QemuBitmaps> {
  const b = await loadQemuBitmaps(img, { inUseOurs });
  if (b) return b;
  const dir = img.header.bitmaps;
  const old: Array<[number, number]> = dir ? [[dir.bitmapDirectoryOffset, dir.bitmapDirectorySize]] : [];
  return { entries: img.bitmaps, stored: img.bitmaps.map(() => false), tables: [], directorySize: dir?.bitmapDirectorySize ?? 0, old, oldData: [] };
}

/**
 * Store `entries`: the `fresh` ones in new clusters with their `content` (bits, or the stored
 * bitmap to copy cluster by cluster; none: all clear), the others as they are; then the old
 * directory and the `dropped` bitmaps freed.
 */
async function store(img: Qcow2Image, entries: Entry[], fresh: Set<Entry>, content: ReadonlyMap<Entry, Uint8Array | Entry>, dropped: Entry[]): Promise<void> {
  const cs = img.clusterSize;
  const dirSize = entries.reduce((n, e) => n + dirEntrySize(e.name), 0);
  if (dirSize > C.MAX_BITMAP_DIRECTORY_SIZE) throw new QcowError('INVALID_ARGUMENT', 'Not enough space in the bitmap directory', {});
  // what the old directory and the dropped bitmaps own, read before anything changes
  const oldExt = img.header.bitmaps && (img.header.autoclearFeatures & C.AUTOCLEAR_BITMAPS) !== 0n ? img.header.bitmaps : undefined;
  const toFree: Array<[number, number]> = [];
  if (oldExt) toFree.push([oldExt.bitmapDirectoryOffset, Math.ceil(oldExt.bitmapDirectorySize / cs) * cs]);
  for (const e of dropped) toFree.push(...(await bitmapClusters(img, e)));

  // 1. new bitmaps (QEMU's store_bitmap: the data clusters that are not all clear, then the
  // table; entry 0 for a clear cluster) and the new directory, refcounts first
  for (const e of entries) {
    if (!fresh.has(e)) continue;
    const bytes = Math.ceil((e.bitmapTableSize * 8) / cs) * cs;
    const table = new Uint8Array(bytes);
    const bits = content.get(e);
    const length = bitsLength(img.virtualSize, e.granularityBits);
    const copied = bits && !(bits instanceof Uint8Array) ? await img.store.read(bits.bitmapTableOffset, bits.bitmapTableSize * 8) : null;
    for (let k = 0; bits && k < e.bitmapTableSize; k++) {
      let data: Uint8Array | null;
      if (copied) {
        data = await storedCluster(img, copied, k, length);
      } else {
        data = new Uint8Array(cs);
        data.set((bits as Uint8Array).subarray(k * cs, (k + 1) * cs));
      }
      if (!data || data.every((x) => x === 0)) continue;
      const off = await allocClusters(img, 1, 'bitmap data');
      await img.pwrite(off, data, 'bitmap data');
      putEntry(table, k * 8, Math.floor(off / 2 ** 32), off % 2 ** 32);
    }
    e.bitmapTableOffset = await allocClusters(img, bytes / cs, 'bitmap table');
    // its own bytes only, as QEMU writes it (a table or directory at the end leaves the file
    // length short of a whole cluster, the same length as QEMU's)
    await img.pwrite(e.bitmapTableOffset, table.subarray(0, e.bitmapTableSize * 8), 'bitmap table');
  }
  let ext: Qcow2Header['bitmaps'];
  if (entries.length > 0) {
    const dir = encodeBitmapDirectory(entries);
    const dirOffset = await allocClusters(img, Math.ceil(dir.length / cs), 'bitmap directory');
    await img.pwrite(dirOffset, dir, 'bitmap directory');
    ext = { nbBitmaps: entries.length, reserved: 0, bitmapDirectorySize: dir.length, bitmapDirectoryOffset: dirOffset };
  }
  await img.flush('bitmap tables and directory before the header names them');

  // 2. the commit point: one header write names the new directory (or none)
  const h: Qcow2Header = { ...img.header, extensions: img.header.extensions.filter((x) => x.type !== C.EXT_BITMAPS) };
  if (ext) {
    h.bitmaps = ext;
    h.autoclearFeatures |= C.AUTOCLEAR_BITMAPS;
  } else {
    delete h.bitmaps;
    h.autoclearFeatures &= ~C.AUTOCLEAR_BITMAPS;
  }
  await img.pwrite(0, encodeHeader(h), 'header: bitmaps extension', true);
  await img.flush('header before the old bitmaps are freed');
  img.setTables({ header: { ...h, bitmaps: h.bitmaps } });

  // 3. what nothing refers to any more
  for (const [off, len] of toFree) await freeClusters(img, off, len);
  await img.flush('old bitmaps freed');
  img.bitmaps = ext
    ? parseBitmapDirectory(encodeBitmapDirectory(entries), entries.length, cs, img.virtualSize, ext.bitmapDirectoryOffset)
    : [];
}
