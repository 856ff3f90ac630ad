// Internal snapshots against QEMU as the oracle: random sequences of guest writes (qemu-io) and
// our create / revert / delete (by ID and by name), interleaved with qemu-img's own snapshot
// commands, on several cluster sizes, refcount widths, v2 and v3, extended L2 and compressed
// clusters. After every step: `qemu-img check` clean, `qemu-img info` lists exactly the expected
// snapshots (our IDs and names), and the active disk and every snapshot hold the expected bytes.
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../helpers/random.ts';
import {
  createImage, qemuImgOk, qemuIo, qemuIoOk, qemuSnapshotApply, qemuSnapshotCreate, qemuSnapshotDelete, type CreateOptions,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createSnapshot, deleteSnapshot, findSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';
import { ImageModel, withImage } from './snapshot-model.ts';

interface Config {
  label: string;
  opts: CreateOptions;
  size: number;
  steps: number;
  seed: number;
}

const MiB = 1024 * 1024;
const CONFIGS: Config[] = [
  { label: 'v3, 64 KiB clusters, 16-bit refcounts', opts: {}, size: 8 * MiB, steps: 40, seed: 1 },
  { label: 'v3, 4 KiB clusters, 4-bit refcounts', opts: { clusterSize: 4096, refcountBits: 4 }, size: 2 * MiB, steps: 40, seed: 2 },
  { label: 'v3, 512 B clusters, 8-bit refcounts', opts: { clusterSize: 512, refcountBits: 8 }, size: 1 * MiB, steps: 30, seed: 3 },
  { label: 'v2, 64 KiB clusters', opts: { compat: '0.10' }, size: 8 * MiB, steps: 40, seed: 4 },
  { label: 'v2, 1 KiB clusters', opts: { compat: '0.10', clusterSize: 1024 }, size: 1 * MiB, steps: 30, seed: 5 },
  { label: 'v3, 64-bit refcounts, 2 MiB clusters', opts: { clusterSize: 2 * MiB, refcountBits: 64 }, size: 16 * MiB, steps: 25, seed: 6 },
  { label: 'v3, extended L2, 32 KiB clusters', opts: { clusterSize: 32768, extendedL2: true }, size: 4 * MiB, steps: 30, seed: 7 },
  { label: 'v3, 2-bit refcounts (at most two snapshots share a cluster)', opts: { clusterSize: 4096, refcountBits: 2 }, size: 1 * MiB, steps: 30, seed: 8 },
];

function clusterSizeOf(c: Config): number {
  return c.opts.clusterSize ?? 65536;
}

describe('internal snapshots vs qemu-img', () => {
  const tmp = useTempDir('qcowscope-snap-');

  for (const cfg of CONFIGS) {
    it(`random writes + create/revert/delete: ${cfg.label}`, async () => {
      const file = tmp.file('img.qcow2');
      createImage(file, cfg.size, cfg.opts);
      const m = new ImageModel(file, cfg.size);
      const rand = seededRandom(cfg.seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const cs = clusterSizeOf(cfg);
      const v3 = cfg.opts.compat !== '0.10';
      const narrow = cfg.opts.refcountBits === 2;
      let nameCounter = 0;
      for (let step = 0; step < cfg.steps; step++) {
        const size = m.active.length;
        const r = rand();
        let label: string;
        if (r < 0.35 || m.snapshots.length === 0 && r < 0.5) {
          // guest write: arbitrary, cluster-aligned compressed, or zeroes
          const kind = rand();
          if (kind < 0.15 && !cfg.opts.extendedL2 && (cfg.opts.refcountBits ?? 16) >= 8) {
            // QEMU compresses only into unallocated clusters (EIO otherwise): fall back to a plain write
            const clusters = size / cs;
            const c = Math.floor(rand() * clusters);
            const pat = 1 + Math.floor(rand() * 250);
            const res = qemuIo(['-f', 'qcow2', '-c', `write -c -P ${pat} ${c * cs} ${cs}`, file]);
            if (res.status !== 0 || /failed|error/i.test(res.stdout + res.stderr)) qemuIoOk(file, `write -P ${pat} ${c * cs} ${cs}`);
            m.write(c * cs, cs, pat);
            label = `write -c ${c * cs}`;
          } else if (kind < 0.25) {
            const off = Math.floor(rand() * (size / 512)) * 512;
            const len = Math.min(size - off, (1 + Math.floor(rand() * 8)) * 512 * Math.max(1, cs / 4096));
            qemuIoOk(file, `write -z ${off} ${len}`);
            m.write(off, len, 0);
            label = `write -z ${off} ${len}`;
          } else {
            const off = Math.floor(rand() * size);
            const len = Math.max(1, Math.min(size - off, Math.floor(rand() * 3 * cs)));
            const pat = 1 + Math.floor(rand() * 250);
            qemuIoOk(file, `write -P ${pat} ${off} ${len}`);
            m.write(off, len, pat);
            label = `write ${off} ${len}`;
          }
        } else if (r < 0.55) {
          if (narrow && m.snapshots.length >= 2) continue; // a third would overflow 2-bit refcounts
          const name = rand() < 0.2 && m.snapshots.length > 0 ? pick(m.snapshots).name : `s${nameCounter++}`;
          if (rand() < 0.25) {
            const res = qemuSnapshotCreate(file, name);
            expect(res.status, res.stderr).toBe(0);
            m.create(name);
            label = `qemu-img create ${name}`;
          } else {
            const res = await withImage(file, (img) => createSnapshot(img, name));
            expect(res.snapshot.idStr).toBe(m.nextId());
            m.create(name);
            label = `create ${name}`;
          }
        } else if (r < 0.72) {
          if (m.snapshots.length === 0) continue;
          const s = pick(m.snapshots);
          // by ID, or by name when that name finds this snapshot first
          const byName = rand() < 0.5 && m.find(s.name) === s;
          const ref = byName ? s.name : s.id;
          if (rand() < 0.2) {
            const res = qemuSnapshotApply(file, ref);
            expect(res.status, res.stderr).toBe(0);
            label = `qemu-img revert ${ref}`;
          } else {
            await withImage(file, (img) => revertSnapshot(img, ref));
            label = `revert ${ref}`;
          }
          m.revert(ref);
        } else if (r < 0.9) {
          if (m.snapshots.length === 0) continue;
          const s = pick(m.snapshots);
          const byName = rand() < 0.5 && m.find(s.name) === s;
          if (rand() < 0.2 && m.snapshots.find((x) => x.name === s.name) === s) {
            const res = qemuSnapshotDelete(file, s.name);
            expect(res.status, res.stderr).toBe(0);
            label = `qemu-img delete ${s.name}`;
          } else if (rand() < 0.3) {
            await withImage(file, (img) => deleteSnapshot(img, { id: s.id, name: s.name }));
            label = `delete id+name ${s.id}`;
          } else {
            await withImage(file, (img) => deleteSnapshot(img, byName ? s.name : s.id));
            label = `delete ${byName ? s.name : s.id}`;
          }
          m.snapshots = m.snapshots.filter((x) => x !== s);
        } else if (v3) {
          // grow the disk (QEMU resizes v3 images with snapshots); a revert shrinks it back
          const grow = Math.max(cs, Math.floor(rand() * 4) * cs * 8);
          qemuImgOk(['resize', '-q', file, String(size + grow)]);
          m.resize(size + grow);
          label = `resize +${grow}`;
        } else {
          continue;
        }
        m.verify(tmp.dir, `after step ${step} (${label})`);
      }
    }, 180_000); // 25 steps of qemu-io and qemu-img runs: over 50 s on a loaded machine
  }

  it('reverts and deletes snapshots made by qemu-img (shared L2 tables, stale COPIED bits)', async () => {
    const file = tmp.file('q.qcow2');
    createImage(file, 4 * MiB);
    const m = new ImageModel(file, 4 * MiB);
    qemuIoOk(file, 'write -P 1 0 1M');
    m.write(0, MiB, 1);
    qemuSnapshotCreate(file, 'a');
    m.create('a');
    qemuIoOk(file, 'write -P 2 64k 64k');
    m.write(65536, 65536, 2);
    qemuSnapshotCreate(file, 'b');
    m.create('b');
    qemuIoOk(file, 'write -P 3 3M 128k');
    m.write(3 * MiB, 131072, 3);
    m.verify(tmp.dir, 'made by qemu');
    await withImage(file, (img) => revertSnapshot(img, 'a'));
    m.revert('a');
    m.verify(tmp.dir, 'after revert a');
    await withImage(file, (img) => deleteSnapshot(img, '2'));
    m.delete('2');
    m.verify(tmp.dir, 'after delete 2');
    qemuIoOk(file, 'write -P 4 0 64k');
    m.write(0, 65536, 4);
    m.verify(tmp.dir, 'after guest write');
    await withImage(file, (img) => deleteSnapshot(img, 'a'));
    m.delete('a');
    m.verify(tmp.dir, 'after delete a');
  });

  it('revert restores the disk size of the snapshot (v3), 029-style longer active L1', async () => {
    const file = tmp.file('r.qcow2');
    createImage(file, 64 * MiB, { clusterSize: 1024 });
    const m = new ImageModel(file, 64 * MiB);
    qemuIoOk(file, 'write -P 5 0 4k');
    m.write(0, 4096, 5);
    await withImage(file, (img) => createSnapshot(img, 'small'));
    m.create('small');
    qemuImgOk(['resize', '-q', file, String(128 * MiB)]);
    m.resize(128 * MiB);
    qemuIoOk(file, `write -P 6 ${100 * MiB} 4k`);
    m.write(100 * MiB, 4096, 6);
    await withImage(file, (img) => createSnapshot(img, 'big'));
    m.create('big');
    m.verify(tmp.dir, 'two sizes');
    await withImage(file, (img) => revertSnapshot(img, 'small'));
    m.revert('small');
    m.verify(tmp.dir, 'reverted to the small one');
    await withImage(file, (img) => revertSnapshot(img, 'big'));
    m.revert('big');
    m.verify(tmp.dir, 'reverted to the big one');
  });

  it('finds by ID first, then by name; deletes by both', async () => {
    const file = tmp.file('f.qcow2');
    createImage(file, MiB);
    await withImage(file, async (img) => {
      await createSnapshot(img, '2'); // ID 1, named "2"
      await createSnapshot(img, 'x'); // ID 2
      expect(findSnapshot(img, '2')?.name).toBe('x');
      expect(findSnapshot(img, { name: '2' })?.idStr).toBe('1');
      expect(findSnapshot(img, { id: '1', name: 'x' })).toBeUndefined();
      await expect(deleteSnapshot(img, { id: '1', name: 'x' })).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      await deleteSnapshot(img, { id: '1', name: '2' });
      expect(img.snapshots.map((s) => s.idStr)).toEqual(['2']);
    });
    const m = new ImageModel(file, MiB);
    m.create('x', '2');
    m.verify(tmp.dir);
  });

  it('keeps unknown extra data of other snapshots and writes QEMU\'s extra data (24 bytes, icount 0)', async () => {
    const file = tmp.file('e.qcow2');
    createImage(file, MiB);
    await withImage(file, (img) => createSnapshot(img, 'one'));
    // Give snapshot 1 unknown extra data the way iotest 261 does: rewrite its entry with eds = 32.
    const { readHeader, readSnapshots } = await import('../helpers/qcow2-mini.ts');
    const { peek, poke } = await import('../helpers/qemu.ts');
    const h = readHeader(file);
    const [s1] = readSnapshots(file, h);
    const entry = Buffer.from(peek(file, h.snapshotsOffset, 40 + 24 + 1 + 3));
    const grown = Buffer.alloc(40 + 32 + 1 + 3);
    entry.copy(grown, 0, 0, 40 + 24);
    grown.writeUInt32BE(32, 36);
    Buffer.from('extra!!!').copy(grown, 64);
    entry.copy(grown, 72, 64, 68);
    poke(file, h.snapshotsOffset, grown);
    expect(s1).toBeDefined();
    await withImage(file, (img) => createSnapshot(img, 'two'));
    const after = readSnapshots(file);
    expect(after.map((s) => s.extraDataSize)).toEqual([32, 24]);
    const h2 = readHeader(file);
    expect(Buffer.from(peek(file, h2.snapshotsOffset + 64, 8)).toString()).toBe('extra!!!');
    const list = qemuInfo(file).snapshots!;
    expect(list.map((s) => [s.id, s.name, s.icount])).toEqual([['1', 'one', 0], ['2', 'two', 0]]);
  });
});

import { qemuInfo } from '../helpers/qemu.ts';
