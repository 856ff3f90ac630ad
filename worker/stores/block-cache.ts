// A read cache of aligned blocks over a slow random-access reader. In browsers each
// `File.slice().arrayBuffer()` costs about a millisecond whatever its size (STACK.md), and a
// 64 KiB read of a scattered metadata cluster costs as much as a 1 MiB one, so:
// - blocks are small (64 KiB, one metadata cluster of a default image), so scattered tables
//   (a preallocated image's L2 tables are 512 MiB apart) don't drag in 1 MiB each;
// - a read that misses several contiguous blocks fetches them in ONE raw read;
// - a miss right after the previous one (a sequential scan) reads ahead, doubling up to 4 MiB;
// - `prefetch` fetches many known ranges (all L2 tables, all refcount blocks) a few at a time,
//   before a walk that will read them one by one.
// Concurrent misses on one block share one read. Blocks are kept in an LRU.
import type { ByteSource } from '../../core/io/overlay-store.ts';

export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const DEFAULT_CACHE_BYTES = 128 << 20;
const MAX_READAHEAD = 4 << 20;
const PREFETCH_CONCURRENCY = 8;

export type RawReader = (offset: number, length: number) => Promise<Uint8Array>;

export class BlockCache implements ByteSource {
  readonly blockSize: number;
  readonly maxBlocks: number;
  private raw: RawReader;
  private sizeBytes: number;
  /** Map iteration order is insertion order: re-inserting on hit makes it an LRU. */
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly inflight = new Map<number, Promise<Uint8Array>>();
  /** Bumped by invalidate(): reads started before it must not repopulate the cache. */
  private generation = 0;
  /** Where the last miss ended, and the current read-ahead (in blocks). */
  private lastMissEnd = -1;
  private readahead = 1;
  /** Raw reads made, and bytes they fetched (for tests and benchmarks). */
  rawReads = 0;
  rawBytes = 0;

  constructor(raw: RawReader, size: number, opts: { blockSize?: number; cacheBytes?: number } = {}) {
    this.raw = raw;
    this.sizeBytes = size;
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.maxBlocks = Math.max(16, Math.floor((opts.cacheBytes ?? DEFAULT_CACHE_BYTES) / this.blockSize));
  }

  get size(): number {
    return this.sizeBytes;
  }

  /** Drop every cached block, e.g. after the underlying file changed; optionally with a new reader. */
  invalidate(size = this.sizeBytes, raw?: RawReader): void {
    this.blocks.clear();
    this.inflight.clear();
    this.generation++;
    this.sizeBytes = size;
    this.lastMissEnd = -1;
    this.readahead = 1;
    if (raw) this.raw = raw;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    const end = Math.min(offset + length, this.sizeBytes);
    if (offset >= end) return out;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((end - 1) / this.blockSize);
    const parts = this.fetch(first, last, true);
    const blocks = await Promise.all(parts);
    for (let b = first; b <= last; b++) {
      const data = blocks[b - first]!;
      const blockStart = b * this.blockSize;
      const a = Math.max(offset, blockStart);
      const z = Math.min(end, blockStart + data.length);
      if (z > a) out.set(data.subarray(a - blockStart, z - blockStart), a - offset);
    }
    return out;
  }

  /**
   * Fetch ranges into the cache ahead of use, `PREFETCH_CONCURRENCY` raw reads at a time. Stops
   * at half the cache, so a prefetch never evicts what it just fetched.
   */
  async prefetch(ranges: Array<[offset: number, length: number]>, signal?: AbortSignal): Promise<void> {
    const budget = Math.floor(this.maxBlocks / 2);
    const runs: Array<[number, number]> = [];
    let blocks = 0;
    const sorted = ranges.filter(([o, l]) => l > 0 && o < this.sizeBytes).sort((a, b) => a[0] - b[0]);
    for (const [o, l] of sorted) {
      const f = Math.floor(o / this.blockSize);
      const z = Math.floor((Math.min(o + l, this.sizeBytes) - 1) / this.blockSize);
      const prev = runs[runs.length - 1];
      if (prev && f <= prev[1] + 1) prev[1] = Math.max(prev[1], z);
      else runs.push([f, z]);
      blocks += z - f + 1;
      if (blocks >= budget) break;
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length && !signal?.aborted) {
        const [f, z] = runs[next++]!;
        await Promise.all(this.fetch(f, z, false));
      }
    };
    await Promise.all(Array.from({ length: Math.min(PREFETCH_CONCURRENCY, runs.length) }, worker));
  }

  /** Promises for blocks first..last: hits, shared in-flight reads, and one raw read per run of misses. */
  private fetch(first: number, last: number, demand: boolean): Promise<Uint8Array>[] {
    const out: Promise<Uint8Array>[] = [];
    let b = first;
    while (b <= last) {
      const hit = this.blocks.get(b);
      if (hit) {
        this.blocks.delete(b);
        this.blocks.set(b, hit);
        out.push(Promise.resolve(hit));
        b++;
        continue;
      }
      const pending = this.inflight.get(b);
      if (pending) {
        out.push(pending);
        b++;
        continue;
      }
      // A run of missing blocks: one raw read, plus read-ahead on a sequential scan.
      let e = b;
      while (e < last && !this.blocks.has(e + 1) && !this.inflight.has(e + 1)) e++;
      let readEnd = e;
      if (demand) {
        if (b === this.lastMissEnd + 1) this.readahead = Math.min(this.readahead * 2, MAX_READAHEAD / this.blockSize);
        else this.readahead = 1;
        const lastBlock = Math.floor((this.sizeBytes - 1) / this.blockSize);
        const extra = this.readahead > 1 ? this.readahead : 0;
        for (let k = 0; k < extra && readEnd < lastBlock && !this.blocks.has(readEnd + 1) && !this.inflight.has(readEnd + 1); k++) readEnd++;
        this.lastMissEnd = readEnd;
      }
      const run = this.readRun(b, readEnd);
      const runStart = b;
      for (let k = b; k <= e; k++) out.push(run.then((r) => r[k - runStart]!));
      b = e + 1;
    }
    return out;
  }

  private readRun(first: number, last: number): Promise<Uint8Array[]> {
    const gen = this.generation;
    const start = first * this.blockSize;
    const len = Math.min((last - first + 1) * this.blockSize, this.sizeBytes - start);
    this.rawReads++;
    this.rawBytes += len;
    const p = this.raw(start, len).then(
      (data) => {
        const parts: Uint8Array[] = [];
        for (let k = first; k <= last; k++) {
          const a = (k - first) * this.blockSize;
          // Copies, so that one cached block does not pin the whole run's buffer.
          parts.push(data.slice(a, Math.min(a + this.blockSize, data.length)));
        }
        if (gen === this.generation) {
          for (let k = first; k <= last; k++) {
            this.inflight.delete(k);
            this.blocks.set(k, parts[k - first]!);
          }
          while (this.blocks.size > this.maxBlocks) this.blocks.delete(this.blocks.keys().next().value!);
        }
        return parts;
      },
      (err: unknown) => {
        if (gen === this.generation) for (let k = first; k <= last; k++) this.inflight.delete(k);
        throw err;
      },
    );
    for (let k = first; k <= last; k++) this.inflight.set(k, p.then((r) => r[k - first]!));
    return p;
  }
}
