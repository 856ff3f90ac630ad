// The file as qemu-img leaves it after internal-snapshot operations (issue 16): the same sequence
// of create / revert / delete, interleaved with guest writes, is run by qemu-img on one copy of a
// QEMU-made image and by our engine on another (one image, a group through core/image/group.ts,
// and the worker's path through core/ops/snapshot.ts). After every step both files have the same
// length and `qemu-img map --output=json` prints the same (so the free clusters, where later
// writes land, are the same); at the end ours is clean by `qemu-img check` and holds the same
// active disk and snapshots as QEMU's copy. Guest writes after a snapshot go through our write
// path too (copy-on-write of the shared L2 tables and clusters), read back by qemu-io.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../helpers/random.ts';
import {
  createImage, fileSize, qemuCheck, qemuConvertToRaw, qemuImg, qemuImgOk, qemuInfo, qemuIoOk, sha256, type CreateOptions,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createSnapshot, deleteSnapshot, revertSnapshot } from '../../core/image/snapshot.ts';
import { groupCreate, groupDelete, groupRevert } from '../../core/image/group.ts';
import { writeGuest } from '../../core/image/write.ts';
import { snapshotOp } from '../../core/ops/snapshot.ts';
import { openImage } from '../../cli/open.ts';
import { withImage } from './snapshot-model.ts';

const MiB = 1024 * 1024;

interface Config {
  label: string;
  opts: CreateOptions;
  size: number;
  compressed?: boolean;
  /** At most this many snapshots at once (2-bit refcounts: qemu-img revert counts the new tree before dropping the old one, at most three references). */
  maxSnapshots?: number;
  seed: number;
}

const CONFIGS: Config[] = [
  { label: '64 KiB clusters, 16-bit refcounts', opts: {}, size: 8 * MiB, seed: 11 },
  { label: '4 KiB clusters, 4-bit refcounts', opts: { clusterSize: 4096, refcountBits: 4 }, size: 4 * MiB, seed: 12 },
  { label: '512 B clusters, 8-bit refcounts', opts: { clusterSize: 512, refcountBits: 8 }, size: MiB, seed: 13 },
  { label: '2 MiB clusters, 64-bit refcounts', opts: { clusterSize: 2 * MiB, refcountBits: 64 }, size: 16 * MiB, seed: 14 },
  { label: 'extended L2, 32 KiB clusters', opts: { clusterSize: 32768, extendedL2: true }, size: 4 * MiB, seed: 15 },
  { label: 'v2, 1 KiB clusters', opts: { compat: '0.10', clusterSize: 1024 }, size: 2 * MiB, seed: 16 },
  { label: 'compressed clusters, 64 KiB', opts: {}, size: 8 * MiB, compressed: true, seed: 17 },
  { label: '2-bit refcounts', opts: { clusterSize: 4096, refcountBits: 2 }, size: 2 * MiB, maxSnapshots: 1, seed: 18 },
];

function map(file: string): string {
  return qemuImgOk(['map', '--output=json', file]);
}

/** How the engine runs a step on our copy: one image, a group of one, or the worker's ops. */
type Path = 'image' | 'group' | 'ops';

async function ours(file: string, path: Path, verb: 'create' | 'revert' | 'delete', arg: string): Promise<void> {
  if (path === 'group') {
    const img = await openImage(file, { writable: true, noBacking: true });
    try {
      if (verb === 'create') await groupCreate([img], arg);
      else if (verb === 'revert') await groupRevert([img], arg);
      else await groupDelete([img], arg);
    } finally {
      await img.close();
    }
    return;
  }
  await withImage(file, async (img) => {
    if (path === 'ops') await snapshotOp(img, verb, arg);
    else if (verb === 'create') await createSnapshot(img, arg);
    else if (verb === 'revert') await revertSnapshot(img, arg);
    else await deleteSnapshot(img, arg);
  });
}

