// Snapshot create, revert and delete (and a group) on images qemu-img calls corrupt are refused
// before anything is written (core/image/snapshot-precheck.ts), with one line naming the damaged
// structure and saying to run check; `check -r all` then repairs what it can. Images are made by
// qemu-img/qemu-io and damaged by hand (corruptor.ts style: structures located by parsing the
// file); `qemu-img check` is the judge before the refusal, after our repair, and after the
// operation. Whether the damage is repairable at all is asked of qemu-img's own `check -r all`
// on a copy: where it cannot repair, neither do we, and the operation stays refused.
import * as fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { pokeU64, qemuCheck, qemuInfo, qemuIoOk, qemuImgOk, createImage, sha256, truncateFile, qemuSnapshotList } from '../helpers/qemu.ts';
import { SNAP, dataClusterOffset, readHeader, readSnapshots, reftableEntryPos } from '../helpers/qcow2-mini.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { runCli } from './read-support.ts';
import { cliBundle } from '../helpers/cli.ts';

const MiB = 1024 * 1024;

/** qemu-img finds no corruption and no check error, and the corrupt bit is clear. */
function isHealthy(file: string): boolean {
  const c = qemuCheck(file);
  return c.corruptions === 0 && c.checkErrors === 0 && c.exitCode !== 1 && qemuInfo(file)['format-specific']?.data?.corrupt !== true;
}

/** 64 MiB, 64 KiB clusters, 64 KiB of data, snapshot 's1' (L1 copy, then the table after it). */
function makeSnapshotted(file: string): void {
  createImage(file, 64 * MiB);
  qemuIoOk(file, 'write -P 0x11 0 64k');
  qemuImgOk(['snapshot', '-c', 's1', file]);
}

interface Case {
  name: string;
  /** Damage a snapshotted image in place. */
  damage(file: string): void;
  /** What the one-line refusal names. */
  names: RegExp;
}

const CASES: Case[] = [
  {
    name: "snapshot 1's L1 table not cluster-aligned",
    damage: (f) => {
      const sn = readSnapshots(f)[0]!;
      pokeU64(f, sn.entryPos + SNAP.l1TableOffset, sn.l1TableOffset + 0x200n);
    },
    names: /snapshot 1 \('s1'\)'s L1 table at 0x[0-9a-f]+200 is not cluster-aligned/,
  },
  {
    name: 'cut short after three clusters (snapshot table entry incomplete, L1 past the end)',
    damage: (f) => truncateFile(f, 3 * 65536),
    names: /snapshot table entry 0 at 0x[0-9a-f]+ is incomplete/,
  },
  {
    name: 'active L1 table past the end of the file',
    damage: (f) => pokeU64(f, 40, 32 * MiB),
    names: /active L1 table at 0x2000000 runs past the end of the file/,
  },
  {
    name: 'refcount block past the end of the file',
    damage: (f) => pokeU64(f, reftableEntryPos(readHeader(f), 0), 16 * MiB),
    names: /refcount block 0 at 0x1000000 lies past the end of the file/,
  },
  {
    name: 'refcount block not cluster-aligned',
    damage: (f) => {
      const pos = reftableEntryPos(readHeader(f), 0);
      const h = readHeader(f);
      pokeU64(f, pos, h.refcountTableOffset + 0x10200);
    },
    names: /refcount block 0 at 0x[0-9a-f]+200 is not cluster-aligned/,
  },
  {
    // fuzz campaign of seed 20261206: every refcount reads 0x1111, so the first free cluster is
    // 2 GiB on (qemu-img snapshot -c writes there); the allocation limit refuses
    name: 'refcount block pointing at guest data (refcounts count 2 GiB past the end as in use)',
    damage: (f) => pokeU64(f, reftableEntryPos(readHeader(f), 0), BigInt(dataClusterOffset(f))),
    names: /refcount block 0 at 0x[0-9a-f]+ counts the clusters after the end of the file \(0x[0-9a-f]+\) as in use/,
  },
  {
    name: "refcount table moved onto snapshot 1's L1 table",
    damage: (f) => pokeU64(f, 48, readSnapshots(f)[0]!.l1TableOffset),
    names: /the refcount table at 0x[0-9a-f]+ overlaps with inactive L1 table/,
  },
];

const OPS: Array<{ what: string; args: string[] }> = [
  { what: 'create', args: ['-c', 'x'] },
  { what: 'revert', args: ['-a', 's1'] },
  { what: 'delete', args: ['-d', 's1'] },
];

describe('snapshot operations refuse a corrupt image before writing', () => {
  const tmp = useTempDir('qcowscope-precheck-');
  let cli = '';
  beforeAll(async () => {
    cli = await cliBundle();
  });
  // The bundle is the run's shared one (tests/helpers/global-setup.ts removes it at the end).

  for (const c of CASES) {
    it(c.name, () => {
      const f = tmp.file('d.qcow2');
      makeSnapshotted(f);
      c.damage(f);
      expect(qemuCheck(f).exitCode, 'qemu-img calls the damaged image corrupt').not.toBe(0);
      const before = sha256(f);
      for (const op of OPS) {
        const r = runCli(cli, ['snapshot', ...op.args, f]);
        expect(r.status, `${op.what}: ${r.stderr}`).toBe(1);
        const lines = r.stderr.trim().split('\n');
        expect(lines, op.what).toHaveLength(1);
        // create names the damage; revert/delete may stop first at the snapshot table repair
        if (op.what === 'create') expect(lines[0]).toMatch(c.names);
        expect(lines[0]).toMatch(/^qcowscope: .*(check|corrupt)/);
        expect(sha256(f), `${op.what} left the file as it was`).toBe(before);
      }
      // a group with a good image: neither is touched
      const good = tmp.file('good.qcow2');
      makeSnapshotted(good);
      const goodBefore = sha256(good);
      expect(runCli(cli, ['snapshot', '-c', 'g', good, f]).status).toBe(1);
      expect(sha256(good)).toBe(goodBefore);
      expect(sha256(f)).toBe(before);

      // qemu-img's own repair on a copy: where it repairs, ours must too
      const copy = tmp.file('qemu-repaired.qcow2');
      fs.copyFileSync(f, copy);
      qemuCheck(copy, 'all');
      const qemuRepaired = isHealthy(copy);

      runCli(cli, ['check', '-r', 'all', f]);
      const repaired = isHealthy(f);
      if (qemuRepaired) expect(repaired, 'qemu-img repairs this, so must we').toBe(true);
      const r = runCli(cli, ['snapshot', '-c', 'x', f]);
      if (repaired) {
        expect(r.status, r.stderr).toBe(0);
        const judged = qemuCheck(f);
        expect(judged.corruptions + judged.checkErrors).toBe(0);
        expect(qemuSnapshotList(f).map((s) => s.name)).toContain('x');
      } else {
        expect(r.status).toBe(1);
      }
    });
  }

  it('a healthy image is not refused (the pre-check is not always on)', () => {
    const f = tmp.file('ok.qcow2');
    makeSnapshotted(f);
    for (const op of OPS) expect(runCli(cli, ['snapshot', ...op.args, f]).status, op.what).toBe(0);
    expect(qemuCheck(f).exitCode).toBe(0);
  });
});
