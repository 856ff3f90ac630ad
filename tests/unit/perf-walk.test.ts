// The fast read paths of Qcow2Image (whole-L2-table walks in extentsView / walkExtents and
// readView, the HoleMap cursor) against the plain per-cluster algorithm they replace: one
// mapAt per cluster, extents merged with pushExtent. Random tables on small clusters, host
// offsets on both sides of 2^32, unaligned ranges, holes, extended L2 and a backing layer.
// No timing here: speed is measured by `npm run bench`.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { HoleMap } from '../../core/image/block-status.ts';
import { Qcow2Image, type L1View } from '../../core/image/qcow2-image.ts';
import { pushExtent, type Extent } from '../../core/image/layer.ts';
import { seededRandom } from '../helpers/random.ts';

const TWO32 = 2 ** 32;

function put32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(off, v >>> 0);
}
function put64(b: Uint8Array, off: number, v: number): void {
  put32(b, off, Math.floor(v / TWO32));
  put32(b, off + 4, v % TWO32);
}

interface Built {
  bytes: Uint8Array;
  clusterSize: number;
  l2Entries: number;
}

/**
 * A v3 (or v2) image with `l1Size` L1 entries; `entry(l1, l2)` gives each L2 entry as
 * [hi, lo, zeroBitmap, allocBitmap] (bitmaps for extended L2), `null` L1 entries are unallocated.
 */
function buildImage(opts: {
  clusterBits: number; extL2?: boolean; version?: number; virtualSize: number;
  l1: Array<boolean>; entry: (l1Index: number, l2Index: number) => [number, number, number?, number?];
  dataBytes?: number;
}): Built {
  const cs = 2 ** opts.clusterBits;
  const entrySize = opts.extL2 ? 16 : 8;
  const l2Entries = cs / entrySize;
  const l1Size = opts.l1.length;
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const l1Offset = 3 * cs;
  const firstL2 = l1Offset + l1Clusters * cs;
  const nL2 = opts.l1.filter(Boolean).length;
  const dataStart = firstL2 + nL2 * cs;
  const total = dataStart + (opts.dataBytes ?? 0);
  const b = new Uint8Array(total);
  const version = opts.version ?? 3;
  put32(b, 0, 0x514649fb);
  put32(b, 4, version);
  put32(b, 20, opts.clusterBits);
  put64(b, 24, opts.virtualSize);
  put32(b, 36, l1Size);
  put64(b, 40, l1Offset);
  put64(b, 48, cs);
  put32(b, 56, 1);
  if (version >= 3) {
    put64(b, 72, opts.extL2 ? 0x10 : 0);
    put32(b, 96, 4);
    put32(b, 100, 112);
  }
  put64(b, cs, 2 * cs); // reftable → refblock (refcounts do not matter to reads)
  let next = firstL2;
  opts.l1.forEach((allocated, l1Index) => {
    if (!allocated) return;
    const l2 = next;
    next += cs;
    put32(b, l1Offset + l1Index * 8, 0x80000000 + Math.floor(l2 / TWO32));
    put32(b, l1Offset + l1Index * 8 + 4, l2 % TWO32);
    for (let i = 0; i < l2Entries; i++) {
      const [hi, lo, zb, ab] = opts.entry(l1Index, i);
      put32(b, l2 + i * entrySize, hi);
      put32(b, l2 + i * entrySize + 4, lo);
      if (opts.extL2) {
        put32(b, l2 + i * entrySize + 8, zb ?? 0);
        put32(b, l2 + i * entrySize + 12, ab ?? 0);
      }
    }
  });
  // recognisable data bytes
  for (let i = dataStart; i < total; i++) b[i] = (i * 131 + 7) & 0xff;
  return { bytes: b, clusterSize: cs, l2Entries };
}

