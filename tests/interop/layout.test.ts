// The layout map against QEMU's view of the same images: every host offset qemu-img map reports
// for guest data is a data cluster, the tables sit where the header says, nothing is leaked or
// corrupt on a clean image (qemu-img check agrees), and damaged images show their damage.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { createImage, qemuCheck, qemuImgOk, qemuIoOk, qemuMap } from '../helpers/qemu.ts';
import { readHeader, refblockOffset, readSnapshots } from '../helpers/qcow2-mini.ts';
import { openImage } from '../../cli/open.ts';
import { buildLayout, layoutRanges, Kind, LAYOUT_KIND_NAMES } from '../../core/analysis/layout.ts';

async function layoutOf(file: string) {
  const img = await openImage(file, { checkMode: true, noBacking: true });
  try {
    return await buildLayout(img);
  } finally {
    await img.close();
  }
}

describe('layout', () => {
  const tmp = useTempDir('qcowscope-layout-');

  it('a clean image with snapshots, compressed data and a zero cluster', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '64M');
    qemuIoOk(f, 'write -P 0x11 0 128k', 'write -c -P 0x22 1M 64k', 'write -z 2M 64k');
    qemuImgOk(['snapshot', '-c', 's1', f]);
    qemuIoOk(f, 'write -P 0x33 0 64k', 'write -P 0x44 3M 64k');
    const l = await layoutOf(f);
    const h = readHeader(f);
    const cs = h.clusterSize;
    expect(l.kinds[0]).toBe(Kind.Header);
    expect(l.kinds[h.l1TableOffset / cs]).toBe(Kind.ActiveL1);
    expect(l.kinds[h.refcountTableOffset / cs]).toBe(Kind.Reftable);
    expect(l.kinds[refblockOffset(f) / cs]).toBe(Kind.Refblock);
    expect(l.kinds[h.snapshotsOffset / cs]).toBe(Kind.SnapshotTable);
    expect(l.kinds[Number(readSnapshots(f)[0]!.l1TableOffset) / cs]).toBe(Kind.SnapshotL1);
    for (const e of qemuMap(f)) {
      if (e.offset === undefined || !e.data) continue;
      for (let o = e.offset; o < e.offset + e.length; o += cs) {
        expect([Kind.DataExclusive, Kind.DataShared], `host ${o}`).toContain(l.kinds[Math.floor(o / cs)]);
      }
    }
    expect(l.summary.compressed).toBe(1);
    expect(l.summary['data-shared']).toBe(1); // guest 64k..128k, still shared with s1
    expect(l.summary['data-snapshot']).toBe(1); // the old guest 0..64k, only in s1
    expect(l.summary.leaked + l.summary.corrupt).toBe(0);
    expect(qemuCheck(f).exitCode).toBe(0);
    const used = l.clusterCount - l.summary.free;
    expect(used).toBe(l.kinds.filter((k) => k !== Kind.Free).length);
    const r = layoutRanges(l.kinds);
    let total = 0;
    for (let i = 0; i < r.length; i++) total += r.counts[i]!;
    expect(total).toBe(l.clusterCount);
    expect(LAYOUT_KIND_NAMES[r.kinds[0]!]).toBe('header');
  });

  it('metadata preallocation: every cluster is owned', async () => {
    const f = tmp.file('p.qcow2');
    createImage(f, '128M', { preallocation: 'metadata' });
    const l = await layoutOf(f);
    expect(l.summary.free + l.summary.leaked + l.summary.corrupt).toBe(0);
    expect(l.summary.data).toBe(2048);
  });

  it('damage shows: leaked, corrupt (refcount below references), overlapping owners', async () => {
    const leaked = tmp.file('leaked.qcow2');
    makeDamagedImage('leaked-cluster', leaked);
    expect((await layoutOf(leaked)).summary.leaked).toBe(1);

    const low = tmp.file('low.qcow2');
    makeDamagedImage('refcount-too-low-shared', low);
    const l2 = await layoutOf(low);
    expect(l2.kinds[5]).toBe(Kind.Corrupt);

    const self = tmp.file('self.qcow2');
    makeDamagedImage('l1-points-at-itself', self);
    const l3 = await layoutOf(self);
    expect(l3.kinds[readHeader(self).l1TableOffset / readHeader(self).clusterSize]).toBe(Kind.Corrupt);
  });
});
