// Snapshot operations at the edges of the format: the refcount table must grow while a snapshot
// is planned, L1 and snapshot tables spanning many clusters, images with no L2 table or no L1 at
// all, refcount_bits=1 without shared clusters, many snapshots. Judged by qemu-img.
import { describe, expect, it } from 'vitest';
import { createSnapshot, deleteSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';
import { createImage, qemuIoOk } from '../helpers/qemu.ts';
import { readHeader } from '../helpers/qcow2-mini.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { ImageModel, withImage } from './snapshot-model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('snapshot edge cases', () => {
  const tmp = useTempDir('qcowscope-snapedge-');

  it('grows the refcount table inside the commit (512 B clusters, 64-bit refcounts)', async () => {
    const f = tmp.file('g.qcow2');
    createImage(f, 4 * MiB, { clusterSize: 512, refcountBits: 64 });
    const m = new ImageModel(f, 4 * MiB);
    // One reftable cluster covers 64 refblocks × 64 clusters = 2 MiB of file: fill it up.
    qemuIoOk(f, 'write -P 1 0 1900k');
    m.write(0, 1900 * KiB, 1);
    const before = readHeader(f);
    for (let i = 0; i < 3; i++) {
      await withImage(f, (img) => createSnapshot(img, `s${i}`));
      m.create(`s${i}`);
      qemuIoOk(f, `write -P ${i + 2} ${i * 300}k 300k`);
      m.write(i * 300 * KiB, 300 * KiB, i + 2);
      m.verify(tmp.dir, `after snapshot ${i}`);
    }
    expect(readHeader(f).refcountTableClusters).toBeGreaterThan(before.refcountTableClusters);
    await withImage(f, (img) => revertSnapshot(img, 's0'));
    m.revert('s0');
    await withImage(f, (img) => deleteSnapshot(img, 's1'));
    m.delete('s1');
    m.verify(tmp.dir, 'after revert and delete');
  });

  it('L1 and snapshot tables of many clusters, many snapshots with long names', async () => {
    const f = tmp.file('l.qcow2');
    createImage(f, 16 * MiB, { clusterSize: 512 }); // L1: 512 entries = 8 clusters
    const m = new ImageModel(f, 16 * MiB);
    for (let i = 0; i < 24; i++) {
      const off = (i * 683 * KiB) % (15 * MiB);
      qemuIoOk(f, `write -P ${i + 1} ${off} 3k`);
      m.write(off, 3 * KiB, i + 1);
      const name = `${i}-`.padEnd(200, 'x');
      await withImage(f, (img) => createSnapshot(img, name));
      m.create(name);
    }
    m.verify(tmp.dir, '24 snapshots');
    await withImage(f, (img) => revertSnapshot(img, '5'));
    m.revert('5');
    for (const id of ['1', '24', '12']) {
      await withImage(f, (img) => deleteSnapshot(img, id));
      m.delete(id);
    }
    m.verify(tmp.dir, 'after revert and deletes');
  }, 180_000);

  it('images without L2 tables, and a zero-size image', async () => {
    const f = tmp.file('e.qcow2');
    createImage(f, 16 * MiB);
    const m = new ImageModel(f, 16 * MiB);
    await withImage(f, (img) => createSnapshot(img, 'empty'));
    m.create('empty');
    qemuIoOk(f, 'write -P 9 1M 64k');
    m.write(MiB, 64 * KiB, 9);
    await withImage(f, (img) => revertSnapshot(img, 'empty'));
    m.revert('empty');
    await withImage(f, (img) => deleteSnapshot(img, 'empty'));
    m.delete('empty');
    m.verify(tmp.dir, 'empty image');

    const z = tmp.file('z.qcow2');
    createImage(z, 0);
    const mz = new ImageModel(z, 0);
    await withImage(z, (img) => createSnapshot(img, 'a'));
    mz.create('a');
    await withImage(z, (img) => revertSnapshot(img, 'a'));
    await withImage(z, (img) => deleteSnapshot(img, 'a'));
    mz.delete('a');
    mz.verify(tmp.dir, 'zero-size image');
  });

  it('refcount_bits=1: a snapshot of an image with nothing to share is fine', async () => {
    const f = tmp.file('r.qcow2');
    createImage(f, 4 * MiB, { refcountBits: 1 });
    const m = new ImageModel(f, 4 * MiB);
    await withImage(f, (img) => createSnapshot(img, 'nothing'));
    m.create('nothing');
    m.verify(tmp.dir);
    await withImage(f, (img) => deleteSnapshot(img, 'nothing'));
    m.delete('nothing');
    m.verify(tmp.dir);
  });
});
