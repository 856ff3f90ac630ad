// Snapshot engine on memory stores (no QEMU): the shape of the journal (the shadow commit's header
// write between two flushes, every earlier write into clusters free in the old state; then the
// settle into QEMU's layout, its writes where the published state does not look, its own header
// write between flushes, the cut), exact rollback before the settle, the
// read-only snapshot layer, lookup and ID rules, refusals that write nothing.
import { describe, expect, it } from 'vitest';
import { l1L2Offset } from '../../core/format/entries.ts';
import { getRefcount } from '../../core/format/refcount.ts';
import type { Snapshot } from '../../core/format/snapshot-table.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { createImage } from '../../core/image/create.ts';
import { runGroup } from '../../core/image/group.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { loadRefblock, refblockEntriesOf } from '../../core/image/refcount.ts';
import {
  createSnapshot, deleteSnapshot, findSnapshot, nextSnapshotId, planCreate, planDelete, planRevert, revertSnapshot, snapshotLayer,
} from '../../core/image/snapshot.ts';
import { writeGuest } from '../../core/image/write.ts';
import { CountingStore } from '../helpers/crash-store.ts';

const MiB = 1024 * 1024;

async function image(opts: { clusterSize?: number; refcountBits?: number } = {}): Promise<{ store: MemoryStore; img: Qcow2Image }> {
  const store = new MemoryStore();
  await createImage(store, { size: 8 * MiB, ...opts });
  const img = await Qcow2Image.open(store, { writable: true });
  await writeGuest(img, 0, new Uint8Array(200 * 1024).fill(1));
  await writeGuest(img, 5 * MiB, new Uint8Array(64 * 1024).fill(2));
  return { store, img };
}

async function reopen(store: MemoryStore): Promise<Qcow2Image> {
  return Qcow2Image.open(new MemoryStore(store.bytes().slice()), { writable: true });
}

async function refcountOf(img: Qcow2Image, offset: number): Promise<number> {
  const per = refblockEntriesOf(img);
  const c = Math.floor(offset / img.clusterSize);
  const b = await loadRefblock(img, Math.floor(c / per));
  return b ? getRefcount(b, c % per, img.refcountOrder) : 0;
}

describe('snapshot IDs and lookup', () => {
  const sn = (idStr: string, name: string): Snapshot => ({ idStr, name } as Snapshot);

  it('next ID is the largest numeric ID + 1 (strtoul: leading digits, others count as 0)', () => {
    expect(nextSnapshotId([])).toBe('1');
    expect(nextSnapshotId([sn('1', 'a'), sn('10', 'b'), sn('7x', 'c'), sn('abc', 'd')])).toBe('11');
    expect(nextSnapshotId([sn('abc', 'd')])).toBe('1');
  });

  it('a string finds by ID first, then by name; an object matches all given fields', async () => {
    const { img } = await image();
    await createSnapshot(img, '2');
    await createSnapshot(img, 'two');
    expect(findSnapshot(img, '2')!.name).toBe('two');
    expect(findSnapshot(img, 'two')!.idStr).toBe('2');
    expect(findSnapshot(img, { name: '2' })!.idStr).toBe('1');
    expect(findSnapshot(img, { id: '2', name: '2' })).toBeUndefined();
    expect(findSnapshot(img, {})).toBeUndefined();
    await deleteSnapshot(img, '2'); // ID 2
    expect(img.snapshots.map((s) => s.idStr)).toEqual(['1']);
    const r = await createSnapshot(img, 'again');
    expect(r.snapshot.idStr).toBe('2');
  });
});

