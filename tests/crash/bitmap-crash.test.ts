// Crash safety of bitmap operations (core/image/bitmap-ops.ts): each runs on a memory copy of a
// qemu-made image behind a store that stops at each write in turn, and behind one that drops any
// subset of the writes since the last flush. After every crash `qemu-img check` finds no
// corruption (leaks are allowed), `qemu-img info` lists the bitmaps as before the operation or as
// after it, and the guest disk is unchanged (`qemu-img compare` with the original).
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { changeBitmaps, type BitmapOp } from '../../core/image/bitmap-ops.ts';
import { enumerateCrashStates, enumerateDroppedStates, judgeEachDistinct } from '../helpers/crash-store.ts';
import { qemuCheck, qemuImg, qemuImgOk, qemuInfo, qemuIoOk } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const tmp = useTempDir('qcowscope-bcrash-');

function bitmapsOf(file: string): unknown {
  return (qemuInfo(file) as unknown as { 'format-specific'?: { data?: { bitmaps?: unknown } } })['format-specific']?.data?.bitmaps ?? [];
}

/** Data clusters a bitmap's table points at, read from the file's bytes (independent of core/). */
function bitmapDataClusters(file: string, name: string): number {
  const b = fs.readFileSync(file);
  let pos = b.readUInt32BE(100);
  for (;;) {
    const type = b.readUInt32BE(pos);
    const len = b.readUInt32BE(pos + 4);
    if (type === 0) return 0;
    if (type === 0x23852875) break;
    pos += 8 + Math.ceil(len / 8) * 8;
  }
  let at = Number(b.readBigUInt64BE(pos + 8 + 16));
  for (let i = 0; i < b.readUInt32BE(pos + 8); i++) {
    const tableOffset = Number(b.readBigUInt64BE(at));
    const tableSize = b.readUInt32BE(at + 8);
    const nameSize = b.readUInt16BE(at + 18);
    const entryName = b.subarray(at + 24, at + 24 + nameSize).toString('utf8');
    if (entryName === name) {
      let n = 0;
      for (let k = 0; k < tableSize; k++) if ((b.readBigUInt64BE(tableOffset + k * 8) & 0x00fffffffffffe00n) !== 0n) n++;
      return n;
    }
    at += Math.ceil((24 + nameSize + b.readUInt32BE(at + 20)) / 8) * 8;
  }
  return 0;
}

/** A 64 MiB image with data and two bitmaps, one of them with dirty bits (data clusters) recorded by qemu-io. */
function makeImage(file: string, clusterSize: string): void {
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, file, '64M']);
  qemuIoOk(file, 'write -P 1 0 1M');
  qemuImgOk(['bitmap', '--add', '-g', '512', file, 'dirty']);
  qemuImgOk(['bitmap', '--add', '--disable', file, 'quiet']);
  // the enabled bitmap records these writes and is stored with data clusters when qemu-io closes
  qemuIoOk(file, 'write -P 2 5M 300k', 'write -P 3 50M 64k');
}

/** makeImage, then qemu-io killed while it had the image open for writing: every bitmap left in use, then one more added. */
function makeStaleImage(file: string, clusterSize: string): void {
  makeImage(file, clusterSize);
  const r = spawnSmall('qemu-io', ['-f', 'qcow2', '-c', 'write -P 6 1M 64k', '-c', 'sigraise 9', file]);
  expect(r.signal, 'qemu-io killed itself').toBe('SIGKILL');
  qemuImgOk(['bitmap', '--add', file, 'fresh']);
}

async function run(store: ImageStore, ops: BitmapOp[]): Promise<void> {
  const img = await Qcow2Image.open(store, { writable: true });
  try {
    await changeBitmaps(img, ops);
  } finally {
    await img.close().catch(() => undefined);
  }
}

