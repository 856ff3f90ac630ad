// Exact answers about snapshots against qemu-img: the cluster map's "snapshots only" data is what
// qemu-img map finds in the snapshots (applied on copies) and not in the active disk, however many
// snapshots hold it; "deleting S frees N" and "deleting all snapshots frees N" are the clusters
// whose refcount drops to 0 when qemu-img deletes them on a copy; a translation follows the backing
// chain to the depth and offset qemu-img map gives.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, qemuImgOk, qemuInfo, qemuIo, qemuIoOk, qemuMap, readRange } from '../helpers/qemu.ts';
import { L1E_OFFSET_MASK, readHeader, readSnapshots } from '../helpers/qcow2-mini.ts';
import { freedByDeleting, snapshotData } from '../helpers/snapshot-oracle.ts';
import { openImage } from '../../cli/open.ts';
import { buildLayout } from '../../core/analysis/layout.ts';
import { allSnapshotsSpace, snapshotSpace } from '../../core/analysis/snapshot-space.ts';
import { translate } from '../../core/analysis/translate.ts';

/** The L2 table offsets an L1 table (read raw from the file) points to. */
function l2Tables(file: string, l1Offset: number, l1Size: number): Set<number> {
  const raw = readRange(file, l1Offset, l1Size * 8);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Set<number>();
  for (let i = 0; i < l1Size; i++) {
    const off = Number(dv.getBigUint64(i * 8) & L1E_OFFSET_MASK);
    if (off !== 0) out.add(off);
  }
  return out;
}

