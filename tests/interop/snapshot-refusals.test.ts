// Snapshot operations that cannot succeed are refused before the file is touched (docs/architecture.md §3),
// with a stable error code; group operations are all or none. QEMU leaks a cluster when a create
// fails on refcount_bits=1 (iotest 112); we leave the file byte for byte as it was.
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { openImage } from '../../cli/open.ts';
import { groupCreate, groupDelete, groupRevert } from '../../core/image/group.ts';
import { createSnapshot, deleteSnapshot, planCreate, revertSnapshot } from '../../core/image/snapshot.ts';
import {
  createImage, peek, pokeU32, pokeU64, pokeU8, qemuCheck, qemuImgOk, qemuInfo, qemuIoOk, qemuSnapshotList, sha256,
} from '../helpers/qemu.ts';
import { readHeader } from '../helpers/qcow2-mini.ts';
import { cliBundle } from '../helpers/cli.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { ImageModel, withImage } from './snapshot-model.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const MiB = 1024 * 1024;
const CLI = [await cliBundle()];

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSmall(process.execPath, [...CLI, ...args]);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('snapshot refusals', () => {
  const tmp = useTempDir('qcowscope-refuse-');

  it('refcount_bits=1: create refused, nothing written (QEMU leaks a cluster here)', async () => {
    const f = tmp.file('r1.qcow2');
    createImage(f, 4 * MiB, { refcountBits: 1 });
    qemuIoOk(f, 'write -P 1 0 64k');
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'foo'))).rejects.toMatchObject({ code: 'REFCOUNT_OVERFLOW', message: expect.stringMatching(/refcount_bits=1/) });
    expect(sha256(f)).toBe(before);
    const r = cli(['snapshot', '-c', 'foo', f]);
    expect(r.status).toBe(1);
    // the engine names the refcount width (the page shows it); the command line words it as qemu-img does
    expect(r.stderr).toBe("qcowscope: Could not create snapshot 'foo': -22 (Invalid argument)\n");
    expect(sha256(f)).toBe(before);
    expect(qemuCheck(f).exitCode).toBe(0);
  });

  it('refcount_bits=2: two snapshots, the third refused with nothing written', async () => {
    const f = tmp.file('r2.qcow2');
    createImage(f, 4 * MiB, { refcountBits: 2 });
    qemuIoOk(f, 'write -P 1 0 64k');
    await withImage(f, (img) => createSnapshot(img, 'a'));
    await withImage(f, (img) => createSnapshot(img, 'b'));
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'c'))).rejects.toMatchObject({ code: 'REFCOUNT_OVERFLOW' });
    expect(sha256(f)).toBe(before);
    expect(qemuCheck(f).exitCode).toBe(0);
    expect(qemuSnapshotList(f).map((s) => s.name)).toEqual(['a', 'b']);
  });

  it('external data file: refused', async () => {
    const f = tmp.file('d.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `data_file=${tmp.file('d.raw')}`, f, '4M']);
    qemuIoOk(f, 'write -P 1 0 64k');
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'x'))).rejects.toMatchObject({ code: 'NOT_SUPPORTED', details: { reason: 'data-file' } });
    expect(sha256(f)).toBe(before);
  });

  it('corrupt bit: the image is not opened for writing, the CLI says why', async () => {
    const f = tmp.file('c.qcow2');
    createImage(f, 4 * MiB);
    pokeU8(f, 79, peek(f, 79, 1)[0]! | 2);
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'x'))).rejects.toMatchObject({ code: 'IMAGE_CORRUPT' });
    const img = await openImage(f);
    try {
      await expect(planCreate(img, 'x')).rejects.toMatchObject({ code: 'READ_ONLY' });
    } finally {
      await img.close();
    }
    const r = cli(['snapshot', '-c', 'x', f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/corrupt/i);
    expect(sha256(f)).toBe(before);
  });

  it('unknown snapshot: revert and delete refused, CLI exit 1', async () => {
    const f = tmp.file('u.qcow2');
    createImage(f, 4 * MiB);
    await withImage(f, (img) => createSnapshot(img, 'a'));
    const before = sha256(f);
    await expect(withImage(f, (img) => revertSnapshot(img, 'nope'))).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    await expect(withImage(f, (img) => deleteSnapshot(img, '7'))).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    expect(cli(['snapshot', '-a', 'nope', f]).status).toBe(1);
    expect(cli(['snapshot', '-d', 'nope', f]).stderr).toBe("qcowscope: Could not delete snapshot 'nope': snapshot not found\n"); // qemu-img's words (cli-words.test.ts compares)
    expect(sha256(f)).toBe(before);
  });

  it('persistent dirty bitmap: revert refused (as QEMU), create and delete work and keep the bitmap', async () => {
    const f = tmp.file('b.qcow2');
    createImage(f, 4 * MiB);
    qemuIoOk(f, 'write -P 1 0 64k');
    qemuImgOk(['bitmap', '--add', f, 'b0']);
    await withImage(f, (img) => createSnapshot(img, 'a'));
    const before = sha256(f);
    await expect(withImage(f, (img) => revertSnapshot(img, 'a'))).rejects.toMatchObject({ code: 'NOT_SUPPORTED', message: expect.stringMatching(/Device has active dirty bitmaps/) });
    expect(sha256(f)).toBe(before);
    await withImage(f, (img) => deleteSnapshot(img, 'a'));
    expect(qemuCheck(f).exitCode).toBe(0);
    const bitmaps = (qemuInfo(f)['format-specific']!.data as { bitmaps?: Array<{ name: string }> }).bitmaps;
    expect(bitmaps?.map((b) => b.name)).toEqual(['b0']);
  });

  it('dirty image (qemu-io killed with lazy refcounts): the engine refuses, the CLI repairs first as qemu-img does', async () => {
    const f = tmp.file('dirty.qcow2');
    createImage(f, 16 * MiB, { lazyRefcounts: true });
    qemuIoOk(f, 'write -P 0x11 0 1M');
    qemuImgOk(['snapshot', '-c', 'a', f]);
    spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 0 64k', '-c', 'write -P 0x23 2M 64k', '-c', 'sigraise 9', f]);
    expect(qemuInfo(f)['dirty-flag']).toBe(true);
    expect(qemuCheck(f).corruptions).toBeGreaterThan(0);
    const before = sha256(f);
    // the engine itself refuses a dirty image; the open repairs it first unless told not to
    await expect(withImage(f, (img) => createSnapshot(img, 'b'), { repairDirty: false })).rejects.toMatchObject({ code: 'NOT_SUPPORTED', message: expect.stringMatching(/dirty/) });
    expect(sha256(f)).toBe(before);
    for (const args of [['-c', 'b'], ['-a', 'a'], ['-d', 'b']]) {
      const r = cli(['snapshot', ...args, f]);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(qemuCheck(f).exitCode, args.join(' ')).toBe(0);
      expect(qemuInfo(f)['dirty-flag']).toBe(false);
    }
    expect(qemuSnapshotList(f).map((s) => s.name)).toEqual(['a']);
    qemuIoOk(f, 'read -P 0x11 0 1M', 'read -P 0 2M 64k');
  });

  it("v2: a snapshot of another disk size can't be reverted to (QEMU: Can't resize a v2 image which has snapshots)", async () => {
    const f = tmp.file('v2.qcow2');
    createImage(f, 4 * MiB, { compat: '0.10' });
    await withImage(f, (img) => createSnapshot(img, 'a'));
    const h = readHeader(f);
    pokeU64(f, h.snapshotsOffset + 48, 8 * MiB); // disk_size in the extra data
    const before = sha256(f);
    await expect(withImage(f, (img) => revertSnapshot(img, 'a'))).rejects.toMatchObject({ code: 'NOT_SUPPORTED', message: expect.stringMatching(/Can't resize a v2 image which has snapshots/) });
    expect(sha256(f)).toBe(before);
  });

  it('65536 snapshots: create refused (iotest 080 "Table size limit")', async () => {
    const f = tmp.file('l.qcow2');
    createImage(f, 4 * MiB);
    pokeU64(f, 64, 0x1000000); // past EOF: 65536 all-zero entries
    pokeU32(f, 60, 0x10000);
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'test'))).rejects.toMatchObject({ code: 'SNAPSHOT_LIMIT' });
    expect(sha256(f)).toBe(before);
  });

  it('an L2 reference onto other metadata (iotest 060: L1 entry pointing at the L1 table) is refused', async () => {
    const f = tmp.file('o.qcow2');
    createImage(f, 64 * MiB);
    qemuIoOk(f, 'write -P 1 0 64k');
    const h = readHeader(f);
    pokeU64(f, h.l1TableOffset, 0x8000000000000000n + BigInt(h.l1TableOffset));
    const before = sha256(f);
    await expect(withImage(f, (img) => createSnapshot(img, 'x'))).rejects.toMatchObject({
      code: 'METADATA_CORRUPT', message: expect.stringMatching(/overlaps with the active L1 table/),
    });
    expect(sha256(f)).toBe(before);
  });

  it('names longer than QEMU keeps are refused', async () => {
    const f = tmp.file('n.qcow2');
    createImage(f, MiB);
    await expect(withImage(f, (img) => createSnapshot(img, 'x'.repeat(256)))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await withImage(f, (img) => createSnapshot(img, 'y'.repeat(255)));
    expect(qemuSnapshotList(f)[0]!.name).toBe('y'.repeat(255));
  });
});

