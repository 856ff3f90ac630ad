// QEMU's damage recipes (iotests 060, 080, 112, 138, 261; docs/qcow2-format.md §6) through the
// command line, answered as QEMU answers or better:
//  - an image QEMU refuses to open: every verb exits 1 with one line `qcowscope: <QEMU's words>`,
//    no stack trace, and the file is untouched (writing verbs included);
//  - check exits as qemu-img check does (0 clean, 2 corruptions, 3 leaks, 1 not completed), and
//    check -r all ends no worse than qemu-img's;
//  - where QEMU writes to an image it has just judged corrupt (060: it detects an overlap, marks
//    the image corrupt and fails), or creates a snapshot it then leaks (080, 112), we refuse
//    before the first write: exit 1, one line, the file byte-identical (hash before/after).
// The CLI runs in this process (tests/helpers/cli-in-process.ts): the exit code, stdout and
// stderr a `node qcowscope.mjs` process gives, without a Node start per command.
import * as fs from 'node:fs';
import { describe, expect, test } from 'vitest';
import { DAMAGES, makeBase, makeDamagedImage, type BaseName } from '../helpers/corruptor.ts';
import { HDR, SNAP, activeL2EntryPos, readHeader, readSnapshots, refcountLocation } from '../helpers/qcow2-mini.ts';
import {
  createImage, peekU64, pokeU32, pokeU64, qemuCheck, qemuImg, qemuImgOk, qemuIo, sha256, writePattern,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { runCliInProcess } from '../helpers/cli-in-process.ts';

const tmp = useTempDir('qcowscope-hostile-');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

async function qs(...args: string[]): Promise<Run> {
  const r = await runCliInProcess(args);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Exit 1 with exactly one line on stderr, `qcowscope: ...` (containing `words` if given), no stack trace. */
function expectOneLineError(r: Run, what: string, words?: string): void {
  expect(r.status, `${what}: ${r.stderr}`).toBe(1);
  expect(r.stderr, what).not.toMatch(/^\s+at /m);
  expect(r.stderr, what).not.toMatch(/internal error/i);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines.length, `${what}: ${r.stderr}`).toBe(1);
  expect(lines[0], what).toMatch(/^qcowscope: \S/);
  if (words) expect(lines[0], what).toContain(words);
}

/** check's own stderr: diagnostics, then (exit 1) a last `qcowscope: ...` line; never a stack. */
async function checkExit(file: string, ...opts: string[]): Promise<number> {
  const r = await qs('check', ...opts, file);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr).not.toMatch(/internal error/i);
  if (r.status === 1) expect(r.stderr.trim().split('\n').pop()).toMatch(/^qcowscope: /);
  expect([0, 1, 2, 3]).toContain(r.status);
  return r.status!;
}

/** How bad a check exit code is: clean < leaks < corruptions < could not complete. */
const RANK: Record<number, number> = { 0: 0, 3: 1, 2: 2, 1: 3 };

/** Every verb on an image that fails validation: one-line error, file untouched. */
async function expectRefusedEverywhere(file: string, words: string): Promise<void> {
  const before = sha256(file);
  const out = file + '.raw';
  const verbs: string[][] = [
    ['info', file], ['map', '--json', file], ['export', file, out],
    ['snapshot', '-c', 'new', file], ['snapshot', '-d', '1', file], ['write', file, '0', '512'],
  ];
  for (const v of verbs) {
    const r = await qs(...v);
    expectOneLineError(r, `qcowscope ${v.slice(0, -1).join(' ')}`, v[0] === 'info' ? words : undefined);
    expect(sha256(file), `qcowscope ${v.join(' ')} changed the file`).toBe(before);
  }
}

/** A writing verb on an image we must refuse to write: exit 1, one line, byte-identical file. */
async function expectWriteRefused(file: string, args: string[], words?: string): Promise<void> {
  const before = sha256(file);
  const r = await qs(...args, file);
  expectOneLineError(r, `qcowscope ${args.join(' ')}`, words);
  expect(sha256(file), `qcowscope ${args.join(' ')} changed the file`).toBe(before);
}

// ---------------------------------------------------------------------------------------------
// 080 and friends: images QEMU refuses to open

/** Pokes (offset, bytes, value) on a base image, and QEMU's open error. */
interface OpenRecipe {
  base: BaseName;
  pokes: Array<[number, 4 | 8, bigint | number]>;
  openError: string;
}

