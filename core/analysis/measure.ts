// What a copy of an image (or a new image of a given size) would need, as `qemu-img measure`
// computes it (QEMU's qcow2_measure, qcow2_calc_prealloc_size, qcow2_refcount_metadata_size,
// qcow2_get_persistent_dirty_bitmap_size and raw_measure): the size with every data cluster
// allocated, the size the guest data present now needs, and the space its persistent bitmaps take.
// Byte totals are BigInt: qemu-img measures up to 2^63 bytes, far past exact doubles.
import { QcowError } from '../errors.ts';
import type { L1View, Qcow2Image } from '../image/qcow2-image.ts';
import type { HoleMap } from '../image/block-status.ts';
import type { RawLayer } from '../image/layer.ts';
import { refcountBlocksNeeded } from '../image/allocator.ts';
import * as C from '../format/constants.ts';
import { toQemuJson } from './qemu-json.ts';

/** Bytes per L2 entry, standard and extended (QEMU's L2E_SIZE_NORMAL / L2E_SIZE_EXTENDED). */
const L2E_SIZE_NORMAL = 8;
const L2E_SIZE_EXTENDED = 16;
/** QEMU's DEFAULT_CLUSTER_SIZE. */
const DEFAULT_CLUSTER_SIZE = 65536;

/** The target format's creation options that bear on the measure (qemu-img measure -o). */
export interface MeasureTarget {
  format: 'qcow2' | 'raw';
  /** `size=` of -o, or --size. */
  size?: bigint;
  clusterSize?: number;
  refcountBits?: number;
  compat?: string;
  extendedL2?: boolean;
  preallocation?: string;
  /** Whether -o backing_file= was given (its value is never opened). */
  backingFile?: boolean;
}

/** The image being measured: its active disk or a snapshot, holes of its file if known. */
export type MeasureSource = {
  img: Qcow2Image;
  view: L1View;
  holes?: HoleMap;
} | {
  /** A raw file (qemu-img's probe of a file that is not qcow2): its data segments are its data. */
  raw: RawLayer;
};

/** qemu-img's BlockMeasureInfo. */
export interface MeasureInfo {
  required: bigint;
  fullyAllocated: bigint;
  /** Only when both the source and the target can hold persistent bitmaps (qcow2 v3). */
  bitmaps?: bigint;
}

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

function bad(message: string): QcowError {
  return new QcowError('INVALID_ARGUMENT', message);
}

function roundUp(n: bigint, to: bigint): bigint {
  return ((n + to - 1n) / to) * to;
}

/**
 * QEMU's qcow2_calc_prealloc_size: header, L2 tables for every cluster, the L1 table, and the
 * refcount table and blocks counting all of that plus the data, each rounded to whole clusters.
 */
function qcow2PreallocSize(totalSize: bigint, clusterSize: number, refcountOrder: number, extendedL2: boolean): bigint {
  const cs = BigInt(clusterSize);
  const l2eSize = BigInt(extendedL2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL);
  const aligned = roundUp(totalSize, cs);
  let meta = cs;
  const nl2e = roundUp(aligned / cs, cs / l2eSize);
  meta += nl2e * l2eSize;
  const nl1e = roundUp((nl2e * l2eSize) / cs, cs / 8n);
  meta += nl1e * 8n;
  // the counts fit doubles exactly: the L1 limit caps them far below 2^53
  const clusters = Number((meta + aligned) / cs);
  const blocks = refcountBlocksNeeded(clusters, clusterSize, refcountOrder, false);
  const table = Math.ceil(blocks / (clusterSize / 8));
  return meta + BigInt(blocks + table) * cs + aligned;
}

/** QEMU's qcow2_get_persistent_dirty_bitmap_size for a copy with `clusterSize` clusters. */
function persistentBitmapsSize(img: Qcow2Image, clusterSize: number): bigint {
  const cs = BigInt(clusterSize);
  let total = 0n;
  let dirSize = 0n;
  for (const b of img.bitmaps) {
    const bits = roundUp(BigInt(img.virtualSize), 1n << BigInt(b.granularityBits)) >> BigInt(b.granularityBits);
    const bytes = (bits + 7n) / 8n;
    const clusters = (bytes + cs - 1n) / cs;
    total += clusters * cs + roundUp(clusters * 8n, cs);
    dirSize += roundUp(BigInt(24 + new TextEncoder().encode(b.name).length), 8n);
  }
  return total + roundUp(dirSize, cs);
}

