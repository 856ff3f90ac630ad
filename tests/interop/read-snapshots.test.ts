// Reading internal snapshots, judged by qemu-img on the same files: several snapshots with disk
// sizes changed between them, deleted ones, duplicate and long names, v2 tables, and snapshot
// table entries in every extra-data form an older or newer QEMU writes (extra_data_size 0, 8,
// 16, 24 and larger with unknown data), with vm_state_size, vm_clock and dates set.
import * as path from 'node:path';
import { createImage, peek, poke, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { readHeader } from '../helpers/qcow2-mini.ts';
import { compareVarieties, type Variety } from './read-compare.ts';

const MiB = 1024 * 1024;

interface RawEntry {
  head: Buffer; // 40 bytes
  extra: Buffer;
  id: Buffer;
  name: Buffer;
}

function readTable(file: string): { offset: number; size: number; entries: RawEntry[] } {
  const h = readHeader(file);
  const entries: RawEntry[] = [];
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    pos = Math.ceil(pos / 8) * 8;
    const head = Buffer.from(peek(file, pos, 40));
    const eds = head.readUInt32BE(36);
    const idLen = head.readUInt16BE(12);
    const nameLen = head.readUInt16BE(14);
    const extra = Buffer.from(peek(file, pos + 40, eds));
    const id = Buffer.from(peek(file, pos + 40 + eds, idLen));
    const name = Buffer.from(peek(file, pos + 40 + eds + idLen, nameLen));
    entries.push({ head, extra, id, name });
    pos += 40 + eds + idLen + nameLen;
  }
  return { offset: h.snapshotsOffset, size: pos - h.snapshotsOffset, entries };
}

