// A read cache of aligned blocks over a slow random-access source. In browsers each
// `File.slice().arrayBuffer()` costs about a millisecond whatever its size (docs/platform.md), and a
// 64 KiB read of a scattered metadata cluster costs as much as a 1 MiB one, so:
// - blocks are small (64 KiB, one metadata cluster of a default image), so scattered tables
//   (a preallocated image's L2 tables are 512 MiB apart) don't drag in 1 MiB each;
// - a read that misses several contiguous blocks fetches them in ONE raw read;
// - a miss right after the previous one (a sequential scan) reads ahead, doubling up to 4 MiB;
// - `prefetch` fetches many known ranges (all L2 tables, all refcount blocks) before a walk that
//   will read them one by one, gathering up to 4 MiB of scattered ranges into ONE raw read (a
//   File: one Blob of slices, one arrayBuffer()), a few such reads at a time.
// Blocks are views of the buffers the raw reads returned (no copies: fresh memory costs a page
// fault per 4 KiB, more than the read). Memory is counted by buffer: a buffer counts whole while
// any of its blocks is cached, and least recently used blocks go while the count is above the
// limit. Concurrent misses on one block share one read. `readInto` copies into the caller's
// buffer, so a scan that reuses one buffer allocates nothing here.
import type { ByteSource } from '../../core/io/overlay-store.ts';

const DEFAULT_BLOCK_SIZE = 64 * 1024;
const DEFAULT_CACHE_BYTES = 128 << 20;
const MAX_READAHEAD = 4 << 20;
/** Bytes of scattered ranges a prefetch asks for in one raw read. */
const GATHER_BYTES = 4 << 20;
/** Gathered reads in flight at once: all of a prefetch's (its budget, half the cache, is 16 gathers). */
const PREFETCH_CONCURRENCY = 16;

/** The slow source under the cache. Every result must be a fresh array: the cache keeps it. */
export interface RawSource {
  /** The bytes of [offset, offset + length). */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** The bytes of several ranges, concatenated in the order given, in one request. */
  readRanges(ranges: ReadonlyArray<readonly [offset: number, length: number]>): Promise<Uint8Array>;
}

export class BlockCache implements ByteSource {
  readonly blockSize: number;
  readonly maxBytes: number;
  private raw: RawSource;
  private sizeBytes: number;
  /** Map iteration order is insertion order: re-inserting on hit makes it an LRU. */
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly inflight = new Map<number, Promise<Uint8Array>>();
  /** Cached blocks per raw-read buffer, and the bytes of the buffers that have any. */
  private readonly live = new Map<ArrayBufferLike, number>();
  private heldBytes = 0;
  /** Bumped by invalidate(): reads started before it must not repopulate the cache. */
  private generation = 0;
  /** Where the last miss ended, and the current read-ahead (in blocks). */
  private lastMissEnd = -1;
  private readahead = 1;
  /** Raw reads made, and bytes they fetched (for tests and benchmarks). */
  rawReads = 0;
  rawBytes = 0;

  constructor(raw: RawSource, size: number, opts: { blockSize?: number; cacheBytes?: number } = {}) {
    this.raw = raw;
    this.sizeBytes = size;
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.maxBytes = Math.max(16 * this.blockSize, opts.cacheBytes ?? DEFAULT_CACHE_BYTES);
  }

  get size(): number {
    return this.sizeBytes;
  }

  /** Bytes of the buffers the cached blocks keep alive. */
  get cachedBytes(): number {
    return this.heldBytes;
  }

  /** Drop every cached block, e.g. after the underlying file changed; optionally with a new source. */
  invalidate(size = this.sizeBytes, raw?: RawSource): void {
    this.blocks.clear();
    this.live.clear();
    this.heldBytes = 0;
    this.inflight.clear();
    this.generation++;
    this.sizeBytes = size;
    this.lastMissEnd = -1;
    this.readahead = 1;
    if (raw) this.raw = raw;
  }

