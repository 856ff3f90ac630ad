// `qcowscope check` (plain, -r leaks, -r all) against `qemu-img check` on images whose L1 entries
// name the same L2 tables many times: the walk reads such a table once and replays the record of
// its walk at every later reference, so stdout, stderr (message order included), exit code and
// the repaired file must be qemu-img's, which reads and walks the table again each time. The first
// image is fuzz campaign case 17558 (docs/fuzz-campaign.md): an active L1 of 4 Mi entries over
// the file's own L2 table and data on 2 MiB clusters, whose repair stops on a failed overlap check.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { cliBundle } from '../helpers/cli.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, pokeU32, pokeU64, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { dataClusterOffset, l1EntryPos, l2EntryPos, l2TableOffset, readHeader } from '../helpers/qcow2-mini.ts';

const CLI = [await cliBundle()];

function run(cmd: string, args: string[], cwd: string) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd, maxBuffer: 256 * 1024 * 1024 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
const norm = (s: string) => s.replace(/^qemu-img: /gm, 'qcowscope: ');

describe('check of L2 tables named by many L1 entries', () => {
  const tmp = useTempDir('qcowscope-check-shared-l2-');

  function sameAsQemu(base: string, modes = [[], ['-r', 'leaks'], ['-r', 'all']]): void {
    for (const repair of modes) {
      fs.copyFileSync(base, tmp.file('q.qcow2'));
      fs.copyFileSync(base, tmp.file('o.qcow2'));
      const q = run('qemu-img', ['check', ...repair, 'q.qcow2'], tmp.dir);
      const o = run(process.execPath, [...CLI, 'check', ...repair, 'o.qcow2'], tmp.dir);
      const what = repair.join(' ') || 'check';
      expect(o.status, `exit ${what}`).toBe(q.status);
      expect(o.stdout, `stdout ${what}`).toBe(q.stdout);
      expect(o.stderr, `stderr ${what}`).toBe(norm(q.stderr));
      expect(fs.readFileSync(tmp.file('o.qcow2')).equals(fs.readFileSync(tmp.file('q.qcow2'))), `file after ${what}`).toBe(true);
    }
  }

  it('fuzz case 17558: l1_size raised to 4 Mi entries on 2 MiB clusters, 64-bit refcounts', () => {
    const f = tmp.file('base.qcow2');
    // the fuzz seed v3-2m-rc64 (tests/fuzz/seeds.ts) and the case's one mutation
    createImage(f, '8M', { clusterSize: 2 * 1024 * 1024, refcountBits: 64 });
    qemuIoOk(f, 'write -P 0x51 0 64k', 'write -c -P 0x52 2M 2M');
    qemuImgOk(['snapshot', '-c', 'big', f]);
    pokeU32(f, 36, 0x400000); // l1_size
    sameAsQemu(f, [[], ['-r', 'all']]); // (-r leaks walks as the check does, and fails as -r all)
  }, 240_000);

  it('one L2 table named by three L1 entries, with a reserved bit and an unaligned preallocated zero cluster to repair', () => {
    const f = tmp.file('base.qcow2');
    createImage(f, '4G', { refcountBits: 16 }); // 8 L1 entries
    qemuIoOk(f, 'write -P 0x11 0 128k');
    const h = readHeader(f);
    const l2 = l2TableOffset(f, 0, h);
    const data = dataClusterOffset(f, 0, 0, h);
    for (const i of [1, 3]) pokeU64(f, l1EntryPos(f, i, h), BigInt(l2) | (1n << 63n));
    // entry 5: reserved bit 56 set; entry 6: an unaligned cluster marked zero (rewritten by -r all);
    // entry 7: an unaligned data cluster
    pokeU64(f, l2EntryPos(l2, 5, h), BigInt(data + 2 * h.clusterSize) | (1n << 56n));
    pokeU64(f, l2EntryPos(l2, 6, h), BigInt(data + 512) | 1n);
    pokeU64(f, l2EntryPos(l2, 7, h), BigInt(data + 3 * h.clusterSize + 512));
    sameAsQemu(f);
  }, 120_000);

  // 1 Mi references to one cluster with 64-bit refcounts; 64 Ki with 4-bit ones, which overflow
  // (QEMU reports each overflow: the replay counts such a cluster one reference at a time)
  for (const [size, refcountBits] of [['64G', 64], ['4G', 4]] as const) {
    it(`every L1 entry names one L2 table whose every entry names one data cluster (${size}, refcount_bits=${refcountBits})`, () => {
      const f = tmp.file('base.qcow2');
      createImage(f, size, { refcountBits });
      qemuIoOk(f, 'write -P 0x11 0 64k');
      const h = readHeader(f);
      const l2 = l2TableOffset(f, 0, h);
      const data = dataClusterOffset(f, 0, 0, h);
      for (let i = 0; i < h.l1Size; i++) pokeU64(f, l1EntryPos(f, i, h), BigInt(l2) | (1n << 63n));
      for (let j = 0; j < h.clusterSize / 8; j++) pokeU64(f, l2EntryPos(l2, j, h), BigInt(data) | (1n << 63n));
      sameAsQemu(f);
    }, 180_000);
  }
});