const OPEN_RECIPES: Record<string, OpenRecipe> = {
  'header-length-0x7fffffff': { base: 'data', pokes: [[HDR.headerLength, 4, 0x7fffffff]], openError: 'qcow2 header exceeds cluster size' },
  'ext-too-large-backing-at-116': { base: 'data', pokes: [[112, 4, 0x12345678], [116, 4, 0x7fffffff], [HDR.backingFileOffset, 8, 116]], openError: 'Header extension too large' },
  'reftable-clusters-0x20001': { base: 'data', pokes: [[HDR.refcountTableClusters, 4, 0x00020001]], openError: 'Reference count table too large' },
  'reftable-offset-huge': { base: 'data', pokes: [[HDR.refcountTableOffset, 8, 0xffffffffffff0000n], [HDR.refcountTableClusters, 4, 0x7f]], openError: 'Reference count table offset invalid' },
  'nb-snapshots-0x7fffffff': { base: 'snapshot', pokes: [[HDR.nbSnapshots, 4, 0x7fffffff]], openError: 'Snapshot table too large' },
  'snapshots-offset-huge': { base: 'data', pokes: [[HDR.snapshotsOffset, 8, 0xffffffffffff0000n], [HDR.nbSnapshots, 4, 0xffff]], openError: 'Snapshot table offset invalid' },
  'l1-size-0xffffffff': { base: 'data', pokes: [[HDR.l1Size, 4, 0xffffffff]], openError: 'Active L1 table too large' },
  'l1-offset-huge': { base: 'data', pokes: [[HDR.l1TableOffset, 8, 0x7fffffffffff0000n], [HDR.l1Size, 4, 0xffff]], openError: 'Active L1 table offset invalid' },
  'l1-offset-unaligned-size-1': { base: 'data', pokes: [[HDR.l1TableOffset, 8, 0x1234567890abcdefn], [HDR.l1Size, 4, 1]], openError: 'Active L1 table offset invalid' },
  'backing-name-too-long': { base: 'data', pokes: [[HDR.backingFileOffset, 8, 0x1000], [HDR.backingFileSize, 4, 0xffffffff]], openError: 'Backing file name too long' },
};

function poke(file: string, pokes: OpenRecipe['pokes']): void {
  for (const [off, size, v] of pokes) {
    if (size === 4) pokeU32(file, off, Number(v));
    else pokeU64(file, off, BigInt(v));
  }
}

