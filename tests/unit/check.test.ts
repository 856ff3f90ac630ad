// The check, repair and layout on images built in memory (no QEMU): counters and messages for
// typical damage, repairs that leave a clean image, the rebuild placing the new refcount
// structure in the earliest free clusters, the dirty-image repair, and the building blocks
// (IMRT overflow per refcount width, batched table reads, C-style hex).
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../core/io/memory-store.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { createImage } from '../../core/image/create.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { writeGuest } from '../../core/image/write.ts';
import { be32, put32, put64 } from '../../core/format/bytes.ts';
import { checkExitCode, checkImage, runCheck } from '../../core/analysis/check.ts';
import { buildLayout, Kind } from '../../core/analysis/layout.ts';
import { FindingSink, altHex, hex64, zeroCounters } from '../../core/analysis/findings.ts';
import { ReferenceWalk } from '../../core/analysis/refcount-walk.ts';
import { tablesInOrder } from '../../core/analysis/table-reads.ts';
import { createSnapshot } from '../../core/image/snapshot.ts';

const CS = 65536;

async function makeImage(opts: { refcountBits?: number; lazy?: boolean } = {}): Promise<MemoryStore> {
  const store = new MemoryStore(new Uint8Array(0), { name: 'test.qcow2' });
  await createImage(store, { size: 64 * 1024 * 1024, refcountBits: opts.refcountBits, lazyRefcounts: opts.lazy });
  const img = await Qcow2Image.open(store, { writable: true });
  await writeGuest(img, 0, new Uint8Array(CS).fill(0x11));
  await writeGuest(img, 4 * CS, new Uint8Array(CS).fill(0x22));
  return store;
}

async function check(store: ImageStore, repair?: 'leaks' | 'all') {
  const img = await Qcow2Image.open(store, { checkMode: true, writable: repair !== undefined });
  return runCheck(img, { repair });
}

/** Set a 16-bit refcount of cluster `c` in refcount block 0 (at cluster 2 in a fresh image). */
function setRefcount16(store: MemoryStore, c: number, v: number): void {
  const b = store.bytes();
  const refblock = be32(b, 48 + 4) ? readReftable0(b) : 0;
  b[refblock + 2 * c] = v >> 8;
  b[refblock + 2 * c + 1] = v & 0xff;
}
function readReftable0(b: Uint8Array): number {
  const rt = be32(b, 52);
  return be32(b, rt + 4);
}

