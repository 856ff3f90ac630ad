// Annotated bytes: which structures lie in one host cluster, laid out field by field from
// core/format/layouts.ts (the header and its extensions, L1 and L2 tables, the refcount table
// and blocks, the snapshot table, the bitmap directory), and the reading of the field under one
// byte: its value, bit by bit for flag words, in plain words (annotate-words.ts).
import { be32 } from '../format/bytes.ts';
import * as C from '../format/constants.ts';
import { offsetOf } from '../format/entries.ts';
import { readHeaderFields, type Qcow2Header } from '../format/header.ts';
import {
  backingFileNameLayout, bitBytes, bitmapDirEntryLayout, bitValue, extensionLayout, EXTENSION_NAMES, fieldValue, headerLayout,
  FIELD_ROLES, l1EntryLayout, l2EntryLayouts, refblockItemLayout, reftableEntryLayout, snapshotEntryLayout, type FieldLayout, type FieldRole,
} from '../format/layouts.ts';
import { reftableEntry, refblockEntries } from '../format/refcount.ts';
import type { Qcow2Image } from '../image/qcow2-image.ts';
import { bitWords, fieldWords, type WordsContext } from './annotate-words.ts';

export type StructureKind =
  | 'header' | 'header extension' | 'backing file name' | 'L1 table' | 'L2 table'
  | 'refcount table' | 'refcount block' | 'snapshot table' | 'bitmap directory';

/**
 * One structure (or the part of a table) in a cluster: `count` items of `stride` bytes from host
 * offset `at`, each laid out as `variants[variantOf[i] ?? 0]` (L2 entries: standard or
 * compressed). A single structure is one item.
 */
export interface AnnotatedRegion {
  structure: StructureKind;
  title: string;
  at: number;
  count: number;
  stride: number;
  /** Index, in its table, of the region's first item. */
  firstIndex: number;
  /** What one item is called ("L2 entry"), followed by its index. */
  itemName: string;
  variants: FieldLayout[][];
  variantOf?: Uint8Array;
  /** Refcount blocks: refcounts per item (8/refcount_bits below 8 bits, else 1) and the host cluster of the block's first. */
  perItem?: number;
  firstCluster?: number;
}

/** Where a structure starts, to go to it. */
export interface Landmark {
  structure: StructureKind;
  title: string;
  at: number;
}

export interface BitReading {
  name: string;
  lsb: number;
  width: number;
  role: FieldRole;
  value: string;
  words: string;
  explain: string;
  /** The host bytes that hold the bits. */
  at: number;
  size: number;
}

export interface FieldReading {
  structure: StructureKind;
  regionTitle: string;
  /** The item ("L2 entry 5", "snapshot table entry 0"). */
  item: string;
  name: string;
  at: number;
  size: number;
  role: FieldRole;
  explain: string;
  /** The bytes as stored, in hex. */
  raw: string;
  /** The value: a number in decimal and hex, or the text. */
  value: string;
  words: string;
  bits?: BitReading[];
}

/** What annotation reads: the image when its tables opened, or only the header's bytes. */
export interface AnnotateSource {
  read(hostOffset: number, length: number): Promise<Uint8Array>;
  clusterSize: number;
  header: Qcow2Header | null;
  image: Qcow2Image | null;
}

function tableRegion(
  base: Omit<AnnotatedRegion, 'at' | 'count' | 'firstIndex'>, tableAt: number, entries: number, clusterStart: number, clusterSize: number,
): AnnotatedRegion | null {
  const start = Math.max(tableAt, clusterStart);
  const end = Math.min(tableAt + entries * base.stride, clusterStart + clusterSize);
  if (end <= start) return null;
  const firstIndex = Math.ceil((start - tableAt) / base.stride);
  const count = Math.floor((end - tableAt) / base.stride) - firstIndex;
  return count > 0 ? { ...base, at: tableAt + firstIndex * base.stride, count, firstIndex } : null;
}

function single(structure: StructureKind, title: string, itemName: string, at: number, fields: FieldLayout[], size: number): AnnotatedRegion {
  return { structure, title, at, count: 1, stride: size, firstIndex: 0, itemName, variants: [fields] };
}