const CASES: Array<[string, BitmapOp[], ((file: string, clusterSize: string) => void)?]> = [
  ['add', [{ op: 'add', name: 'new', granularity: 4096 }]],
  ['remove a bitmap with data', [{ op: 'remove', name: 'dirty' }]],
  ['clear a bitmap with data', [{ op: 'clear', name: 'dirty' }]],
  ['disable and enable', [{ op: 'disable', name: 'dirty' }, { op: 'enable', name: 'quiet' }]],
  ['remove both (the extension goes)', [{ op: 'remove', name: 'dirty' }, { op: 'remove', name: 'quiet' }]],
  ['merge a bitmap with data into another (new table and data clusters)', [{ op: 'merge', name: 'quiet', from: 'dirty' }]],
  // two stores as qemu-img's: the stale bitmap's removal, then the one not in use stored again
  ['remove a bitmap a crash left in use', [{ op: 'remove', name: 'dirty' }], makeStaleImage],
];

describe('bitmap operations stopped at every write, or losing unflushed writes', () => {
  // every operation with 64 KiB clusters; with 512-byte ones (tables and directory over several
  // clusters) the two that allocate and free the most, and a remove (two stores, as qemu-img's:
  // the directory without the bitmap, then every bitmap again where the freed clusters were)
  const runs = [...CASES.map((c) => ['64k', ...c] as const), ...CASES.filter(([n]) => /^(add|clear|remove a bitmap with)/.test(n)).map((c) => ['512', ...c] as const)];
  for (const [cs, name, ops, make] of runs) {
    it(`${name} (${cs} clusters)`, async () => {
      const orig = tmp.file('orig.qcow2');
      (make ?? makeImage)(orig, cs);
      const base = new Uint8Array(fs.readFileSync(orig));
      const before = bitmapsOf(orig);
      const doneFile = tmp.file('done.qcow2');
      const mem = new MemoryStore(base.slice());
      await run(mem, ops);
      fs.writeFileSync(doneFile, mem.bytes());
      const after = bitmapsOf(doneFile);
      if (ops.every((o) => o.op === 'clear')) {
        // the list stays; the bitmap's dirty bits (its data clusters) are gone
        expect(bitmapDataClusters(orig, 'dirty')).toBeGreaterThan(0);
        expect(bitmapDataClusters(doneFile, 'dirty')).toBe(0);
      } else if (ops.every((o) => o.op === 'merge')) {
        // the list stays; the disabled bitmap takes the other's dirty bits (data clusters)
        expect(bitmapDataClusters(orig, 'quiet')).toBe(0);
        expect(bitmapDataClusters(doneFile, 'quiet')).toBeGreaterThan(0);
      } else {
        expect(after).not.toEqual(before);
      }
      expect(qemuCheck(doneFile).exitCode).toBe(0);

      const judge = judgeEachDistinct((bytes, what) => {
        const f = tmp.file('state.qcow2');
        fs.writeFileSync(f, bytes);
        const c = qemuCheck(f);
        expect(c.json?.corruptions ?? 0, `${what}\n${c.stderr}`).toBe(0);
        expect([0, 3], `${what}: check exit code\n${c.stderr}`).toContain(c.exitCode);
        const listed = bitmapsOf(f);
        expect([before, after], what).toContainEqual(listed);
        // a merge is all or nothing: the target's bits as before (none) or as after
        if (ops.every((o) => o.op === 'merge')) expect([0, bitmapDataClusters(doneFile, 'quiet')], what).toContain(bitmapDataClusters(f, 'quiet'));
        expect(qemuImg(['compare', orig, f]).status, `${what}: guest data`).toBe(0);
      });
      const states = await enumerateCrashStates(base, (s) => run(s, ops));
      expect(states.length).toBeGreaterThan(2);
      for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
      const dropped = await enumerateDroppedStates(base, (s) => run(s, ops), { exhaustiveUpTo: 5, samples: 12 });
      for (const s of dropped.states()) judge(s.bytes, `epoch ${s.epoch}, writes kept ${s.mask.map(Number).join('')}`);
    });
  }
});
