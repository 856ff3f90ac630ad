// Crash safety of repairs: `check -r all` on damaged images stopped before each of its writes (and
// power cuts that drop any subset of the writes since the last flush). Every intermediate state
// must keep the guest content, be no more corrupt than the damaged image was, and be repairable
// to a clean image (qemu-img check -r all agrees, then qemu-img check is clean). With bitmaps, which
// the repair stores again afterwards, every state keeps them with their bits.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { qemuCheck, qemuImg, qemuImgOk, qemuIoOk, truncateFile } from '../helpers/qemu.ts';
import { dataClusterOffset, setRefcount } from '../helpers/qcow2-mini.ts';
import { bitsOf } from '../interop/cli-oracle.ts';
import { enumerateCrashStates, enumerateDroppedStates, judgeEachDistinct } from '../helpers/crash-store.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { runCheck } from '../../core/analysis/check.ts';
import { checkReport } from '../../core/ops/check.ts';

function guest(file: string): Buffer {
  const raw = file + '.raw';
  const r = qemuImg(['convert', '-O', 'raw', file, raw]);
  if (r.status !== 0) throw new Error(r.stderr);
  const b = fs.readFileSync(raw);
  fs.rmSync(raw);
  return b;
}

async function repairAll(store: ImageStore): Promise<void> {
  const img = await Qcow2Image.open(store, { checkMode: true, writable: true });
  await runCheck(img, { repair: 'all' });
}

const RECIPES = [
  'leaked-cluster',
  'refcount-too-high-data-copied-cleared',
  'l2-copied-missing',
  'refcount-too-low-shared',
  'refblock-zeroed',
  'reftable-entry-zeroed',
  'snapshot-extra-data-incomplete',
  'data-points-at-inactive-l2',
];

describe('repair -r all survives a crash at every write', () => {
  const tmp = useTempDir('qcowscope-repair-crash-');
  for (const name of RECIPES) {
    it(name, async () => {
      const file = tmp.file('damaged.qcow2');
      makeDamagedImage(name, file);
      const before = qemuCheck(file);
      const content = guest(file);
      const base = new Uint8Array(fs.readFileSync(file));
      const errorsBefore = new Set(before.stderr.split('\n').filter((l) => l.startsWith('ERROR')));
      // Clusters whose refcount the repair raises: until their COPIED flag is cleared right after,
      // they read as COPIED with refcount 2 (QEMU's order too: refcounts first, then the flags).
      const raised = new Set([...before.stderr.matchAll(/^ERROR cluster (\d+) refcount=\d+ reference=\d+$/gm)].map((m) => Number(m[1])));
      const cs = 65536;
      const judge = judgeEachDistinct((bytes, label) => {
        const f = tmp.file('state.qcow2');
        fs.writeFileSync(f, bytes);
        const c = qemuCheck(f);
        // No new error, except a missing COPIED flag on a cluster with refcount 1 (only costs a
        // needless copy-on-write; QEMU's own interrupted repairs leave the same).
        const fresh = c.stderr.split('\n').filter((l) => l.startsWith('ERROR') && !errorsBefore.has(l) &&
          !/^ERROR OFLAG_COPIED (L2|data) cluster: l\S+ l\S+=[0-7]\S* refcount=1$|^ERROR OFLAG_COPIED data cluster: l2_entry=[0-7]\S* refcount=1$/.test(l) &&
          !(/^ERROR OFLAG_COPIED data cluster: l2_entry=8\S+ refcount=\d+$/.test(l) &&
            raised.has(Math.floor(Number(BigInt('0x' + l.split('=')[1]!.split(' ')[0]!) & 0x00fffffffffffe00n) / cs))));
        expect(fresh, `${label}: new errors`).toEqual([]);
        expect(guest(f).equals(content), `${label}: guest content`).toBe(true);
        const r = qemuCheck(f, 'all');
        expect([0, 3], `${label}: qemu-img check -r all`).toContain(r.exitCode);
        expect(qemuCheck(f).corruptions, `${label}: corruptions after qemu-img check -r all`).toBe(0);
      });
      const states = await enumerateCrashStates(base, repairAll);
      expect(states.length).toBeGreaterThan(1);
      for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
      const last = states[states.length - 1]!;
      const f = tmp.file('done.qcow2');
      fs.writeFileSync(f, last.bytes);
      expect(qemuCheck(f).exitCode).toBe(0);
      const dropped = await enumerateDroppedStates(base, repairAll, { exhaustiveUpTo: 4, samples: 12 });
      for (const s of dropped.states()) judge(s.bytes, `power cut in epoch ${s.epoch} with ${s.mask.map((m) => (m ? 1 : 0)).join('')}`);
    }, 120_000);
  }
});

