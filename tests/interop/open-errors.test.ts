// Malformed images: every case of QEMU's iotest 080 (docs/qcow2-format.md §6) and every open-time
// check of §2.1, made from good qemu-img images by poking bytes. For each: our CLI exits non-zero
// with exactly one line on stderr, `qcowscope: <message>`, whose message contains QEMU's own text
// (and qemu-img, on the same file, prints that text too), no stack trace, no hang (Vitest's test
// timeout; the time is measured and printed, never asserted), and the file's bytes unchanged.
// The CLI runs in this process (tests/helpers/cli-in-process.ts: the same exit code and output
// without a Node start per command); each base image is made by qemu-img once and copied.
// Runtime corruptions met while reading (unaligned L2 table, unaligned data cluster, invalid
// extended-L2 bitmap, zero cluster in a v2 image) fail reads the same way, naming the structure
// and offset, while `info` still works.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createImage, makeTempDir, poke, pokeU32, pokeU64, qemuImg, qemuImgOk, qemuIoOk, removeDir, sha256,
} from '../helpers/qemu.ts';
import {
  EXT_FEATURE_TABLE, HDR, SNAP, activeL2EntryPos, extensionsEnd, l1EntryPos, readExtensions, readHeader, readSnapshots,
} from '../helpers/qcow2-mini.ts';
import { runCliInProcess as runCli, runCliInProcessOk as runCliOk, type CliRun } from '../helpers/cli-in-process.ts';
import { compareFiles, qemuInfoJson, qemuMapJson } from './read-support.ts';

const MiB = 1024 * 1024;

let dir = '';
const timings: Array<[string, number]> = [];

beforeAll(() => {
  dir = makeTempDir('qcowscope-open-errors-');
});
afterAll(() => {
  if (!process.env.QCOWSCOPE_KEEP_TMP) removeDir(dir);
  // measured, never asserted: how long each refusal took (process start included)
  console.log(timings.map(([n, ms]) => `${ms.toFixed(0).padStart(5)} ms  ${n}`).join('\n'));
});

type Base = 'empty' | 'data' | 'data-v2' | 'snapshot' | 'data-4k' | 'extl2-data' | 'bitmaps';

/** Position of the bitmaps header extension (its 8-byte type/length header). */
function bitmapsExtension(file: string): number {
  const e = readExtensions(file).find((x) => x.type === 0x23852875);
  if (!e) throw new Error('no bitmaps extension');
  return e.pos;
}
function bitmapDirectoryOffset(file: string): number {
  return Number(fs.readFileSync(file).readBigUInt64BE(bitmapsExtension(file) + 8 + 16));
}

let counter = 0;
/** Each base as qemu-img made it, once per run (copied for every case: the cases only poke bytes). */
const templates = new Map<Base, string>();
function makeBase(base: Base): string {
  let t = templates.get(base);
  if (!t) {
    t = path.join(dir, `base-${base}.qcow2`);
    makeTemplate(base, t);
    templates.set(base, t);
  }
  const f = path.join(dir, `img-${++counter}.qcow2`);
  fs.copyFileSync(t, f);
  return f;
}
function makeTemplate(base: Base, f: string): void {
  switch (base) {
    case 'empty':
      createImage(f, 64 * MiB);
      break;
    case 'data':
      createImage(f, 64 * MiB);
      qemuIoOk(f, 'write -P 0x11 0 64k');
      break;
    case 'data-v2':
      createImage(f, 64 * MiB, { compat: '0.10' });
      qemuIoOk(f, 'write -P 0x11 0 64k');
      break;
    case 'snapshot':
      createImage(f, 64 * MiB);
      qemuIoOk(f, 'write -P 0x11 0 64k');
      qemuImgOk(['snapshot', '-c', 'test', f]);
      break;
    case 'data-4k': // no feature-name table (QEMU writes one only for clusters > 4 KiB)
      createImage(f, 64 * MiB, { clusterSize: 4096 });
      qemuIoOk(f, 'write -P 0x11 0 4k');
      break;
    case 'bitmaps': // two persistent bitmaps
      createImage(f, 64 * MiB);
      qemuImgOk(['bitmap', '--add', f, 'b0']);
      qemuImgOk(['bitmap', '--add', '-g', '1M', f, 'b1']);
      break;
    case 'extl2-data':
      createImage(f, 64 * MiB, { extendedL2: true });
      qemuIoOk(f, 'write -P 0x11 0 64k');
      break;
  }
}

