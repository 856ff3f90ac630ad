// The corruptor: damages good, qemu-made qcow2 images in NAMED ways, so check/repair, open-time
// validation and fuzz tests can iterate over one catalogue (docs/testing.md: damaged fixtures are named
// after their defect). Recipes reproduce QEMU's iotests 060, 080, 108, 112, 138, 261 (and 036,
// 039) as summarised in docs/qcow2-format.md §6, adapted to locate every structure by
// parsing the image (qcow2-mini.ts) instead of trusting fixed offsets. Nothing here imports
// core/: the damage and its expected outcome must not come from the engine under test.
//
// Usage:
//   makeBase(file, DAMAGES[name].base);  DAMAGES[name].apply(file);
//   // or simply: makeDamagedImage(name, file)
//   qemuCheck(file) then agrees with DAMAGES[name].expect.check (recorded from qemu-img 7.2 and
//   verified by tests/interop/qemu-helpers.test.ts).
//
// Over 600 lines on purpose: the catalogue is one table (47 named damages with their
// expected qemu-img verdicts) that tests iterate over as a whole; split, it would be read in pieces.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  createImage, fileSize, makeTempDir, poke, pokeU32, pokeU64, qemuImgOk, qemuIo, truncateFile, writePattern,
} from './qemu.ts';
import {
  EXT_FEATURE_TABLE, HDR, L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, QCOW_OFLAG_ZERO, SNAP,
  activeL2EntryPos, dataClusterOffset, extensionsEnd, getRefcount, l1EntryPos, l2EntryPos, l2TableOffset,
  readExtensions, readHeader, readL1Entry, readL2Entry, readReftableEntry, readSnapshots, refblockOffset,
  reftableEntryPos, setRefcount, writeL1Entry, writeL2Entry,
} from './qcow2-mini.ts';
import { peek } from './qemu.ts';

// ---------------------------------------------------------------------------------------------
// Base images: what each recipe starts from. All are made by qemu-img/qemu-io at test time.
// Layout with the defaults (64 MiB, 64 KiB clusters, v3, refcount_bits 16), docs/qcow2-format.md §1.10:
// header 0x0, reftable 0x10000, refblock 0x20000, L1 0x30000; after the first write L2 0x40000,
// data 0x50000; `snapshot -c` puts the L1 copy at 0x60000 and the table at 0x70000.

export type BaseName =
  | 'empty' // fresh 64 MiB image, nothing written
  | 'data' // + 64 KiB of 0x11 at guest 0 (one L2 table, one data cluster, both COPIED)
  | 'data-v2' // as 'data', compat=0.10
  | 'snapshot' // 'data' + `snapshot -c test` (L2 and data cluster shared, refcount 2)
  | 'snapshot-cow' // 'snapshot' + 64 KiB of 0x22 at guest 0 (active L2 and data copied-on-write)
  | 'refcount1' // 'data' with refcount_bits=1
  | 'cluster512' // 512-byte clusters, 512 bytes of 0x11 at guest 0 (iotest 138)
  | 'lazy-dirty'; // lazy_refcounts=on, qemu-io killed after a write: dirty bit set, refcounts stale (039)

export const BASE_SIZE = 64 * 1024 * 1024;
export const BASE_PATTERN = 0x11;
export const BASE_PATTERN_2 = 0x22;

/**
 * Make base image `base` at `file`. Each base is built by qemu-img/qemu-io once per process and
 * copied from then on (a reflink where the file system has them): the bytes are the same, and the
 * tests that make many damaged images start no processes for their bases.
 */
export function makeBase(file: string, base: BaseName): void {
  let cached = baseCache.get(base);
  if (cached === undefined) {
    // Inside the Vitest run's dir when there is one (removed at the end of the run even when the
    // worker is stopped without exit handlers), else a temp dir removed when the process exits.
    const runDir = process.env.QCOWSCOPE_TEST_RUN_DIR;
    baseCacheDir ??= runDir ? fs.mkdtempSync(path.join(runDir, 'bases-')) : makeTempDir('qcowscope-bases-');
    cached = path.join(baseCacheDir, `${base}.qcow2`);
    buildBase(cached, base);
    baseCache.set(base, cached);
  }
  fs.copyFileSync(cached, file, fs.constants.COPYFILE_FICLONE);
}