describe('snapshot operations leave the file as qemu-img does', () => {
  const tmp = useTempDir('qcowscope-snaplayout-');

  for (const cfg of CONFIGS) {
    it(`${cfg.label}: same length and map after every step`, async () => {
      const rand = seededRandom(cfg.seed);
      const q = tmp.file('qemu.qcow2');
      const o = tmp.file('ours.qcow2');
      const seedImg = tmp.file('seed.qcow2');
      createImage(seedImg, cfg.size, cfg.opts);
      qemuIoOk(seedImg, `write -P 1 0 ${cfg.size / 4}`, `write -P 2 ${cfg.size / 2} ${cfg.size / 8}`);
      if (cfg.compressed) {
        qemuImgOk(['convert', '-c', '-O', 'qcow2', seedImg, q]);
        qemuIoOk(q, `write -P 3 ${cfg.size - cfg.size / 8} 64k`);
      } else {
        fs.copyFileSync(seedImg, q);
      }
      fs.copyFileSync(q, o);
      const cs = qemuInfo(q)['cluster-size']!;
      const names: string[] = [];
      let n = 0;
      const steps: string[] = [];
      for (let step = 0; step < 24; step++) {
        const r = rand();
        const path: Path = (['image', 'group', 'ops'] as const)[step % 3]!;
        let label: string;
        if (names.length === 0 || (r < 0.3 && names.length < (cfg.maxSnapshots ?? 8))) {
          const name = `s${++n}`;
          qemuImgOk(['snapshot', '-c', name, q]);
          await ours(o, path, 'create', name);
          names.push(name);
          label = `create ${name} (${path})`;
        } else if (r < 0.45) {
          const name = names[Math.floor(rand() * names.length)]!;
          qemuImgOk(['snapshot', '-a', name, q]);
          await ours(o, path, 'revert', name);
          label = `revert ${name} (${path})`;
        } else if (r < 0.6) {
          const name = names.splice(Math.floor(rand() * names.length), 1)[0]!;
          qemuImgOk(['snapshot', '-d', name, q]);
          await ours(o, path, 'delete', name);
          label = `delete ${name} (${path})`;
        } else {
          // a guest write: qemu-io on QEMU's copy, our write path (or qemu-io) on ours
          const off = Math.floor(rand() * (cfg.size / cs)) * cs;
          const len = Math.min(cfg.size - off, cs * (1 + Math.floor(rand() * 3)));
          const pattern = 16 + step;
          qemuIoOk(q, `write -P ${pattern} ${off} ${len}`);
          if (rand() < 0.5) {
            await withImage(o, (img) => writeGuest(img, off, new Uint8Array(len).fill(pattern)));
            label = `our write ${off}+${len}`;
            expect(qemuIoOk(o, `read -P ${pattern} ${off} ${len}`), label).not.toMatch(/Pattern verification failed/);
          } else {
            qemuIoOk(o, `write -P ${pattern} ${off} ${len}`);
            label = `qemu-io write ${off}+${len}`;
          }
        }
        steps.push(label);
        const where = steps.join(' → ');
        expect(fileSize(o), `length after ${where}`).toBe(fileSize(q));
        expect(map(o), `map after ${where}`).toBe(map(q));
      }
      const chk = qemuCheck(o);
      expect(chk.exitCode, chk.stderr).toBe(0);
      expect(chk.corruptions + chk.leaks + chk.checkErrors).toBe(0);
      expect(qemuImg(['compare', q, o]).status).toBe(0);
      const snaps = (qemuInfo(o).snapshots ?? []).map((s) => s.name);
      expect(snaps).toEqual((qemuInfo(q).snapshots ?? []).map((s) => s.name));
      const raw = tmp.file('x.raw');
      for (const name of snaps) {
        qemuConvertToRaw(q, raw, { name });
        const want = sha256(raw);
        qemuConvertToRaw(o, raw, { name });
        expect(sha256(raw), `snapshot ${name}`).toBe(want);
      }
    }, 240_000);
  }
});