/** Add a header extension after the last one (the rest of cluster 0 is zeros: a new end marker). */
function appendExtension(file: string, type: number, data: Uint8Array): void {
  const end = extensionsEnd(file);
  const b = Buffer.alloc(8 + Math.ceil(data.length / 8) * 8);
  b.writeUInt32BE(type, 0);
  b.writeUInt32BE(data.length, 4);
  b.set(data, 8);
  poke(file, end, b);
  poke(file, end + b.length, new Uint8Array(8));
}

function featureEntry(type: number, bit: number, name: string): Uint8Array {
  const e = new Uint8Array(48);
  e[0] = type;
  e[1] = bit;
  e.set(Buffer.from(name, 'latin1'), 2);
  return e;
}

/** Add entries to the feature-name table (it is the last extension of a fresh image). */
function addFeatureNames(file: string, ...entries: Uint8Array[]): void {
  const table = readExtensions(file).find((e) => e.type === EXT_FEATURE_TABLE);
  if (!table) throw new Error('no feature name table');
  const end = extensionsEnd(file);
  if (end !== table.pos + 8 + table.length) throw new Error('feature table is not the last extension');
  poke(file, end, Buffer.concat(entries));
  pokeU32(file, table.pos + 4, table.length + 48 * entries.length);
}

/** A damage that writes big-endian header fields: a bigint as 64 bits, a number as 32 bits. */
function pokes(...edits: Array<[offset: number, value: number | bigint]>): (file: string) => void {
  return (file) => {
    for (const [at, value] of edits) {
      if (typeof value === 'bigint') pokeU64(file, at, value);
      else pokeU32(file, at, value);
    }
  };
}

function setIncompat(file: string, bits: bigint): void {
  const b = Buffer.from(fs.readFileSync(file).subarray(HDR.incompatibleFeatures, HDR.incompatibleFeatures + 8));
  pokeU64(file, HDR.incompatibleFeatures, b.readBigUInt64BE(0) | bits);
}

interface OpenCase {
  name: string;
  base: Base;
  damage(file: string): void;
  /** QEMU's message (qemu-img prints it; ours must contain it). */
  message: string;
  /** Our command (default: info). */
  args?: (file: string) => string[];
  /** The qemu-img command that reports the same (default: info -f qcow2). */
  qemuArgs?: (file: string) => string[];
}

