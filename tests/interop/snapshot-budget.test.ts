// Snapshot operations whose changed refcount blocks outgrow the memory the shadow commit keeps
// (OpenOptions.commitRefblockBytes): with a budget of 0 (the overlay's four-block minimum) on
// images of many small refcount blocks, changed blocks are written early to their new places and
// read back when touched again. A sequence of creates, reverts and deletes (compressed clusters
// included) is judged by qemu-img against a model after every step.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { CountingStore } from '../helpers/crash-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { createSnapshot, planCreate, planDelete, planRevert, type PlannedSnapshotOp } from '../../core/image/snapshot.ts';
import { createImage, qemuCheck, qemuIoOk, sha256 } from '../helpers/qemu.ts';
import { dataClusterOffset, readHeader, setRefcount } from '../helpers/qcow2-mini.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { ImageModel, withImage } from './snapshot-model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Run a planned operation with the smallest budget; check that memory stayed near the budget and
 * that early writes, if any, come before the flush that precedes the commit. Returns how many blocks went out early.
 */
async function tight(file: string, plan: (img: Qcow2Image) => Promise<PlannedSnapshotOp>): Promise<number> {
  return withImage(file, async (img) => {
    const p = await plan(img);
    await p.run();
    const ov = p.commit.overlay;
    if (ov.earlyWrites === 0) return 0;
    const block = img.clusterSize + Math.ceil(ov.per / 8);
    expect(ov.peakBytes, 'overlay memory').toBeLessThanOrEqual(ov.budgetBytes + 4 * block);
    // Early writes are part of the operation: in its journal, before the flush that precedes the commit.
    const entries = p.journal.entries;
    const commitAt = entries.findIndex((e) => e.commit);
    const early = entries.findIndex((e) => e.purpose.includes('written early'));
    expect(early).toBeGreaterThanOrEqual(0);
    expect(entries.slice(early, commitAt).some((e) => e.kind === 'flush')).toBe(true);
    return ov.earlyWrites;
  }, { commitRefblockBytes: 0 });
}

// Compressed clusters of one pattern pack many to a host cluster: more references than 4 bits
// hold. `everyOp`: every operation of the sequence changes more blocks than the budget (with 4-bit
// refcounts a block counts 2 MiB of the file: only some do).
const CONFIGS = [
  { label: '512 B clusters, 16-bit refcounts, compressed clusters', clusterSize: 512, refcountBits: 16 as const, compressed: true, everyOp: true },
  { label: '512 B clusters, 64-bit refcounts, compressed clusters', clusterSize: 512, refcountBits: 64 as const, compressed: true, everyOp: true },
  { label: '1 KiB clusters, 4-bit refcounts', clusterSize: 1024, refcountBits: 4 as const, compressed: false, everyOp: false },
];

describe('snapshot operations beyond the refcount block budget', () => {
  const tmp = useTempDir('qcowscope-snapbudget-');

  for (const cfg of CONFIGS) {
    it(`create, revert, delete with blocks written early (${cfg.label})`, async () => {
      const f = tmp.file('b.qcow2');
      const size = 16 * MiB;
      createImage(f, size, { clusterSize: cfg.clusterSize, refcountBits: cfg.refcountBits });
      const m = new ImageModel(f, size);
      const early: number[] = [];
      qemuIoOk(f, 'write -P 1 0 6M', 'write -P 2 10M 1M');
      m.write(0, 6 * MiB, 1);
      m.write(10 * MiB, MiB, 2);
      // (qemu-io writes compressed clusters only where nothing is allocated yet)
      const compressed = (offset: number, len: number, pattern: number): void => {
        if (!cfg.compressed) return;
        qemuIoOk(f, `write -c -P ${pattern} ${offset} ${len}`);
        m.write(offset, len, pattern);
      };
      compressed(8 * MiB, 256 * KiB, 3);
      early.push(await tight(f, (img) => planCreate(img, 's1')));
      m.create('s1');
      m.verify(tmp.dir, 'after create s1');
      qemuIoOk(f, 'write -P 4 1M 2M', 'write -P 5 12M 2M', 'write -P 6 8M 64k');
      m.write(MiB, 2 * MiB, 4);
      m.write(12 * MiB, 2 * MiB, 5);
      m.write(8 * MiB, 64 * KiB, 6);
      compressed(15 * MiB, 128 * KiB, 8);
      early.push(await tight(f, (img) => planCreate(img, 's2')));
      m.create('s2');
      qemuIoOk(f, 'write -P 7 0 3M');
      m.write(0, 3 * MiB, 7);
      m.verify(tmp.dir, 'after create s2');
      early.push(await tight(f, (img) => planRevert(img, 's1')));
      m.revert('s1');
      m.verify(tmp.dir, 'after revert to s1');
      early.push(await tight(f, (img) => planDelete(img, 's1')));
      m.delete('s1');
      m.verify(tmp.dir, 'after delete s1');
      early.push(await tight(f, (img) => planDelete(img, 's2')));
      m.delete('s2');
      m.verify(tmp.dir, 'after delete s2');
      if (cfg.everyOp) for (const n of early) expect(n, 'blocks written early').toBeGreaterThan(0);
      else expect(early.some((n) => n > 0), 'blocks written early').toBe(true);
    }, 120_000);
  }
});

describe('a refusal met after refcount blocks went out early', () => {
  const tmp = useTempDir('qcowscope-snapbudget-refuse-');

  it('leaves the file byte for byte as it was: what went out early is cut off again', async () => {
    const f = tmp.file('r.qcow2');
    createImage(f, 16 * MiB, { clusterSize: 512 });
    qemuIoOk(f, 'write -P 1 0 8M');
    // the last data cluster the walk meets says refcount 0: a corruption found deep in the plan
    const h = readHeader(f);
    const lastL1 = (8 * MiB) / (512 * 64) - 1;
    const victim = dataClusterOffset(f, lastL1, 63, h) / 512;
    setRefcount(f, victim, 0, h);
    const before = sha256(f);
    const q = qemuCheck(f);
    expect(q.corruptions).toBeGreaterThan(0);
    const bytes = new Uint8Array(fs.readFileSync(f));
    const mem = new MemoryStore(bytes.slice());
    const store = new CountingStore(mem);
    const img = await Qcow2Image.open(store, { writable: true, commitRefblockBytes: 0 });
    await expect(createSnapshot(img, 's')).rejects.toMatchObject({ code: expect.stringMatching(/METADATA_CORRUPT|REFCOUNT/) });
    // the plan did write refcount blocks early before it met the bad refcount...
    expect(store.writes).toBeGreaterThan(0);
    expect(store.maxSize).toBeGreaterThan(bytes.length);
    // ...and the refusal took them back
    expect(store.size()).toBe(bytes.length);
    expect(Buffer.compare(mem.bytes(), bytes)).toBe(0);
    expect(sha256(f)).toBe(before);
  });
});