/** The header, its extensions and the backing file name, from the bytes of cluster 0. */
function headerRegions(b: Uint8Array, h: Qcow2Header | null): AnnotatedRegion[] {
  const f = readHeaderFields(b);
  const len = f.version >= 3 ? f.headerLength : C.V2_HEADER_LENGTH;
  const out = [single('header', 'Header', 'header', 0, headerLayout(f), len)];
  if (h) {
    for (const e of h.extensions) {
      const length = be32(b, e.offset + 4);
      const name = EXTENSION_NAMES[e.type] ?? `unknown extension 0x${e.type.toString(16)}`;
      out.push(single('header extension', `Header extension: ${name}`, 'header extension', e.offset, extensionLayout(e, length), 8 + Math.ceil(length / 8) * 8));
    }
    if (h.extensionsEnd + 8 <= b.length && (h.backingFileOffset === 0 || h.extensionsEnd + 8 <= h.backingFileOffset)) {
      out.push(single('header extension', 'End of the header extensions', 'end marker', h.extensionsEnd, extensionLayout({ type: C.EXT_END, data: new Uint8Array(0) }, 0), 8));
    }
    if (h.backingFileOffset && h.backingFileSize) {
      out.push(single('backing file name', 'Backing file name', 'backing file name', h.backingFileOffset, backingFileNameLayout(h.backingFileSize), h.backingFileSize));
    }
  }
  return out;
}

/** Every structure that has bytes in the cluster starting at `clusterStart`. */
export async function annotateCluster(src: AnnotateSource, clusterStart: number): Promise<AnnotatedRegion[]> {
  const cs = src.clusterSize;
  const out: AnnotatedRegion[] = [];
  if (clusterStart === 0) out.push(...headerRegions(await src.read(0, cs), src.header));
  const img = src.image;
  if (!img) return out;
  const h = img.header;
  const add = (r: AnnotatedRegion | null) => r && out.push(r);
  const l1 = { structure: 'L1 table' as const, stride: 8, itemName: 'L1 entry', variants: [l1EntryLayout()] };
  add(tableRegion({ ...l1, title: 'Active L1 table' }, h.l1TableOffset, h.l1Size, clusterStart, cs));
  const l1s: Array<{ table: Uint8Array; size: number; whose: string }> = [{ table: img.l1Table, size: h.l1Size, whose: 'the active disk' }];
  for (const sn of img.snapshots) {
    add(tableRegion({ ...l1, title: `L1 table of snapshot ${sn.idStr} (${sn.name})` }, sn.l1TableOffset, sn.l1Size, clusterStart, cs));
    try {
      const v = await img.snapshotView(sn);
      l1s.push({ table: v.table, size: v.size, whose: `snapshot ${sn.idStr} (${sn.name})` });
    } catch {
      // a snapshot whose L1 table cannot be read names no L2 table here
    }
  }
  const l2 = clusterStart === 0 ? undefined : l1s.flatMap((t) => Array.from({ length: t.size }, (_, i) => ({ i, whose: t.whose, off: offsetOf(be32(t.table, i * 8), be32(t.table, i * 8 + 4)) })))
    .find((e) => e.off === clusterStart);
  if (l2) {
    const bytes = await src.read(clusterStart, cs);
    const stride = img.l2EntrySize;
    const variantOf = new Uint8Array(cs / stride);
    for (let i = 0; i < variantOf.length; i++) variantOf[i] = (bytes[i * stride]! & 0x40) !== 0 ? 1 : 0;
    out.push({
      structure: 'L2 table', title: `L2 table of L1 entry ${l2.i} (${l2.whose})`, at: clusterStart, count: variantOf.length, stride,
      firstIndex: 0, itemName: 'L2 entry', variants: l2EntryLayouts(img.geometry), variantOf,
    });
  }
  add(tableRegion({ structure: 'refcount table', title: 'Refcount table', stride: 8, itemName: 'refcount table entry', variants: [reftableEntryLayout()] },
    h.refcountTableOffset, img.reftable.length / 8, clusterStart, cs));
  for (let r = 0; r < img.reftable.length / 8; r++) {
    if (clusterStart === 0 || reftableEntry(img.reftable, r) !== clusterStart) continue;
    const item = refblockItemLayout(img.refcountOrder);
    const entries = refblockEntries(img.clusterBits, img.refcountOrder);
    out.push({
      structure: 'refcount block', title: `Refcount block ${r} (host clusters ${r * entries} to ${(r + 1) * entries - 1})`, at: clusterStart,
      count: cs / item.stride, stride: item.stride, firstIndex: 0, itemName: item.perItem > 1 ? 'refcount block byte' : 'refcount block entry',
      variants: [item.fields], perItem: item.perItem, firstCluster: r * entries,
    });
    break;
  }
  if (img.snapshots.length && img.snapshotsSize && overlaps(h.snapshotsOffset, img.snapshotsSize, clusterStart, cs)) {
    const table = await src.read(h.snapshotsOffset, img.snapshotsSize);
    for (const [i, sn] of img.snapshots.entries()) {
      const rel = sn.entryOffset - h.snapshotsOffset;
      const e = snapshotEntryLayout(table, rel);
      if (overlaps(sn.entryOffset, e.size, clusterStart, cs)) {
        out.push(single('snapshot table', `Snapshot table entry ${i}: ID ${sn.idStr}, “${sn.name}”`, 'snapshot table entry', sn.entryOffset, e.fields, e.size));
      }
    }
  }
  const bm = h.bitmaps;
  if (bm && img.bitmaps.length && overlaps(bm.bitmapDirectoryOffset, bm.bitmapDirectorySize, clusterStart, cs)) {
    const dir = await src.read(bm.bitmapDirectoryOffset, bm.bitmapDirectorySize);
    for (const [i, e] of img.bitmaps.entries()) {
      const l = bitmapDirEntryLayout(dir, e.entryOffset);
      const at = bm.bitmapDirectoryOffset + e.entryOffset;
      if (overlaps(at, l.size, clusterStart, cs)) out.push(single('bitmap directory', `Bitmap directory entry ${i}: “${e.name}”`, 'bitmap directory entry', at, l.fields, l.size));
    }
  }
  return out;
}

