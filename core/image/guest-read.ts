// Guest reads through an L1 view (the active one or a snapshot's): what each guest range maps to
// (QEMU's qcow2_get_host_offset, with its errors for unaligned and invalid entries) and reading
// the bytes (runs of host data in one call, the backing chain, compressed clusters). Qcow2Image's
// read, readView, mapAt and mapInTable call these.
import { QcowError, hex } from '../errors.ts';
import { be32, qemuHex } from '../format/bytes.ts';
import { ClusterType, clusterType, compressedDescriptor, offsetOf } from '../format/entries.ts';
import type { ImageStore } from '../io/store.ts';
import { decompressCluster } from './compression.ts';
import type { L1View, Qcow2Image } from './qcow2-image.ts';

export interface GuestMapping {
  kind: 'data' | 'zero' | 'compressed' | 'backing';
  /** Bytes from the queried position this mapping covers (within one cluster/subcluster). */
  length: number;
  /** Host offset of the queried position for 'data' (and allocated zero). */
  hostOffset: number;
  l1Index: number;
  l2Index: number;
  l2Offset: number;
  l2Hi: number;
  l2Lo: number;
}

// Pending run kinds of readView.
const RUN_NONE = 0;
const RUN_DATA = 1;
const RUN_BACKING = 2;

/**
 * Guest bytes through a view. Each L2 table is fetched once and walked without awaiting;
 * contiguous host runs (and runs that fall through to the backing chain) are read in one call.
 */
export async function readView(img: Qcow2Image, view: L1View, guestOffset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const end = Math.min(guestOffset + length, view.virtualSize);
  // pending run: RUN_DATA (host bytes of runStore) or RUN_BACKING (guest bytes of the backing chain)
  let runKind = RUN_NONE;
  let runHost = 0;
  let runPos = 0;
  let runLen = 0;
  let runStore: ImageStore = img.store;
  const flushRun = async (): Promise<void> => {
    if (runKind === RUN_DATA) {
      out.set(await runStore.read(runHost, runLen), runPos - guestOffset);
    } else if (runKind === RUN_BACKING && img.backing) {
      const bEnd = Math.min(runPos + runLen, img.backing.virtualSize);
      if (bEnd > runPos) out.set(await img.backing.read(runPos, bEnd - runPos), runPos - guestOffset);
    }
    runKind = RUN_NONE;
  };
  const cs = img.clusterSize;
  let pos = guestOffset;
  while (pos < end) {
    const l1Index = Math.floor(Math.floor(pos / cs) / img.l2Entries);
    const spanEnd = Math.min(end, (l1Index + 1) * img.l2Span);
    const l2Offset = img.l2OffsetAt(view, l1Index);
    if (l2Offset === 0) {
      if (runKind !== RUN_BACKING) {
        await flushRun();
        runKind = RUN_BACKING;
        runPos = pos;
        runLen = 0;
      }
      runLen += spanEnd - pos;
      pos = spanEnd;
      continue;
    }
    const l2 = await img.readL2(l2Offset);
    while (pos < spanEnd) {
      const m = mapInTable(img, l2, l2Offset, l1Index, pos, spanEnd - pos);
      const n = m.length;
      if (m.kind === 'data') {
        const store = img.dataFile && img.geometry.dataFile ? img.dataFile : img.store;
        if (img.header.cryptMethod !== 0) {
          throw new QcowError('ENCRYPTED', 'Reading encrypted guest data is not supported', { structure: 'header', offset: 32 });
        }
        if (img.geometry.dataFile && !img.dataFile) {
          throw new QcowError('DATA_FILE_REQUIRED', "'data-file' is required for this image", { structure: 'data file' });
        }
        if (runKind === RUN_DATA && runHost + runLen === m.hostOffset && runStore === store) {
          runLen += n;
        } else {
          await flushRun();
          runKind = RUN_DATA;
          runHost = m.hostOffset;
          runPos = pos;
          runLen = n;
          runStore = store;
        }
      } else if (m.kind === 'backing') {
        if (runKind !== RUN_BACKING) {
          await flushRun();
          runKind = RUN_BACKING;
          runPos = pos;
          runLen = 0;
        }
        runLen += n;
      } else {
        await flushRun();
        if (m.kind === 'compressed') {
          const cluster = await readCompressed(img, m.l2Hi, m.l2Lo);
          const inCluster = pos % cs;
          out.set(cluster.subarray(inCluster, inCluster + n), pos - guestOffset);
        }
        // zero: already zeros
      }
      pos += n;
    }
  }
  await flushRun();
  return out;
}

export async function readCompressed(img: Qcow2Image, hi: number, lo: number): Promise<Uint8Array> {
  if (img.geometry.dataFile) {
    throw new QcowError('METADATA_CORRUPT', 'Compressed cluster entry found in image with external data file', { structure: 'L2 table' });
  }
  const d = compressedDescriptor(hi, lo, img.clusterBits);
  const key = -(d.hostOffset + 1); // compressed clusters share the cache under negative keys
  const cached = img.l2Cache.get(key);
  if (cached) return cached;
  const fileSize = img.store.size();
  if (d.hostOffset >= fileSize) {
    throw new QcowError('COMPRESSED_DATA_INVALID', `Compressed cluster at host offset ${hex(d.hostOffset)} is past the end of the file`, { structure: 'compressed cluster', offset: d.hostOffset });
  }
  const len = Math.min(d.compressedSize, fileSize - d.hostOffset);
  const data = await img.store.read(d.hostOffset, len);
  const cluster = decompressCluster(data, img.clusterSize, img.header.compressionType, d.hostOffset);
  img.l2Cache.set(key, cluster.slice());
  return cluster;
}

