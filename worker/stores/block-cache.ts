// A read cache of aligned blocks over a slow random-access reader. In browsers each
// `File.slice().arrayBuffer()` costs ~1 ms whatever its size (STACK.md), so many small engine
// reads (headers, L2 tables, refblocks) are served from a few large aligned reads, kept in an LRU.
// Concurrent misses on one block share one read.
import type { ByteSource } from '../../core/io/overlay-store.ts';

export const DEFAULT_BLOCK_SIZE = 1 << 20; // 1 MiB: ~300 MB/s from a File, little waste for metadata
export const DEFAULT_CACHE_BYTES = 64 << 20;

export type RawReader = (offset: number, length: number) => Promise<Uint8Array>;

export class BlockCache implements ByteSource {
  readonly blockSize: number;
  private readonly maxBlocks: number;
  private raw: RawReader;
  private sizeBytes: number;
  /** Map iteration order is insertion order: re-inserting on hit makes it an LRU. */
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly inflight = new Map<number, Promise<Uint8Array>>();
  /** Bumped by invalidate(): reads started before it must not repopulate the cache. */
  private generation = 0;
  /** Raw reads made (for tests and benchmarks). */
  rawReads = 0;

  constructor(raw: RawReader, size: number, opts: { blockSize?: number; cacheBytes?: number } = {}) {
    this.raw = raw;
    this.sizeBytes = size;
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.maxBlocks = Math.max(2, Math.floor((opts.cacheBytes ?? DEFAULT_CACHE_BYTES) / this.blockSize));
  }

  get size(): number {
    return this.sizeBytes;
  }

  /** Drop every cached block, e.g. after the underlying file changed; optionally with a new reader size. */
  invalidate(size = this.sizeBytes, raw?: RawReader): void {
    this.blocks.clear();
    this.inflight.clear();
    this.generation++;
    this.sizeBytes = size;
    if (raw) this.raw = raw;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    const end = Math.min(offset + length, this.sizeBytes);
    if (offset >= end) return out;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((end - 1) / this.blockSize);
    // Start every missing block at once (a few reads in flight hide the per-call latency).
    const parts: Promise<Uint8Array>[] = [];
    for (let b = first; b <= last; b++) parts.push(this.block(b));
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

  private block(b: number): Promise<Uint8Array> {
    const hit = this.blocks.get(b);
    if (hit) {
      this.blocks.delete(b);
      this.blocks.set(b, hit);
      return Promise.resolve(hit);
    }
    const pending = this.inflight.get(b);
    if (pending) return pending;
    const gen = this.generation;
    const start = b * this.blockSize;
    const len = Math.min(this.blockSize, this.sizeBytes - start);
    this.rawReads++;
    const p = this.raw(start, len).then(
      (data) => {
        if (gen === this.generation) {
          this.inflight.delete(b);
          this.blocks.set(b, data);
          while (this.blocks.size > this.maxBlocks) this.blocks.delete(this.blocks.keys().next().value!);
        }
        return data;
      },
      (err: unknown) => {
        if (gen === this.generation) this.inflight.delete(b);
        throw err;
      },
    );
    this.inflight.set(b, p);
    return p;
  }
}
