// Whether two images hold the same guest disk, as `qemu-img compare` decides it (qemu-img.c's
// img_compare): both backing chains followed, the common length compared in the chunks QEMU's
// block status gives (read in at most 2 MiB), the first differing 512-byte sector reported, and
// a longer image's tail required to read as zeros. Strict mode also fails on a size mismatch and
// on the first offset where the two block statuses differ, so the block status is QEMU's own
// (bdrv_co_block_status / bdrv_co_common_block_status_above over qcow2_co_block_status and
// file-posix's), flags and run lengths alike: run lengths decide where statuses are compared.
import { ownLayer, type Layer } from '../image/layer.ts';
import { Qcow2Image } from '../image/qcow2-image.ts';
import type { GuestMapping } from '../image/guest-read.ts';
import type { HoleMap } from '../image/block-status.ts';

// QEMU's BDRV_BLOCK_* flags (include/block/block-common.h)
const DATA = 0x01;
const ZERO = 0x02;
const OFFSET_VALID = 0x04;
const ALLOCATED = 0x10;
const EOF = 0x20;

/** qemu-img's IO_BUF_SIZE: the most it reads at once. */
const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

// QEMU's QCow2SubclusterType
const enum Sub { Normal, Compressed, ZeroPlain, ZeroAlloc, UnallocPlain, UnallocAlloc }

function subclusterType(m: GuestMapping): Sub {
  switch (m.kind) {
    case 'data': return Sub.Normal;
    case 'compressed': return Sub.Compressed;
    case 'zero': return m.hostOffset ? Sub.ZeroAlloc : Sub.ZeroPlain;
    default: return m.hostOffset ? Sub.UnallocAlloc : Sub.UnallocPlain;
  }
}

interface Status {
  flags: number;
  /** Bytes from the queried offset with this status. */
  pnum: number;
}

/** Where each qcow2 file of a chain has holes (metadata-preallocated files only). */
type HolesOf = (img: Qcow2Image) => Promise<HoleMap | undefined>;

/**
 * qcow2_co_block_status through qcow2_get_host_offset: one run of subclusters of the same type
 * (and contiguous host offsets where they have one), never past the L2 table, a compressed
 * cluster on its own; then bdrv_co_block_status's generic part.
 */
async function qcow2Status(img: Qcow2Image, offset: number, bytes: number, holesOf: HolesOf): Promise<Status> {
  const view = img.activeView();
  const l1Index = Math.floor(offset / img.l2Span);
  const limit = Math.min(offset + bytes, (l1Index + 1) * img.l2Span);
  const l2Offset = img.l2OffsetAt(view, l1Index);
  let type = Sub.UnallocPlain;
  let host = 0;
  let pnum = limit - offset;
  if (l2Offset !== 0) {
    const l2 = await img.readL2(l2Offset);
    const first = img.mapInTable(l2, l2Offset, l1Index, offset, limit - offset);
    type = subclusterType(first);
    host = first.hostOffset;
    let pos = offset + first.length;
    if (type !== Sub.Compressed) {
      while (pos < limit) {
        const m = img.mapInTable(l2, l2Offset, l1Index, pos, limit - pos);
        if (subclusterType(m) !== type || (host !== 0 && m.hostOffset !== host + (pos - offset))) break;
        pos += m.length;
      }
    }
    pnum = pos - offset;
  }
  let flags = 0;
  if ((type === Sub.Normal || type === Sub.ZeroAlloc || type === Sub.UnallocAlloc) && img.header.cryptMethod === 0) flags |= OFFSET_VALID;
  if (type === Sub.ZeroPlain || type === Sub.ZeroAlloc) flags |= ZERO;
  else if (type !== Sub.UnallocPlain && type !== Sub.UnallocAlloc) flags |= DATA;
  if (flags & (DATA | ZERO)) flags |= ALLOCATED;
  else if (!img.backing || offset >= img.backing.virtualSize) flags |= ZERO;
  const holes = type === Sub.Normal ? await holesOf(img) : undefined;
  if (holes) {
    // metadata preallocation: the file's own data or hole run decides (file-posix's SEEK_DATA/
    // SEEK_HOLE); BDRV_BLOCK_RECURSE itself does not reach the caller (qemu-img compare -s agrees)
    let first = true;
    holes.split(host, pnum, (_h, n, hole) => {
      if (!first) return;
      first = false;
      pnum = n;
      if (hole) flags |= ZERO;
    });
  }
  return { flags, pnum };
}

/** bdrv_co_block_status of one layer: its driver's status, EOF when the run reaches its end. */
async function layerStatus(layer: Layer, offset: number, bytes: number, holesOf: HolesOf): Promise<Status> {
  const total = layer.virtualSize;
  if (offset >= total) return { flags: EOF, pnum: 0 };
  bytes = Math.min(bytes, total - offset);
  let s: Status;
  const own = ownLayer(layer);
  if (own instanceof Qcow2Image) {
    s = await qcow2Status(own, offset, bytes, holesOf);
  } else {
    // a raw file: data or a hole, as the file system reports them
    const e = (await layer.extents(offset, bytes))[0]!;
    s = { flags: OFFSET_VALID | ALLOCATED | (e.data ? DATA : ZERO), pnum: e.length };
  }
  if (offset + s.pnum === total) s.flags |= EOF;
  return s;
}

function backingOf(layer: Layer): Layer | null {
  const own = ownLayer(layer);
  return own instanceof Qcow2Image ? own.backing : null;
}

