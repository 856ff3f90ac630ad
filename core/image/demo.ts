// The demo image the web app shows when nothing is opened: built in memory by the engine itself
// (createImage, guest writes, internal snapshots), so every view has something to show: data
// clusters shared by the active disk and both snapshots, clusters only one of them holds (copies
// made by later writes), a zero cluster, and one deflate-compressed cluster (QEMU's "zlib" type).
// Deterministic: the same bytes every time (fixed contents and snapshot dates).
import { deflateSync } from 'fflate';
import { QcowError } from '../errors.ts';
import { encodeString } from '../format/bytes.ts';
import { encodeCompressedEntry, l1L2Offset, putEntry } from '../format/entries.ts';
import { MemoryStore } from '../io/memory-store.ts';
import { allocClusters } from './allocator.ts';
import { createImage } from './create.ts';
import { Qcow2Image } from './qcow2-image.ts';
import { createSnapshot } from './snapshot.ts';
import { writeGuest, writeZeroes } from './write.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
/** 2026-01-01T00:00:00Z, the snapshots' date (a fixed date keeps the demo deterministic). */
const DEMO_DATE = 1767225600;

/** `length` bytes of a text repeated (compressible, readable in the hex view). */
function text(s: string, length: number): Uint8Array {
  const unit = encodeString(s);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += unit.length) out.set(unit.subarray(0, Math.min(unit.length, length - i)), i);
  return out;
}

/** A byte pattern (fills a range with one value, like qemu-io write -P). */
function pattern(value: number, length: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

/**
 * Store one guest cluster deflate-compressed (raw deflate, as QEMU's zlib compression type
 * writes it). Like QEMU, only into an unallocated or zero cluster of the active layer: the L2
 * table must exist (a zero write before makes sure of it). The compressed bytes go to a cluster
 * of their own, written and flushed before the L2 entry that publishes them.
 */
export async function writeCompressedCluster(img: Qcow2Image, guestOffset: number, data: Uint8Array): Promise<void> {
  const cs = img.clusterSize;
  if (guestOffset % cs !== 0 || data.length !== cs) {
    throw new QcowError('INVALID_ARGUMENT', 'A compressed write covers exactly one aligned cluster', { guestOffset, length: data.length });
  }
  if (img.header.compressionType !== 0 || img.geometry.extendedL2) {
    throw new QcowError('NOT_SUPPORTED', 'Compressed writes here support the zlib type without extended L2 only', {});
  }
  const clusterIndex = guestOffset / cs;
  const l1Index = Math.floor(clusterIndex / img.l2Entries);
  const l2Index = clusterIndex % img.l2Entries;
  const l2Offset = l1L2Offset(img.l1Table, l1Index);
  if (l2Offset === 0) throw new QcowError('INVALID_ARGUMENT', 'No L2 table maps that cluster yet', { guestOffset });
  const l2 = await img.readL2(l2Offset);
  const m = await img.mapAt(img.activeView(), guestOffset, cs);
  if (m.kind === 'data' || m.kind === 'compressed' || m.hostOffset !== 0) {
    throw new QcowError('INVALID_ARGUMENT', 'Compression cannot overwrite an allocated cluster (QEMU fails the same way)', { guestOffset });
  }
  // QEMU inflates with a 4 KiB window (windowBits −12); fflate's level-9 matches on this data stay
  // far below that distance, and qemu-img check/convert judge the result in the tests.
  const compressed = deflateSync(data, { level: 9 });
  if (compressed.length >= cs) throw new QcowError('INVALID_ARGUMENT', 'Data does not compress', { guestOffset });
  const host = await allocClusters(img, 1, 'compressed cluster');
  await img.pwrite(host, compressed, 'compressed cluster data');
  await img.flush('compressed data before the L2 entry');
  const nbSectors = Math.floor((host + compressed.length - 1) / 512) - Math.floor(host / 512) + 1;
  const entry = new Uint8Array(8);
  putEntry(entry, 0, ...encodeCompressedEntry(host, nbSectors, img.clusterBits));
  await img.pwrite(l2Offset + l2Index * 8, entry, `L2 entry ${l2Index} (compressed cluster)`, true);
  await img.flush('compressed cluster published');
  l2.set(entry, l2Index * 8);
}

/** Build the demo image (64 MiB virtual, v3, 64 KiB clusters, two snapshots). */
export async function buildDemoImage(): Promise<Uint8Array> {
  const store = new MemoryStore(new Uint8Array(0), { name: 'demo.qcow2' });
  await createImage(store, { size: 64 * MiB });
  const img = await Qcow2Image.open(store, { writable: true });
  const cs = img.clusterSize;

  // Before the first snapshot: a "boot sector", a 256 KiB file, 1 MiB of data, a compressed cluster.
  await writeGuest(img, 0, text('qcowscope demo disk: every cluster here was written by the engine itself. ', 4 * KiB));
  await writeGuest(img, 64 * KiB, text('base file, version 1. ', 256 * KiB));
  await writeGuest(img, 8 * MiB, pattern(0x11, 1 * MiB));
  await writeZeroes(img, 16 * MiB, cs);
  await writeCompressedCluster(img, 16 * MiB, text('this cluster is stored deflate-compressed. ', cs));
  await createSnapshot(img, 'installed', { dateSec: DEMO_DATE, dateNsec: 0 });

  // Between the snapshots: rewrite part of the file (copies of shared clusters), add new data.
  await writeGuest(img, 64 * KiB, text('base file, version 2. ', 128 * KiB));
  await writeGuest(img, 24 * MiB, pattern(0x22, 512 * KiB));
  await createSnapshot(img, 'updated', { dateSec: DEMO_DATE + 86400, dateNsec: 0 });

  // After: more changes only the active disk holds, and a zeroed range.
  await writeGuest(img, 8 * MiB + 256 * KiB, pattern(0x33, 128 * KiB));
  await writeZeroes(img, 8 * MiB + 512 * KiB, 2 * cs);
  await writeGuest(img, 40 * MiB, text('written after the last snapshot. ', 64 * KiB));
  await img.flush('demo built');
  return store.bytes().slice();
}
