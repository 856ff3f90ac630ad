// The snapshot table on bytes (docs/qcow2-format.md §1.8, §2.3): encode/parse round trip with
// every field (vm_state_size above 2^32, icount −1, disk sizes, dates), unknown extra data kept
// verbatim, older entries without extra data, 8-byte entry alignment, and QEMU's limits (extra
// data > 1 KiB, table > 64 MiB) with their repair-mode behaviour.
import { describe, expect, it } from 'vitest';
import { QcowError } from '../../core/errors.ts';
import {
  encodeSnapshotTable, makeSnapshot, parseSnapshotTable, snapshotTableSize, type Snapshot,
} from '../../core/format/snapshot-table.ts';

const VSIZE = 64 * 1024 * 1024;

function reader(bytes: Uint8Array, base: number) {
  return (offset: number, length: number): Uint8Array => {
    const out = new Uint8Array(length);
    const rel = offset - base;
    if (rel < bytes.length) out.set(bytes.subarray(Math.max(0, rel), Math.min(bytes.length, rel + length)), Math.max(0, -rel));
    return out;
  };
}

function parse(bytes: Uint8Array, nb: number, base = 0x70000, opts: { repair?: boolean; onRepair?: (m: string) => void } = {}) {
  return parseSnapshotTable(reader(bytes, base), base, nb, { virtualSize: VSIZE, ...opts });
}

function sample(): Snapshot[] {
  const a = makeSnapshot({ l1TableOffset: 0x60000, l1Size: 1, idStr: '1', name: 'snapA', dateSec: 1795317048, dateNsec: 683946000, diskSize: VSIZE });
  const b = makeSnapshot({
    l1TableOffset: 2 ** 40 + 0x10000, l1Size: 4096, idStr: '2', name: 'a much longer name, with spaces ✓', dateSec: 0xffffffff, dateNsec: 999999999,
    vmClockNsec: 3_723_456_789_012, vmStateSize: 5 * 2 ** 32 + 7, diskSize: 2 ** 50, icount: -1,
  });
  const c = makeSnapshot({ l1TableOffset: 0x80000, l1Size: 2, idStr: '10', name: '', dateSec: 1, dateNsec: 2, diskSize: 512, icount: 2 ** 40 });
  c.unknownExtraData = Uint8Array.from(Buffer.from('very important data'));
  c.extraDataSize = 24 + c.unknownExtraData.length;
  return [a, b, c];
}

