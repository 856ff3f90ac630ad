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

// A refcount block 64 MiB past the end of a 64 KiB image (1-bit refcounts, 8 KiB clusters; the
// fuzz campaign of seed 20261206). QEMU's -r all grows the file to hold the block, rebuilds the
// refcount structures (which drop it) and leaves a 64 MiB file ending in zeros; ours reports the
// same and rebuilds the same structures without growing the file to a block nobody keeps.
describe('repair of a refcount block far past the end', () => {
  const tmp = useTempDir('qcowscope-rebuild-far-');
  it('rc1, 8 KiB clusters, refcount table entry 121 → 64 MiB: same report and image, file not grown', async () => {
    const file = tmp.file('a.qcow2');
    createImage(file, '4M', { clusterSize: 8192, refcountBits: 1 });
    qemuIoOk(file, 'write -P 0x61 0 24k', 'write -c -P 0x62 64k 8k');
    pokeU64(file, reftableEntryPos(readHeader(file), 121), 64n << 20n);
    const before = fs.statSync(file).size;
    const theirs = tmp.file('q.qcow2');
    fs.copyFileSync(file, theirs);
    const q = qemuCheck(theirs, 'all');
    const img = await openImage(file, { checkMode: true, writable: true, noBacking: true });
    const r = await runCheck(img, { repair: 'all' });
    await img.close();
    expect(q.exitCode).toBe(0);
    expect(checkExitCode(r)).toBe(q.exitCode);
    expect({ cf: r.corruptionsFixed, lf: r.leaksFixed, rebuilt: r.rebuilt }).toEqual({ cf: q.corruptionsFixed, lf: q.leaksFixed, rebuilt: true });
    // QEMU's file holds the block it dropped; its image ends where ours does, and ours ends there
    const qAfter = qemuCheck(theirs);
    const oAfter = qemuCheck(file);
    expect(oAfter.exitCode).toBe(0);
    expect(oAfter.json?.['image-end-offset']).toBe(qAfter.json?.['image-end-offset']);
    expect(fs.statSync(theirs).size).toBeGreaterThan(64 << 20);
    expect(fs.statSync(file).size).toBe(oAfter.json?.['image-end-offset']);
    expect(fs.statSync(file).size).toBeLessThan(before + (64 << 10));
    expect(content(file).equals(content(theirs))).toBe(true);
  }, 60_000);
});