describe('check on in-memory images', () => {
  it('a fresh image with data is clean, with qemu-img\'s statistics', async () => {
    const r = await check(await makeImage());
    expect(checkExitCode(r)).toBe(0);
    expect(r.findings).toEqual([]);
    expect(r.allocatedClusters).toBe(2);
    expect(r.totalClusters).toBe(1024);
    expect(r.fragmentedClusters).toBe(0); // the two data clusters are adjacent on disk
  });

  it('a leaked cluster is a leak, and -r leaks frees it', async () => {
    const store = await makeImage();
    const n = Math.ceil(store.size() / CS);
    await store.truncate((n + 1) * CS);
    setRefcount16(store, n, 1);
    const r = await check(store);
    expect(checkExitCode(r)).toBe(3);
    expect(r.findings.map((f) => f.message)).toEqual([`Leaked cluster ${n} refcount=1 reference=0`]);
    const fixed = await check(store, 'leaks');
    expect(fixed.leaksFixed).toBe(1);
    expect(checkExitCode(fixed)).toBe(0);
    expect(checkExitCode(await check(store))).toBe(0);
  });

  it('a refcount below its references is a corruption, fixed in place by -r all', async () => {
    const store = await makeImage();
    const img = await Qcow2Image.open(store, { checkMode: true });
    const dataCluster = (be32(store.bytes(), img.header.l1TableOffset + 4) & 0xfffffe00) / CS + 1; // first data follows L2
    setRefcount16(store, dataCluster, 0);
    const r = await check(store);
    expect(checkExitCode(r)).toBe(2);
    expect(r.findings.map((f) => f.message)).toContain(`ERROR cluster ${dataCluster} refcount=0 reference=1`);
    const fixed = await check(store, 'all');
    expect(fixed.rebuilt).toBe(true); // refcount 0 with references: QEMU rebuilds
    expect(checkExitCode(fixed)).toBe(0);
  });

  it('the rebuild puts the new refcount structure in the earliest free clusters', async () => {
    const store = await makeImage();
    const size = store.size();
    // Zero the reftable's only entry: every refcount reads 0.
    const rtOff = be32(store.bytes(), 52);
    put64(store.bytes(), rtOff, 0);
    // Free a cluster in the middle by unreferencing nothing: instead leave room at the end only.
    const fixed = await check(store, 'all');
    expect(checkExitCode(fixed)).toBe(0);
    const img = await Qcow2Image.open(store, { checkMode: true });
    // The old refblock is leaked by the rebuild and freed by the same repair; the new structure
    // goes into the first free clusters, which lie at the old end of the file.
    expect(img.header.refcountTableOffset).toBeLessThanOrEqual(size + CS);
    expect(store.size()).toBeLessThanOrEqual(size + 2 * CS);
  });

  it('COPIED missing on the active L2 entry is a corruption; -r leaks repairs it when nothing else is wrong', async () => {
    const store = await makeImage();
    const img = await Qcow2Image.open(store, { checkMode: true });
    const l2 = (be32(store.bytes(), img.header.l1TableOffset + 4) & 0xfffffe00);
    const b = store.bytes();
    put32(b, l2, be32(b, l2) & 0x7fffffff);
    const r = await check(store);
    expect(r.findings.map((f) => f.message)).toEqual([expect.stringMatching(/^ERROR OFLAG_COPIED data cluster: l2_entry=[0-9a-f]+ refcount=1$/)]);
    const fixed = await check(store, 'leaks');
    expect(fixed.corruptionsFixed).toBe(1);
    expect(checkExitCode(fixed)).toBe(0);
  });

  it('a dirty image (lazy refcounts) is repaired by check -r all (what runs before writing), and the dirty bit cleared', async () => {
    const store = await makeImage({ lazy: true });
    const b = store.bytes();
    b[79] |= 1; // incompatible_features bit 0: dirty
    const img0 = await Qcow2Image.open(store, { checkMode: true });
    const l2 = (be32(b, img0.header.l1TableOffset + 4) & 0xfffffe00) / CS;
    setRefcount16(store, l2 + 1, 0); // a refcount update that never reached the disk
    const img = await Qcow2Image.open(store, { writable: true, checkMode: true });
    expect(img.isDirty).toBe(true);
    const r = await runCheck(img, { repair: 'all' });
    expect(r.corruptionsFixed).toBeGreaterThan(0);
    expect(checkExitCode(r)).toBe(0);
    expect(img.isDirty).toBe(false);
    expect(b[79]! & 1).toBe(0);
    expect(checkExitCode(await check(store))).toBe(0);
    const again = await runCheck(img, { repair: 'all' });
    expect([again.corruptionsFixed, again.leaksFixed]).toEqual([0, 0]);
  });

  it('reports progress and can be cancelled', async () => {
    const img = await Qcow2Image.open(await makeImage(), { checkMode: true });
    const phases = new Set<string>();
    await checkImage(img, { onProgress: (p) => phases.add(p) });
    expect(phases.has('Refcount blocks')).toBe(true);
    await expect(checkImage(img, { isCancelled: () => true })).rejects.toMatchObject({ code: 'CANCELLED' });
  });

  it('refuses to repair a read-only image', async () => {
    const img = await Qcow2Image.open(await makeImage(), { checkMode: true });
    await expect(checkImage(img, { repair: 'all' })).rejects.toMatchObject({ code: 'READ_ONLY' });
  });

  it('refcount_bits=1: a second reference overflows the IMRT (QEMU\'s overflow message)', async () => {
    const store = await makeImage({ refcountBits: 1 });
    const img = await Qcow2Image.open(store, { checkMode: true });
    const walk = new ReferenceWalk(img, Math.ceil(store.size() / CS), zeroCounters(), new FindingSink());
    walk.inc(5 * CS, CS, Kind.DataExclusive);
    walk.inc(5 * CS, CS, Kind.DataExclusive);
    expect(walk.res.corruptions).toBe(1);
    expect(walk.sink.findings[0]!.message).toBe('ERROR: overflow cluster offset=0x50000');
  });

  it('snapshots sharing active L2 tables: counted from the kept runs as the entry-by-entry walk counts them, overflows included', async () => {
    // refcount_bits=2 (max 3); two snapshots share the active L2 tables. Snapshot 1's L1 names
    // the first table T twice, and an entry of the second table points at a cluster in the middle
    // of T's run: that cluster overflows first, in the middle of T's runs, so the runs must undo
    // what they counted and give way to the entries, which report each overflow where QEMU does.
    const store = new MemoryStore(new Uint8Array(0), { name: 'runs.qcow2' });
    await createImage(store, { size: 2 * 1024 ** 3, refcountBits: 2 });
    const img = await Qcow2Image.open(store, { writable: true });
    for (const [i, at] of [0, 3, 4, 5, 9, 8192, 8193, 3 * 8192 + 7].entries()) await writeGuest(img, at * CS, new Uint8Array(CS).fill(i + 1));
    await createSnapshot(img, 'one');
    await createSnapshot(img, 'two');
    const b = store.bytes();
    const sn1 = img.snapshots[0]!.l1TableOffset;
    b.copyWithin(sn1 + 16, sn1, sn1 + 8);
    const l2At = (l1: number, i: number) => (be32(b, l1 + 8 * i) & 0x00ffffff) * 2 ** 32 + (be32(b, l1 + 8 * i + 4) & ~0x1ff >>> 0);
    const t = l2At(img.header.l1TableOffset, 0);
    const u = l2At(img.header.l1TableOffset, 1);
    b.copyWithin(u + 8, t + 4 * 8, t + 4 * 8 + 8);
    const walkOf = async (trackOwners: boolean) => {
      const again = await Qcow2Image.open(new MemoryStore(b.slice()), { checkMode: true });
      const w = new ReferenceWalk(again, Math.ceil(b.length / CS), zeroCounters(), new FindingSink(), { trackOwners });
      await w.calculate();
      return w;
    };
    const withRuns = await walkOf(false);
    const entryByEntry = await walkOf(true); // owners are recorded per entry: no runs kept
    expect(withRuns.runs).not.toBeNull();
    expect(entryByEntry.runs).toBeNull();
    expect(withRuns.sink.findings.filter((f) => f.message.includes('overflow')).length).toBeGreaterThan(2);
    expect(withRuns.sink.findings).toEqual(entryByEntry.sink.findings);
    expect(withRuns.res).toEqual(entryByEntry.res);
    expect(withRuns.frag).toEqual(entryByEntry.frag);
    expect(Array.from(withRuns.imrt.counts.subarray(0, withRuns.imrt.size))).toEqual(Array.from(entryByEntry.imrt.counts.subarray(0, entryByEntry.imrt.size)));
    // and the whole check is QEMU's verdict on it: corruptions only, no leak
    const r = await check(new MemoryStore(b.slice()));
    expect(r.corruptions).toBeGreaterThan(2);
  });

  it('16-bit refcounts: the IMRT starts a byte wide and widens past 255 without an overflow; 8-bit ones overflow there', async () => {
    for (const [bits, overflows] of [[16, 0], [8, 300 - 255]] as const) {
      const store = await makeImage({ refcountBits: bits });
      const img = await Qcow2Image.open(store, { checkMode: true });
      const walk = new ReferenceWalk(img, Math.ceil(store.size() / CS), zeroCounters(), new FindingSink());
      walk.inc(6 * CS, CS, Kind.DataExclusive); // a neighbour counted before the widening keeps its count
      for (let i = 0; i < 300; i++) walk.inc(5 * CS, CS, Kind.DataExclusive);
      expect(walk.imrt.get(5)).toBe(overflows ? 255 : 300);
      expect(walk.imrt.get(6)).toBe(1);
      expect(walk.res.corruptions).toBe(overflows);
    }
  });

  it('layout of a fresh image', async () => {
    const img = await Qcow2Image.open(await makeImage(), { checkMode: true });
    const l = await buildLayout(img);
    expect(Array.from(l.kinds.subarray(0, 4))).toEqual([Kind.Header, Kind.Reftable, Kind.Refblock, Kind.ActiveL1]);
    expect(l.summary.l2).toBe(1);
    expect(l.summary.data).toBe(2);
    expect(l.summary.free + l.summary.leaked + l.summary.corrupt).toBe(0);
  });
});

