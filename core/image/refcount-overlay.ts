// The refcounts of a snapshot operation as they will be after it (RefcountOverlay): a
// copy-on-write view of the refcount blocks in a bounded cache, for the shadow commit
// (snapshot-commit.ts), which gives changed blocks their new places.
import { QcowError, hex } from '../errors.ts';
import { getRefcount, refcountMax, setRefcount } from '../format/refcount.ts';
import { readInto } from '../io/store.ts';
import type { Qcow2Image } from './qcow2-image.ts';
import { readRefblockInto, refblockEntriesOf } from './refcount.ts';

/** One refcount block in the overlay's cache. */
interface OverlayBlock {
  /** The refcounts afterwards (null: absent on disk and unchanged). */
  data: Uint8Array | null;
  /**
   * For a changed block: bit i set where entry i is 0 on disk (the old block, which the operation
   * never overwrites). Null for an unchanged block (`data` is then what the disk holds), and for a
   * changed block read back only to be read (load's `forChange`).
   */
  zero: Uint8Array | null;
  /** Changed since it was last written to its new place. */
  unwritten: boolean;
}

/** What the overlay counts for a cached block absent on disk and unchanged (an entry, no bytes). */
const ABSENT_BLOCK_BYTES = 64;
/** The fewest blocks the cache holds whatever its budget (a compressed entry's two, with room). */
const MIN_CACHED_BLOCKS = 4;

/**
 * Refcounts as they will be after the operation, per refcount block, and which of them are 0 on
 * disk, within a memory budget. Blocks are loaded lazily (async) and must be loaded before the
 * synchronous accessors touch them; the cache is trimmed only by trim(), at points where no
 * caller holds a block. A loaded block is a private copy, changed in place (the image's cache is
 * never changed); what the disk held is kept only as far as the checks need it: a bitmap of the
 * refcounts that were 0, made when the block is first changed.
 *
 * A changed block that leaves the cache is first written to its new place (a cluster free in the
 * current state that the new refcount table will point at: the shadow commit's own layout, so an
 * early write is as invisible as the others until the header commit) and read back from there if
 * it is needed again; its bitmap is then rebuilt from the old block, still on disk untouched.
 */
export class RefcountOverlay {
  readonly per: number;
  readonly order: number;
  readonly max: number;
  /** Bytes of blocks and bitmaps the cache keeps (at least MIN_CACHED_BLOCKS blocks). */
  readonly budgetBytes: number;
  /** Every block the operation changes, in the cache or at its new place. */
  readonly changed = new Set<number>();
  /** Reftable index → host offset of the block's new place. */
  readonly homes = new Map<number, number>();
  /** Set once every changed block has its place: a change after that is a bug. */
  frozen = false;
  /** Changed blocks written to their new place before prepare() (to stay within the budget). */
  earlyWrites = 0;
  /** The most bytes the cache held. */
  peakBytes = 0;
  /** Cached blocks by reftable index, least recently loaded first. */
  private readonly cache = new Map<number, OverlayBlock>();
  private cacheBytes = 0;
  private trimming = false;
  private readonly zeroBytes: number;
  /**
   * Buffers of blocks and bitmaps that left the cache, for the next loads: fresh memory costs a
   * page fault per 4 KiB, more than the read itself (BENCHMARKS.md), and garbage to collect.
   */
  private readonly spareBlocks: Uint8Array[] = [];
  private readonly spareBitmaps: Uint8Array[] = [];
  /** Scratch for peek() and for the old blocks bitmaps are rebuilt from. */
  private peekData: Uint8Array | null = null;
  private peekZero: Uint8Array | null = null;
  private oldBlock: Uint8Array | null = null;

  /** `placeHome(rb)`: give changed block rb its new place (in `homes`); it may change other blocks. */
  constructor(readonly img: Qcow2Image, budgetBytes: number, private readonly placeHome: (rb: number) => Promise<void>) {
    this.per = refblockEntriesOf(img);
    this.order = img.refcountOrder;
    // 64-bit refcounts above 2^53 are not exact numbers: treat 2^53 − 1 as the ceiling.
    this.max = Math.min(refcountMax(img.refcountOrder), Number.MAX_SAFE_INTEGER);
    this.zeroBytes = Math.ceil(this.per / 8);
    this.budgetBytes = Math.max(budgetBytes, MIN_CACHED_BLOCKS * (img.clusterSize + this.zeroBytes));
  }

  isLoaded(rb: number): boolean {
    return this.cache.has(rb);
  }