const OPEN_CASES: OpenCase[] = [
  // ---- iotest 080 -------------------------------------------------------------------------------
  { name: '080 huge header size (0xffffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.headerLength, 0xffffffff), message: 'qcow2 header exceeds cluster size' },
  { name: '080 huge header size (0x7fffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.headerLength, 0x7fffffff), message: 'qcow2 header exceeds cluster size' },
  { name: '080 backing file offset past cluster 0', base: 'empty', damage: (f) => pokeU64(f, HDR.backingFileOffset, 0xffffffffffffffffn), message: 'Invalid backing file offset' },
  { name: '080 huge unknown header extension, extension area ended by the backing file offset', base: 'empty', damage: pokes([112, 0x12345678], [116, 0x7fffffff], [HDR.backingFileOffset, 116n]), message: 'Header extension too large' },
  { name: '080 huge unknown header extension, extension area to the end of cluster 0', base: 'empty', damage: pokes([112, 0x12345678], [116, 0x7fffffff]), message: 'Header extension too large' },
  { name: '080 huge refcount table size (0xffffffff clusters)', base: 'empty', damage: (f) => pokeU32(f, HDR.refcountTableClusters, 0xffffffff), message: 'Reference count table too large' },
  { name: '080 huge refcount table size (0x20001 clusters)', base: 'empty', damage: (f) => pokeU32(f, HDR.refcountTableClusters, 0x00020001), message: 'Reference count table too large' },
  { name: '080 misaligned refcount table', base: 'empty', damage: (f) => pokeU64(f, HDR.refcountTableOffset, 0x1234567890abcdefn), message: 'Reference count table offset invalid' },
  { name: '080 huge refcount table offset', base: 'empty', damage: pokes([HDR.refcountTableOffset, 0xffffffffffff0000n], [HDR.refcountTableClusters, 0x7f]), message: 'Reference count table offset invalid' },
  { name: '080 invalid snapshot table (nb_snapshots 0xffffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.nbSnapshots, 0xffffffff), message: 'Snapshot table too large' },
  { name: '080 invalid snapshot table (nb_snapshots 0x7fffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.nbSnapshots, 0x7fffffff), message: 'Snapshot table too large' },
  { name: '080 snapshot table offset overflows', base: 'empty', damage: pokes([HDR.snapshotsOffset, 0xffffffffffff0000n], [HDR.nbSnapshots, 0xffff]), message: 'Snapshot table offset invalid' },
  { name: '080 snapshot table offset unaligned, no snapshots', base: 'empty', damage: pokes([HDR.snapshotsOffset, 0x1234567890abcdefn], [HDR.nbSnapshots, 0]), message: 'Snapshot table offset invalid' },
  { name: '080 invalid L1 table (l1_size 0xffffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.l1Size, 0xffffffff), message: 'Active L1 table too large' },
  { name: '080 invalid L1 table (l1_size 0x7fffffff)', base: 'empty', damage: (f) => pokeU32(f, HDR.l1Size, 0x7fffffff), message: 'Active L1 table too large' },
  { name: '080 L1 table offset overflows', base: 'empty', damage: pokes([HDR.l1TableOffset, 0x7fffffffffff0000n], [HDR.l1Size, 0xffff]), message: 'Active L1 table offset invalid' },
  { name: '080 L1 table offset unaligned', base: 'empty', damage: pokes([HDR.l1TableOffset, 0x1234567890abcdefn], [HDR.l1Size, 1]), message: 'Active L1 table offset invalid' },
  { name: '080 L1 table with snapshot, l1_size 0', base: 'snapshot', damage: (f) => pokeU32(f, HDR.l1Size, 0), message: 'L1 table is too small' },
  { name: '080 backing file name size 0xffffffff', base: 'empty', damage: pokes([HDR.backingFileOffset, 0x1000n], [HDR.backingFileSize, 0xffffffff]), message: 'Backing file name too long' },

  // ---- docs/qcow2-format.md §2.1 ------------------------------------------------------------------
  { name: 'bad magic', base: 'empty', damage: (f) => pokeU32(f, HDR.magic, 0x514649fa), message: 'Image is not in qcow2 format' },
  { name: 'version 1', base: 'empty', damage: (f) => pokeU32(f, HDR.version, 1), message: 'Unsupported qcow2 version 1' },
  { name: 'version 4', base: 'empty', damage: (f) => pokeU32(f, HDR.version, 4), message: 'Unsupported qcow2 version 4' },
  { name: 'cluster_bits 8', base: 'empty', damage: (f) => pokeU32(f, HDR.clusterBits, 8), message: 'Unsupported cluster size: 2^8' },
  { name: 'cluster_bits 22', base: 'empty', damage: (f) => pokeU32(f, HDR.clusterBits, 22), message: 'Unsupported cluster size: 2^22' },
  { name: 'cluster_bits 0xffffffff', base: 'empty', damage: (f) => pokeU32(f, HDR.clusterBits, 0xffffffff), message: 'Unsupported cluster size: 2^4294967295' },
  { name: 'v3 header_length 100', base: 'empty', damage: (f) => pokeU32(f, HDR.headerLength, 100), message: 'qcow2 header too short' },
  {
    name: 'backing file name longer than 1023 bytes',
    base: 'empty',
    damage: (f) => {
      pokeU64(f, HDR.backingFileOffset, 0x1000);
      pokeU32(f, HDR.backingFileSize, 1024);
      poke(f, 0x1000, Buffer.alloc(1024, 0x61));
    },
    message: 'Backing file name too long',
  },
  { name: 'backing file name running past cluster 0', base: 'data-4k', damage: pokes([HDR.backingFileOffset, 4000n], [HDR.backingFileSize, 200]), message: 'Backing file name too long' },
  {
    name: 'backing format extension of 16 bytes',
    base: 'empty',
    damage: (f) => appendExtension(f, 0xe2792aca, Buffer.from('qcow2qcow2qcow2q')),
    message: 'ERROR: ext_backing_format: len=16 too large (>=16)',
  },
  {
    name: 'unknown incompatible bit 63, no feature-name table (4 KiB clusters)',
    base: 'data-4k',
    damage: (f) => setIncompat(f, 1n << 63n),
    message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000',
  },
  {
    name: 'unknown incompatible bits 61-63, no feature-name table',
    base: 'data-4k',
    damage: (f) => setIncompat(f, 7n << 61n),
    message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: e000000000000000',
  },
  {
    name: 'unknown incompatible bit 63, feature-name table names it (iotest 036)',
    base: 'data',
    damage: (f) => {
      addFeatureNames(f, featureEntry(0, 63, 'Test feature'));
      setIncompat(f, 1n << 63n);
    },
    message: 'Unsupported qcow2 feature(s): Test feature',
  },
  {
    name: 'unknown incompatible bits 61-63, two named and one not (iotest 036)',
    base: 'data',
    damage: (f) => {
      addFeatureNames(f, featureEntry(0, 61, 'Test feature 61'), featureEntry(1, 62, 'compat, not incompat'), featureEntry(0, 63, 'Test feature 63'));
      setIncompat(f, 7n << 61n);
    },
    message: 'Unsupported qcow2 feature(s): Test feature 61, Test feature 63, Unknown incompatible feature: 4000000000000000',
  },
  {
    name: 'feature-name table with an empty name before a named bit (QEMU stops reading at it)',
    base: 'data',
    damage: (f) => {
      addFeatureNames(f, featureEntry(0, 62, ''), featureEntry(0, 63, 'Test feature'));
      setIncompat(f, 3n << 62n);
    },
    message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: c000000000000000',
  },
  { name: 'compression type zstd without the incompatible bit', base: 'empty', damage: (f) => poke(f, HDR.compressionType, [1]), message: 'qcow2: Compression type incompatible feature bit must be set' },
  { name: 'compression incompatible bit with zlib', base: 'empty', damage: (f) => setIncompat(f, 1n << 3n), message: 'qcow2: Compression type incompatible feature bit must not be set' },
  {
    name: 'unknown compression type 2',
    base: 'empty',
    damage: (f) => {
      poke(f, HDR.compressionType, [2]);
      setIncompat(f, 1n << 3n);
    },
    message: 'qcow2: unknown compression type: 2',
  },
  { name: 'extended L2 with 4 KiB clusters', base: 'data-4k', damage: (f) => setIncompat(f, 1n << 4n), message: 'Unsupported subcluster size: 128' },
  { name: 'refcount_order 7', base: 'empty', damage: (f) => pokeU32(f, HDR.refcountOrder, 7), message: 'Reference count entry width too large; may not exceed 64 bits' },
  { name: 'refcount_table_clusters 0', base: 'data', damage: (f) => pokeU32(f, HDR.refcountTableClusters, 0), message: 'Image does not contain a reference count table' },
  {
    name: 'L1 table too small for the virtual size',
    base: 'data',
    damage: (f) => pokeU64(f, HDR.size, 1024n * 1024n * 1024n * 1024n),
    message: 'L1 table is too small',
  },
  { name: 'nb_snapshots 65537', base: 'snapshot', damage: (f) => pokeU32(f, HDR.nbSnapshots, 65537), message: 'Snapshot table too large' },
  {
    name: 'snapshot extra data too large (iotest 261)',
    base: 'snapshot',
    damage: (f) => pokeU32(f, readSnapshots(f)[0]!.entryPos + SNAP.extraDataSize, 0x10000),
    message: 'Too much extra metadata in snapshot table entry 0',
  },
  {
    name: 'snapshot table bigger than 64 MiB (iotest 261)',
    base: 'empty',
    damage: (f) => {
      // 512 entries of 40 B + 1 KiB extra data + two 65535-byte strings: 64 MiB + 29 KiB. Only
      // the entry headers are written; the rest reads as zeros (a sparse file).
      const h = readHeader(f);
      const at = 16 * MiB;
      const n = 512;
      const fd = fs.openSync(f, 'r+');
      try {
        let pos = at;
        for (let i = 0; i < n; i++) {
          pos = Math.ceil(pos / 8) * 8;
          const e = Buffer.alloc(40);
          e.writeUInt16BE(65535, 12);
          e.writeUInt16BE(65535, 14);
          e.writeUInt32BE(1024, 36);
          fs.writeSync(fd, e, 0, 40, pos);
          pos += 40 + 1024 + 2 * 65535;
        }
        fs.ftruncateSync(fd, Math.ceil(pos / h.clusterSize) * h.clusterSize);
      } finally {
        fs.closeSync(fd);
      }
      pokeU32(f, HDR.nbSnapshots, n);
      pokeU64(f, HDR.snapshotsOffset, at);
    },
    message: 'Snapshot table is too big',
  },
  {
    name: 'bitmaps extension with zero bitmaps',
    base: 'empty',
    damage: (f) => {
      appendExtension(f, 0x23852875, new Uint8Array(24));
      pokeU64(f, HDR.autoclearFeatures, 1n);
    },
    message: 'found bitmaps extension with zero bitmaps',
  },
  {
    name: 'bitmap directory entry with granularity 2^40',
    base: 'bitmaps',
    damage: (f) => poke(f, bitmapDirectoryOffset(f) + 17, [40]),
    message: "Bitmap 'b0' doesn't satisfy the constraints",
  },
  {
    name: 'bitmaps extension counting more bitmaps than the directory holds',
    base: 'bitmaps',
    damage: (f) => pokeU32(f, bitmapsExtension(f) + 8, 3),
    message: 'Less bitmaps found than specified in header extension',
  },
  {
    name: 'bitmap directory entry with extra data',
    base: 'bitmaps',
    damage: (f) => pokeU32(f, bitmapDirectoryOffset(f) + 20, 8),
    message: 'Bitmap extra data is not supported',
  },
  {
    name: 'crypto header extension without LUKS',
    base: 'empty',
    damage: (f) => appendExtension(f, 0x0537be77, new Uint8Array(16)),
    message: 'CRYPTO header extension only expected with LUKS encryption method',
  },

  // ---- other verbs refuse the same image the same way --------------------------------------------
  { name: 'map of an image with a huge L1 table', base: 'data', damage: (f) => pokeU32(f, HDR.l1Size, 0x7fffffff), message: 'Active L1 table too large', args: (f) => ['map', '--json', f], qemuArgs: (f) => ['map', '-f', 'qcow2', '--output=json', f] },
  { name: 'export of an image with a misaligned refcount table', base: 'data', damage: (f) => pokeU64(f, HDR.refcountTableOffset, 0x1234567890abcdefn), message: 'Reference count table offset invalid', args: (f) => ['export', f, f + '.raw'], qemuArgs: (f) => ['convert', '-f', 'qcow2', '-O', 'raw', f, f + '.qemu.raw'] },
  { name: 'snapshot -l of an image with a huge snapshot count', base: 'snapshot', damage: (f) => pokeU32(f, HDR.nbSnapshots, 0xffffffff), message: 'Snapshot table too large', args: (f) => ['snapshot', '-l', f], qemuArgs: (f) => ['snapshot', '-l', f] },
];

/** The one-line error contract: non-zero exit, one line `qcowscope: <message>`, nothing on stdout, no stack. */
function expectOneLineError(r: CliRun, message: string): void {
  expect(r.signal, 'killed (hang?)').toBeNull();
  expect(r.status).not.toBe(0);
  expect(r.stderr.endsWith('\n')).toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^qcowscope: /);
  expect(lines[0]).toContain(message);
  expect(r.stderr).not.toMatch(/\n\s+at |internal error/);
  expect(r.stdout).toBe('');
}

describe('open-time validation: one line with QEMU\'s message, file untouched', () => {
  for (const c of OPEN_CASES) {
    it(c.name, async () => {
      const f = makeBase(c.base);
      c.damage(f);
      const before = sha256(f);
      const q = qemuImg(c.qemuArgs ? c.qemuArgs(f) : ['info', '-f', 'qcow2', f]);
      expect(q.status, 'qemu-img refuses it too').not.toBe(0);
      expect(q.stderr, 'the message is QEMU\'s').toContain(c.message);
      const r = await runCli(c.args ? c.args(f) : ['info', f]);
      timings.push([c.name, r.ms]);
      expectOneLineError(r, c.message);
      expect(sha256(f), 'file unchanged').toBe(before);
      fs.rmSync(f, { force: true });
      fs.rmSync(f + '.raw', { force: true });
      fs.rmSync(f + '.qemu.raw', { force: true });
    });
  }
});

// ---- corruption met while reading --------------------------------------------------------------

interface ReadCase {
  name: string;
  base: Base;
  damage(file: string): void;
  /** QEMU's message, as qemu-img convert prints it (inside "qcow2: Image is corrupt: …"). */
  message: string;
  /** Export a snapshot (by ID) instead of the active disk. */
  snapshot?: string;
}

const u64 = (v: bigint) => (f: string, pos: number) => pokeU64(f, pos, v);

const READ_CASES: ReadCase[] = [
  {
    name: 'unaligned L2 table offset in the active L1 (iotest 060)',
    base: 'data',
    damage: (f) => u64(0x8000000000042a00n)(f, l1EntryPos(f, 0)),
    message: 'L2 table offset 0x42a00 unaligned (L1 index: 0)',
  },
  {
    name: 'unaligned data cluster offset (iotest 060)',
    base: 'data',
    damage: (f) => u64(0x8000000000052a00n)(f, activeL2EntryPos(f, 0, 0)),
    message: 'Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)',
  },
  {
    name: 'unaligned preallocated zero cluster (iotest 060)',
    base: 'data',
    damage: (f) => u64(0x8000000000052a01n)(f, activeL2EntryPos(f, 0, 0)),
    message: 'Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)',
  },
  {
    name: 'unaligned data cluster at L2 index 3',
    base: 'data',
    damage: (f) => u64(0x8000000000052a00n)(f, activeL2EntryPos(f, 0, 3)),
    message: 'Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0x3)',
  },
  {
    name: 'extended L2: a subcluster both allocated and zero (iotest 271)',
    base: 'extl2-data',
    damage: (f) => u64(0x0000000100000001n)(f, activeL2EntryPos(f, 0, 0) + 8),
    message: 'Invalid cluster entry found  (L2 offset: 0x40000, L2 index: 0)',
  },
  {
    name: 'extended L2: allocation bits on an unallocated cluster (iotest 271)',
    base: 'extl2-data',
    damage: (f) => {
      u64(0n)(f, activeL2EntryPos(f, 0, 1));
      u64(0x0000000000000003n)(f, activeL2EntryPos(f, 0, 1) + 8);
    },
    message: 'Invalid cluster entry found  (L2 offset: 0x40000, L2 index: 0x1)',
  },
  {
    name: 'zero flag in a v2 image',
    base: 'data-v2',
    damage: (f) => u64(0x8000000000050001n)(f, activeL2EntryPos(f, 0, 0)),
    message: 'Zero cluster entry found in pre-v3 image (L2 offset: 0x40000, L2 index: 0)',
  },
  {
    name: '080 bad snapshot L1 table offset (export --snapshot)',
    base: 'snapshot',
    damage: (f) => pokeU64(f, readSnapshots(f)[0]!.entryPos + SNAP.l1TableOffset, 0x400200n),
    message: 'Snapshot L1 table offset invalid',
    snapshot: '1',
  },
  {
    name: '080 bad snapshot L1 table size (export --snapshot)',
    base: 'snapshot',
    damage: (f) => pokeU32(f, readSnapshots(f)[0]!.entryPos + SNAP.l1Size, 0x10000000),
    message: 'Snapshot L1 table too large',
    snapshot: '1',
  },
];

describe('corruption met while reading: one line naming the structure and offset, info still works', () => {
  for (const c of READ_CASES) {
    it(c.name, async () => {
      const f = makeBase(c.base);
      c.damage(f);
      const before = sha256(f);
      const qArgs = ['convert', '-f', 'qcow2', '-O', 'raw', ...(c.snapshot ? ['-l', `snapshot.id=${c.snapshot}`] : []), f, f + '.qemu.raw'];
      const q = qemuImg(qArgs);
      expect(q.status, 'qemu-img fails too').not.toBe(0);
      expect(q.stderr, 'the message is QEMU\'s').toContain(c.message);
      const exp = await runCli(['export', ...(c.snapshot ? ['--snapshot', c.snapshot] : []), f, f + '.raw']);
      timings.push([`export: ${c.name}`, exp.ms]);
      expectOneLineError(exp, c.message);
      if (!c.snapshot) {
        const m = await runCli(['map', '--json', f]);
        expect(qemuImg(['map', '-f', 'qcow2', '--output=json', f]).stderr).toContain(c.message);
        expectOneLineError(m, c.message);
      }
      // the header and tables are fine: info reads as qemu-img's does
      expect(JSON.parse(await runCliOk(['info', '--json', f]))).toEqual(qemuInfoJson(f));
      expect(sha256(f), 'file unchanged').toBe(before);
      for (const x of [f, f + '.raw', f + '.qemu.raw']) fs.rmSync(x, { force: true });
    });
  }

  for (const [name, entry] of [
    ['huge L2 entry offset with reserved bits (iotest 080, 0xBFFFFFFFFFFF0000)', 0xbfffffffffff0000n],
    ['data cluster 1 TiB past the end of the file (iotest 080, 0x800000FFFFFF0000)', 0x800000ffffff0000n],
  ] as const) {
    it(`${name}: reads as QEMU's do (zeros past the end of the file)`, async () => {
      const f = makeBase('data');
      pokeU64(f, activeL2EntryPos(f, 0, 0), entry);
      const before = sha256(f);
      expect(JSON.parse(await runCliOk(['map', '--json', f]))).toEqual(qemuMapJson(f));
      await runCliOk(['export', f, f + '.raw']);
      qemuImgOk(['convert', '-f', 'qcow2', '-O', 'raw', f, f + '.qemu.raw']);
      expect(compareFiles(f + '.raw', f + '.qemu.raw')).toBeNull();
      expect(sha256(f)).toBe(before);
      for (const x of [f, f + '.raw', f + '.qemu.raw']) fs.rmSync(x, { force: true });
    });
  }
});

// ---- not an image at all -----------------------------------------------------------------------

describe('files that are not images: one line, as qemu-img -f qcow2 says it', () => {
  const cases: Array<[string, (d: string) => string, string]> = [
    ['a directory', (d) => d, "'file' driver requires"],
    ['an empty file', (d) => { const f = path.join(d, 'empty'); fs.writeFileSync(f, ''); return f; }, 'Image is not in qcow2 format'],
    ['50 bytes of a qcow2 header', (d) => {
      const good = makeBase('empty');
      const f = path.join(d, 'short');
      fs.writeFileSync(f, fs.readFileSync(good).subarray(0, 50));
      return f;
    }, 'qcow2 header too short'],
    ['a missing file', (d) => path.join(d, 'no-such-file'), 'No such file or directory'],
  ];
  for (const [name, make, message] of cases) {
    it(name, async () => {
      const sub = fs.mkdtempSync(path.join(dir, 'not-'));
      const f = make(sub);
      expect(qemuImg(['info', '-f', 'qcow2', f]).stderr).toContain(message);
      for (const args of [['info', f], ['map', f], ['snapshot', '-l', f], ['export', f, path.join(sub, 'out.raw')]]) {
        const r = await runCli(args);
        timings.push([`${args[0]}: ${name}`, r.ms]);
        expectOneLineError(r, message);
      }
    });
  }
});

describe('open failures read as qemu-img -f qcow2 words them, backing chain included', () => {
  it('missing file, directory, broken image, missing or broken backing file at depth 1 and 2', async () => {
    const sub = fs.mkdtempSync(path.join(dir, 'words-'));
    const f = (n: string) => path.join(sub, n);
    fs.writeFileSync(f('empty'), '');
    // a qcow2 v3 header whose cluster_bits is 0
    const broken = Buffer.alloc(512);
    broken.writeUInt32BE(0x514649fb, 0);
    broken.writeUInt32BE(3, 4);
    fs.writeFileSync(f('broken.qcow2'), broken);
    createImage(f('gone.qcow2'), '1M');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', f('over-gone.qcow2')]);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'over-gone.qcow2', '-F', 'qcow2', f('top.qcow2'), '1M']);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'broken.qcow2', '-F', 'qcow2', f('over-broken.qcow2'), '1M']);
    fs.rmSync(f('gone.qcow2'));
    for (const name of ['no-such-file', '', 'empty', 'broken.qcow2', 'over-gone.qcow2', 'top.qcow2', 'over-broken.qcow2']) {
      for (const verb of ['map', 'info']) {
        const q = qemuImg([verb, '-f', 'qcow2', f(name)]);
        const o = await runCli([verb, f(name)]);
        expect(o.status, `${verb} ${name}`).toBe(q.status);
        // info works without the backing file, as qemu-img info does
        if (q.status === 0) continue;
        expect(o.stderr, `${verb} ${name}`).toBe(q.stderr.replace(/^qemu-img: /, 'qcowscope: '));
      }
    }
  });
});

describe('info --backing-chain on broken chains reads as qemu-img', () => {
  it('a missing link at depth 1 and 2, a missing raw backing file, a loop; -f raw refused', async () => {
    const sub = fs.mkdtempSync(path.join(dir, 'chain-'));
    const f = (n: string) => path.join(sub, n);
    createImage(f('gone.qcow2'), '1M');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', f('over-gone.qcow2')]);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'over-gone.qcow2', '-F', 'qcow2', f('top.qcow2'), '1M']);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'no.raw', '-F', 'raw', f('over-raw.qcow2'), '1M']);
    createImage(f('loop-a.qcow2'), '1M');
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', f('loop-b.qcow2'), '1M']);
    qemuImgOk(['rebase', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', f('loop-a.qcow2')]);
    fs.rmSync(f('gone.qcow2'));
    for (const name of ['over-gone.qcow2', 'top.qcow2', 'over-raw.qcow2', 'loop-a.qcow2']) {
      for (const json of [[], ['--output=json']]) {
        const q = qemuImg(['info', '--backing-chain', ...json, f(name)]);
        const o = await runCli(['info', '--backing-chain', ...json, f(name)]);
        expect(q.status, name).toBe(1);
        expect(o.status, name).toBe(1);
        expect(o.stdout, name).toBe('');
        expect(o.stderr, name).toBe(q.stderr.replace(/^qemu-img: /, 'qcowscope: '));
      }
    }
    const raw = await runCli(['info', '-f', 'raw', f('top.qcow2')]);
    expect(raw.status).toBe(1);
    expect(raw.stderr).toMatch(/^qcowscope: info: only the qcow2 format is supported, not 'raw'\n$/);
  });
});