describe('building blocks', () => {
  it('hex like C', () => {
    expect(hex64(0, 0x40000)).toBe('40000');
    expect(hex64(0x80000000, 0x50000)).toBe('8000000000050000');
    expect(altHex(0)).toBe('0');
    expect(altHex(0x22a00)).toBe('0x22a00');
  });

  it('tables are read in coalesced batches and yielded in the asked order', async () => {
    const store = await makeImage();
    let reads = 0;
    const counting: ImageStore = Object.assign(Object.create(store) as ImageStore, {
      read: (o: number, n: number) => { reads++; return store.read(o, n); },
      readInto: (o: number, out: Uint8Array) => { reads++; return store.readInto(o, out); },
      size: () => store.size(),
    });
    const img = await Qcow2Image.open(store, { checkMode: true });
    Object.defineProperty(img, 'store', { value: counting });
    const offsets = [3 * CS, 0, CS, 2 * CS, 100 * CS];
    const got: number[] = [];
    for await (const [k, t] of tablesInOrder(img, offsets, CS)) {
      got.push(k);
      if (offsets[k]! < store.size()) expect(Buffer.from(t).equals(Buffer.from(await store.read(offsets[k]!, CS)))).toBe(true);
      else expect(t.every((x) => x === 0)).toBe(true);
    }
    expect(got).toEqual([0, 1, 2, 3, 4]);
    expect(reads).toBe(1); // clusters 0..3 in one read; the one past the end is not read
  });
});