  /** Loaded and ready to change (a changed block's bitmap of zeros on disk at hand). */
  isReady(rb: number): boolean {
    const e = this.cache.get(rb);
    return e !== undefined && (e.zero !== null || !this.changed.has(rb));
  }

  /**
   * Bring block rb into the cache as its most recent entry (never evicting: see trim). A changed
   * block that left the cache is read back from its new place; `forChange` (the default) also
   * rebuilds its bitmap of zeros on disk, which a pass that only reads refcounts does without.
   */
  async load(rb: number, forChange = true): Promise<void> {
    let e = this.cache.get(rb);
    if (e) {
      this.cache.delete(rb);
      this.cache.set(rb, e);
    } else {
      let data: Uint8Array | null = this.spareBlocks.pop() ?? new Uint8Array(this.img.clusterSize);
      if (this.changed.has(rb)) {
        await readInto(this.img.store, this.homeOf(rb), data);
      } else if (!(await readRefblockInto(this.img, rb, data))) {
        this.spareBlocks.push(data);
        data = null;
      }
      e = { data, zero: null, unwritten: false };
      this.cache.set(rb, e);
      this.grow(data ? data.length : ABSENT_BLOCK_BYTES);
    }
    if (forChange && e.zero === null && this.changed.has(rb)) {
      e.zero = await this.zerosOnDisk(rb, this.spareBitmaps.pop() ?? new Uint8Array(this.zeroBytes));
      this.grow(e.zero.length);
    }
  }

  /**
   * Block rb for a scan that only reads (the allocator's): the refcounts afterwards and, for a
   * changed block, its zeros on disk. A cached block comes as it is; another is read into scratch
   * buffers, valid until the next peek, without entering the cache.
   */
  async peek(rb: number): Promise<{ data: Uint8Array | null; zero: Uint8Array | null }> {
    const e = this.cache.get(rb);
    if (e) {
      if (e.zero === null && this.changed.has(rb)) await this.load(rb);
      return e;
    }
    const data = (this.peekData ??= new Uint8Array(this.img.clusterSize));
    if (!this.changed.has(rb)) return { data: (await readRefblockInto(this.img, rb, data)) ? data : null, zero: null };
    await readInto(this.img.store, this.homeOf(rb), data);
    return { data, zero: await this.zerosOnDisk(rb, (this.peekZero ??= new Uint8Array(this.zeroBytes))) };
  }

  /**
   * Keep the cache within its budget: the least recently loaded blocks leave it (except `keep`),
   * a changed one first written to its new place (placed first if it has none, which may change
   * and load other blocks). A trim asked for while one runs (from a placement) does nothing.
   */
  async trim(keep: readonly number[] = []): Promise<void> {
    if (this.trimming || this.cacheBytes <= this.budgetBytes) return;
    this.trimming = true;
    try {
      while (this.cacheBytes > this.budgetBytes) {
        let victim = -1;
        for (const rb of this.cache.keys()) {
          if (!keep.includes(rb)) {
            victim = rb;
            break;
          }
        }
        if (victim < 0) return;
        const e = this.cache.get(victim)!;
        if (e.unwritten) {
          if (!this.homes.has(victim)) {
            if (this.frozen) throw new QcowError('INTERNAL', `refcount block ${victim} has no new place`, { reftableIndex: victim });
            await this.placeHome(victim);
          }
          await this.writeHome(victim, e, `refcount block ${victim} (new copy, written early: more changed refcount blocks than the operation keeps in memory)`);
          this.earlyWrites++;
        }
        this.cache.delete(victim);
        this.cacheBytes -= this.bytesOf(e);
        if (e.data) this.spareBlocks.push(e.data);
        if (e.zero) this.spareBitmaps.push(e.zero);
      }
    } finally {
      this.trimming = false;
    }
  }

  /** Write every cached block with changes not yet written to its new place, in offset order. */
  async writeBack(): Promise<void> {
    const todo = [...this.cache].filter(([, e]) => e.unwritten).sort((a, b) => this.homeOf(a[0]) - this.homeOf(b[0]));
    for (const [rb, e] of todo) await this.writeHome(rb, e, `refcount block ${rb} (new copy)`);
  }

  /** A changed block's bytes if the cache still holds them (after writeBack: what its new place holds). */
  cachedBlock(rb: number): Uint8Array | null {
    return this.cache.get(rb)?.data ?? null;
  }

  /** The block's refcounts afterwards (null: absent and unchanged); undefined when not loaded. */
  current(rb: number): Uint8Array | null | undefined {
    return this.cache.get(rb)?.data;
  }

