// The worker's block cache (worker/stores/block-cache.ts) over an in-memory raw source that counts
// its calls: gathered prefetch reads, blocks kept as views of the raw buffers under a memory limit
// counted by buffer, shared in-flight reads, invalidation and failed reads. (Its bytes are also
// checked by the store contract through FileStore, tests/unit/stores.test.ts.)
import { describe, expect, it } from 'vitest';
import { OVERLAY_PAGE_SIZE, OverlayStore } from '../../core/io/overlay-store.ts';
import { BlockCache, type RawSource } from '../../worker/stores/block-cache.ts';
import { expectBytes } from '../helpers/bytes.ts';

const KIB = 1024;
const MIB = 1024 * KIB;

class CountingSource implements RawSource {
  reads = 0;
  gathers: number[] = [];
  failNext = false;
  constructor(readonly bytes: Uint8Array) {}
  private take(offset: number, length: number): Uint8Array {
    return this.bytes.slice(offset, offset + length);
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.reads++;
    if (this.failNext) {
      this.failNext = false;
      throw new Error('read failed');
    }
    return this.take(offset, length);
  }
  async readRanges(ranges: ReadonlyArray<readonly [number, number]>): Promise<Uint8Array> {
    this.reads++;
    this.gathers.push(ranges.length);
    const out = new Uint8Array(ranges.reduce((n, r) => n + r[1], 0));
    let pos = 0;
    for (const [o, l] of ranges) {
      out.set(this.take(o, l), pos);
      pos += l;
    }
    return out;
  }
}

function pattern(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 13 + (i >> 9)) & 0xff;
  return out;
}