/** Rewrite the table in place (it must still fit in the clusters QEMU allocated for it). */
function writeTable(file: string, offset: number, entries: RawEntry[], allocated: number): void {
  const parts: Buffer[] = [];
  let size = 0;
  for (const e of entries) {
    const pad = (8 - (size % 8)) % 8;
    parts.push(Buffer.alloc(pad));
    e.head.writeUInt32BE(e.extra.length, 36);
    parts.push(e.head, e.extra, e.id, e.name);
    size += pad + 40 + e.extra.length + e.id.length + e.name.length;
  }
  if (size > allocated) throw new Error(`rewritten snapshot table (${size} B) does not fit in ${allocated} B`);
  poke(file, offset, Buffer.concat([...parts, Buffer.alloc(allocated - size)]));
}

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
const varieties: Variety[] = [
  {
    name: 'v3: snapshots with the disk grown and shrunk between them, duplicate names, one deleted',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 64 * MiB);
      qemuIoOk(f, 'write -P 0x11 0 1M', 'write -P 0x12 63M 1M');
      qemuImgOk(['snapshot', '-c', 'one', f]);
      qemuImgOk(['resize', '-q', f, `${128 * MiB}`]);
      qemuIoOk(f, 'write -P 0x13 100M 1M', 'write -P 0x14 512k 64k');
      qemuImgOk(['snapshot', '-c', 'two', f]);
      qemuImgOk(['resize', '-q', '--shrink', f, `${32 * MiB}`]);
      qemuIoOk(f, 'write -P 0x15 0 64k', 'write -z 1M 64k');
      qemuImgOk(['snapshot', '-c', 'name with spaces', f]);
      qemuImgOk(['snapshot', '-c', 'two', f]); // duplicate names are legal
      qemuIoOk(f, 'write -P 0x16 0 32M');
      qemuImgOk(['snapshot', '-c', 'x'.repeat(200), f]);
      qemuImgOk(['snapshot', '-d', 'one', f]);
      qemuImgOk(['resize', '-q', f, `${80 * MiB}`]);
      return 'img.qcow2';
    },
  },
  {
    name: 'v2: three snapshots of a changing disk',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 64 * MiB, { compat: '0.10' });
      for (let i = 0; i < 3; i++) {
        qemuIoOk(f, `write -P 0x${(0x21 + i).toString(16)} ${i * 4}M 2M`, `discard ${i}M 64k`);
        qemuImgOk(['snapshot', '-c', `v2-${i}`, f]);
      }
      qemuIoOk(f, 'write -P 0x30 0 64k');
      return 'img.qcow2';
    },
  },
  {
    name: '20 snapshots, 512-byte clusters',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 8 * MiB, { clusterSize: 512 });
      for (let i = 0; i < 20; i++) {
        qemuIoOk(f, `write -P 0x${(0x40 + i).toString(16)} ${i * 37 * 512} 3000`);
        qemuImgOk(['snapshot', '-c', `s${i}`, f]);
      }
      return 'img.qcow2';
    },
  },
  {
    name: 'snapshots with 2 MiB clusters and compressed clusters',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 64 * MiB, { clusterSize: 2 * MiB });
      qemuIoOk(f, 'write -c -P 0x51 0 2M', 'write -P 0x52 4M 100k');
      qemuImgOk(['snapshot', '-c', 'a', f]);
      qemuIoOk(f, 'write -P 0x53 0 4k', 'write -c -P 0x54 8M 2M');
      qemuImgOk(['snapshot', '-c', 'b', f]);
      qemuIoOk(f, 'discard 8M 2M');
      return 'img.qcow2';
    },
  },
  {
    name: 'v2 table entries with extra_data_size 0, 8, 16 and 50 (unknown extra data), vm state, clock and dates set',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 64 * MiB, { compat: '0.10' });
      for (let i = 0; i < 4; i++) {
        qemuIoOk(f, `write -P 0x${(0x61 + i).toString(16)} ${i}M 64k`);
        qemuImgOk(['snapshot', '-c', `e${i}`, f]);
      }
      const cs = readHeader(f).clusterSize;
      const { offset, size, entries } = readTable(f);
      const [e0, e1, e2, e3] = entries as [RawEntry, RawEntry, RawEntry, RawEntry];
      // eds 0: the u32 vm_state_size counts; disk size and icount absent
      e0.extra = Buffer.alloc(0);
      e0.head.writeUInt32BE(123456, 32);
      e0.head.writeUInt32BE(999999999, 20); // date_nsec
      // eds 8: vm_state_size_large supersedes the u32 field
      e1.extra = Buffer.alloc(8);
      e1.extra.writeBigUInt64BE(5n * 2n ** 32n + 7n, 0);
      e1.head.writeUInt32BE(42, 32);
      e1.head.writeBigUInt64BE(3_723_456_789_012n, 24); // vm_clock_nsec: 1:02:03.456…
      // eds 16: disk size recorded, no icount
      e2.extra = Buffer.alloc(16);
      e2.extra.writeBigUInt64BE(8n * 1024n * 1024n, 8);
      e2.head.writeUInt32BE(0xfffffff0, 16); // date_sec near the u32 end
      // eds 50: the known 24 bytes, then unknown data QEMU must skip
      const known = e3.extra.subarray(0, 24);
      e3.extra = Buffer.concat([known, Buffer.from('very important data and more!!', 'latin1').subarray(0, 26)]);
      e3.extra.writeBigUInt64BE(77n, 16); // icount
      writeTable(f, offset, entries, Math.ceil(size / cs) * cs);
      return 'img.qcow2';
    },
  },
  {
    name: 'v3 table entry with a UTF-8 name and a non-numeric ID',
    make(dir) {
      const f = path.join(dir, 'img.qcow2');
      createImage(f, 16 * MiB);
      qemuIoOk(f, 'write -P 0x71 0 64k');
      qemuImgOk(['snapshot', '-c', 'grüße-✓', f]);
      qemuIoOk(f, 'write -P 0x72 0 4k');
      qemuImgOk(['snapshot', '-c', 'plain', f]);
      const cs = readHeader(f).clusterSize;
      const { offset, size, entries } = readTable(f);
      entries[1]!.id = Buffer.from('snap-b');
      entries[1]!.head.writeUInt16BE(entries[1]!.id.length, 12);
      writeTable(f, offset, entries, Math.ceil(size / cs) * cs);
      return 'img.qcow2';
    },
  },
];

compareVarieties(varieties);