describe('check -r on an image with bitmaps survives a crash at every write', () => {
  const tmp = useTempDir('qcowscope-repair-bitmaps-crash-');
  // the repair, then every bitmap stored again as qemu-img does when it closes the image
  // (checkReport): at every stop the bitmaps are listed and hold the bits they held, the guest
  // content is kept, and no error is found that the image did not have (leaks allowed)
  const cases: Array<[string, 'leaks' | 'all', (file: string) => void]> = [
    ['leaked clusters holding data (emptied by the repair), -r leaks', 'leaks', (file) => {
      const n = Math.ceil(fs.statSync(file).size / 65536);
      truncateFile(file, n * 65536);
      fs.appendFileSync(file, Buffer.alloc(2 * 65536, 0x55));
      setRefcount(file, n, 1);
      setRefcount(file, n + 1, 1);
    }],
    ['a data cluster with refcount 0, -r all rebuilds the refcounts', 'all', (file) => setRefcount(file, dataClusterOffset(file) / 65536, 0)],
  ];
  for (const [name, mode, damage] of cases) {
    it(name, async () => {
      const file = tmp.file('damaged.qcow2');
      fs.rmSync(file, { force: true });
      qemuImgOk(['create', '-q', '-f', 'qcow2', file, '16M']);
      qemuIoOk(file, 'write -P 1 0 100k');
      qemuImgOk(['bitmap', '--add', file, 'b0']);
      qemuImgOk(['bitmap', '--add', '-g', '4k', '--disable', file, 'off']);
      qemuIoOk(file, 'write -P 2 1M 64k');
      damage(file);
      const before = qemuCheck(file);
      expect(before.exitCode).not.toBe(0);
      const errorsBefore = new Set(before.stderr.split('\n').filter((l) => l.startsWith('ERROR')));
      const content = guest(file);
      const bits = ['b0', 'off'].map((b) => bitsOf(file, b));
      expect(bits[0]![2]).toMatch(/[1-9a-f]/);
      const base = new Uint8Array(fs.readFileSync(file));
      const repair = async (store: ImageStore): Promise<void> => {
        await checkReport(await Qcow2Image.open(store, { checkMode: true, writable: true }), { repair: mode });
      };
      const judge = judgeEachDistinct((bytes, label) => {
        const f = tmp.file('state.qcow2');
        fs.writeFileSync(f, bytes);
        const c = qemuCheck(f);
        const fresh = c.stderr.split('\n').filter((l) => l.startsWith('ERROR') && !errorsBefore.has(l));
        expect(fresh, `${label}: new errors`).toEqual([]);
        expect(c.checkErrors, `${label}: check errors`).toBe(0);
        expect(guest(f).equals(content), `${label}: guest content`).toBe(true);
        expect(['b0', 'off'].map((b) => bitsOf(f, b)), `${label}: the bitmaps`).toEqual(bits);
      });
      const states = await enumerateCrashStates(base, repair);
      expect(states.length).toBeGreaterThan(5);
      for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
      const f = tmp.file('done.qcow2');
      fs.writeFileSync(f, states[states.length - 1]!.bytes);
      expect(qemuCheck(f).exitCode).toBe(0);
      const dropped = await enumerateDroppedStates(base, repair, { exhaustiveUpTo: 4, samples: 12 });
      for (const s of dropped.states()) judge(s.bytes, `power cut in epoch ${s.epoch} with ${s.mask.map((m) => (m ? 1 : 0)).join('')}`);
    }, 120_000);
  }
});