function overlaps(at: number, size: number, clusterStart: number, cs: number): boolean {
  return at < clusterStart + cs && at + size > clusterStart;
}

/** Where each kind of structure starts (the first L2 table and refcount block in the file), to go to. */
export function landmarks(img: Qcow2Image | null): Landmark[] {
  const out: Landmark[] = [{ structure: 'header', title: 'Header', at: 0 }];
  if (!img) return out;
  const h = img.header;
  if (h.l1Size) out.push({ structure: 'L1 table', title: 'Active L1 table', at: h.l1TableOffset });
  const l2s = Array.from({ length: h.l1Size }, (_, i) => offsetOf(be32(img.l1Table, i * 8), be32(img.l1Table, i * 8 + 4))).filter((o) => o !== 0);
  if (l2s.length) out.push({ structure: 'L2 table', title: 'First L2 table', at: Math.min(...l2s) });
  out.push({ structure: 'refcount table', title: 'Refcount table', at: h.refcountTableOffset });
  const rb = reftableEntry(img.reftable, 0);
  if (rb) out.push({ structure: 'refcount block', title: 'First refcount block', at: rb });
  if (img.snapshots.length) out.push({ structure: 'snapshot table', title: 'Snapshot table', at: h.snapshotsOffset });
  if (h.bitmaps && img.bitmaps.length) out.push({ structure: 'bitmap directory', title: 'Bitmap directory', at: h.bitmaps.bitmapDirectoryOffset });
  return out;
}