/** bdrv_block_status_above(bs, NULL, ...): the status through the whole backing chain. */
async function chainStatus(top: Layer, offset: number, bytes: number, holesOf: HolesOf): Promise<Status> {
  let s = await layerStatus(top, offset, bytes, holesOf);
  if (s.pnum === 0 || s.flags & ALLOCATED) return s;
  const eof = s.flags & EOF ? offset + s.pnum : -1;
  bytes = s.pnum;
  for (let p = backingOf(top); p; p = backingOf(p)) {
    s = await layerStatus(p, offset, bytes, holesOf);
    if (s.pnum === 0) {
      // past the end of a shorter backing file: zeros, allocated there
      s = { flags: ZERO | ALLOCATED, pnum: bytes };
      break;
    }
    if (s.flags & ALLOCATED) {
      s.flags &= ~EOF;
      break;
    }
    bytes = Math.min(bytes, s.pnum);
  }
  if (offset + s.pnum === eof) s.flags |= EOF;
  return s;
}

/** Byte index (relative to `start`) of the first 512-byte sector where `a` and `b` differ, or -1. */
function firstDifferentSector(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i += SECTOR) {
    const end = Math.min(a.length, i + SECTOR);
    for (let k = i; k < end; k++) if (a[k] !== b[k]) return i;
  }
  return -1;
}

/** Byte index of the first 512-byte sector of `a` holding a non-zero byte, or -1 (QEMU's find_nonzero). */
function firstNonZeroSector(a: Uint8Array): number {
  for (let i = 0; i < a.length; i += SECTOR) {
    const end = Math.min(a.length, i + SECTOR);
    for (let k = i; k < end; k++) if (a[k] !== 0) return i;
  }
  return -1;
}

export interface CompareSide {
  /** A qcow2 image with its chain, or a raw file (qemu-img compare -f raw / -F raw). */
  image: Layer;
  /** Holes of the image's own file, when it is metadata-preallocated. */
  holes?: HoleMap;
}

export interface CompareResult {
  /** qemu-img compare's exit code: 0 identical, 1 different. */
  code: 0 | 1;
  /** The lines qemu-img prints on stdout (unless -q), in order. */
  lines: string[];
}

export interface CompareOptions {
  strict?: boolean;
  /** Each line as soon as qemu-img would print it (it also ends up in the result). */
  onLine?: (line: string) => void;
  /** After each chunk QEMU's loop steps over: its length and QEMU's progress base (the larger size). */
  onChunk?: (chunk: number, progressBase: number) => void;
}

/** qemu-img compare [-s] of two opened images (their backing chains attached). */
export async function compareImages(a: CompareSide, b: CompareSide, opts: CompareOptions = {}): Promise<CompareResult> {
  const cache = new Map<Layer, Promise<HoleMap | undefined>>([[a.image, Promise.resolve(a.holes)], [b.image, Promise.resolve(b.holes)]]);
  const holesOf: HolesOf = (img) => {
    let h = cache.get(img);
    if (!h) {
      h = img.holesForLayer ? img.holesForLayer() : Promise.resolve(undefined);
      cache.set(img, h);
    }
    return h;
  };
  const lines: string[] = [];
  const say = (line: string): void => {
    lines.push(line);
    opts.onLine?.(line);
  };
  const differ = (line: string): CompareResult => {
    say(line);
    return { code: 1, lines };
  };
  const size1 = a.image.virtualSize;
  const size2 = b.image.virtualSize;
  const progressBase = Math.max(size1, size2);
  const common = Math.min(size1, size2);
  if (opts.strict && size1 !== size2) return differ('Strict mode: Image size mismatch!');
  let offset = 0;
  while (offset < common) {
    const s1 = await chainStatus(a.image, offset, size1 - offset, holesOf);
    const s2 = await chainStatus(b.image, offset, size2 - offset, holesOf);
    let chunk = Math.min(s1.pnum, s2.pnum);
    if (opts.strict && s1.flags !== s2.flags) return differ(`Strict mode: Offset ${offset} block status mismatch!`);
    const alloc1 = (s1.flags & ALLOCATED) !== 0;
    const alloc2 = (s2.flags & ALLOCATED) !== 0;
    if (s1.flags & ZERO && s2.flags & ZERO) {
      // both read as zeros
    } else if (alloc1 === alloc2) {
      if (alloc1) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const at = firstDifferentSector(await a.image.read(offset, chunk), await b.image.read(offset, chunk));
        if (at >= 0) return differ(`Content mismatch at offset ${offset + at}!`);
      }
    } else {
      // what one side holds must be zeros: the other reads as zeros all through its chain
      chunk = Math.min(chunk, IO_BUF_SIZE);
      const at = firstNonZeroSector(await (alloc1 ? a.image : b.image).read(offset, chunk));
      if (at >= 0) return differ(`Content mismatch at offset ${offset + at}!`);
    }
    offset += chunk;
    opts.onChunk?.(chunk, progressBase);
  }
  if (size1 !== size2) {
    say('Warning: Image size mismatch!');
    const over = size1 > size2 ? a.image : b.image;
    const end = Math.max(size1, size2);
    while (offset < end) {
      const s = await chainStatus(over, offset, end - offset, holesOf);
      let chunk = s.pnum;
      if (s.flags & ALLOCATED && !(s.flags & ZERO)) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const at = firstNonZeroSector(await over.read(offset, chunk));
        if (at >= 0) return differ(`Content mismatch at offset ${offset + at}!`);
      }
      offset += chunk;
      opts.onChunk?.(chunk, progressBase);
    }
  }
  say('Images are identical.');
  return { code: 0, lines };
}