  /** The bitmap of entries that are 0 on disk, for a changed block ready to change; null otherwise. */
  zeroBits(rb: number): Uint8Array | null {
    return this.cache.get(rb)?.zero ?? null;
  }

  /** Whether entry `idx` of block `rb` (ready: see isReady) is 0 on disk. */
  wasZero(rb: number, idx: number): boolean {
    const e = this.entry(rb);
    if (e.zero) return ((e.zero[idx >>> 3]! >>> (idx & 7)) & 1) !== 0;
    if (this.changed.has(rb)) throw new QcowError('INTERNAL', `refcount block ${rb} read back without its zeros on disk`, { reftableIndex: rb });
    return !e.data || getRefcount(e.data, idx, this.order) === 0;
  }

  get(ci: number): number {
    const rb = Math.floor(ci / this.per);
    const b = this.entry(rb).data;
    return b ? getRefcount(b, ci - rb * this.per, this.order) : 0;
  }

  /** The block to modify for reftable index rb (ready: see isReady; its zeros on disk noted on the first change). */
  block(rb: number): Uint8Array {
    const e = this.entry(rb);
    if (!e.unwritten) {
      if (this.frozen) throw new QcowError('INTERNAL', `refcount block ${rb} changed after the refcount structures were placed`, { reftableIndex: rb });
      if (!this.changed.has(rb)) {
        e.zero = this.zerosOf(e.data, this.spareBitmaps.pop() ?? new Uint8Array(this.zeroBytes));
        this.grow(e.zero.length);
        if (!e.data) {
          e.data = this.spareBlocks.pop()?.fill(0) ?? new Uint8Array(this.img.clusterSize);
          this.grow(e.data.length - ABSENT_BLOCK_BYTES);
        }
        this.changed.add(rb);
      } else if (!e.zero) {
        throw new QcowError('INTERNAL', `refcount block ${rb} changed without its zeros on disk`, { reftableIndex: rb });
      }
      e.unwritten = true;
    }
    return e.data!;
  }

  set(ci: number, v: number): void {
    const rb = Math.floor(ci / this.per);
    setRefcount(this.block(rb), ci - rb * this.per, this.order, v);
  }

  /**
   * addRef on a block already at hand (the hot path of the tree walks): `blk` is the changed
   * block of the cluster's reftable index (from block()), `idx` its index in it.
   */
  addRefIn(zero: Uint8Array, blk: Uint8Array, idx: number, ci: number, d: number, what: string): void {
    const cur = this.order === 4 ? (blk[2 * idx]! << 8) | blk[2 * idx + 1]! : getRefcount(blk, idx, this.order);
    const next = cur + d;
    if (((zero[idx >>> 3]! >>> (idx & 7)) & 1) !== 0 || next < 0 || next > this.max) {
      this.addRef(ci, d, what); // throws the precise error
      return;
    }
    if (this.order === 4) {
      blk[2 * idx] = next >>> 8;
      blk[2 * idx + 1] = next & 0xff;
    } else {
      setRefcount(blk, idx, this.order, next);
    }
  }

  /**
   * Add `d` to the refcount of a cluster that a tree references. Refcount 0 on disk for a
   * referenced cluster, a result below 0 or above the width's maximum: the operation is refused.
   */
  addRef(ci: number, d: number, what: string): void {
    const rb = Math.floor(ci / this.per);
    const idx = ci - rb * this.per;
    if (this.wasZero(rb, idx)) {
      throw new QcowError('METADATA_CORRUPT',
        `${what} at host offset ${hex(ci * this.img.clusterSize)} is referenced but its refcount is 0; the image needs a check with repair`,
        { structure: 'refcount block', offset: ci * this.img.clusterSize, cluster: ci });
    }
    const blk = this.block(rb);
    const next = getRefcount(blk, idx, this.order) + d;
    if (next < 0) {
      throw new QcowError('METADATA_CORRUPT',
        `${what} at host offset ${hex(ci * this.img.clusterSize)} has fewer references counted than it has; the image needs a check with repair`,
        { structure: 'refcount block', offset: ci * this.img.clusterSize, cluster: ci });
    }
    if (next > this.max) {
      throw new QcowError('REFCOUNT_OVERFLOW',
        `${what} at host offset ${hex(ci * this.img.clusterSize)} would need refcount ${next}, more than refcount_bits=${2 ** this.order} can hold`,
        { structure: 'refcount block', offset: ci * this.img.clusterSize, cluster: ci, refcount: next - d, refcountBits: 2 ** this.order });
    }
    setRefcount(blk, idx, this.order, next);
  }

