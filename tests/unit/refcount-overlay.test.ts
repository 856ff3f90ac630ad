// The snapshot commit's refcount overlay within its memory budget (core/image/snapshot-commit.ts):
// a changed block that leaves the cache is written to its new place and read back with the same
// refcounts, and its zeros on disk are still the old block's, so a cluster the operation freed
// is never taken for a free one; the old block on disk is never touched.
import { describe, expect, it } from 'vitest';
import { getRefcount, reftableEntry } from '../../core/format/refcount.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { createImage } from '../../core/image/create.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { loadRefblock } from '../../core/image/refcount.ts';
import { RefcountOverlay } from '../../core/image/refcount-overlay.ts';
import { discard, writeGuest } from '../../core/image/write.ts';

const MiB = 1024 * 1024;

const bit = (z: Uint8Array | null, i: number): number => (z ? (z[i >>> 3]! >>> (i & 7)) & 1 : -1);

describe('refcount overlay beyond its budget', () => {
  it('evicts a changed block to its new place and reads it back with its zeros on disk', async () => {
    const store = new MemoryStore();
    await createImage(store, { size: 8 * MiB, clusterSize: 512 });
    const img = await Qcow2Image.open(store, { writable: true });
    await writeGuest(img, 0, new Uint8Array(2 * MiB).fill(1)); // 4096 data clusters: 16+ blocks of 256
    const cs = img.clusterSize;
    let next = Math.ceil(store.size() / cs) + 16;
    const ov: RefcountOverlay = new RefcountOverlay(img, 0, async (rb) => {
      ov.homes.set(rb, next++ * cs);
    });
    const rb = 2;
    const onDisk = (await loadRefblock(img, rb))!.slice();
    const oldOffset = reftableEntry(img.reftable, rb);
    const used = [...Array(ov.per).keys()].find((i) => getRefcount(onDisk, i, ov.order) === 1)!;
    expect(used).toBeDefined();
    const ci = rb * ov.per + used;

    await ov.load(rb);
    ov.addRef(ci, -1, 'data cluster'); // 0 afterwards, 1 on disk
    expect(ov.get(ci)).toBe(0);
    expect(ov.wasZero(rb, used)).toBe(false);
    for (let r = rb + 1; r < rb + 8; r++) {
      await ov.load(r);
      await ov.trim([r]);
    }
    expect(ov.isLoaded(rb)).toBe(false);
    expect(ov.earlyWrites).toBe(1);
    expect(ov.peakBytes).toBeLessThanOrEqual(ov.budgetBytes + cs);

    // The allocator's view: 0 afterwards, not 0 on disk, so not free.
    const pk = await ov.peek(rb);
    expect(getRefcount(pk.data!, used, ov.order)).toBe(0);
    expect(bit(pk.zero, used)).toBe(0);
    expect(ov.isLoaded(rb)).toBe(false);

    // Read back to be read only, then to be changed (the bitmap rebuilt from the old block).
    await ov.load(rb, false);
    expect(ov.get(ci)).toBe(0);
    expect(ov.isReady(rb)).toBe(false);
    await ov.load(rb);
    expect(ov.isReady(rb)).toBe(true);
    expect(ov.wasZero(rb, used)).toBe(false);
    for (let i = 0; i < ov.per; i++) expect(bit(ov.zeroBits(rb), i)).toBe(getRefcount(onDisk, i, ov.order) === 0 ? 1 : 0);
    ov.addRef(ci, +1, 'data cluster');
    expect(ov.get(ci)).toBe(1);

    // The old block was never written; the new place holds the evicted state.
    expect(store.bytes().slice(oldOffset, oldOffset + cs)).toEqual(onDisk);
    const home = ov.homes.get(rb)!;
    expect(getRefcount(store.bytes().slice(home, home + cs), used, ov.order)).toBe(0);

    // Once every block has its place, a change is a bug.
    ov.frozen = true;
    await ov.load(rb + 20);
    expect(() => ov.set((rb + 20) * ov.per, 1)).toThrow(/after the refcount structures were placed/);
  });

  it('zeros on disk of a block with every mix of used and free entries (16-bit refcounts)', async () => {
    const store = new MemoryStore();
    await createImage(store, { size: 8 * MiB, clusterSize: 512 });
    const img = await Qcow2Image.open(store, { writable: true });
    // 2048 guest clusters written, then some discarded in a pattern: groups of eight host clusters
    // all used, all free, or mixed
    await writeGuest(img, 0, new Uint8Array(1 * MiB).fill(1));
    const pattern = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    for (let c = 0; c < 2048; c++) if (!pattern[c % pattern.length]) await discard(img, c * 512, 512);
    const cs = img.clusterSize;
    let next = Math.ceil(store.size() / cs) + 16;
    const ov: RefcountOverlay = new RefcountOverlay(img, 0, async (rb) => {
      ov.homes.set(rb, next++ * cs);
    });
    for (const rb of [0, 1, 3, 5]) {
      const onDisk = await loadRefblock(img, rb);
      await ov.load(rb);
      ov.block(rb); // the first change notes the zeros on disk
      const want = [...Array(ov.per).keys()].map((i) => (onDisk && getRefcount(onDisk, i, ov.order) !== 0 ? 0 : 1));
      expect(want.includes(0) && want.includes(1)).toBe(true);
      expect([...Array(ov.per).keys()].map((i) => bit(ov.zeroBits(rb), i))).toEqual(want);
    }
  });
});