/**
 * Guest bytes of the data the copy must hold: every target cluster that any data byte of the
 * source (through its backing chain) falls in, counted whole; zero and unallocated ranges cost
 * nothing (QEMU's loop over bdrv_block_status_above, which rounds each data run out to the
 * target's cluster boundaries).
 */
async function requiredDataBytes(src: MeasureSource, clusterSize: number): Promise<bigint> {
  let clusters = 0;
  let next = 0; // first target cluster not yet counted
  const count = (e: { start: number; length: number; zero: boolean; data: boolean; present: boolean }): void => {
    if (e.zero || !e.data || !e.present) return;
    const first = Math.max(next, Math.floor(e.start / clusterSize));
    const end = Math.ceil((e.start + e.length) / clusterSize);
    if (end > first) clusters += end - first;
    next = Math.max(next, end);
  };
  if ('raw' in src) {
    for (const e of await src.raw.extents(0, src.raw.virtualSize)) count(e);
  } else {
    const { img, view } = src;
    await img.walkExtents({ ...view, virtualSize: img.virtualSize }, 0, img.virtualSize, count, src.holes);
  }
  return BigInt(clusters) * BigInt(clusterSize);
}

/** The disk size of a measure's source. */
function sourceSize(src: MeasureSource): number {
  return 'raw' in src ? src.raw.virtualSize : src.img.virtualSize;
}

/** QEMU's qcow2_measure option checks, in its order; returns the settings that count. */
function qcow2Settings(t: MeasureTarget): { clusterSize: number; version: number; refcountOrder: number; extendedL2: boolean; prealloc: string } {
  const extendedL2 = !!t.extendedL2;
  const clusterSize = t.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  if (!Number.isInteger(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    throw bad('Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && clusterSize < 16384) throw bad('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  let version = 3;
  if (t.compat === '0.10') version = 2;
  else if (t.compat !== undefined && t.compat !== '1.1') throw bad(`Invalid compatibility level: '${t.compat}'`);
  const refcountBits = t.refcountBits ?? 16;
  if (refcountBits > 64 || refcountBits < 1 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw bad('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    throw bad('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const prealloc = t.preallocation ?? 'off';
  if (!PREALLOC_MODES.includes(prealloc)) throw bad(`invalid parameter value: ${prealloc}`);
  return { clusterSize, version, refcountOrder: Math.log2(refcountBits), extendedL2, prealloc };
}

/** `qemu-img measure -O FORMAT`: of `source`, or of an empty image of `target.size` bytes. */
export async function measure(target: MeasureTarget, source?: MeasureSource): Promise<MeasureInfo> {
  if (target.format === 'raw') {
    // raw_measure: a raw copy is as large as the disk, whatever it holds
    const size = source ? BigInt(sourceSize(source)) : roundUp(target.size ?? 0n, 512n);
    return { required: size, fullyAllocated: size };
  }
  const s = qcow2Settings(target);
  const cs = BigInt(s.clusterSize);
  let virtualSize = roundUp(target.size ?? 0n, cs);
  const l2eSize = BigInt(s.extendedL2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL);
  const l2Tables = (virtualSize / cs + cs / l2eSize - 1n) / (cs / l2eSize);
  if (l2Tables * 8n > BigInt(C.MAX_L1_SIZE_BYTES)) throw bad('The image size is too large (try using a larger cluster size)');
  let required = 0n;
  if (source) {
    virtualSize = roundUp(BigInt(sourceSize(source)), cs);
    // with a backing file of its own the copy may share nothing with the source's chain: QEMU
    // assumes every cluster is written
    required = target.backingFile ? virtualSize : await requiredDataBytes(source, s.clusterSize);
  }
  if (s.prealloc === 'full' || s.prealloc === 'falloc') required = virtualSize;
  const fullyAllocated = qcow2PreallocSize(virtualSize, s.clusterSize, s.refcountOrder, s.extendedL2);
  const info: MeasureInfo = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (s.version >= 3 && source && !('raw' in source) && source.img.header.version >= 3) info.bitmaps = persistentBitmapsSize(source.img, s.clusterSize);
  return info;
}

/** qemu-img measure's output: the human lines, or its JSON (keys in qemu-img 7.2's order). */
export function formatMeasure(info: MeasureInfo, json: boolean): string {
  // qemu-img 7.2's key order (its dictionary's hash order)
  if (json) return toQemuJson({ bitmaps: info.bitmaps, required: info.required, 'fully-allocated': info.fullyAllocated });
  const lines = [`required size: ${info.required}`, `fully allocated size: ${info.fullyAllocated}`];
  if (info.bitmaps !== undefined) lines.push(`bitmaps size: ${info.bitmaps}`);
  return lines.join('\n');
}
