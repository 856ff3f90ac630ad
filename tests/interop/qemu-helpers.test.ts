// The test helpers checked against the real qemu-img/qemu-io: the wrappers, the independent mini
// parser (it must find the same structures QEMU reports), and every corruptor recipe (after each
// damage, qemu-img check says exactly what the recipe's `expect` records). If QEMU's answers
// change (a new qemu-utils), this file says which recipe to re-record.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { expectBytes } from '../helpers/bytes.ts';
import { BASE_PATTERN, BASE_PATTERN_2, DAMAGES, makeBase, makeDamagedImage, type BaseName } from '../helpers/corruptor.ts';
import {
  QCOW_OFLAG_COPIED, dataClusterOffset, getRefcount, l2EntrySize, l2TableOffset, readHeader, readL1Entry,
  readL2Entry, readSnapshots, refblockOffset, setRefcount,
} from '../helpers/qcow2-mini.ts';
import {
  createImage, fileSize, peek, peekU16, peekU32, peekU64, poke, pokeU16, pokeU32, pokeU64, qemuCheck,
  qemuConvertToRaw, qemuImg, qemuInfo, qemuIo, qemuMap, qemuSnapshotCreate, qemuSnapshotList, readRange,
  sha256, sha256Bytes, verifyPattern, writePattern,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const MiB = 1024 * 1024;
const tmp = useTempDir('qcowscope-helpers-');

describe('qemu wrappers', () => {
  it('reports the installed qemu-img version (7.2 expected by the recorded expectations)', () => {
    const r = qemuImg(['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/qemu-img version \d+\.\d+/);
  });

  it('createImage, writePattern, qemuInfo, qemuMap, qemuConvertToRaw, qemuCheck on a fresh image', () => {
    const img = tmp.file('a.qcow2');
    createImage(img, 64 * MiB, { clusterSize: 65536, refcountBits: 16, compat: '1.1' });
    writePattern(img, 65536, 65536, 0x5a);
    const info = qemuInfo(img);
    expect(info['virtual-size']).toBe(64 * MiB);
    expect(info['cluster-size']).toBe(65536);
    expect(info['format-specific']?.data['refcount-bits']).toBe(16);
    expect(info['format-specific']?.data.compat).toBe('1.1');
    expect(info.snapshots).toBeUndefined();

    const map = qemuMap(img);
    const data = map.filter((m) => m.data);
    expect(data).toHaveLength(1);
    expect(data[0]).toMatchObject({ start: 65536, length: 65536, present: true, zero: false });
    expect(data[0]!.offset).toBe(dataClusterOffset(img, 0, 1));

    const raw = tmp.file('a.raw');
    qemuConvertToRaw(img, raw);
    expect(fileSize(raw)).toBe(64 * MiB);
    expectBytes(readRange(raw, 65536, 65536), new Uint8Array(65536).fill(0x5a));
    expectBytes(readRange(raw, 0, 65536), new Uint8Array(65536));
    expect(verifyPattern(img, 65536, 65536, 0x5a)).toBe(true);
    expect(verifyPattern(img, 65536, 65536, 0x5b)).toBe(false);

    const c = qemuCheck(img);
    expect(c.exitCode).toBe(0);
    expect(c.json).not.toBeNull();
    expect(c).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
  });

  it('snapshots: list, and convert -l by id and by name reads the snapshot, not the active layer', () => {
    const img = tmp.file('s.qcow2');
    createImage(img, '16M');
    writePattern(img, 0, 4096, 0x01);
    expect(qemuSnapshotCreate(img, 'first').status).toBe(0);
    writePattern(img, 0, 4096, 0x02);
    expect(qemuSnapshotCreate(img, 'second').status).toBe(0);
    writePattern(img, 0, 4096, 0x03);
    const list = qemuSnapshotList(img);
    expect(list.map((s) => [s.id, s.name])).toEqual([['1', 'first'], ['2', 'second']]);
    expect(list[0]!['vm-state-size']).toBe(0);
    const want = (v: number) => new Uint8Array(4096).fill(v);
    for (const [ref, v] of [[1, 1], [{ name: 'second' }, 2], ['first', 1], [{ id: '2' }, 2]] as const) {
      const out = tmp.file(`snap-${JSON.stringify(ref).replace(/\W/g, '')}.raw`);
      qemuConvertToRaw(img, out, ref);
      expectBytes(readRange(out, 0, 4096), want(v), JSON.stringify(ref));
    }
    const active = tmp.file('active.raw');
    qemuConvertToRaw(img, active);
    expectBytes(readRange(active, 0, 4096), want(3));
  });

  it('qemuIo reports failures without throwing', () => {
    const r = qemuIo(['-f', 'qcow2', '-c', 'read 0 512', tmp.file('missing.qcow2')]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("can't open");
  });

  it('poke/peek round-trip u8..u64 big-endian, grow the file, and sha256 matches', () => {
    const f = tmp.file('bytes.bin');
    fs.writeFileSync(f, new Uint8Array(64));
    pokeU16(f, 0, 0xbeef);
    pokeU32(f, 2, 0xdeadbeef);
    pokeU64(f, 8, 0x0123456789abcdefn);
    pokeU64(f, 16, 0xffffffffffffffffn);
    poke(f, 100, [1, 2, 3]);
    expect(peekU16(f, 0)).toBe(0xbeef);
    expect(peekU32(f, 2)).toBe(0xdeadbeef);
    expect(peekU64(f, 8)).toBe(0x0123456789abcdefn);
    expect(peekU64(f, 16)).toBe(0xffffffffffffffffn);
    expect([...peek(f, 0, 2)]).toEqual([0xbe, 0xef]);
    expect(fileSize(f)).toBe(103);
    expect([...readRange(f, 100, 6)]).toEqual([1, 2, 3, 0, 0, 0]); // past EOF reads as zeros
    expect(sha256(f)).toBe(sha256Bytes(new Uint8Array(fs.readFileSync(f))));
  });
});

describe('mini parser agrees with qemu-img', () => {
  it('finds the default layout of docs/qcow2-format.md §1.10 and a snapshot entry as QEMU wrote it', () => {
    const img = tmp.file('layout.qcow2');
    makeBase(img, 'snapshot');
    const h = readHeader(img);
    const info = qemuInfo(img);
    expect(h.version).toBe(3);
    expect(h.clusterSize).toBe(info['cluster-size']);
    expect(Number(h.size)).toBe(info['virtual-size']);
    expect(h.refcountBits).toBe(info['format-specific']!.data['refcount-bits']);
    expect(h.headerLength).toBe(112);
    expect(h.refcountTableOffset).toBe(0x10000);
    expect(refblockOffset(img, 0, h)).toBe(0x20000);
    expect(h.l1TableOffset).toBe(0x30000);
    expect(readL1Entry(img, 0, h)).toBe(0x40000n); // COPIED cleared by the snapshot
    expect(readL2Entry(img, 0, 0, h)).toBe(0x50000n);
    expect(dataClusterOffset(img, 0, 0, h)).toBe(qemuMap(img)[0]!.offset);
    const [sn] = readSnapshots(img, h);
    expect(sn).toMatchObject({ entryPos: 0x70000, l1TableOffset: 0x60000n, l1Size: 1, idStr: '1', name: 'test', extraDataSize: 24, entryLength: 40 + 24 + 1 + 4 });
    expect(sn!.dateSec).toBe(info.snapshots![0]!['date-sec']);
    // refcounts: header, reftable, refblock, L1 = 1; L2 and data shared = 2; L1 copy, table = 1
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((c) => Number(getRefcount(img, c, h)))).toEqual([1, 1, 1, 1, 2, 2, 1, 1]);
  });

  for (const bits of [1, 2, 4, 8, 16, 32, 64] as const) {
    it(`reads and writes ${bits}-bit refcounts where QEMU does (a +1 on the data cluster is the leak qemu-img reports)`, () => {
      const img = tmp.file(`rc${bits}.qcow2`);
      createImage(img, '8M', { refcountBits: bits });
      writePattern(img, 0, 65536, 0x33);
      writePattern(img, 3 * 65536, 65536, 0x44);
      const h = readHeader(img);
      expect(h.refcountBits).toBe(bits);
      const dataIdx = dataClusterOffset(img, 0, 3, h) / h.clusterSize;
      const before = [...Array(dataIdx + 2).keys()].map((c) => getRefcount(img, c, h));
      expect(before.slice(0, dataIdx + 1).every((r) => r === 1n), String(before)).toBe(true);
      expect(before[dataIdx + 1]).toBe(0n);
      if (bits === 1) {
        // Width 1 cannot hold 2: a cluster past the end with refcount 1 is a leak instead.
        fs.truncateSync(img, (dataIdx + 2) * h.clusterSize);
        setRefcount(img, dataIdx + 1, 1, h);
        expect(qemuCheck(img).stderr).toContain(`Leaked cluster ${dataIdx + 1} refcount=1 reference=0`);
      } else {
        setRefcount(img, dataIdx, 2, h);
        expect(getRefcount(img, dataIdx, h)).toBe(2n);
        // Neighbours in the same byte (sub-byte widths) are untouched.
        expect(getRefcount(img, dataIdx - 1, h)).toBe(1n);
        expect(getRefcount(img, dataIdx + 1, h)).toBe(0n);
        expect(qemuCheck(img).stderr).toContain(`Leaked cluster ${dataIdx} refcount=2 reference=1`);
      }
    });
  }

  it('finds L2 entries of extended-L2 images (16 bytes each) and of 512-byte clusters', () => {
    const ext = tmp.file('ext.qcow2');
    createImage(ext, '16M', { extendedL2: true });
    writePattern(ext, 2 * 65536, 65536, 0x66);
    const h = readHeader(ext);
    expect(l2EntrySize(h)).toBe(16);
    expect(dataClusterOffset(ext, 0, 2, h)).toBe(qemuMap(ext).find((m) => m.data)!.offset);

    const small = tmp.file('small.qcow2');
    createImage(small, '16M', { clusterSize: 512 });
    writePattern(small, 512 * 64 * 3 + 512, 512, 0x77); // L1 index 3, L2 index 1
    const hs = readHeader(small);
    expect(l2TableOffset(small, 0, hs)).toBe(0);
    expect(dataClusterOffset(small, 3, 1, hs)).toBe(qemuMap(small).find((m) => m.data)!.offset);
    expect(readL1Entry(small, 3, hs) & QCOW_OFLAG_COPIED).toBe(QCOW_OFLAG_COPIED);
  });
});

describe('corruptor bases are good images', () => {
  const bases: BaseName[] = ['empty', 'data', 'data-v2', 'snapshot', 'snapshot-cow', 'refcount1', 'cluster512'];
  for (const base of bases) {
    it(`${base}: qemu-img check is clean`, () => {
      const img = tmp.file(`${base}.qcow2`);
      makeBase(img, base);
      const c = qemuCheck(img);
      expect(c.exitCode, c.stderr).toBe(0);
      if (base !== 'empty') {
        const want = base === 'snapshot-cow' ? BASE_PATTERN_2 : BASE_PATTERN;
        expect(verifyPattern(img, 0, 512, want)).toBe(true);
      }
    });
  }

  it('lazy-dirty: QEMU itself left the dirty bit set', () => {
    const img = tmp.file('lazy.qcow2');
    makeBase(img, 'lazy-dirty');
    expect(readHeader(img).incompatibleFeatures & 1n).toBe(1n);
    expect(qemuInfo(img)['dirty-flag']).toBe(true);
  });
});

describe('corruptor recipes: qemu-img check says what each recipe records', () => {
  for (const [name, d] of Object.entries(DAMAGES)) {
    it(`${name} (iotest ${d.iotest})`, () => {
      const img = tmp.file(`${name}.qcow2`);
      makeDamagedImage(name, img);
      const c = qemuCheck(img);
      const msg = `qemu-img check stderr:\n${c.stderr}`;
      expect({ exitCode: c.exitCode, corruptions: c.corruptions, leaks: c.leaks, checkErrors: c.checkErrors }, msg)
        .toEqual(d.expect.check);
      for (const m of d.expect.checkMessages ?? []) expect(c.stderr, msg).toContain(m);

      const info = qemuImg(['info', '--output=json', img]);
      if (d.expect.openError) {
        expect(info.status).toBe(1);
        expect(info.stderr).toContain(d.expect.openError);
      } else {
        expect(info.status, info.stderr).toBe(0);
      }

      for (const mode of ['leaks', 'all'] as const) {
        const want = mode === 'leaks' ? d.expect.repairLeaks : d.expect.repairAll;
        const copy = tmp.file(`${name}.repair-${mode}.qcow2`);
        fs.copyFileSync(img, copy);
        const r = qemuCheck(copy, mode);
        const got = { exitCode: r.exitCode, corruptionsFixed: r.corruptionsFixed, leaksFixed: r.leaksFixed, ...(r.json ? {} : { noJson: true }) };
        expect(got, `check -r ${mode} stderr:\n${r.stderr}`).toEqual(want);
        // A repair that reports success leaves an image qemu-img finds clean.
        if (want.exitCode === 0) expect(qemuCheck(copy).exitCode, `after -r ${mode}`).toBe(0);
      }
    });
  }
});