/** Random standard entries: runs of contiguous data (some across 2^32), zero, unallocated, compressed. */
function randomStandard(r: () => number, cs: number, dataLow: number, dataClusters: number, v3: boolean) {
  let runLeft = 0;
  let nextHost = 0;
  let runKind = 0;
  return (): [number, number] => {
    if (runLeft === 0) {
      runLeft = 1 + Math.floor(r() * 6);
      runKind = Math.floor(r() * (v3 ? 6 : 4));
      const where = r();
      nextHost = where < 0.5
        ? dataLow + Math.floor(r() * dataClusters) * cs // readable
        : where < 0.8 ? TWO32 - Math.floor(r() * 4) * cs // crosses 2^32
          : Math.floor(r() * 2 ** 20) * 2 ** 20 * 4 + cs; // high
    }
    runLeft--;
    const copied = r() < 0.5 ? 0x80000000 : 0;
    switch (runKind) {
      case 0: return [0, 0]; // unallocated
      case 1: case 2: { // data
        const h = nextHost;
        nextHost += cs;
        return [copied + Math.floor(h / TWO32), h % TWO32];
      }
      case 3: // compressed (never read in these tests)
        return [0x40000000 + Math.floor(r() * 16), Math.floor(r() * TWO32)];
      case 4: return [0, 1]; // zero, plain
      default: { // zero, preallocated
        const h = nextHost;
        nextHost += cs;
        return [copied + Math.floor(h / TWO32), (h % TWO32) + 1];
      }
    }
  };
}

/** The algorithm the fast paths replace: one mapAt per cluster, merged with pushExtent. */
async function referenceExtents(img: Qcow2Image, view: L1View, start: number, length: number,
  segs?: Array<[number, number]>): Promise<Extent[]> {
  const out: Extent[] = [];
  const end = Math.min(start + length, view.virtualSize);
  let pos = start;
  while (pos < end) {
    const m = await img.mapAt(view, pos, end - pos);
    let n = m.length;
    if (m.l2Offset === 0 && m.kind === 'backing') n = Math.min(end, (m.l1Index + 1) * img.l2Span) - pos;
    if (m.kind === 'data') {
      // qemu-img map splits data exactly where the file's holes begin and end
      for (const [h, len, hole] of splitBrute(segs ?? [[0, Infinity]], m.hostOffset, n)) {
        pushExtent(out, { start: pos + (h - m.hostOffset), length: len, depth: 0, present: true, zero: hole, data: true, compressed: false, offset: h });
      }
    } else if (m.kind === 'compressed') {
      pushExtent(out, { start: pos, length: n, depth: 0, present: true, zero: false, data: true, compressed: true });
    } else if (m.kind === 'zero') {
      const e: Extent = { start: pos, length: n, depth: 0, present: true, zero: true, data: false, compressed: false };
      if (m.hostOffset) e.offset = m.hostOffset;
      pushExtent(out, e);
    } else {
      // unallocated here; an unallocated subcluster of an allocated cluster keeps its host offset
      const zeros = (s: number, len: number): Extent => {
        const e: Extent = { start: s, length: len, depth: 0, present: false, zero: true, data: false, compressed: false };
        if (m.hostOffset) e.offset = m.hostOffset + (s - pos);
        return e;
      };
      if (!img.backing) {
        pushExtent(out, zeros(pos, n));
      } else {
        const bEnd = Math.min(pos + n, img.backing.virtualSize);
        if (bEnd > pos) for (const e of await img.backing.extents(pos, bEnd - pos)) pushExtent(out, { ...e, depth: e.depth + 1 });
        if (bEnd < pos + n) {
          const s = Math.max(pos, bEnd);
          pushExtent(out, zeros(s, pos + n - s));
        }
      }
    }
    pos += n;
  }
  return out;
}

/** [offset, length, hole] pieces of a host range, byte by byte against the data segments. */
function splitBrute(segs: Array<[number, number]>, h: number, n: number): Array<[number, number, boolean]> {
  const cuts = new Set<number>([h, h + n]);
  for (const [s, e] of segs) for (const x of [s, e]) if (x > h && x < h + n) cuts.add(x);
  const points = [...cuts].sort((a, b) => a - b);
  const out: Array<[number, number, boolean]> = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i]!;
    out.push([a, points[i + 1]! - a, !segs.some(([s, e]) => s <= a && a < e)]);
  }
  return out;
}