  private entry(rb: number): OverlayBlock {
    const e = this.cache.get(rb);
    if (e === undefined) throw new QcowError('INTERNAL', `refcount block ${rb} used before it was loaded`, { reftableIndex: rb });
    return e;
  }

  private homeOf(rb: number): number {
    const off = this.homes.get(rb);
    if (off === undefined) throw new QcowError('INTERNAL', `refcount block ${rb} left the cache without a new place`, { reftableIndex: rb });
    return off;
  }

  private async writeHome(rb: number, e: OverlayBlock, purpose: string): Promise<void> {
    await this.img.pwrite(this.homeOf(rb), e.data!, purpose);
    e.unwritten = false;
  }

  private grow(bytes: number): void {
    this.cacheBytes += bytes;
    if (this.cacheBytes > this.peakBytes) this.peakBytes = this.cacheBytes;
  }

  private bytesOf(e: OverlayBlock): number {
    return (e.data ? e.data.length : ABSENT_BLOCK_BYTES) + (e.zero ? e.zero.length : 0);
  }

  /** Block rb's zeros on disk into `out`, from the old block (all of them for an absent one). */
  private async zerosOnDisk(rb: number, out: Uint8Array): Promise<Uint8Array> {
    const old = (this.oldBlock ??= new Uint8Array(this.img.clusterSize));
    return this.zerosOf((await readRefblockInto(this.img, rb, old)) ? old : null, out);
  }

  /** Bit i of `out` set where entry i of `b` is 0 (every bit for an absent block). */
  private zerosOf(b: Uint8Array | null, out: Uint8Array): Uint8Array {
    if (b && this.order === 4 && b.byteOffset % 4 === 0 && this.per % 8 === 0) {
      // Eight refcounts (four words, one byte of `out`) at a time: a group all zero (most of a
      // block on 2 MiB clusters: 1 Mi entries) or all in use costs one test. Whether both halves
      // of a word are zero, or both not, is the same whatever the byte order; a mixed group is
      // read entry by entry.
      const w = new Uint32Array(b.buffer, b.byteOffset, this.per / 2);
      const h = new Uint16Array(b.buffer, b.byteOffset, this.per);
      for (let k = 0, o = 0; k < w.length; k += 4, o++) {
        const x0 = w[k]!;
        const x1 = w[k + 1]!;
        const x2 = w[k + 2]!;
        const x3 = w[k + 3]!;
        if ((x0 | x1 | x2 | x3) === 0) {
          out[o] = 0xff;
          continue;
        }
        if ((x0 & 0xffff) !== 0 && x0 >>> 16 !== 0 && (x1 & 0xffff) !== 0 && x1 >>> 16 !== 0 &&
            (x2 & 0xffff) !== 0 && x2 >>> 16 !== 0 && (x3 & 0xffff) !== 0 && x3 >>> 16 !== 0) {
          out[o] = 0;
          continue;
        }
        let bits = 0;
        for (let j = 0; j < 8; j++) if (h[2 * k + j] === 0) bits |= 1 << j;
        out[o] = bits;
      }
      return out;
    }
    out.fill(b ? 0 : 0xff);
    if (b && this.order === 4 && b.byteOffset % 4 === 0 && this.per % 2 === 0) {
      // Two refcounts per word, skipping words with no zero half (most of a used block): a zero
      // half is zero whatever the byte order.
      const w = new Uint32Array(b.buffer, b.byteOffset, this.per / 2);
      const h = new Uint16Array(b.buffer, b.byteOffset, this.per);
      for (let k = 0; k < w.length; k++) {
        const x = w[k]!;
        if ((x & 0xffff) !== 0 && x >>> 16 !== 0) continue;
        const i = 2 * k;
        if (h[i] === 0) out[i >>> 3] |= 1 << (i & 7);
        if (h[i + 1] === 0) out[(i + 1) >>> 3] |= 1 << ((i + 1) & 7);
      }
    } else if (b && this.order === 4) {
      const w = new Uint16Array(b.buffer, b.byteOffset, this.per); // zero whatever the byte order
      for (let i = 0; i < this.per; i++) if (w[i] === 0) out[i >>> 3] |= 1 << (i & 7);
    } else if (b) {
      for (let i = 0; i < this.per; i++) if (getRefcount(b, i, this.order) === 0) out[i >>> 3] |= 1 << (i & 7);
    }
    return out;
  }
}