  /**
   * The same bytes, now from `raw` (a file written again: its old File is unreadable), except for
   * the ranges in `changed` and everything from `size` on: the blocks of those go, the rest stay.
   * Reads in flight from the old source are not cached.
   */
  retarget(raw: RawSource, size: number, changed: ReadonlyArray<readonly [offset: number, length: number]>): void {
    this.generation++;
    this.inflight.clear();
    this.lastMissEnd = -1;
    this.readahead = 1;
    this.raw = raw;
    this.sizeBytes = size;
    const bs = this.blockSize;
    for (const [o, l] of changed) {
      for (let b = Math.floor(o / bs), z = Math.floor((o + l - 1) / bs); b <= z; b++) {
        const data = this.blocks.get(b);
        if (data) this.drop(b, data);
      }
    }
    // the last block may have been partial, and nothing past the end is cached
    for (const [b, data] of [...this.blocks]) if ((b + 1) * bs > size || b * bs + data.length < Math.min(size, (b + 1) * bs)) this.drop(b, data);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  /** The bytes of [offset, offset + out.length) copied from the cached blocks into `out` (zeros past the end). */
  async readInto(offset: number, out: Uint8Array): Promise<void> {
    const end = Math.min(offset + out.length, this.sizeBytes);
    if (offset >= end) {
      out.fill(0);
      return;
    }
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((end - 1) / this.blockSize);
    const blocks = await Promise.all(this.fetch(first, last));
    for (let b = first; b <= last; b++) {
      const data = blocks[b - first]!;
      const blockStart = b * this.blockSize;
      const a = Math.max(offset, blockStart);
      const z = Math.min(end, blockStart + data.length);
      if (z > a) out.set(data.subarray(a - blockStart, z - blockStart), a - offset);
    }
    out.fill(0, end - offset);
  }

  /** Drop the cached blocks wholly inside [offset, offset + length): their bytes are held elsewhere now (an overlay's page). */
  forget(offset: number, length: number): void {
    for (let b = Math.ceil(offset / this.blockSize), z = Math.floor((offset + length) / this.blockSize); b < z; b++) {
      const data = this.blocks.get(b);
      if (data) this.drop(b, data);
    }
  }

  /**
   * Fetch ranges into the cache ahead of use: the missing blocks, gathered GATHER_BYTES at a time
   * into one raw read each, PREFETCH_CONCURRENCY reads at a time. Stops at half the cache, so a
   * prefetch never evicts what it just fetched.
   */
  async prefetch(ranges: Array<[offset: number, length: number]>, signal?: AbortSignal): Promise<void> {
    const budget = Math.floor(this.maxBytes / this.blockSize / 2);
    const perGather = Math.max(1, Math.floor(GATHER_BYTES / this.blockSize));
    const gathers: Array<Array<[number, number]>> = [];
    let gather: Array<[number, number]> = [];
    let inGather = 0;
    let blocks = 0;
    let lastBlock = -1;
    const sorted = ranges.filter(([o, l]) => l > 0 && o < this.sizeBytes).sort((a, b) => a[0] - b[0]);
    for (const [o, l] of sorted) {
      const z = Math.floor((Math.min(o + l, this.sizeBytes) - 1) / this.blockSize);
      for (let b = Math.max(Math.floor(o / this.blockSize), lastBlock + 1); b <= z && blocks < budget; b++, blocks++) {
        const hit = this.blocks.get(b);
        if (hit) {
          this.blocks.delete(b);
          this.blocks.set(b, hit);
          continue;
        }
        if (this.inflight.has(b)) continue;
        const run = gather[gather.length - 1];
        if (run && run[1] === b - 1) run[1] = b;
        else gather.push([b, b]);
        if (++inGather === perGather) {
          gathers.push(gather);
          gather = [];
          inGather = 0;
        }
      }
      lastBlock = Math.max(lastBlock, z);
      if (blocks >= budget) break;
    }
    if (gather.length > 0) gathers.push(gather);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < gathers.length && !signal?.aborted) await this.readRuns(gathers[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(PREFETCH_CONCURRENCY, gathers.length) }, worker));
  }

  /** Promises for blocks first..last: hits, shared in-flight reads, and one raw read per run of misses. */
  private fetch(first: number, last: number): Promise<Uint8Array>[] {
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
      if (b === this.lastMissEnd + 1) this.readahead = Math.min(this.readahead * 2, MAX_READAHEAD / this.blockSize);
      else this.readahead = 1;
      const lastBlock = Math.floor((this.sizeBytes - 1) / this.blockSize);
      const extra = this.readahead > 1 ? this.readahead : 0;
      for (let k = 0; k < extra && readEnd < lastBlock && !this.blocks.has(readEnd + 1) && !this.inflight.has(readEnd + 1); k++) readEnd++;
      this.lastMissEnd = readEnd;
      const run = this.readRuns([[b, readEnd]]);
      const runStart = b;
      for (let k = b; k <= e; k++) out.push(run.then((r) => r[k - runStart]!));
      b = e + 1;
    }
    return out;
  }

  /** One raw read of the blocks of `runs` (ascending, disjoint); resolves to the blocks in order. */
  private readRuns(runs: ReadonlyArray<readonly [first: number, last: number]>): Promise<Uint8Array[]> {
    const gen = this.generation;
    const bs = this.blockSize;
    const ranges = runs.map(([f, l]): [number, number] => [f * bs, Math.min((l - f + 1) * bs, this.sizeBytes - f * bs)]);
    this.rawReads++;
    for (const [, len] of ranges) this.rawBytes += len;
    const read = ranges.length === 1 ? this.raw.read(ranges[0]![0], ranges[0]![1]) : this.raw.readRanges(ranges);
    const p = read.then(
      (data) => {
        const parts: Uint8Array[] = [];
        let pos = 0;
        runs.forEach(([f, l], i) => {
          const runEnd = Math.min(pos + ranges[i]![1], data.length);
          for (let k = f; k <= l; k++) {
            const a = Math.min(pos + (k - f) * bs, runEnd);
            parts.push(data.subarray(a, Math.min(a + bs, runEnd)));
          }
          pos += ranges[i]![1];
        });
        if (gen === this.generation) {
          let j = 0;
          for (const [f, l] of runs) {
            for (let k = f; k <= l; k++) {
              this.inflight.delete(k);
              this.put(k, parts[j++]!);
            }
          }
          this.evict();
        }
        return parts;
      },
      (err: unknown) => {
        if (gen === this.generation) for (const [f, l] of runs) for (let k = f; k <= l; k++) this.inflight.delete(k);
        throw err;
      },
    );
    let j = 0;
    for (const [f, l] of runs) {
      for (let k = f; k <= l; k++) {
        const at = j++;
        const block = p.then((r) => r[at]!);
        block.catch(() => {}); // a failure reaches the readers waiting on it; no reader is no error
        this.inflight.set(k, block);
      }
    }
    return p;
  }

  private put(block: number, data: Uint8Array): void {
    const old = this.blocks.get(block);
    if (old) this.drop(block, old);
    this.blocks.set(block, data);
    const n = this.live.get(data.buffer) ?? 0;
    if (n === 0) this.heldBytes += data.buffer.byteLength;
    this.live.set(data.buffer, n + 1);
  }

  private drop(block: number, data: Uint8Array): void {
    this.blocks.delete(block);
    const n = this.live.get(data.buffer)! - 1;
    if (n > 0) this.live.set(data.buffer, n);
    else {
      this.live.delete(data.buffer);
      this.heldBytes -= data.buffer.byteLength;
    }
  }

  /** Least recently used blocks go until the buffers kept alive fit the limit. */
  private evict(): void {
    while (this.heldBytes > this.maxBytes && this.blocks.size > 0) {
      const [k, data] = this.blocks.entries().next().value!;
      this.drop(k, data);
    }
  }
}
