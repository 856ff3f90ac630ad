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