describe('group snapshots: all or none', () => {
  const tmp = useTempDir('qcowscope-group-');

  function twoImages(): [string, string, string] {
    const a = tmp.file('a.qcow2');
    const b = tmp.file('b.qcow2');
    const c = tmp.file('c.qcow2');
    createImage(a, 4 * MiB);
    createImage(b, 4 * MiB, { clusterSize: 4096 });
    createImage(c, 4 * MiB, { refcountBits: 1 });
    for (const f of [a, b, c]) qemuIoOk(f, 'write -P 7 0 256k');
    return [a, b, c];
  }

  it('create on several images via the CLI; a refusal on one leaves all untouched', async () => {
    const [a, b, c] = twoImages();
    expect(cli(['snapshot', '-c', 'g1', a, b]).status).toBe(0);
    for (const f of [a, b]) expect(qemuSnapshotList(f).map((s) => [s.id, s.name])).toEqual([['1', 'g1']]);
    const sums = [a, b, c].map(sha256);
    const r = cli(['snapshot', '-c', 'g2', a, b, c]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('c.qcow2');
    expect([a, b, c].map(sha256)).toEqual(sums);
    // revert where one image lacks the snapshot: nothing happens
    qemuIoOk(a, 'write -P 9 0 64k');
    const sums2 = [a, b, c].map(sha256);
    expect(cli(['snapshot', '-a', 'g1', a, b, c]).status).toBe(1);
    expect(cli(['snapshot', '-d', 'g1', a, c]).status).toBe(1);
    expect([a, b, c].map(sha256)).toEqual(sums2);
    expect(cli(['snapshot', '-a', 'g1', a, b]).status).toBe(0);
    expect(cli(['snapshot', '-d', '1', a, b]).status).toBe(0);
    for (const f of [a, b]) {
      expect(qemuCheck(f).exitCode).toBe(0);
      expect(qemuSnapshotList(f)).toEqual([]);
    }
    expect(cli(['snapshot', '-c', 'x', a, a]).stderr).toMatch(/same file/);
  });

  it('a failure while publishing on image k rolls back images 0..k-1 exactly', async () => {
    const [a, b] = twoImages();
    const ma = new ImageModel(a, 4 * MiB);
    const mb = new ImageModel(b, 4 * MiB);
    ma.write(0, 256 * 1024, 7);
    mb.write(0, 256 * 1024, 7);
    await withImage(a, (img) => createSnapshot(img, 'base'));
    await withImage(b, (img) => createSnapshot(img, 'base'));
    ma.create('base');
    mb.create('base');
    qemuIoOk(a, 'write -P 8 0 64k');
    qemuIoOk(b, 'write -P 8 0 64k');
    ma.write(0, 65536, 8);
    mb.write(0, 65536, 8);
    for (const op of ['create', 'revert', 'delete'] as const) {
      const ia = await openImage(a, { writable: true, noBacking: true });
      const ib = await openImage(b, { writable: true, noBacking: true });
      // Make image b's header write fail (an I/O error at the commit point).
      const store = ib.store as unknown as { write: (o: number, d: Uint8Array) => Promise<void> };
      const real = store.write.bind(store);
      store.write = async (o, d) => {
        if (o < 72) throw new Error('injected I/O error');
        return real(o, d);
      };
      const run = op === 'create' ? groupCreate([ia, ib], 'new') : op === 'revert' ? groupRevert([ia, ib], 'base') : groupDelete([ia, ib], 'base');
      await expect(run).rejects.toThrow(/injected/);
      await ia.close();
      await ib.close();
      ma.verify(tmp.dir, `a after failed group ${op}`);
      mb.verify(tmp.dir, `b after failed group ${op}`);
    }
  });
});