/** The region, item and field holding host byte `hostOffset`, if any (the same lookup as the view's). */
export function fieldAt(regions: readonly AnnotatedRegion[], hostOffset: number): { region: AnnotatedRegion; index: number; field: FieldLayout; at: number } | null {
  for (const region of regions) {
    const rel = hostOffset - region.at;
    if (rel < 0 || rel >= region.count * region.stride) continue;
    const index = Math.floor(rel / region.stride);
    const within = rel - index * region.stride;
    const fields = region.variants[region.variantOf?.[index] ?? 0]!;
    const field = fields.find((f) => within >= f.offset && within < f.offset + f.size);
    if (field) return { region, index, field, at: region.at + index * region.stride + field.offset };
  }
  return null;
}

/** Byte map codes: the field's role index, these flags, or NO_FIELD. */
export const BYTE_ODD_ITEM = 0x20;
export const BYTE_FIELD_START = 0x40;
export const NO_FIELD = 0xff;

/**
 * One code per byte of the cluster at `clusterStart` (what the view colours): the role of the
 * field holding it (an index in FIELD_ROLES), BYTE_ODD_ITEM on every other table item,
 * BYTE_FIELD_START on a field's first byte; NO_FIELD where no structure is.
 */
export function byteMap(regions: readonly AnnotatedRegion[], clusterStart: number, clusterSize: number): Uint8Array {
  const out = new Uint8Array(clusterSize).fill(NO_FIELD);
  const end = clusterStart + clusterSize;
  for (const r of regions) {
    for (let i = 0; i < r.count; i++) {
      const item = r.at + i * r.stride;
      if (item >= end) break;
      if (item + r.stride <= clusterStart) continue;
      const odd = (r.firstIndex + i) % 2 === 1 ? BYTE_ODD_ITEM : 0;
      for (const f of r.variants[r.variantOf?.[i] ?? 0]!) {
        const role = FIELD_ROLES.indexOf(f.role) | odd;
        const from = Math.max(item + f.offset, clusterStart);
        const to = Math.min(item + f.offset + f.size, end);
        for (let o = from; o < to; o++) out[o - clusterStart] = role;
        if (item + f.offset >= clusterStart && item + f.offset < end) out[item + f.offset - clusterStart] = role | BYTE_FIELD_START;
      }
    }
  }
  return out;
}

function hexBytes(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(' ');
}

/** Read the field under host byte `hostOffset` of the cluster at `clusterStart`: null when no structure holds it. */
export async function readField(src: AnnotateSource, clusterStart: number, hostOffset: number): Promise<FieldReading | null> {
  const regions = await annotateCluster(src, clusterStart);
  const hit = fieldAt(regions, hostOffset);
  if (!hit) return null;
  const { region, index, field, at } = hit;
  const bytes = await src.read(at, field.size);
  const v = fieldValue(bytes, 0, field);
  const itemIndex = region.firstIndex + index;
  const ctx: WordsContext = {
    clusterSize: src.clusterSize,
    header: src.header,
    refcountBits: src.image ? 2 ** src.image.refcountOrder : 16,
    firstCluster: region.firstCluster === undefined ? undefined : region.firstCluster + itemIndex * (region.perItem ?? 1),
  };
  const reading: FieldReading = {
    structure: region.structure,
    regionTitle: region.title,
    item: region.count === 1 && region.firstIndex === 0 && region.structure !== 'L1 table' ? region.itemName : `${region.itemName} ${itemIndex}`,
    name: field.name,
    at,
    size: field.size,
    role: field.role,
    explain: field.explain,
    raw: hexBytes(bytes),
    value: typeof v === 'bigint' ? `${v} (0x${v.toString(16)})` : typeof v === 'string' ? `“${v}”` : `${v.length} bytes`,
    words: fieldWords(field, v, ctx),
  };
  if (field.bits && typeof v === 'bigint') {
    reading.bits = field.bits.map((bit) => {
      const x = bitValue(v, bit);
      const [first, n] = bitBytes(field.size, bit);
      return {
        name: bit.name, lsb: bit.lsb, width: bit.width, role: bit.role, explain: bit.explain,
        value: bit.width === 1 ? String(x) : `0x${(bit.role === 'offset' ? x << BigInt(bit.lsb) : x).toString(16)}`, words: bitWords(bit, x, ctx), at: at + first, size: n,
      };
    });
  }
  return reading;
}