describe('080 and friends: images QEMU refuses to open', () => {
  const fromCorruptor = Object.entries(DAMAGES).filter(([, d]) => d.expect.openError !== undefined && d.expect.check.exitCode === 1);
  test.each(fromCorruptor.map(([n]) => n))('%s (corruptor)', async (name) => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage(name, file);
    await expectRefusedEverywhere(file, d.expect.openError!);
    const before = sha256(file);
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(sha256(file)).toBe(before);
  });

  test.each(Object.keys(OPEN_RECIPES))('%s', async (name) => {
    const r = OPEN_RECIPES[name]!;
    const file = tmp.file('img.qcow2');
    makeBase(file, r.base);
    poke(file, r.pokes);
    // QEMU says the same (the oracle, not only our recording of it)
    const q = qemuImg(['info', file]);
    expect(q.status).toBe(1);
    expect(q.stderr).toContain(r.openError);
    await expectRefusedEverywhere(file, r.openError);
    expect(await checkExit(file)).toBe(1);
  });

  test('refcount_table_clusters = 0: open refused, check (check mode) answers like qemu-img and -r all repairs', async () => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage('reftable-clusters-zero', file);
    await expectRefusedEverywhere(file, 'Image does not contain a reference count table');
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(RANK[await checkExit(file, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll!.exitCode]!);
    expect((await qs('info', file)).status).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// 060 and every other damage an image opens with: QEMU's own answer on a copy is the oracle

/** Whether QEMU, doing the same on a copy, failed or marked the image corrupt. */
function qemuTripped(copy: string, run: () => { status: number | null; stdout: string; stderr: string }): boolean {
  const r = run();
  const corruptBit = (peekU64(copy, HDR.incompatibleFeatures) & 2n) !== 0n;
  return corruptBit || r.status !== 0 || /failed|Marking image as corrupt|Could not/i.test(r.stdout + r.stderr);
}

const OPENABLE = Object.entries(DAMAGES).filter(([, d]) => d.expect.openError === undefined).map(([n]) => n);

describe('writes and snapshots on damaged images (060 and the corruptor catalogue)', () => {
  test.each(OPENABLE)('%s', async (name) => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage(name, file);
    const before = sha256(file);
    const info = await qs('info', file);
    if (info.status !== 0) expectOneLineError(info, 'info');
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(sha256(file), 'info/check changed the file').toBe(before);

    // a guest write: QEMU writes in place, detects overlaps with metadata, marks the image corrupt
    const q1 = tmp.file('qemu-write.qcow2');
    fs.copyFileSync(file, q1);
    const qemuRefusesWrite = qemuTripped(q1, () => qemuIo(['-f', 'qcow2', '-c', 'write -P 0x55 0 512', q1]));
    const w = await qs('write', '-P', '0x55', file, '0', '512');
    if (qemuRefusesWrite || w.status !== 0) {
      expectOneLineError(w, `write (QEMU ${qemuRefusesWrite ? 'trips' : 'writes'})`);
      expect(sha256(file), 'a refused write changed the file').toBe(before);
    }

    // a snapshot: where QEMU fails (leaking) or marks the image corrupt, we refuse untouched
    const f2 = tmp.file('img2.qcow2');
    makeDamagedImage(name, f2);
    const h2 = sha256(f2);
    const q2 = tmp.file('qemu-snap.qcow2');
    fs.copyFileSync(f2, q2);
    const qemuRefusesSnapshot = qemuTripped(q2, () => qemuImg(['snapshot', '-c', 'after-damage', q2]));
    const c = await qs('snapshot', '-c', 'after-damage', f2);
    if (qemuRefusesSnapshot || c.status !== 0) {
      expectOneLineError(c, `snapshot -c (QEMU ${qemuRefusesSnapshot ? 'trips' : 'creates it'})`);
      expect(sha256(f2), 'a refused snapshot changed the file').toBe(h2);
    }

    // check -r all ends no worse than qemu-img's
    if (d.expect.repairAll) {
      const f3 = tmp.file('img3.qcow2');
      makeDamagedImage(name, f3);
      expect(RANK[await checkExit(f3, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll.exitCode]!);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 080: snapshot tables and L2 entries QEMU trips over while operating

describe('080: snapshot L1 damage and huge L2 offsets', () => {
  test.each([
    ['snapshot-l1-offset-unaligned', 'Snapshot L1 table offset invalid'],
    ['snapshot-l1-size-huge', 'Snapshot L1 table too large'],
  ])('%s: revert, delete and export refused untouched; list and check answer', async (name, words) => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage(name, file);
    expect((await qs('snapshot', '-l', file)).status).toBe(0);
    expect((await qs('info', file)).status).toBe(0);
    await expectWriteRefused(file, ['snapshot', '-a', 'test'], words);
    await expectWriteRefused(file, ['snapshot', '-d', 'test'], words);
    const r = await qs('export', '--snapshot', 'test', file, file + '.raw');
    expectOneLineError(r, 'export --snapshot', words);
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(RANK[await checkExit(file, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll!.exitCode]!);
  });

  test('huge L2 offset (L2[0] = 0xBFFFFFFFFFFF0000): snapshot -c refused untouched where QEMU fails with "File too large" after allocating', async () => {
    const file = tmp.file('img.qcow2');
    makeBase(file, 'data');
    pokeU64(file, activeL2EntryPos(file, 0, 0), 0xbfffffffffff0000n);
    expect(qemuImgOk(['snapshot', '-l', file])).toBe('');
    await expectWriteRefused(file, ['snapshot', '-c', 'test']);
  });

  test('L2[0] = 0x800000FFFFFF0000 (data cluster at 1 TiB): snapshot -c refused untouched, or made consistently', async () => {
    const file = tmp.file('img.qcow2');
    makeBase(file, 'data');
    pokeU64(file, activeL2EntryPos(file, 0, 0), 0x800000ffffff0000n);
    const before = sha256(file);
    const qBefore = qemuCheck(file);
    const r = await qs('snapshot', '-c', 'test', file);
    if (r.status !== 0) {
      expectOneLineError(r, 'snapshot -c');
      expect(sha256(file)).toBe(before);
    } else {
      // made: the image is no worse than before in qemu-img's eyes, and not grown to 1 TiB
      expect(RANK[qemuCheck(file).exitCode]!).toBeLessThanOrEqual(RANK[qBefore.exitCode]!);
      expect(fs.statSync(file).size).toBeLessThan(1 << 30);
    }
  });

  test('table size limit: 65536 snapshots (entries past EOF) read fine, snapshot -c refused untouched', async () => {
    const file = tmp.file('img.qcow2');
    makeBase(file, 'data');
    pokeU64(file, HDR.snapshotsOffset, 0x1000000);
    pokeU32(file, HDR.nbSnapshots, 0x10000);
    const info = await qs('info', '--json', file);
    // QEMU opens it (the entries read as zeros: v3 entries without extra data); so may we, or refuse in one line
    if (info.status !== 0) expectOneLineError(info, 'info');
    await expectWriteRefused(file, ['snapshot', '-c', 'test']);
  });
});

// ---------------------------------------------------------------------------------------------
// 112: refcount widths too narrow for another snapshot

describe('112: refcount widths', () => {
  test('refcount_bits=1: snapshot -c refused untouched (QEMU fails with EINVAL and leaks the L1 copy)', async () => {
    const file = tmp.file('img.qcow2');
    makeBase(file, 'refcount1');
    await expectWriteRefused(file, ['snapshot', '-c', 'foo']);
    expect(await checkExit(file)).toBe(0);
  });

  test('refcount_bits=2: two snapshots, the third refused untouched', async () => {
    const file = tmp.file('img.qcow2');
    createImage(file, 64 * 1024 * 1024, { refcountBits: 2 });
    writePattern(file, 0, 65536, 0x11);
    expect((await qs('snapshot', '-c', 'a', file)).status).toBe(0);
    expect((await qs('snapshot', '-c', 'b', file)).status).toBe(0);
    await expectWriteRefused(file, ['snapshot', '-c', 'c']);
    expect(qemuCheck(file).exitCode).toBe(0);
  });

  test('refcount_bits=64 with a refcount of 2^64-1: snapshot -c refused untouched', async () => {
    const file = tmp.file('img.qcow2');
    createImage(file, 64 * 1024 * 1024, { refcountBits: 64 });
    writePattern(file, 0, 65536, 0x11);
    const h = readHeader(file);
    const l2e = activeL2EntryPos(file, 0, 0, h);
    const data = Number(Buffer.from(fs.readFileSync(file).subarray(l2e, l2e + 8)).readBigUInt64BE(0) & 0x00fffffffffffe00n);
    const loc = refcountLocation(file, data / h.clusterSize, h);
    pokeU64(file, loc.bytePos, 0xffffffffffffffffn);
    pokeU64(file, l2e, BigInt(data)); // COPIED cleared, as the refcount says shared
    await expectWriteRefused(file, ['snapshot', '-c', 'foo']);
  });

  test('refcount_bits=1 with two references to one cluster: check reports the overflow like qemu-img', async () => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage('refcount-overflow-1bit', file);
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    await expectWriteRefused(file, ['snapshot', '-c', 'foo']);
  });
});

// ---------------------------------------------------------------------------------------------
// 261: snapshot extra data and table limits; 138: a reference at 32 PiB

describe('261: snapshot extra data and table size', () => {
  test('extra_data_size = 0x10000: open refused in QEMU\'s words, check -r all repairs', async () => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage('snapshot-extra-data-too-large', file);
    await expectRefusedEverywhere(file, 'Too much extra metadata in snapshot table entry 0');
    expect(await checkExit(file)).toBe(1);
    expect(RANK[await checkExit(file, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll!.exitCode]!);
    expect((await qs('info', file)).status).toBe(0);
  });

  test('v3 entry without disk size (extra_data_size 0): check finds it incomplete, -r all repairs', async () => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage('snapshot-extra-data-incomplete', file);
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(RANK[await checkExit(file, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll!.exitCode]!);
  });

  test('v2, nb_snapshots = 0x20000 zero entries at 1 MiB: open refused, check answers', async () => {
    const file = tmp.file('img.qcow2');
    createImage(file, 64 * 1024 * 1024, { compat: '0.10' });
    pokeU64(file, HDR.snapshotsOffset, 0x100000);
    pokeU32(file, HDR.nbSnapshots, 0x20000);
    const q = qemuCheck(file);
    await expectRefusedEverywhere(file, 'Snapshot table too large');
    expect(RANK[await checkExit(file)]!).toBeLessThanOrEqual(RANK[q.exitCode]!);
  });
});

describe('138: a reference at 32 PiB', () => {
  test('512-byte clusters, L2[0] at 2^55: reads answer, check as qemu-img, -r all no worse', async () => {
    const file = tmp.file('img.qcow2');
    const d = makeDamagedImage('l2-entry-32pb', file);
    for (const v of [['info', file], ['map', '--json', file], ['export', file, file + '.raw']]) {
      const r = await qs(...v);
      if (r.status !== 0) expectOneLineError(r, `qcowscope ${v[0]}`);
    }
    expect(await checkExit(file)).toBe(d.expect.check.exitCode);
    expect(RANK[await checkExit(file, '-r', 'all')]!).toBeLessThanOrEqual(RANK[d.expect.repairAll!.exitCode]!);
    expect(fs.statSync(file).size).toBeLessThan(1 << 30);
  });
});