/** Guest bytes, one mapAt per cluster (no compressed clusters). */
async function referenceRead(img: Qcow2Image, view: L1View, start: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const end = Math.min(start + length, view.virtualSize);
  let pos = start;
  while (pos < end) {
    const m = await img.mapAt(view, pos, end - pos);
    if (m.kind === 'data') out.set(await img.store.read(m.hostOffset, m.length), pos - start);
    else if (m.kind === 'backing' && img.backing) {
      const bEnd = Math.min(pos + m.length, img.backing.virtualSize);
      if (bEnd > pos) out.set(await img.backing.read(pos, bEnd - pos), pos - start);
    }
    pos += m.length;
  }
  return out;
}

function randomSegments(r: () => number): Array<[number, number]> {
  const segs: Array<[number, number]> = [];
  let at = 0;
  for (let i = 0; i < 40; i++) {
    at += Math.floor(r() * 3 * 2 ** 16) + 1;
    const len = Math.floor(r() * 2 ** 15) + 1;
    segs.push([at, at + len]);
    at += len;
    if (r() < 0.1) at += TWO32 - 3 * 2 ** 16; // jump across 2^32
  }
  return segs;
}

function ranges(r: () => number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [[0, size], [0, size + 12345]];
  for (let i = 0; i < 12; i++) {
    const s = Math.floor(r() * size);
    out.push([s, Math.floor(r() * (size - s)) + 1]);
  }
  return out;
}

async function open(b: Built, backing?: Qcow2Image): Promise<Qcow2Image> {
  return Qcow2Image.open(new MemoryStore(b.bytes, { writable: false }), { backing: backing ?? null });
}

describe('whole-table extents walk = per-cluster mapAt', () => {
  for (const [clusterBits, seed] of [[9, 1], [9, 2], [12, 3], [16, 4]] as const) {
    it(`standard L2, ${2 ** clusterBits}-byte clusters, seed ${seed}`, async () => {
      const r = seededRandom(seed);
      const cs = 2 ** clusterBits;
      const l2Entries = cs / 8;
      const l1Size = clusterBits === 16 ? 2 : 12;
      const virtualSize = l1Size * l2Entries * cs - Math.floor(r() * 3) * 700;
      const l1 = Array.from({ length: l1Size }, () => r() < 0.8);
      const dataClusters = 64;
      const gen = randomStandard(r, cs, 0, dataClusters, true);
      const built = buildImage({ clusterBits, virtualSize, l1, entry: () => gen(), dataBytes: dataClusters * cs });
      const img = await open(built);
      const view = img.activeView();
      const segs = randomSegments(r);
      for (const [s, n] of ranges(r, virtualSize)) {
        expect(await img.extentsView(view, s, n)).toEqual(await referenceExtents(img, view, s, n));
        expect(await img.extentsView(view, s, n, new HoleMap(segs))).toEqual(await referenceExtents(img, view, s, n, segs));
      }
    });
  }

  it('contiguous data across 2^32 is one extent', async () => {
    const cs = 512;
    const built = buildImage({
      clusterBits: 9, virtualSize: 64 * cs, l1: [true],
      entry: (_l1, i) => {
        const h = TWO32 - 3 * cs + i * cs;
        return [Math.floor(h / TWO32), h % TWO32];
      },
    });
    const img = await open(built);
    const ex = await img.extentsView(img.activeView(), 100, 64 * cs);
    expect(ex).toEqual([{ start: 100, length: 64 * cs - 100, depth: 0, present: true, zero: false, data: true, compressed: false, offset: TWO32 - 3 * cs + 100 }]);
  });

  it('a v2 image with a zero flag fails as mapAt does', async () => {
    const built = buildImage({ clusterBits: 9, version: 2, virtualSize: 64 * 512, l1: [true], entry: (_l1, i) => (i === 5 ? [0, 1] : [0, 0]) });
    const img = await open(built);
    const err = await img.mapAt(img.activeView(), 5 * 512, 512).catch((e: Error) => e);
    await expect(img.extentsView(img.activeView(), 0, 64 * 512)).rejects.toThrow((err as Error).message);
  });

  it('an unaligned data cluster fails as mapAt does', async () => {
    const built = buildImage({ clusterBits: 12, virtualSize: 512 * 4096, l1: [true], entry: (_l1, i) => (i === 7 ? [1, 0x1200] : [0, 0]) });
    const img = await open(built);
    const err = await img.mapAt(img.activeView(), 7 * 4096, 4096).catch((e: Error) => e);
    await expect(img.extentsView(img.activeView(), 0, 512 * 4096)).rejects.toThrow((err as Error).message);
  });

  it('extended L2 (subclusters)', async () => {
    const r = seededRandom(9);
    const clusterBits = 14;
    const cs = 2 ** clusterBits;
    const l2Entries = cs / 16;
    const l1 = [true, false, true];
    const dataClusters = 32;
    const built = buildImage({
      clusterBits, extL2: true, virtualSize: l1.length * l2Entries * cs, l1, dataBytes: dataClusters * cs,
      entry: () => {
        const k = r();
        if (k < 0.3) return [0, 0, Math.floor(r() * TWO32), 0]; // unallocated, some zero bits
        const h = (2 + Math.floor(r() * 100)) * cs;
        const alloc = Math.floor(r() * TWO32);
        const zero = Math.floor(r() * TWO32) & ~alloc;
        return [Math.floor(h / TWO32), h % TWO32, zero >>> 0, alloc >>> 0];
      },
    });
    const img = await open(built);
    const view = img.activeView();
    for (const [s, n] of ranges(r, img.virtualSize)) {
      expect(await img.extentsView(view, s, n)).toEqual(await referenceExtents(img, view, s, n));
    }
  });

  it('through a backing layer', async () => {
    const r = seededRandom(5);
    const cs = 512;
    const size = 6 * 64 * cs;
    const gb = randomStandard(r, cs, 0, 16, true);
    const base = await open(buildImage({ clusterBits: 9, virtualSize: size - 3000, l1: [true, true, false, true, true, true], entry: () => gb() }));
    const gt = randomStandard(r, cs, 0, 16, true);
    const top = await open(buildImage({ clusterBits: 9, virtualSize: size, l1: [true, false, true, true, true, false], entry: () => gt(), dataBytes: 16 * cs }), base);
    const view = top.activeView();
    for (const [s, n] of ranges(r, size)) {
      expect(await top.extentsView(view, s, n)).toEqual(await referenceExtents(top, view, s, n));
    }
  });
});