const baseCache = new Map<BaseName, string>();
let baseCacheDir: string | undefined;
process.once('exit', () => {
  if (baseCacheDir !== undefined) fs.rmSync(baseCacheDir, { recursive: true, force: true });
});

function buildBase(file: string, base: BaseName): void {
  switch (base) {
    case 'empty':
      createImage(file, BASE_SIZE);
      return;
    case 'data':
      createImage(file, BASE_SIZE);
      writePattern(file, 0, 65536, BASE_PATTERN);
      return;
    case 'data-v2':
      createImage(file, BASE_SIZE, { compat: '0.10' });
      writePattern(file, 0, 65536, BASE_PATTERN);
      return;
    case 'snapshot':
      buildBase(file, 'data');
      qemuImgOk(['snapshot', '-c', 'test', file]);
      return;
    case 'snapshot-cow':
      buildBase(file, 'snapshot');
      writePattern(file, 0, 65536, BASE_PATTERN_2);
      return;
    case 'refcount1':
      createImage(file, BASE_SIZE, { refcountBits: 1 });
      writePattern(file, 0, 65536, BASE_PATTERN);
      return;
    case 'cluster512':
      createImage(file, BASE_SIZE, { clusterSize: 512 });
      writePattern(file, 0, 512, BASE_PATTERN);
      return;
    case 'lazy-dirty': {
      // iotest 039: a write with lazy refcounts, then the process dies (sigraise 9) before the
      // refcount update reaches the file. The dirty bit stays set.
      createImage(file, BASE_SIZE, { compat: '1.1', lazyRefcounts: true });
      const r = qemuIo(['-f', 'qcow2', '-c', `write -P 0x${BASE_PATTERN.toString(16)} 0 512`, '-c', 'sigraise 9', file]);
      if (r.signal !== 'SIGKILL') throw new Error(`lazy-dirty: qemu-io was expected to die by SIGKILL: ${r.status} ${r.stderr}`);
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The catalogue

/**
 * What qemu-img 7.2 says about the damaged image. Recorded by running qemu-img on each recipe and
 * re-verified by tests/interop/qemu-helpers.test.ts, so check tests can compare OUR check with
 * qemu-img's on the same image without calling qemu-img again.
 */
export interface DamageExpect {
  /**
   * `qemu-img check --output=json` without repair: its exit code (0 clean, 1 could not complete,
   * 2 corruptions, 3 leaks only) and counters. When the check cannot complete (exit 1) qemu-img
   * usually prints no JSON at all; the counters are then 0.
   */
  check: {
    exitCode: 0 | 1 | 2 | 3;
    corruptions: number;
    leaks: number;
    checkErrors: number;
  };
  /** Substrings of the check's stderr (its per-item diagnostics) that must appear. */
  checkMessages?: string[];
  /** When qemu-img refuses to open the image normally (`qemu-img info`): a substring of its error. */
  openError?: string;
  /** `qemu-img check -r leaks --output=json` on a fresh copy of the damaged image. */
  repairLeaks: RepairExpect;
  /** `qemu-img check -r all --output=json` on a fresh copy of the damaged image. */
  repairAll: RepairExpect;
}

/**
 * A repair run: its exit code (the state AFTER the repair: 0 clean, 2 corruptions remain, 3 leaks
 * remain, 1 the check or repair could not complete) and the fixed counters from its JSON.
 * `noJson` marks runs where qemu-img printed no JSON at all (it could not open the image even in
 * check mode, or aborted, e.g. `-r leaks` when the refcount structures need a rebuild:
 * "ERROR need to rebuild refcount structures", `Check failed: Input/output error`).
 */
export interface RepairExpect {
  exitCode: 0 | 1 | 2 | 3;
  corruptionsFixed: number;
  leaksFixed: number;
  noJson?: true;
}

export interface Damage {
  describe: string;
  /** Where the recipe comes from: the iotest number(s), or 'qcowscope' for our own additions. */
  iotest: string;
  base: BaseName;
  apply(file: string): void;
  expect: DamageExpect;
}

const CS = (file: string): number => readHeader(file).clusterSize;
const clusterIndex = (file: string, offset: number): number => Math.floor(offset / CS(file));

/** Set (or clear) bits in a u64 at a file offset. */
function orU64(file: string, pos: number, bits: bigint): void {
  pokeU64(file, pos, Buffer.from(peek(file, pos, 8)).readBigUInt64BE(0) | bits);
}
function andNotU64(file: string, pos: number, bits: bigint): void {
  pokeU64(file, pos, Buffer.from(peek(file, pos, 8)).readBigUInt64BE(0) & ~bits);
}

function setIncompatibleBit(file: string, bit: bigint): void {
  orU64(file, HDR.incompatibleFeatures, 1n << bit);
}

/** An aligned host offset well past the end of the file (16 clusters after it). */
function pastEof(file: string): number {
  const cs = CS(file);
  return (Math.ceil(fileSize(file) / cs) + 16) * cs;
}

function firstSnapshot(file: string) {
  const sn = readSnapshots(file)[0];
  if (!sn) throw new Error(`${file}: no snapshot`);
  return sn;
}

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
export const DAMAGES: Record<string, Damage> = {
  // ---- refcounts too high / too low, leaks ------------------------------------------------------
  'refcount-too-high-data': {
    describe: 'The data cluster at guest 0 has refcount 2 but one reference; its L2 entry keeps COPIED',
    iotest: '112 (refcount raised behind the image\'s back), qcowscope',
    base: 'data',
    apply(file) {
      setRefcount(file, clusterIndex(file, dataClusterOffset(file)), 2);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 1, checkErrors: 0 },
      checkMessages: ['Leaked cluster 5 refcount=2 reference=1', 'ERROR OFLAG_COPIED data cluster'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 1 },
    },
  },
  'refcount-too-high-data-copied-cleared': {
    describe: 'The data cluster has refcount 2 but one reference, and COPIED is cleared to match the refcount: a pure leak',
    iotest: '112 (refcount_bits=64 case: refblock entry raised, L2[0] COPIED cleared)',
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      setRefcount(file, clusterIndex(file, dataClusterOffset(file, 0, 0, h)), 2, h);
      andNotU64(file, activeL2EntryPos(file, 0, 0, h), QCOW_OFLAG_COPIED);
    },
    expect: {
      check: { exitCode: 3, corruptions: 0, leaks: 1, checkErrors: 0 },
      checkMessages: ['Leaked cluster 5 refcount=2 reference=1'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 1 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 1 },
    },
  },
  'refcount-too-low-data': {
    describe: 'The data cluster at guest 0 has refcount 0 but one reference (what a lost refblock update leaves)',
    iotest: '039 (stale refcounts), 060',
    base: 'data',
    apply(file) {
      setRefcount(file, clusterIndex(file, dataClusterOffset(file)), 0);
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 5 refcount=0 reference=1'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'refcount-too-low-shared': {
    describe: 'A data cluster shared by the active layer and a snapshot has refcount 1 instead of 2',
    iotest: '060 (case 3 family), qcowscope',
    base: 'snapshot',
    apply(file) {
      setRefcount(file, clusterIndex(file, dataClusterOffset(file)), 1);
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 5 refcount=1 reference=2'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'refcount-too-low-l2': {
    describe: 'The active L2 table has refcount 0 but is referenced by L1[0]',
    iotest: '060 (case 8 family), qcowscope',
    base: 'data',
    apply(file) {
      setRefcount(file, clusterIndex(file, l2TableOffset(file)), 0);
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 4 refcount=0 reference=1'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'leaked-cluster': {
    describe: 'One cluster appended to the file with refcount 1 and no reference',
    iotest: '112/217 (leaked L1 copy), qcowscope',
    base: 'data',
    apply(file) {
      const cs = CS(file);
      const idx = Math.ceil(fileSize(file) / cs);
      truncateFile(file, (idx + 1) * cs);
      setRefcount(file, idx, 1);
    },
    expect: {
      check: { exitCode: 3, corruptions: 0, leaks: 1, checkErrors: 0 },
      checkMessages: ['Leaked cluster 6 refcount=1 reference=0'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 1 },
    },
  },
  'refcount-overflow-1bit': {
    describe: 'refcount_bits=1 and two L2 entries point at the same data cluster: the reference count overflows the width',
    iotest: '112',
    base: 'refcount1',
    apply(file) {
      const h = readHeader(file);
      writeL2Entry(file, 0, 1, readL2Entry(file, 0, 0, h), h);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR: overflow cluster offset=0x50000'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },

  // ---- COPIED flags ------------------------------------------------------------------------------
  'l2-copied-missing': {
    describe: 'Active L2[0] lacks COPIED although its data cluster has refcount 1',
    iotest: '217 (COPIED missing after delete), 039',
    base: 'data',
    apply(file) {
      andNotU64(file, activeL2EntryPos(file, 0, 0), QCOW_OFLAG_COPIED);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR OFLAG_COPIED data cluster: l2_entry=50000 refcount=1'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'l2-copied-extra': {
    describe: 'Active L2[0] has COPIED although its data cluster is shared with a snapshot (refcount 2)',
    iotest: '060 (case 3 repair message), qcowscope',
    base: 'snapshot',
    apply(file) {
      orU64(file, activeL2EntryPos(file, 0, 0), QCOW_OFLAG_COPIED);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=2'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'l1-copied-missing': {
    describe: 'Active L1[0] lacks COPIED although its L2 table has refcount 1',
    iotest: '217 (COPIED missing after delete)',
    base: 'data',
    apply(file) {
      andNotU64(file, l1EntryPos(file, 0), QCOW_OFLAG_COPIED);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=40000 refcount=1'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'l1-copied-extra': {
    describe: 'Active L1[0] has COPIED although its L2 table is shared with a snapshot (refcount 2)',
    iotest: 'qcowscope (mirror of 217)',
    base: 'snapshot',
    apply(file) {
      orU64(file, l1EntryPos(file, 0), QCOW_OFLAG_COPIED);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=8000000000040000 refcount=2'],
      repairLeaks: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },

  // ---- entries past EOF and unaligned offsets ------------------------------------------------------
  'l2-entry-past-eof': {
    describe: 'Active L2[0] points at a data cluster 16 clusters past the end of the file',
    iotest: '138 (reference beyond EOF), qcowscope',
    base: 'data',
    apply(file) {
      writeL2Entry(file, 0, 0, QCOW_OFLAG_COPIED | BigInt(pastEof(file)));
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 1, checkErrors: 0 },
      checkMessages: ['ERROR: counting reference for region exceeding the end of the file by one cluster or more'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 2, corruptionsFixed: 1, leaksFixed: 1 },
    },
  },
  'l2-entry-32pb': {
    describe: '512-byte clusters; active L2[0] points at a data cluster at 32 PiB (2^55)',
    iotest: '138',
    base: 'cluster512',
    apply(file) {
      writeL2Entry(file, 0, 0, QCOW_OFLAG_COPIED | (1n << 55n));
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 1, checkErrors: 0 },
      checkMessages: ['ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x80000000000000 size 0x200'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 2, corruptionsFixed: 1, leaksFixed: 1 },
    },
  },
  'l1-entry-unaligned': {
    describe: 'Active L1[0] holds an L2 table offset 0x2a00 bytes into the L2 cluster',
    iotest: '060 (case 5: L1[0]=0x8000000000042A00)',
    base: 'data',
    apply(file) {
      // QEMU's check reads a whole cluster at the unaligned offset, i.e. the tail of the L2 table
      // and the head of the next cluster (the data, 0x11 bytes, which would read as thousands of
      // bogus entries). Zero the data cluster first so the misread table holds only empty entries
      // and the recipe isolates the one finding.
      const h = readHeader(file);
      poke(file, dataClusterOffset(file, 0, 0, h), new Uint8Array(h.clusterSize));
      writeL1Entry(file, 0, QCOW_OFLAG_COPIED | BigInt(l2TableOffset(file, 0, h) + 0x2a00), h);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR l2_offset=42a00: Table is not cluster aligned; L1 entry corrupted'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },
  'l2-entry-unaligned': {
    describe: 'Active L2[0] holds a data offset 0x2a00 bytes into the data cluster',
    iotest: '060 (case 6: L2[0]=0x8000000000052A00)',
    base: 'data',
    apply(file) {
      writeL2Entry(file, 0, 0, QCOW_OFLAG_COPIED | BigInt(dataClusterOffset(file) + 0x2a00));
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR offset=52a00: Data cluster is not properly aligned; L2 entry corrupted.'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 2, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'l2-prealloc-zero-unaligned': {
    describe: 'Active L2[0] is a preallocated zero cluster (zero flag) at an unaligned offset 0x2a00',
    iotest: '060 (case 11: L2[0]=0x8000000000002A01)',
    base: 'data',
    apply(file) {
      writeL2Entry(file, 0, 0, QCOW_OFLAG_COPIED | 0x2a00n | QCOW_OFLAG_ZERO);
    },
    expect: {
      check: { exitCode: 2, corruptions: 3, leaks: 1, checkErrors: 0 },
      checkMessages: ['ERROR offset=2a00: Preallocated cluster is not properly aligned; L2 entry corrupted.'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 1 },
    },
  },
  'reftable-entry-unaligned': {
    describe: 'Reftable[0] points 0x2a00 bytes into refcount block 0',
    iotest: '060 (case 7: reftable[0]=0x22A00)',
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      pokeU64(file, reftableEntryPos(h, 0), BigInt(refblockOffset(file, 0, h) + 0x2a00));
    },
    expect: {
      check: { exitCode: 1, corruptions: 1, leaks: 0, checkErrors: 6 },
      checkMessages: ['ERROR refcount block 0 is not cluster aligned; refcount table entry corrupted'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'l1-offset-unaligned': {
    describe: 'Header l1_table_offset is not cluster aligned (0x200 past the L1 cluster)',
    iotest: '080 (Invalid L1: offset not aligned)',
    base: 'data',
    apply(file) {
      pokeU64(file, HDR.l1TableOffset, BigInt(readHeader(file).l1TableOffset + 0x200));
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Active L1 table offset invalid',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'reftable-offset-unaligned': {
    describe: 'Header refcount_table_offset = 0x1234567890ABCDEF',
    iotest: '080 (Misaligned reftable)',
    base: 'data',
    apply(file) {
      pokeU64(file, HDR.refcountTableOffset, 0x1234567890abcdefn);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Reference count table offset invalid',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },

  // ---- zeroed refcount structures ---------------------------------------------------------------------
  'refblock-zeroed': {
    describe: 'Refcount block 0 is all zeros: every cluster (header, tables, data) has refcount 0',
    iotest: '060 (case 8: refblock zeroed)',
    base: 'data',
    apply(file) {
      poke(file, refblockOffset(file), new Uint8Array(CS(file)));
    },
    expect: {
      check: { exitCode: 2, corruptions: 8, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 0 refcount=0 reference=1'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 6, leaksFixed: 0 },
    },
  },
  'reftable-entry-zeroed': {
    describe: 'Reftable[0] = 0: refcount block 0 is unreferenced and every cluster it covered reads refcount 0',
    iotest: '060 (case 8: reftable[0]=0)',
    base: 'data',
    apply(file) {
      pokeU64(file, reftableEntryPos(readHeader(file), 0), 0n);
    },
    expect: {
      check: { exitCode: 2, corruptions: 7, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 0 refcount=0 reference=1'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 5, leaksFixed: 0 },
    },
  },
  'reftable-clusters-zero': {
    describe: 'Header refcount_table_clusters = 0 (no reference count table)',
    iotest: '060 (case 9), 108',
    base: 'data',
    apply(file) {
      pokeU32(file, HDR.refcountTableClusters, 0);
    },
    expect: {
      check: { exitCode: 2, corruptions: 6, leaks: 0, checkErrors: 0 },
      openError: 'Image does not contain a reference count table',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 4, leaksFixed: 0 },
    },
  },
  'reftable-offset-and-clusters-zero': {
    describe: 'Header refcount_table_offset and refcount_table_clusters both 0',
    iotest: '108 (refcount structures completely broken)',
    base: 'data',
    apply(file) {
      poke(file, HDR.refcountTableOffset, new Uint8Array(12));
    },
    expect: {
      check: { exitCode: 2, corruptions: 6, leaks: 0, checkErrors: 0 },
      openError: 'Image does not contain a reference count table',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 4, leaksFixed: 0 },
    },
  },
  'refblock-past-eof': {
    describe: 'Reftable[1] points at a refcount block 16 clusters past the end of the file',
    iotest: '108 (refblock outside the image)',
    base: 'data',
    apply(file) {
      pokeU64(file, reftableEntryPos(readHeader(file), 1), BigInt(pastEof(file)));
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR refcount block 1 is outside image'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 2, leaksFixed: 0 },
    },
  },
  'reftable-reserved-bits': {
    describe: 'Reftable[0] has reserved bit 8 set (offset unchanged)',
    iotest: 'qcowscope (check message from qcow2-refcount.c)',
    base: 'data',
    apply(file) {
      orU64(file, reftableEntryPos(readHeader(file), 0), 0x100n);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 1, checkErrors: 0 },
      checkMessages: ['ERROR refcount table entry 0 has reserved bits set'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },

  // ---- overlapping structures -----------------------------------------------------------------------
  'l1-points-at-itself': {
    describe: 'Active L1[0] points at the L1 table itself as its L2 table',
    iotest: '060 (case 1: L1[0]=0x8000000000030000)',
    base: 'empty',
    apply(file) {
      const h = readHeader(file);
      writeL1Entry(file, 0, QCOW_OFLAG_COPIED | BigInt(h.l1TableOffset), h);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 3 refcount=1 reference=3'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'data-points-at-refblock': {
    describe: 'A new L2 table (cluster 4) whose entry 0 maps guest cluster 0 onto refcount block 0',
    iotest: '060 (case 2: truncate 0x50000, L1[0]=0x8000000000040000, refblock[4]=1, L2[0]=0x8000000000020000)',
    base: 'empty',
    apply(file) {
      const h = readHeader(file);
      const cs = h.clusterSize;
      const l2Cluster = Math.ceil(fileSize(file) / cs);
      truncateFile(file, (l2Cluster + 1) * cs);
      writeL1Entry(file, 0, QCOW_OFLAG_COPIED | BigInt(l2Cluster * cs), h);
      setRefcount(file, l2Cluster, 1, h);
      pokeU64(file, l2EntryPos(l2Cluster * cs, 0, h), QCOW_OFLAG_COPIED | BigInt(refblockOffset(file, 0, h)));
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR refcount block 0 refcount=2', 'ERROR cluster 2 refcount=1 reference=2'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 2, leaksFixed: 0 },
    },
  },
  'data-points-at-inactive-l2': {
    describe: 'After a snapshot and a COW write, active L2[0] maps guest cluster 0 onto the snapshot\'s (inactive) L2 table',
    iotest: '060 (case 3: poke 0x80000 = 0x8000000000040000)',
    base: 'snapshot-cow',
    apply(file) {
      const h = readHeader(file);
      const sn = firstSnapshot(file);
      const snapL2 = Buffer.from(peek(file, Number(sn.l1TableOffset), 8)).readBigUInt64BE(0) & L1E_OFFSET_MASK;
      writeL2Entry(file, 0, 0, QCOW_OFLAG_COPIED | snapL2, h);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 1, checkErrors: 0 },
      checkMessages: ['ERROR cluster 4 refcount=1 reference=2', 'Leaked cluster 9 refcount=1 reference=0'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 1 },
      repairAll: { exitCode: 0, corruptionsFixed: 2, leaksFixed: 1 },
    },
  },

  // ---- header fields (080) ---------------------------------------------------------------------------
  'header-length-huge': {
    describe: 'Header header_length = 0xFFFFFFFF',
    iotest: '080 (Huge header size)',
    base: 'data',
    apply(file) {
      pokeU32(file, HDR.headerLength, 0xffffffff);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'qcow2 header exceeds cluster size',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'backing-file-offset-invalid': {
    describe: 'Header backing_file_offset = 0xFFFFFFFFFFFFFFFF (past cluster 0)',
    iotest: '080 (Huge unknown header extension)',
    base: 'data',
    apply(file) {
      pokeU64(file, HDR.backingFileOffset, 0xffffffffffffffffn);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Invalid backing file offset',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'header-extension-too-large': {
    describe: 'The first header extension (type 0x12345678) claims 0x7FFFFFFF bytes',
    iotest: '080 (Huge unknown header extension)',
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      pokeU32(file, h.headerLength, 0x12345678);
      pokeU32(file, h.headerLength + 4, 0x7fffffff);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Header extension too large',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'l1-size-huge': {
    describe: 'Header l1_size = 0x7FFFFFFF entries (over the 32 MiB L1 limit)',
    iotest: '080 (Invalid L1 table)',
    base: 'data',
    apply(file) {
      pokeU32(file, HDR.l1Size, 0x7fffffff);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Active L1 table too large',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'l1-size-too-small': {
    describe: 'Header l1_size = 0 with a 64 MiB virtual size',
    iotest: '080 (L1 table with snapshot)',
    base: 'snapshot',
    apply(file) {
      pokeU32(file, HDR.l1Size, 0);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'L1 table is too small',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'reftable-too-large': {
    describe: 'Header refcount_table_clusters = 0xFFFFFFFF (over the 8 MiB reftable limit)',
    iotest: '080 (Huge refcount table size)',
    base: 'data',
    apply(file) {
      pokeU32(file, HDR.refcountTableClusters, 0xffffffff);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Reference count table too large',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },

  // ---- snapshot table (080, 261) ---------------------------------------------------------------------
  'snapshot-l1-offset-unaligned': {
    describe: 'Snapshot 1\'s l1_table_offset = 0x400200 (unaligned)',
    iotest: '080 (Invalid snapshot L1 table offset)',
    base: 'snapshot',
    apply(file) {
      pokeU64(file, firstSnapshot(file).entryPos + SNAP.l1TableOffset, 0x400200n);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 3, checkErrors: 0 },
      checkMessages: ['ERROR snapshot 1 (test) l1_offset=0x400200: L1 table is not cluster aligned; snapshot table entry corrupted'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 3 },
      repairAll: { exitCode: 2, corruptionsFixed: 2, leaksFixed: 3 },
    },
  },
  'snapshot-l1-size-huge': {
    describe: 'Snapshot 1\'s l1_size = 0x10000000 entries (over the 32 MiB L1 limit)',
    iotest: '080 (Invalid snapshot L1 table size)',
    base: 'snapshot',
    apply(file) {
      pokeU32(file, firstSnapshot(file).entryPos + SNAP.l1Size, 0x10000000);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 3, checkErrors: 0 },
      checkMessages: ['ERROR snapshot 1 (test) l1_size=0x10000000: L1 table is too large; snapshot table entry corrupted'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 3 },
      repairAll: { exitCode: 2, corruptionsFixed: 2, leaksFixed: 3 },
    },
  },
  'snapshot-extra-data-too-large': {
    describe: 'Snapshot 1\'s extra_data_size = 0x10000 (over the 1024-byte limit)',
    iotest: '261 (Too much extra metadata)',
    base: 'snapshot',
    apply(file) {
      pokeU32(file, firstSnapshot(file).entryPos + SNAP.extraDataSize, 0x10000);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Too much extra metadata in snapshot table entry 0',
      checkMessages: ['ERROR failed to read the snapshot table'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 2, leaksFixed: 0 },
    },
  },
  'snapshot-extra-data-incomplete': {
    describe: 'A v3 snapshot entry rewritten with extra_data_size = 0 (no disk size): the entry is incomplete',
    iotest: '261 (Repairing snapshot table entry N is incomplete)',
    base: 'snapshot',
    apply(file) {
      const sn = firstSnapshot(file);
      const strs = peek(file, sn.entryPos + SNAP.extra + sn.extraDataSize, sn.entryLength - SNAP.extra - sn.extraDataSize);
      pokeU32(file, sn.entryPos + SNAP.extraDataSize, 0);
      // Move id + name up over the extra data and clear what is left of the old entry.
      const tail = new Uint8Array(sn.extraDataSize);
      poke(file, sn.entryPos + SNAP.extra, strs);
      poke(file, sn.entryPos + SNAP.extra + strs.length, tail);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR snapshot table entry 0 is incomplete'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },
  'nb-snapshots-huge': {
    describe: 'Header nb_snapshots = 0xFFFFFFFF',
    iotest: '080 (Invalid snapshot table), 261',
    base: 'snapshot',
    apply(file) {
      pokeU32(file, HDR.nbSnapshots, 0xffffffff);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Snapshot table too large',
      checkMessages: ['ERROR snapshot table too large'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'snapshot-table-offset-unaligned': {
    describe: 'Header snapshots_offset = 0x1234567890ABCDEF with nb_snapshots = 0',
    iotest: '080 (Invalid snapshot table offset)',
    base: 'data',
    apply(file) {
      pokeU64(file, HDR.snapshotsOffset, 0x1234567890abcdefn);
      pokeU32(file, HDR.nbSnapshots, 0);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Snapshot table offset invalid',
      checkMessages: ['ERROR snapshot table offset invalid'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },

  // ---- feature bits (036, 039, 060) -------------------------------------------------------------------
  'unknown-incompatible-bit': {
    describe: 'Incompatible feature bit 63 set (unknown to every implementation)',
    iotest: '036',
    base: 'data',
    apply(file) {
      setIncompatibleBit(file, 63n);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'unknown-incompatible-bit-named': {
    describe: 'Incompatible bit 62 set and named "Test feature" in an added feature-name-table entry',
    iotest: '036 (feature name table)',
    base: 'data',
    apply(file) {
      const h = readHeader(file);
      const table = readExtensions(file, h).find((e) => e.type === EXT_FEATURE_TABLE);
      if (!table) throw new Error('base image has no feature name table');
      // Append one 48-byte entry at the end of the table; the end-of-extensions marker moves
      // (the rest of cluster 0 is zeros, which is an end marker).
      const end = extensionsEnd(file, h);
      if (end !== table.pos + 8 + table.length) throw new Error('feature table is not the last extension');
      const entry = new Uint8Array(48);
      entry[0] = 0; // incompatible
      entry[1] = 62;
      entry.set(Buffer.from('Test feature', 'latin1'), 2);
      poke(file, end, entry);
      pokeU32(file, table.pos + 4, table.length + 48);
      setIncompatibleBit(file, 62n);
    },
    expect: {
      check: { exitCode: 1, corruptions: 0, leaks: 0, checkErrors: 0 },
      openError: 'Unsupported qcow2 feature(s): Test feature',
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
    },
  },
  'corrupt-bit': {
    describe: 'Incompatible bit 1 (corrupt) set on an otherwise consistent image',
    iotest: '060',
    base: 'data',
    apply(file) {
      setIncompatibleBit(file, 1n);
    },
    expect: {
      check: { exitCode: 0, corruptions: 0, leaks: 0, checkErrors: 0 },
      repairLeaks: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },
  'dirty-bit': {
    describe: 'Incompatible bit 0 (dirty) set on a consistent image without lazy refcounts',
    iotest: '039',
    base: 'data',
    apply(file) {
      setIncompatibleBit(file, 0n);
    },
    expect: {
      check: { exitCode: 0, corruptions: 0, leaks: 0, checkErrors: 0 },
      repairLeaks: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 0, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },
  'dirty-lazy-refcounts': {
    describe: 'Lazy refcounts: qemu-io killed after a write; dirty bit set, data cluster referenced with refcount 0',
    iotest: '039',
    base: 'lazy-dirty',
    apply() {
      // The damage is QEMU's own: made by the base (a killed writer).
    },
    expect: {
      check: { exitCode: 2, corruptions: 2, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR cluster 5 refcount=0 reference=1', 'ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=0'],
      repairLeaks: { exitCode: 1, corruptionsFixed: 0, leaksFixed: 0, noJson: true },
      repairAll: { exitCode: 0, corruptionsFixed: 1, leaksFixed: 0 },
    },
  },

  // ---- reserved bits ----------------------------------------------------------------------------------
  'l1-reserved-bits': {
    describe: 'Active L1[0] has reserved bit 56 set',
    iotest: 'qcowscope (check message from qcow2-refcount.c)',
    base: 'data',
    apply(file) {
      orU64(file, l1EntryPos(file, 0), 1n << 56n);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR found L1 entry with reserved bits set'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },
  'l2-reserved-bits': {
    describe: 'Active L2[0] has reserved bit 56 set',
    iotest: 'qcowscope (check message from qcow2-refcount.c)',
    base: 'data',
    apply(file) {
      orU64(file, activeL2EntryPos(file, 0, 0), 1n << 56n);
    },
    expect: {
      check: { exitCode: 2, corruptions: 1, leaks: 0, checkErrors: 0 },
      checkMessages: ['ERROR found l2 entry with reserved bits set'],
      repairLeaks: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
      repairAll: { exitCode: 2, corruptionsFixed: 0, leaksFixed: 0 },
    },
  },
};

export type DamageName = keyof typeof DAMAGES;

/** Apply a named damage to a good image made from the recipe's base. */
export function applyDamage(name: string, file: string): void {
  const d = DAMAGES[name];
  if (!d) throw new Error(`unknown damage ${name}`);
  d.apply(file);
}

/** Make the recipe's base image with qemu and damage it. */
export function makeDamagedImage(name: string, file: string): Damage {
  const d = DAMAGES[name];
  if (!d) throw new Error(`unknown damage ${name}`);
  makeBase(file, d.base);
  d.apply(file);
  return d;
}

// Re-exported for tests that want to look at the structures a recipe touched.
export { getRefcount, readL1Entry, readL2Entry, readReftableEntry, L2E_OFFSET_MASK };
