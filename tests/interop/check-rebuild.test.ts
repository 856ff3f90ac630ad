// The refcount-structure rebuild in every refcount width and at the cluster-size extremes: the
// reftable entry of the first refcount block is zeroed (every refcount reads 0, iotest 060/108);
// after our `-r all` qemu-img check is clean and the guest content is QEMU's after its own repair.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, pokeU64, qemuCheck, qemuImg, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { readHeader, reftableEntryPos } from '../helpers/qcow2-mini.ts';
import { openImage } from '../../cli/open.ts';
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';

function content(file: string): Buffer {
  const raw = file + '.raw';
  qemuImgOk(['convert', '-O', 'raw', file, raw]);
  const b = fs.readFileSync(raw);
  fs.rmSync(raw);
  return b;
}

const CASES: Array<{ name: string; refcountBits?: 1 | 2 | 4 | 8 | 16 | 32 | 64; clusterSize?: number }> = [
  ...([1, 2, 4, 8, 16, 32, 64] as const).map((b) => ({ name: `refcount_bits=${b}`, refcountBits: b })),
  { name: 'cluster_size=512', clusterSize: 512 },
  { name: 'cluster_size=2M', clusterSize: 2 * 1024 * 1024 },
];

describe('refcount structure rebuild', () => {
  const tmp = useTempDir('qcowscope-rebuild-');
  for (const c of CASES) {
    it(c.name, async () => {
      const file = tmp.file('a.qcow2');
      createImage(file, '64M', { refcountBits: c.refcountBits, clusterSize: c.clusterSize });
      qemuIoOk(file, 'write -P 0x11 0 256k', 'write -P 0x22 8M 64k', `write -c -P 0x33 16M ${Math.max(65536, c.clusterSize ?? 0)}`);
      if ((c.refcountBits ?? 16) > 1) {
        expect(qemuImg(['snapshot', '-c', 's', file]).status).toBe(0);
        qemuIoOk(file, 'write -P 0x44 0 4k');
      }
      pokeU64(file, reftableEntryPos(readHeader(file), 0), 0n);
      const theirs = tmp.file('q.qcow2');
      fs.copyFileSync(file, theirs);
      const q = qemuCheck(theirs, 'all');
      const img = await openImage(file, { checkMode: true, writable: true, noBacking: true });
      const r = await runCheck(img, { repair: 'all' });
      await img.close();
      expect(r.rebuilt).toBe(true);
      expect(checkExitCode(r)).toBe(q.exitCode);
      expect({ cf: r.corruptionsFixed, lf: r.leaksFixed }).toEqual({ cf: q.corruptionsFixed, lf: q.leaksFixed });
      expect(qemuCheck(file).exitCode).toBe(0);
      expect(content(file).equals(content(theirs))).toBe(true);
      // Same placement as QEMU's rebuild: the files end at the same place.
      expect(fs.statSync(file).size).toBe(fs.statSync(theirs).size);
    }, 60_000);
  }
});

// A refcount block far past the end of a small image (the fuzz campaign of seed 20261206). QEMU's
// -r all grows the file to hold the block, then rebuilds the refcount structures: a 64 KiB image
// becomes a 64 MiB file, and where the block lies in a region of its own the rebuilt structures
// go out there too (a 10 KiB image's repaired image ends at 61 MiB). Ours does what QEMU does when
// its file cannot grow (EFBIG): the same rebuild without the far block, the file stays small.
describe('repair of a refcount block far past the end', () => {
  const tmp = useTempDir('qcowscope-rebuild-far-');
  const CASES_FAR = [
    { name: 'rc1, 8 KiB clusters, refcount table entry 121 → 64 MiB', clusterSize: 8192, refcountBits: 1 as const, index: 121, at: 64n << 20n },
    { name: 'rc2, 512-byte clusters, refcount table entry 1 → 61 MiB (a region of its own)', clusterSize: 512, refcountBits: 2 as const, index: 1, at: 0x3d2ae00n },
  ];
  for (const c of CASES_FAR) {
    it(c.name, async () => {
      const file = tmp.file('a.qcow2');
      createImage(file, '4M', { clusterSize: c.clusterSize, refcountBits: c.refcountBits });
      qemuIoOk(file, 'write -P 0x61 0 24k', 'write -c -P 0x62 64k 8k');
      pokeU64(file, reftableEntryPos(readHeader(file), c.index), c.at);
      const before = fs.statSync(file).size;
      const theirs = tmp.file('q.qcow2');
      fs.copyFileSync(file, theirs);
      const q = qemuCheck(theirs, 'all');
      const messages: string[] = [];
      const img = await openImage(file, { checkMode: true, writable: true, noBacking: true });
      const r = await runCheck(img, { repair: 'all', onFinding: (f) => messages.push(f.message) });
      await img.close();
      expect(q.exitCode).toBe(0);
      expect(checkExitCode(r)).toBe(0);
      expect(r.rebuilt).toBe(true);
      expect(messages.slice(0, 3)).toEqual([
        `Repairing refcount block ${c.index} is outside image`, 'ERROR could not resize image: File too large', 'Rebuilding refcount structure',
      ]);
      // QEMU's file holds the block it dropped; ours ends with its own image, near where it began
      const oAfter = qemuCheck(file);
      expect(oAfter.exitCode).toBe(0);
      expect(fs.statSync(theirs).size).toBeGreaterThan(Number(c.at));
      expect(fs.statSync(file).size).toBe(oAfter.json?.['image-end-offset']);
      expect(fs.statSync(file).size).toBeLessThan(before + (64 << 10));
      expect(qemuCheck(theirs).json?.['image-end-offset']).toBeGreaterThanOrEqual(fs.statSync(file).size);
      expect(content(file).equals(content(theirs))).toBe(true);
    }, 60_000);
  }
});