describe('readView = per-cluster reads', () => {
  it('standard L2 with a backing layer, unaligned ranges', async () => {
    const r = seededRandom(11);
    const cs = 512;
    const size = 6 * 64 * cs;
    // no compressed clusters: keep data inside the file or beyond it (reads as zeros)
    const noCompressed = (g: () => [number, number]) => () => {
      for (;;) {
        const e = g();
        if ((e[0] & 0x40000000) === 0) return e;
      }
    };
    const gb = noCompressed(randomStandard(r, cs, 0, 40, true));
    const base = await open(buildImage({ clusterBits: 9, virtualSize: size - 3000, l1: [true, true, false, true, true, true], entry: () => gb(), dataBytes: 40 * cs }));
    const gt = noCompressed(randomStandard(r, cs, 0, 40, true));
    const top = await open(buildImage({ clusterBits: 9, virtualSize: size, l1: [true, false, true, true, true, false], entry: () => gt(), dataBytes: 40 * cs }), base);
    const view = top.activeView();
    for (const [s, n] of ranges(r, size)) {
      expect(await top.readView(view, s, n)).toEqual(await referenceRead(top, view, s, n));
    }
  });
});

describe('HoleMap', () => {
  it('answers like a brute-force search, in any order', () => {
    const r = seededRandom(3);
    const segs = randomSegments(r);
    const holes = new HoleMap(segs);
    for (let i = 0; i < 2000; i++) {
      const h = r() < 0.8 ? Math.floor(r() * (segs[segs.length - 1]![1] + 2 ** 16)) : Math.floor(r() * 2 ** 33);
      const n = 1 + Math.floor(r() * 2 ** 16);
      expect(holes.isHole(h, n)).toBe(!segs.some(([s, e]) => s < h + n && e > h));
    }
  });
});
