// The crash stage (core/image/crash-replay.ts, core/analysis/crash-verdict.ts) against qemu-img:
// for every write of a snapshot create, revert and delete (and a guest write) on qemu-made images,
// with the writes since the last flush kept and lost, in the engine's order and with the rule
// broken both ways, the stage's verdict equals `qemu-img check` on the same bytes written to a
// file (exit code, corruptions, leaks). The engine's order never yields a corruption; breaking the
// rule does, at some stop, and qemu-img says so too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { breakRule, crashAt, rehearse, stepIndexes, type RuleBreak, type StageEntry } from '../../core/image/crash-replay.ts';
import { judgeCrash } from '../../core/analysis/crash-verdict.ts';
import { snapshotOp } from '../../core/ops/snapshot.ts';
import { createSnapshot } from '../../core/image/snapshot.ts';
import { guestWrite } from '../../core/ops/write.ts';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { checkReport } from '../../core/ops/check.ts';
import { Journal } from '../../core/image/journal.ts';
import { createImage, makeTempDir, qemuCheck, qemuIoOk, qemuSnapshotCreate, removeDir } from '../helpers/qemu.ts';

const MiB = 1024 * 1024;

type Op = 'create' | 'revert' | 'delete' | 'write';

async function runOp(store: ImageStore, op: Op) {
  const img = await Qcow2Image.open(store, { writable: true });
  try {
    if (op === 'write') return (await guestWrite(img, { kind: 'pattern', offset: 0, length: 4096, pattern: 0x5a }, { journal: 'guest write' }))!;
    // a fixed date: two runs of a create write the same bytes
    if (op === 'create') return (await createSnapshot(img, 'new', { dateSec: 1_700_000_000, dateNsec: 0 })).journal;
    return await snapshotOp(img, op, 'first');
  } finally {
    await img.close();
  }
}

function baseImage(dir: string, opts: Parameters<typeof createImage>[2]): Uint8Array {
  const f = path.join(dir, 'base.qcow2');
  createImage(f, 4 * MiB, opts);
  qemuIoOk(f, 'write -P 1 0 512k', 'write -P 2 2M 64k');
  qemuSnapshotCreate(f, 'first');
  qemuIoOk(f, 'write -P 3 64k 128k');
  return new Uint8Array(fs.readFileSync(f));
}

const CONFIGS: Array<{ label: string; opts: Parameters<typeof createImage>[2] }> = [
  { label: '64 KiB clusters', opts: {} },
  { label: '4 KiB clusters, 4-bit refcounts', opts: { clusterSize: 4096, refcountBits: 4 as const } },
];

describe('crash stage verdicts equal qemu-img check', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('qcowscope-crash-stage-');
  });
  afterAll(() => removeDir(dir));

  /** Every stop, kept and lost: ours against qemu-img's; the number of corrupt stops. */
  async function compareAll(base: ImageStore, entries: StageEntry[], label: string): Promise<number> {
    const file = path.join(dir, 'stop.qcow2');
    let corrupt = 0;
    const steps = stepIndexes(entries).length;
    for (let stop = 0; stop <= steps; stop++) {
      for (const keep of [true, false]) {
        const point = await crashAt(base, entries, stop, keep);
        fs.writeFileSync(file, await point.store.read(0, point.store.size()));
        const ours = await judgeCrash(point.store);
        const qemu = qemuCheck(file);
        const where = `${label}, stop ${stop}, ${keep ? 'kept' : 'lost'}: qemu-img ${qemu.stderr}`;
        expect({ exit: ours.exitCode, corruptions: ours.corruptions, leaks: ours.leaks }, where)
          .toEqual({ exit: qemu.exitCode, corruptions: qemu.corruptions, leaks: qemu.leaks });
        if (qemu.exitCode === 2) corrupt++;
      }
    }
    return corrupt;
  }

  for (const cfg of CONFIGS) {
    for (const op of ['create', 'revert', 'delete', 'write'] as const) {
      it(`${op}, ${cfg.label}: every write, kept and lost, in order and with the rule broken`, async () => {
        const bytes = baseImage(dir, cfg.opts);
        const base = new MemoryStore(bytes.slice(), { writable: false });
        const r = await rehearse(base, (s) => runOp(s, op));
        // nothing reached the image
        expect(Buffer.from(base.bytes()).equals(Buffer.from(bytes))).toBe(true);
        expect(stepIndexes(r.entries).length).toBeGreaterThan(1);
        expect(r.entries.some((e) => e.commit)).toBe(true);
        // the last stop, all kept, is the engine's own result
        const direct = new MemoryStore(bytes.slice());
        await runOp(direct, op);
        const last = await crashAt(base, r.entries, stepIndexes(r.entries).length, true);
        expect(Buffer.from(await last.store.read(0, last.store.size())).equals(Buffer.from(direct.bytes()))).toBe(true);

        expect(await compareAll(base, r.entries, 'engine order'), 'the engine order is never corrupt').toBe(0);
        for (const how of ['lower-first', 'publish-first'] as RuleBreak[]) {
          const broken = breakRule(r, how);
          expect(broken, `${how} reorders something`).not.toBeNull();
          expect(await compareAll(base, broken!, how), `${how}: breaking the rule corrupts the image at some stop`).toBeGreaterThan(0);
        }
      });
    }
  }

  // A repair publishes no reference: each stop is judged like qemu-img's, and there is no rule to break.
  for (const [damage, mode] of [['refcount-too-high-data-copied-cleared', 'leaks'], ['refcount-too-low-data', 'all']] as const) {
    it(`repair -r ${mode} of ${damage}: every write, kept and lost`, async () => {
      const file = path.join(dir, 'damaged.qcow2');
      makeDamagedImage(damage, file);
      const base = new MemoryStore(new Uint8Array(fs.readFileSync(file)), { writable: false });
      const r = await rehearse(base, async (s) => {
        const img = await Qcow2Image.open(s, { checkMode: true, writable: true });
        img.journal = new Journal('repair');
        await checkReport(img, { repair: mode });
        return img.journal;
      });
      expect(stepIndexes(r.entries).length).toBeGreaterThan(0);
      // (a stop inside a repair can be judged corrupt, by qemu-img too: a refcount lowered before
      // the COPIED flag that goes with it is set, as QEMU's own repair orders them)
      await compareAll(base, r.entries, `repair ${mode}`);
      const last = await judgeCrash((await crashAt(base, r.entries, stepIndexes(r.entries).length, true)).store);
      expect(last.exitCode, 'repaired').toBe(0);
      expect(breakRule(r, 'lower-first')).toBeNull();
      expect(breakRule(r, 'publish-first')).toBeNull();
    });
  }
});
