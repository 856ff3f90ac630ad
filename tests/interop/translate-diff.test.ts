// Address translation and snapshot diff, judged by qemu-img map and by what qemu-io wrote.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { translate } from '../../core/analysis/translate.ts';
import { diffViews } from '../../core/analysis/diff.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { NodeFileStore } from '../../cli/node-file-store.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcowscope-translate-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8' });
}

function open(file: string): Promise<Qcow2Image> {
  return Qcow2Image.open(NodeFileStore.open(file));
}

describe('translate', () => {
  it('agrees with qemu-img map for every mapped extent, above 4 GiB too', async () => {
    const f = path.join(dir, 't.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, '8G']);
    sh('qemu-io', ['-c', 'write -P 1 0 12k', '-c', 'write -P 2 5G 8k', '-c', 'write -z 1M 4k', '-c', 'write -P 3 4294967296 4k', f]);
    const map = JSON.parse(sh('qemu-img', ['map', '--output=json', f])) as Array<{ start: number; length: number; data: boolean; zero: boolean; offset?: number }>;
    const img = await open(f);
    let checked = 0;
    for (const e of map) {
      for (const probe of [e.start, e.start + e.length - 1]) {
        const t = await translate(img, img.activeView(), probe);
        if (e.data && e.offset !== undefined) {
          expect(t.result).toBe('data');
          expect(t.hostOffset).toBe(e.offset + (probe - e.start));
          checked++;
        } else if (e.zero) {
          expect(['zero', 'unallocated']).toContain(t.result);
        }
      }
    }
    expect(checked).toBeGreaterThanOrEqual(6);
    const beyond = await translate(img, img.activeView(), 9 * 2 ** 30);
    expect(beyond.result).toBe('beyond-end');
    await img.close();
  });
});

describe('diff', () => {
  it('lists exactly the guest clusters written after a snapshot', async () => {
    const f = path.join(dir, 'd.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M']);
    sh('qemu-io', ['-c', 'write -P 1 0 1M', f]);
    sh('qemu-img', ['snapshot', '-c', 'base', f]);
    const hostCluster = (guest: number): number => {
      const map = JSON.parse(sh('qemu-img', ['map', '--output=json', f])) as { start: number; length: number; data: boolean; offset?: number }[];
      const e = map.find((m) => m.start <= guest && guest < m.start + m.length && m.data)!;
      return (e.offset! + guest - e.start) / 65536;
    };
    const before = [hostCluster(128 << 10), hostCluster(512 << 10)];
    sh('qemu-io', ['-c', 'write -P 2 128k 64k', '-c', 'write -P 3 32M 128k', '-c', 'write -z 512k 64k', f]);
    const after = [hostCluster(128 << 10), hostCluster(32 << 20), hostCluster((32 << 20) + 65536)];
    const img = await open(f);
    const snapView = await img.snapshotView(img.findSnapshot('base')!);
    const d = await diffViews(img, snapView, img.activeView());
    expect(d.ranges).toEqual([
      { cluster: 2, count: 1 },
      { cluster: 8, count: 1 },
      { cluster: 512, count: 2 },
    ]);
    // The host clusters behind them: the snapshot's old data and the active disk's new data (the
    // zeroed cluster holds none on the active side).
    expect(d.hostClusters).toEqual([...before, ...after].sort((x, y) => x - y));
    const same = await diffViews(img, snapView, snapView);
    expect(same.changedClusters).toBe(0);
    await img.close();
  });
});

describe('snapshot space', () => {
  it('what a snapshot holds alone is what qemu-img frees by deleting it', async () => {
    const { snapshotSpace } = await import('../../core/analysis/snapshot-space.ts');
    const f = path.join(dir, 's.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M']);
    sh('qemu-io', ['-c', 'write -P 1 0 1M', f]);
    sh('qemu-img', ['snapshot', '-c', 'a', f]);
    sh('qemu-io', ['-c', 'write -P 2 0 256k', f]);
    sh('qemu-img', ['snapshot', '-c', 'b', f]);
    sh('qemu-io', ['-c', 'write -P 3 0 64k', f]);
    const img = await open(f);
    const spaces = [];
    for (const sn of img.snapshots) spaces.push(await snapshotSpace(img, sn));
    await img.close();
    // Delete each snapshot on a copy with qemu-img and count freed clusters via check's image end
    // and map of refcounts: compare the number of clusters with refcount > 0 before and after.
    for (const [i, sn] of ['a', 'b'].entries()) {
      const copy = path.join(dir, `s-${sn}.qcow2`);
      fs.copyFileSync(f, copy);
      const before = await usedClusters(copy);
      sh('qemu-img', ['snapshot', '-d', sn, copy]);
      const after = await usedClusters(copy);
      // deleting also rewrites the snapshot table (same cluster count, moved), so compare totals
      expect(before - after).toBe(spaces[i]!.exclusiveClusters);
    }
  });
});

async function usedClusters(file: string): Promise<number> {
  const { getClusterRefcount } = await import('../../core/image/refcount.ts');
  const img = await open(file);
  const n = Math.ceil(img.store.size() / img.clusterSize);
  let used = 0;
  for (let c = 0; c < n; c++) if ((await getClusterRefcount(img, c)) > 0) used++;
  await img.close();
  return used;
}