describe('the shadow commit', () => {
  for (const op of ['create', 'revert', 'delete'] as const) {
    it(`${op}: two header writes between flushes; before the first (the commit point), writes only into clusters free before; before the second, only where the published state does not look`, async () => {
      const { store, img } = await image({ clusterSize: 4096, refcountBits: 4 });
      await createSnapshot(img, 'first');
      await writeGuest(img, 0, new Uint8Array(8192).fill(3));
      const old = await reopen(store);
      const plan = op === 'create' ? await planCreate(img, 'x') : op === 'revert' ? await planRevert(img, 'first') : await planDelete(img, 'first');
      await plan.prepare();
      await plan.publish();
      const shadow = await reopen(store);
      await plan.settle();
      expect(plan.settled).toBe(true);
      const entries = plan.journal.entries;
      // the commit point, then the settle's header write (not a commit point: nothing a reader sees changes)
      const commits = [...entries.filter((e) => e.commit), ...entries.filter((e) => /\(settle\)/.test(e.purpose))];
      expect(commits).toHaveLength(2);
      expect(entries.filter((e) => e.commit)).toHaveLength(1);
      const [c1, c2] = commits.map((c) => entries.indexOf(c)) as [number, number];
      expect(c2).toBeGreaterThan(c1);
      for (const ci of [c1, c2]) {
        expect(entries[ci - 1]!.kind).toBe('flush');
        expect(entries[ci + 1]!.kind).toBe('flush');
        expect(commits.every((c) => c.offset + c.length === 72)).toBe(true);
      }
      // after the second: at most the cut to QEMU's length, flushed
      expect(entries.slice(c2 + 2).map((e) => e.kind).join(' ')).toMatch(/^(truncate flush)?$/);
      const activeL2 = (i: Qcow2Image): Set<number> => {
        const set = new Set<number>();
        for (let k = 0; k < i.header.l1Size; k++) set.add(l1L2Offset(i.l1Table, k));
        return set;
      };
      const oldActiveL2 = activeL2(old);
      for (const e of entries.slice(0, c1)) {
        if (e.kind !== 'write') continue;
        if (/in place/.test(e.purpose)) {
          // a snapshot's L2 table getting stale COPIED bits cleared: never one the old active tree uses
          expect(op).toBe('revert');
          expect(oldActiveL2.has(e.offset)).toBe(false);
          continue;
        }
        for (let off = e.offset; off < e.offset + e.length; off += img.clusterSize) {
          expect(await refcountOf(old, off), `${e.purpose} at ${off}`).toBe(0);
        }
      }
      // the settle: into clusters the published state leaves free, or COPIED bits of tables
      // only its snapshots use
      const shadowActive = activeL2(shadow);
      for (const e of entries.slice(c1 + 2, c2)) {
        if (e.kind !== 'write') continue;
        if (/COPIED bits|active L1 table in its place/.test(e.purpose)) {
          expect(shadowActive.has(e.offset), e.purpose).toBe(false);
          expect(e.offset).not.toBe(shadow.header.l1TableOffset);
          if ((await refcountOf(shadow, e.offset)) === 0) continue;
          expect(shadow.snapshots.some((sn) => sn.l1TableOffset === e.offset) || /COPIED bits/.test(e.purpose), e.purpose).toBe(true);
          continue;
        }
        for (let off = e.offset; off < e.offset + e.length; off += img.clusterSize) {
          expect(await refcountOf(shadow, off), `${e.purpose} at ${off}`).toBe(0);
        }
      }
    });
  }

  it('rollback of a published (not yet settled) operation restores the previous state exactly', async () => {
    const { store, img } = await image();
    await createSnapshot(img, 'a');
    await writeGuest(img, 0, new Uint8Array(4096).fill(9));
    const header = store.bytes().slice(0, 72);
    const active = await img.read(0, 8 * MiB);
    const plan = await planRevert(img, 'a');
    await plan.prepare();
    await plan.publish();
    expect((await img.read(0, 1))[0]).toBe(1);
    await plan.rollback();
    expect(Buffer.from(store.bytes().slice(0, 72)).equals(Buffer.from(header))).toBe(true);
    const again = await reopen(store);
    expect(Buffer.from(await again.read(0, 8 * MiB)).equals(Buffer.from(active))).toBe(true);
    expect(Buffer.from(await img.read(0, 8 * MiB)).equals(Buffer.from(active))).toBe(true);
    expect(again.snapshots.map((s) => s.name)).toEqual(['a']);
    await plan.settle(); // nothing left to settle after a rollback
    expect(plan.settled).toBe(false);
  });

  it('a refused operation writes nothing', async () => {
    const { store } = await image({ refcountBits: 1 });
    const counting = new CountingStore(new MemoryStore(store.bytes().slice()));
    const img = await Qcow2Image.open(counting, { writable: true });
    await expect(createSnapshot(img, 'x')).rejects.toMatchObject({ code: 'REFCOUNT_OVERFLOW' });
    await expect(revertSnapshot(img, 'nope')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    expect(counting.writes).toBe(0);
    expect(counting.flushes).toBe(0);
  });

  it('shared clusters are counted once per tree; revert and delete leave exactly one reference', async () => {
    const { img } = await image();
    const host = (await img.mapAt(img.activeView(), 0, 1)).hostOffset;
    expect(await refcountOf(img, host)).toBe(1);
    await createSnapshot(img, 'a');
    await createSnapshot(img, 'b');
    expect(await refcountOf(img, host)).toBe(3);
    await revertSnapshot(img, 'a');
    expect(await refcountOf(img, host)).toBe(3);
    await deleteSnapshot(img, 'a');
    await deleteSnapshot(img, 'b');
    expect(await refcountOf(img, host)).toBe(1);
    const m = await img.mapAt(img.activeView(), 0, 1);
    expect(m.l2Hi >>> 31).toBe(1); // COPIED again
  });
});

describe('read-only snapshot layer', () => {
  it('reads what the disk held when the snapshot was taken, at its own size', async () => {
    const { img } = await image();
    await createSnapshot(img, 'then');
    await writeGuest(img, 0, new Uint8Array(4096).fill(7));
    const layer = await snapshotLayer(img, 'then');
    expect(layer.virtualSize).toBe(8 * MiB);
    expect((await layer.read(0, 4))).toEqual(new Uint8Array([1, 1, 1, 1]));
    expect((await img.read(0, 4))).toEqual(new Uint8Array([7, 7, 7, 7]));
    const ext = await layer.extents(0, 8 * MiB);
    expect(ext[0]).toMatchObject({ start: 0, data: true });
    await layer.close();
    expect((await img.read(0, 1))[0]).toBe(7); // the image stays open
  });
});

describe('groups', () => {
  it('refuse the same image twice, and an empty group', async () => {
    const { img } = await image();
    await expect(runGroup([img, img], (i) => planCreate(i, 'x'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runGroup([], (i) => planCreate(i, 'x'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