describe('exact answers about snapshots', () => {
  const tmp = useTempDir('qcowscope-answers-');

  /** s1 and s2 share 4 clusters the active disk overwrote; s3 alone holds one more. */
  function makeImage(): string {
    const f = tmp.file('a.qcow2');
    createImage(f, '64M');
    qemuIoOk(f, 'write -P 1 0 256k', 'write -P 5 8M 64k');
    qemuImgOk(['snapshot', '-c', 's1', f]);
    qemuImgOk(['snapshot', '-c', 's2', f]);
    qemuIoOk(f, 'write -P 2 0 256k', 'write -P 3 1M 64k');
    qemuImgOk(['snapshot', '-c', 's3', f]);
    qemuIoOk(f, 'write -P 4 1M 64k');
    return f;
  }

  it('"Data (snapshots only)" counts clusters held by any number of snapshots and not the active disk', async () => {
    const f = makeImage();
    const { onlySnapshots, shared, active } = snapshotData(f, ['s1', 's2', 's3'], tmp.dir);
    expect(onlySnapshots.length).toBe(5); // the image is what the test means it to be
    const img = await openImage(f, { checkMode: true, noBacking: true });
    try {
      const l = await buildLayout(img);
      expect(l.summary['data-snapshot']).toBe(onlySnapshots.length);
      expect(l.summary['data-shared']).toBe(shared.length);
      expect(l.summary.data).toBe(active.size - shared.length);
      // L2 tables: snapshots only whether one snapshot or several hold them.
      const h = readHeader(f);
      const activeL2 = l2Tables(f, h.l1TableOffset, h.l1Size);
      const snapL2 = new Set(readSnapshots(f).flatMap((s) => [...l2Tables(f, Number(s.l1TableOffset), s.l1Size)]));
      const l2Only = [...snapL2].filter((o) => !activeL2.has(o));
      expect(l2Only.length).toBe(2); // s1 and s2 share one, s3 holds one
      expect(l.summary['l2-snapshot']).toBe(l2Only.length);
      expect(l.summary['l2-shared']).toBe(snapL2.size - l2Only.length);
    } finally {
      await img.close();
    }
  });

  it('"deleting S frees N" and "deleting all snapshots frees N" equal what qemu-img frees', async () => {
    const f = makeImage();
    const img = await openImage(f, { noBacking: true });
    const each = new Map<string, number>();
    let all: number;
    try {
      for (const sn of img.snapshots) each.set(sn.name, (await snapshotSpace(img, sn)).exclusiveClusters);
      all = (await allSnapshotsSpace(img)).exclusiveClusters;
    } finally {
      await img.close();
    }
    for (const sn of ['s1', 's2', 's3']) expect(freedByDeleting(f, [sn], tmp.dir), sn).toBe(each.get(sn));
    // s1 and s2 share what only the two of them hold: alone, neither frees it; together they do.
    expect(freedByDeleting(f, ['s1', 's2'], tmp.dir)).toBeGreaterThan(each.get('s1')! + each.get('s2')!);
    expect(freedByDeleting(f, ['s1', 's2', 's3'], tmp.dir)).toBe(all);
  });

  it('deleting the only snapshot frees the snapshot table too, as qemu-img does', async () => {
    const f = tmp.file('one.qcow2');
    createImage(f, '64M');
    qemuIoOk(f, 'write -P 1 0 256k');
    qemuImgOk(['snapshot', '-c', 'only', f]);
    qemuIoOk(f, 'write -P 2 0 128k');
    const img = await openImage(f, { noBacking: true });
    try {
      const space = await snapshotSpace(img, img.snapshots[0]!);
      expect(space.name).toBe('only');
      expect(space.exclusiveClusters).toBe(freedByDeleting(f, ['only'], tmp.dir));
    } finally {
      await img.close();
    }
  });

  it('clusters held by over 255 snapshots: what deleting them all frees is what qemu-img frees', async () => {
    const f = tmp.file('many.qcow2');
    createImage(f, '4M');
    qemuIoOk(f, 'write -P 1 0 256k');
    const names = Array.from({ length: 260 }, (_, i) => `s${i + 1}`);
    for (const n of names) qemuImgOk(['snapshot', '-c', n, f]);
    qemuIoOk(f, 'write -P 2 0 128k'); // the active disk leaves 2 of the 4 data clusters to the snapshots
    const img = await openImage(f, { noBacking: true });
    let all: number;
    try {
      all = (await allSnapshotsSpace(img)).exclusiveClusters;
    } finally {
      await img.close();
    }
    expect(all).toBe(freedByDeleting(f, names, tmp.dir));
    expect(all).toBeGreaterThan(2);
  }, 240_000);

  it('translation follows the backing chain to the depth and offset of qemu-img map', async () => {
    const base = tmp.file('base.qcow2');
    createImage(base, '16M');
    qemuIoOk(base, 'write -P 1 0 64k', 'write -P 5 2M 64k', 'write -c -P 6 4M 64k');
    const mid = tmp.file('mid.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid]);
    qemuIoOk(mid, 'write -P 2 1M 64k');
    const top = tmp.file('top.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top]);
    qemuIoOk(top, 'write -P 3 3M 64k', 'write -z 2M 64k');
    const files = ['top.qcow2', 'mid.qcow2', 'base.qcow2'];
    const map = qemuMap(top);
    expect(new Set(map.map((e) => e.depth)).size).toBe(3);
    const img = await openImage(top);
    try {
      for (const e of map) {
        const t = await translate(img, img.activeView(), e.start);
        expect(t.depth, `guest ${e.start}`).toBe(e.depth);
        if (e.depth > 0) expect(t.file?.endsWith(files[e.depth]!)).toBe(true);
        else expect(t.file).toBeUndefined();
        if (e.data && e.offset !== undefined) {
          expect(t.result).toBe('data');
          expect(t.hostOffset).toBe(e.offset);
        } else if (e.data) {
          expect(t.result).toBe('compressed');
        } else {
          expect(['zero', 'unallocated']).toContain(t.result);
        }
      }
    } finally {
      await img.close();
    }
    // Without the backing file attached, an unallocated byte is "in the backing file (not opened yet)".
    const alone = await openImage(top, { noBacking: true });
    try {
      const t = await translate(alone, alone.activeView(), 0);
      expect(t.result).toBe('backing-missing');
      expect(t.backingFile).toBe(qemuInfo(top)['backing-filename']);
    } finally {
      await alone.close();
    }
  });

  it('translation into a raw backing file: the offset is the guest offset, as qemu-img map says', async () => {
    const raw = tmp.file('base.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', raw, '4M']);
    expect(qemuIo(['-f', 'raw', '-c', 'write -P 7 1M 64k', raw]).status).toBe(0);
    const top = tmp.file('over-raw.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', top]);
    const e = qemuMap(top).find((x) => x.start <= 1048576 && 1048576 < x.start + x.length)!;
    const img = await openImage(top);
    try {
      const t = await translate(img, img.activeView(), 1048576 + 100);
      expect(t.depth).toBe(e.depth);
      expect(t.result).toBe('data');
      expect(t.hostOffset).toBe(e.offset! + (1048576 - e.start) + 100);
    } finally {
      await img.close();
    }
  });
});