describe('BlockCache', () => {
  it('prefetches scattered ranges in gathered reads of at most 4 MiB, then serves them without reading', async () => {
    const size = 40 * MIB + 123;
    const src = new CountingSource(pattern(size));
    const cache = new BlockCache(src, size);
    // 100 tables of 64 KiB, 384 KiB apart, plus one straddling the end of the file
    const ranges: Array<[number, number]> = Array.from({ length: 100 }, (_, i) => [i * 384 * KIB, 64 * KIB]);
    ranges.push([size - 100, 64 * KIB]);
    await cache.prefetch(ranges);
    expect(src.reads).toBe(Math.ceil(101 / 64)); // 64 blocks of 64 KiB per gathered read
    expect(src.gathers.every((n) => n <= 64)).toBe(true);
    const out = new Uint8Array(64 * KIB).fill(0xee);
    for (const [o, l] of ranges) {
      await cache.readInto(o, out.subarray(0, l));
      expectBytes(out.subarray(0, Math.max(0, Math.min(l, size - o))), src.bytes.subarray(o, o + l));
      expect(out.subarray(Math.max(0, size - o), l).every((v) => v === 0)).toBe(true);
    }
    expect(src.reads).toBe(Math.ceil(101 / 64));
    // a second prefetch of the same ranges reads nothing
    await cache.prefetch(ranges);
    expect(src.reads).toBe(Math.ceil(101 / 64));
  });

  it('keeps the buffers its blocks live in within its limit, and reads the same bytes after evicting', async () => {
    const size = 8 * MIB;
    const src = new CountingSource(pattern(size));
    const cache = new BlockCache(src, size, { blockSize: 4 * KIB, cacheBytes: 256 * KIB });
    // sequential reads (read-ahead grows the raw reads) and scattered ones (gathered)
    for (let o = 0; o < 2 * MIB; o += 3000) {
      expectBytes(await cache.read(o, 3000), src.bytes.subarray(o, o + 3000));
      expect(cache.cachedBytes).toBeLessThanOrEqual(cache.maxBytes);
    }
    await cache.prefetch(Array.from({ length: 200 }, (_, i): [number, number] => [2 * MIB + i * 20 * KIB, 4 * KIB]));
    expect(cache.cachedBytes).toBeLessThanOrEqual(cache.maxBytes);
    for (let i = 0; i < 200; i += 7) {
      const o = 2 * MIB + i * 20 * KIB;
      expectBytes(await cache.read(o, 4 * KIB), src.bytes.subarray(o, o + 4 * KIB));
    }
    expect(cache.cachedBytes).toBeLessThanOrEqual(cache.maxBytes);
  });

  it('concurrent reads of one block share one raw read', async () => {
    const src = new CountingSource(pattern(MIB));
    const cache = new BlockCache(src, MIB);
    const [a, b] = await Promise.all([cache.read(100, 10), cache.read(200, 10)]);
    expect(src.reads).toBe(1);
    expectBytes(a, src.bytes.subarray(100, 110));
    expectBytes(b, src.bytes.subarray(200, 210));
  });

  it('a read started before invalidate() does not repopulate the cache; a failed read can be retried', async () => {
    const src = new CountingSource(pattern(MIB));
    const cache = new BlockCache(src, MIB);
    const pending = cache.prefetch([[0, 64 * KIB]]);
    cache.invalidate(MIB);
    await pending;
    expect(cache.cachedBytes).toBe(0);
    src.failNext = true;
    await expect(cache.read(70 * KIB, 10)).rejects.toThrow('read failed');
    expectBytes(await cache.read(70 * KIB, 10), src.bytes.subarray(70 * KIB, 70 * KIB + 10));
  });

  it('under an overlay: the blocks an overlay page hides are dropped, and reads through the overlay never fetch them', async () => {
    const size = MIB;
    const src = new CountingSource(pattern(size));
    const cache = new BlockCache(src, size);
    const overlay = new OverlayStore(cache);
    const model = src.bytes.slice();
    expectBytes(await overlay.read(0, size), model);
    expect(src.reads).toBe(1);
    // a whole page, and part of another: both are pages of the overlay now
    const whole = new Uint8Array(OVERLAY_PAGE_SIZE).fill(0x11);
    await overlay.write(2 * OVERLAY_PAGE_SIZE, whole);
    model.set(whole, 2 * OVERLAY_PAGE_SIZE);
    await overlay.write(5 * OVERLAY_PAGE_SIZE + 10, Uint8Array.of(7, 7));
    model.set([7, 7], 5 * OVERLAY_PAGE_SIZE + 10);
    expect(src.reads).toBe(1);
    // the overlay reads around its pages: nothing is fetched again
    expectBytes(await overlay.read(0, size), model);
    expectBytes(await overlay.read(2 * OVERLAY_PAGE_SIZE - 5, OVERLAY_PAGE_SIZE + 10), model.subarray(2 * OVERLAY_PAGE_SIZE - 5, 3 * OVERLAY_PAGE_SIZE + 5));
    expect(src.reads).toBe(1);
    // the cache no longer holds the hidden blocks (the file's bytes under them)
    expectBytes(await cache.read(2 * OVERLAY_PAGE_SIZE, 16), src.bytes.subarray(2 * OVERLAY_PAGE_SIZE, 2 * OVERLAY_PAGE_SIZE + 16));
    expect(src.reads).toBe(2);
    expectBytes(await cache.read(5 * OVERLAY_PAGE_SIZE, 16), src.bytes.subarray(5 * OVERLAY_PAGE_SIZE, 5 * OVERLAY_PAGE_SIZE + 16));
    expect(src.reads).toBe(3);
    await cache.read(3 * OVERLAY_PAGE_SIZE, 16); // an untouched block is still cached
    expect(src.reads).toBe(3);
  });

  it('retargeted to a file written again: keeps the blocks of unchanged ranges, reads the changed ones and the new end from the new file', async () => {
    const size = 10 * 64 * KIB + 100; // the last block is partial
    const old = new CountingSource(pattern(size));
    const cache = new BlockCache(old, size);
    await cache.read(0, size);
    expect(old.reads).toBe(1);
    const bytes = pattern(size + 64 * KIB); // the file as saved: block 3 changed, and longer
    bytes.fill(0x33, 3 * 64 * KIB, 4 * 64 * KIB);
    bytes.fill(0x44, size - 10, size + 64 * KIB);
    const now = new CountingSource(bytes);
    cache.retarget(now, bytes.length, [[3 * 64 * KIB, 64 * KIB], [size - 10, 64 * KIB + 10]]);
    expectBytes(await cache.read(64 * KIB, 2 * 64 * KIB), bytes.subarray(64 * KIB, 3 * 64 * KIB));
    expect(now.reads).toBe(0);
    expectBytes(await cache.read(0, bytes.length), bytes);
    expect(now.reads).toBe(2); // block 3, and the blocks from the old partial one on
    expect(old.reads).toBe(1);
  });
});