/**
 * What the guest range starting at `pos` (up to `maxLen` bytes, never crossing a cluster, or a
 * subcluster with extended L2) maps to. The caller does the I/O.
 */
export async function mapAt(img: Qcow2Image, view: L1View, pos: number, maxLen: number): Promise<GuestMapping> {
  const cs = img.clusterSize;
  const clusterIndex = Math.floor(pos / cs);
  const l1Index = Math.floor(clusterIndex / img.l2Entries);
  const l2Offset = img.l2OffsetAt(view, l1Index);
  if (l2Offset === 0) {
    const len = Math.min(maxLen, cs - (pos % cs));
    return { kind: 'backing', length: len, l1Index, l2Index: clusterIndex % img.l2Entries, l2Offset, hostOffset: 0, l2Hi: 0, l2Lo: 0 };
  }
  return mapInTable(img, await img.readL2(l2Offset), l2Offset, l1Index, pos, maxLen);
}

/** `mapAt` once the L2 table (at `l2Offset`, for L1 entry `l1Index`) is loaded: never awaits. */
export function mapInTable(img: Qcow2Image, l2: Uint8Array, l2Offset: number, l1Index: number, pos: number, maxLen: number): GuestMapping {
  const cs = img.clusterSize;
  const inCluster = pos % cs;
  const l2Index = Math.floor(pos / cs) % img.l2Entries;
  let len = Math.min(maxLen, cs - inCluster);
  const at = l2Index * img.l2EntrySize;
  const hi = be32(l2, at);
  const lo = be32(l2, at + 4);
  const type = clusterType(hi, lo, img.geometry);
  const base = { l1Index, l2Index, l2Offset, l2Hi: hi, l2Lo: lo };
  if (type === ClusterType.Compressed) return { kind: 'compressed', length: len, hostOffset: 0, ...base };
  const host = offsetOf(hi, lo);
  if (img.geometry.extendedL2) {
    const zeroBm = be32(l2, at + 8);
    const allocBm = be32(l2, at + 12);
    const scs = img.subclusterSize;
    const sc = Math.floor(inCluster / scs);
    len = Math.min(len, scs - (inCluster % scs));
    const invalid = type === ClusterType.Normal ? (zeroBm & allocBm) !== 0 : allocBm !== 0;
    if (invalid) {
      throw new QcowError('METADATA_CORRUPT', `Invalid cluster entry found  (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
        structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index,
      });
    }
    // QEMU checks the cluster's alignment for every subcluster type that has a host offset
    // (normal, zero and unallocated subclusters of an allocated cluster)
    if (host !== 0) checkDataAligned(img, host, l2Offset, l2Index, at);
    const bit = 2 ** sc;
    if (Math.floor(zeroBm / bit) % 2 === 1) return { kind: 'zero', length: len, hostOffset: host ? host + inCluster : 0, ...base };
    if (type === ClusterType.Normal && Math.floor(allocBm / bit) % 2 === 1) {
      return { kind: 'data', length: len, hostOffset: host + inCluster, ...base };
    }
    // an unallocated subcluster: of an allocated cluster, it still has a host offset (QEMU's
    // QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC, which qemu-img map prints when nothing backs it)
    return { kind: 'backing', length: len, hostOffset: host ? host + inCluster : 0, ...base };
  }
  if (type === ClusterType.ZeroPlain || type === ClusterType.ZeroAlloc) {
    if (img.header.version < 3) throw zeroInV2Error(img, l2Offset, l2Index, at);
    // reads report an unaligned preallocated zero cluster as any unaligned cluster (QEMU's
    // qcow2_get_host_offset); "Preallocated zero cluster offset … unaligned" is a write-path message
    if (type === ClusterType.ZeroAlloc) checkDataAligned(img, host, l2Offset, l2Index, at);
    return { kind: 'zero', length: len, hostOffset: type === ClusterType.ZeroAlloc ? host + inCluster : 0, ...base };
  }
  if (type === ClusterType.Unallocated) return { kind: 'backing', length: len, hostOffset: 0, ...base };
  checkDataAligned(img, host, l2Offset, l2Index, at);
  return { kind: 'data', length: len, hostOffset: host + inCluster, ...base };
}

export function zeroInV2Error(img: Qcow2Image, l2Offset: number, l2Index: number, at: number): QcowError {
  return new QcowError('METADATA_CORRUPT', `Zero cluster entry found in pre-v3 image (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
    structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index,
  });
}

export function checkDataAligned(img: Qcow2Image, host: number, l2Offset: number, l2Index: number, at: number): void {
  if (host % img.clusterSize !== 0) {
    throw new QcowError('METADATA_CORRUPT', `Cluster allocation offset ${qemuHex(host)} unaligned (L2 offset: ${qemuHex(l2Offset)}, L2 index: ${qemuHex(l2Index)})`, {
      structure: 'L2 table', offset: l2Offset + at, l2Offset, l2Index, hostOffset: host,
    });
  }
}