describe('snapshot table', () => {
  it('encodes as QEMU writes it and parses back every field', () => {
    const snaps = sample();
    const bytes = encodeSnapshotTable(snaps);
    expect(bytes.length).toBe(snapshotTableSize(snaps));
    const res = parse(bytes, snaps.length);
    expect(res.size).toBe(bytes.length); // no trailing pad
    expect(res.snapshots).toHaveLength(3);
    res.snapshots.forEach((sn, i) => {
      const want = snaps[i]!;
      expect(sn.entryOffset % 8, 'entries start 8-aligned').toBe(0);
      expect({ ...sn, entryOffset: 0 }).toEqual({ ...want, entryOffset: 0, extraDataSize: 24 + want.unknownExtraData.length });
    });
    // re-encoding what was parsed reproduces the bytes
    expect(encodeSnapshotTable(res.snapshots)).toEqual(bytes);
  });

  it('lays the first entry out like a fresh qemu-img snapshot (docs/qcow2-format.md §1.10)', () => {
    const bytes = encodeSnapshotTable([sample()[0]!]);
    const dv = new DataView(bytes.buffer);
    expect(bytes.length).toBe(70);
    expect(dv.getBigUint64(0)).toBe(0x60000n);
    expect(dv.getUint32(8)).toBe(1);
    expect([dv.getUint16(12), dv.getUint16(14)]).toEqual([1, 5]);
    expect(dv.getUint32(36)).toBe(24);
    expect(dv.getBigUint64(40 + 8)).toBe(BigInt(VSIZE));
    expect(dv.getBigUint64(40 + 16)).toBe(0n); // icount 0, as qemu-img snapshot -c writes
    expect(Buffer.from(bytes.subarray(64)).toString()).toBe('1snapA');
  });

  it('vm_state_size above 2^32: the u32 field is 0 and the 64-bit extra field holds it; icount −1 is all ones', () => {
    const bytes = encodeSnapshotTable([sample()[1]!]);
    const dv = new DataView(bytes.buffer);
    expect(dv.getUint32(32)).toBe(0);
    expect(dv.getBigUint64(40)).toBe(5n * 2n ** 32n + 7n);
    expect(dv.getBigUint64(56)).toBe(0xffffffffffffffffn);
  });

  it('entries with less extra data (0, 8, 16 bytes): QEMU\'s defaults', () => {
    const entry = (eds: number, vmState32: number, extra: bigint[]): Uint8Array => {
      const b = new Uint8Array(40 + eds + 2);
      const dv = new DataView(b.buffer);
      dv.setBigUint64(0, 0x60000n);
      dv.setUint32(8, 1);
      dv.setUint16(12, 1);
      dv.setUint16(14, 1);
      dv.setUint32(32, vmState32);
      dv.setUint32(36, eds);
      extra.forEach((v, i) => dv.setBigUint64(40 + 8 * i, v));
      b.set([0x31, 0x78], 40 + eds); // "1", "x"
      return b;
    };
    const pad = (b: Uint8Array) => Uint8Array.from([...b, ...new Array((8 - (b.length % 8)) % 8).fill(0)]);
    const e0 = entry(0, 1234, []);
    const e8 = entry(8, 42, [2n ** 33n]);
    const e16 = entry(16, 0, [0n, 8n * 1024n * 1024n]);
    const table = Uint8Array.from([...pad(e0), ...pad(e8), ...e16]);
    const [s0, s8, s16] = parse(table, 3).snapshots as [Snapshot, Snapshot, Snapshot];
    expect([s0.vmStateSize, s0.diskSize, s0.icount, s0.extraDataSize]).toEqual([1234, VSIZE, -1, 0]);
    expect([s8.vmStateSize, s8.diskSize, s8.icount]).toEqual([2 ** 33, VSIZE, -1]);
    expect([s16.vmStateSize, s16.diskSize, s16.icount]).toEqual([0, 8 * 1024 * 1024, -1]);
    expect([s0.idStr, s0.name]).toEqual(['1', 'x']);
    // rewritten as QEMU does: extra_data_size 24 for every entry
    const again = parse(encodeSnapshotTable([s0, s8, s16]), 3).snapshots;
    expect(again.map((s) => [s.vmStateSize, s.diskSize, s.icount, s.extraDataSize])).toEqual([
      [1234, VSIZE, -1, 24], [2 ** 33, VSIZE, -1, 24], [0, 8 * 1024 * 1024, -1, 24],
    ]);
  });

  it('unknown extra data is kept verbatim (iotest 261)', () => {
    const snaps = sample();
    const res = parse(encodeSnapshotTable(snaps), 3);
    expect(Buffer.from(res.snapshots[2]!.unknownExtraData).toString()).toBe('very important data');
    expect(res.snapshots[2]!.extraDataSize).toBe(43);
  });

  it('extra data over 1 KiB is refused (open), truncated to 1 KiB in repair mode', () => {
    const sn = sample()[2]!;
    sn.unknownExtraData = new Uint8Array(2000).fill(7);
    const bytes = encodeSnapshotTable([sample()[0]!, sn]);
    let err: unknown;
    try {
      parse(bytes, 2);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QcowError);
    expect((err as QcowError).code).toBe('SNAPSHOT_TABLE_INVALID');
    expect((err as QcowError).message).toBe('Too much extra metadata in snapshot table entry 1');
    const notes: string[] = [];
    const res = parse(bytes, 2, 0x70000, { repair: true, onRepair: (m) => notes.push(m) });
    expect(notes).toEqual(['Discarding too much extra metadata in snapshot table entry 1 (2024 > 1024)']);
    expect(res.snapshots[1]!.extraDataSize).toBe(1024);
    expect(res.snapshots[1]!.unknownExtraData.length).toBe(1000);
    expect(res.snapshots[1]!.name).toBe(''); // strings found after the whole stored extra data
    expect(res.snapshots[1]!.idStr).toBe('10');
  });

  it('a table over 64 MiB is refused, overhanging entries dropped in repair mode (iotest 261)', () => {
    // each entry: 40 + 1024 extra + two 65535-byte strings, read as zeros past its header
    const entrySize = 40 + 1024 + 2 * 65535;
    const nb = 600;
    const headers = new Map<number, Uint8Array>();
    let pos = 0;
    for (let i = 0; i < nb; i++) {
      pos = Math.ceil(pos / 8) * 8;
      const h = new Uint8Array(40);
      const dv = new DataView(h.buffer);
      dv.setUint16(12, 65535);
      dv.setUint16(14, 65535);
      dv.setUint32(36, 1024);
      headers.set(pos, h);
      pos += entrySize;
    }
    const read = (offset: number, length: number): Uint8Array => headers.get(offset) && length === 40 ? headers.get(offset)! : new Uint8Array(length);
    expect(() => parseSnapshotTable(read, 0, nb, { virtualSize: VSIZE })).toThrow('Snapshot table is too big');
    const notes: string[] = [];
    const res = parseSnapshotTable(read, 0, nb, { virtualSize: VSIZE, repair: true, onRepair: (m) => notes.push(m) });
    const fits = Math.floor((64 * 1024 * 1024) / (Math.ceil(entrySize / 8) * 8));
    expect(res.snapshots.length).toBe(fits);
    expect(notes).toEqual([`Discarding ${nb - fits} overhanging snapshots (snapshot table is too big)`]);
  });

  it('no snapshots: size 0', () => {
    expect(parse(new Uint8Array(0), 0)).toEqual({ snapshots: [], size: 0 });
    expect(encodeSnapshotTable([]).length).toBe(0);
  });
});
