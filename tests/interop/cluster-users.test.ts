// Who uses a host cluster (core/analysis/cluster-users.ts), judged by qemu-img map: the guest
// ranges of the active disk, and of each snapshot as qemu-img map reads a copy reverted to it
// (`snapshot -a` copies the snapshot's L1 table, leaving every data cluster where it was).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { clusterUsers } from '../../core/analysis/cluster-users.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { NodeFileStore } from '../../cli/node-file-store.ts';
import { createImage, makeTempDir, qemuCheck, qemuGuestRangesByCluster, qemuImgOk, qemuIoOk, removeDir } from '../helpers/qemu.ts';

const dir = makeTempDir('qcowscope-users-');
afterAll(() => removeDir(dir));

describe('clusterUsers', () => {
  it('lists the guest ranges of the active disk and of each snapshot that use a cluster, as qemu-img map reads them', async () => {
    const f = path.join(dir, 'u.qcow2');
    createImage(f, '64M');
    qemuIoOk(f, 'write -P 1 0 192k');
    qemuImgOk(['snapshot', '-c', 'one', f]);
    qemuIoOk(f, 'write -P 2 64k 64k', 'write -P 3 1M 64k');
    qemuImgOk(['snapshot', '-c', 'two', f]);
    qemuIoOk(f, 'write -P 4 0 64k');
    expect(qemuCheck(f).exitCode).toBe(0);

    const cs = 65536;
    const views: Array<{ name: string | null; ranges: Map<number, Array<[number, number]>> }> = [{ name: null, ranges: qemuGuestRangesByCluster(f, cs) }];
    for (const name of ['one', 'two']) {
      const copy = path.join(dir, `u-${name}.qcow2`);
      fs.copyFileSync(f, copy);
      qemuImgOk(['snapshot', '-a', name, copy]);
      views.push({ name, ranges: qemuGuestRangesByCluster(copy, cs) });
    }
    const clusters = new Set(views.flatMap((v) => [...v.ranges.keys()]));
    expect(clusters.size).toBeGreaterThan(3);

    const img = await Qcow2Image.open(NodeFileStore.open(f));
    try {
      for (const c of clusters) {
        const u = await clusterUsers(img, c);
        const want = views.filter((v) => v.ranges.has(c)).map((v) => ({ name: v.name, ranges: v.ranges.get(c) }));
        expect(u.uses.map((x) => ({ name: x.snapshot?.name ?? null, ranges: x.guestRanges })), `cluster ${c}`).toEqual(want);
        expect(u.refcount, `cluster ${c}`).toBeGreaterThanOrEqual(1);
      }
      // The L1 table's cluster names the active disk as its L1 table's owner, and no guest range.
      const l1 = await clusterUsers(img, Math.floor(img.header.l1TableOffset / cs));
      expect(l1.uses).toEqual([expect.objectContaining({ snapshot: null, l1Table: true, guestRanges: [] })]);
      // A free cluster past the end of the file: nobody, refcount 0.
      const free = await clusterUsers(img, Math.ceil(fs.statSync(f).size / cs) + 10);
      expect(free).toMatchObject({ refcount: 0, uses: [] });
    } finally {
      await img.close();
    }
  });
});
