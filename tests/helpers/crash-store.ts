// Crash injection for tests (docs/architecture.md §3; issue 4). Two ImageStore wrappers and the
// enumerators built on them:
//
//   StopAfterWritesStore  a process dying: writes 1..k reach the store, write k+1 and everything
//                         after it (write, flush, truncate) throws QcowError('CRASH_INJECTED').
//   DroppingStore         a power cut with reordering: every write since the last flush() may or
//                         may not have reached the medium, in any combination. It records the
//                         writes of each flush epoch and rebuilds the bytes for any subset.
//
//   enumerateCrashStates(base, op)    image bytes after op stopped before write k+1, for every k.
//   enumerateDroppedStates(base, op)  image bytes at each flush epoch for a set of write subsets
//                                     (all of them when there are ≤ 10 pending writes, else a
//                                     seeded random sample), lazily.
//   judgeEachDistinct(judge)          a judge of crash states that skips bytes it already judged.
//
// Both treat the store's flush() as the only ordering barrier, exactly as the contract in
// core/io/store.ts defines it. A truncate counts as one pending operation like a write.
import { createHash } from 'node:crypto';
import { QcowError } from '../../core/errors.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { ForwardingStore } from '../../core/io/forwarding-store.ts';
import { seededRandom } from './random.ts';

function crashError(what: string, n: number): QcowError {
  return new QcowError('CRASH_INJECTED', `crash injected: ${what} after ${n} completed writes`, { writes: n });
}

/**
 * Lets the first `k` writes through, then behaves like a dead process: write k+1 and every later
 * write, flush and truncate throw CRASH_INJECTED and change nothing. Reads keep working (so a test
 * can look at the store afterwards), but the operation under test must not get past the crash.
 */
export class StopAfterWritesStore extends ForwardingStore {
  /** Writes that reached the inner store. */
  writes = 0;
  /** Flushes that completed. */
  flushes = 0;
  /** True once the crash has happened. */
  stopped = false;

  constructor(inner: ImageStore, readonly k: number) {
    super(inner);
  }

  override async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.stopped || this.writes >= this.k) {
      this.stopped = true;
      throw crashError(`write at ${offset} (${data.length} bytes)`, this.writes);
    }
    await this.inner.write(offset, data);
    this.writes++;
  }

  override async flush(): Promise<void> {
    if (this.stopped) throw crashError('flush', this.writes);
    await this.inner.flush();
    this.flushes++;
  }

  override async truncate(size: number): Promise<void> {
    if (this.stopped) throw crashError(`truncate to ${size}`, this.writes);
    await this.inner.truncate(size);
  }
}

/** Counts writes and flushes without changing anything (used to size the enumeration). */
export class CountingStore extends ForwardingStore {
  writes = 0;
  flushes = 0;
  truncates = 0;
  /** The largest size the store reached. */
  maxSize = 0;

  override async write(offset: number, data: Uint8Array): Promise<void> {
    await this.inner.write(offset, data);
    this.writes++;
    this.maxSize = Math.max(this.maxSize, this.inner.size());
  }
  override async flush(): Promise<void> {
    await this.inner.flush();
    this.flushes++;
  }
  override async truncate(size: number): Promise<void> {
    await this.inner.truncate(size);
    this.truncates++;
  }
}

/** One operation that may be lost in a power cut: a write (bytes) or a truncate (size). */
export type PendingOp =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'truncate'; size: number };

/**
 * A memory store that keeps, per flush epoch, the operations issued since the previous flush.
 * Reads see every write (the OS cache); `bytesWithSubset` gives what the medium could hold after a
 * power cut in the current epoch, and `epochs()` every epoch of the run so far.
 */
export class DroppingStore implements ImageStore {
  readonly name: string;
  readonly writable = true;
  private readonly live: MemoryStore;
  /** Bytes at the start of the run (epoch 0's durable state). */
  private readonly initial: Uint8Array;
  /** Operations of each completed epoch (ended by a flush), then the open epoch's. */
  private readonly closedEpochs: PendingOp[][] = [];
  private pending: PendingOp[] = [];

  constructor(initial: Uint8Array, name = 'dropping') {
    this.name = name;
    this.initial = initial.slice();
    this.live = new MemoryStore(initial.slice(), { name });
  }

  size(): number {
    return this.live.size();
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.live.read(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.live.write(offset, data);
    this.pending.push({ kind: 'write', offset, data: data.slice() });
  }
  async truncate(size: number): Promise<void> {
    await this.live.truncate(size);
    this.pending.push({ kind: 'truncate', size });
  }
  async flush(): Promise<void> {
    // An empty epoch adds nothing to enumerate; keep the epoch list about real barriers.
    if (this.pending.length > 0) this.closedEpochs.push(this.pending);
    this.pending = [];
  }
  async close(): Promise<void> {}

  /** Operations issued since the last flush (the ones a power cut may drop). */
  get pendingOps(): readonly PendingOp[] {
    return this.pending;
  }

  /** Current contents as every reader sees them (all writes applied). */
  bytes(): Uint8Array {
    return this.live.bytes().slice();
  }

  /** Every epoch: the durable bytes at its start and the operations issued in it (the last one may be unflushed). */
  *epochs(): Generator<{ index: number; durable: Uint8Array; ops: readonly PendingOp[]; flushed: boolean }> {
    let durable: Uint8Array = this.initial.slice();
    const all = [...this.closedEpochs, ...(this.pending.length ? [this.pending] : [])];
    for (let i = 0; i < all.length; i++) {
      const ops = all[i]!;
      yield { index: i, durable, ops, flushed: i < this.closedEpochs.length };
      durable = applyOps(durable, ops, ops.map(() => true));
    }
  }

  /** Bytes of the medium if, of the current epoch's pending operations, only those in `mask` landed. */
  bytesWithSubset(mask: readonly boolean[] | number): Uint8Array {
    let last: Uint8Array | undefined;
    for (const e of this.epochs()) {
      if (e.flushed) continue;
      last = applyOps(e.durable, e.ops, toMask(mask, e.ops.length));
    }
    // Nothing pending: the durable state is the current state.
    return last ?? this.bytes();
  }
}

function toMask(mask: readonly boolean[] | number, n: number): boolean[] {
  if (typeof mask === 'number') return Array.from({ length: n }, (_, i) => Math.floor(mask / 2 ** i) % 2 === 1);
  if (mask.length !== n) throw new RangeError(`mask has ${mask.length} entries for ${n} pending operations`);
  return [...mask];
}

/** Apply the chosen operations, in issue order, to a copy of `base`. */
export function applyOps(base: Uint8Array, ops: readonly PendingOp[], mask: readonly boolean[]): Uint8Array {
  let buf = base.slice();
  let size = base.length;
  const ensure = (n: number): void => {
    if (n <= buf.length) return;
    const grown = new Uint8Array(Math.max(n, buf.length * 2));
    grown.set(buf.subarray(0, size));
    buf = grown;
  };
  ops.forEach((op, i) => {
    if (!mask[i]) return;
    if (op.kind === 'write') {
      ensure(op.offset + op.data.length);
      buf.set(op.data, op.offset);
      size = Math.max(size, op.offset + op.data.length);
    } else {
      if (op.size > size) ensure(op.size);
      else buf.fill(0, op.size, size);
      size = op.size;
    }
  });
  return buf.slice(0, size);
}

// ---------------------------------------------------------------------------------------------
// Enumerators

export type StoreOperation = (store: ImageStore) => Promise<void>;

export interface CrashState {
  /** Writes that reached the store before the crash (k). */
  writes: number;
  /** True when the operation ran to its end (k = total writes). */
  completed: boolean;
  /** The error that ended the run (the injected crash, possibly wrapped), if any. */
  error?: unknown;
  /** The image bytes (built again from the base and the writes that landed at each read: see enumerateCrashStates). */
  readonly bytes: Uint8Array;
}

/** Run `operation` on a memory copy of `base` and count its writes and flushes. */
export async function countWrites(base: Uint8Array, operation: StoreOperation): Promise<{ writes: number; flushes: number; bytes: Uint8Array }> {
  const mem = new MemoryStore(base.slice());
  const counting = new CountingStore(mem);
  await operation(counting);
  return { writes: counting.writes, flushes: counting.flushes, bytes: mem.bytes().slice() };
}

/** Records the writes and truncates that reach the inner store, in order. */
class RecordingStore extends ForwardingStore {
  readonly ops: PendingOp[] = [];
  override async write(offset: number, data: Uint8Array): Promise<void> {
    await this.inner.write(offset, data);
    this.ops.push({ kind: 'write', offset, data: data.slice() });
  }
  override async truncate(size: number): Promise<void> {
    await this.inner.truncate(size);
    this.ops.push({ kind: 'truncate', size });
  }
}

function sameOp(a: PendingOp, b: PendingOp): boolean {
  if (a.kind === 'truncate' || b.kind === 'truncate') return a.kind === 'truncate' && b.kind === 'truncate' && a.size === b.size;
  return a.offset === b.offset && a.data.length === b.data.length && Buffer.compare(a.data, b.data) === 0;
}

/**
 * The image bytes after `operation` died before each of its writes: for k = 0..N (N = the writes
 * of an uninterrupted run) the operation runs on a fresh memory copy of `base` behind a
 * StopAfterWritesStore(k). State k = N is the completed operation. Any error thrown after the
 * crash is accepted as the crash (engines may wrap it); an error before it is rethrown.
 *
 * A state keeps the operations that landed, not its bytes (which `bytes` rebuilds from the base,
 * checked here against the run's own bytes): N images held at once made every process a test
 * then spawns (qemu-img for each state) cost a copy of that memory's page tables, ~25 ms of CPU
 * per spawn at 800 MB. A run whose landed operations are a prefix of the uninterrupted run's (the
 * usual case) shares that run's list.
 */
export async function enumerateCrashStates(base: Uint8Array, operation: StoreOperation): Promise<CrashState[]> {
  const initial = base.slice();
  const full = new RecordingStore(new MemoryStore(base.slice()));
  await operation(full);
  const total = full.ops.filter((o) => o.kind === 'write').length;
  const states: CrashState[] = [];
  for (let k = 0; k <= total; k++) {
    const mem = new MemoryStore(base.slice());
    const rec = new RecordingStore(mem);
    const store = new StopAfterWritesStore(rec, k);
    let error: unknown;
    try {
      await operation(store);
    } catch (e) {
      if (!store.stopped) throw e;
      error = e;
    }
    const n = rec.ops.length;
    const ops = n <= full.ops.length && rec.ops.every((o, i) => sameOp(o, full.ops[i]!)) ? full.ops : rec.ops;
    const rebuild = (): Uint8Array => applyOps(initial, ops.slice(0, n), Array<boolean>(n).fill(true));
    const actual = mem.bytes();
    const rebuilt = rebuild();
    if (actual.length !== rebuilt.length || Buffer.compare(actual, rebuilt) !== 0) {
      throw new Error(`crash state ${k}: the landed writes do not rebuild the store's bytes`);
    }
    states.push({ writes: k, completed: !store.stopped, error, get bytes() { return rebuild(); } });
  }
  return states;
}

export interface DroppedState {
  /** Flush epoch (0 = before the first flush). */
  epoch: number;
  /** Operations pending in that epoch. */
  pending: number;
  /** Which pending operations reached the medium. */
  mask: boolean[];
  bytes: Uint8Array;
}

export interface DroppedOptions {
  /** Enumerate every subset when an epoch has at most this many pending operations (default 10). */
  exhaustiveUpTo?: number;
  /** Subsets sampled per larger epoch (default 256), always including none and all. */
  samples?: number;
  /** PRNG seed for the sample (default 1). */
  seed?: number;
}

/**
 * Run `operation` once on a DroppingStore over a copy of `base`, then yield, for every flush epoch,
 * the bytes the medium could hold after a power cut in that epoch: the durable state at the
 * epoch's start plus a subset of its pending operations (every subset if there are few, else a
 * seeded sample). Lazy, so thousands of states never sit in memory together.
 */
export async function enumerateDroppedStates(
  base: Uint8Array, operation: StoreOperation, opts: DroppedOptions = {},
): Promise<{ store: DroppingStore; states: () => Generator<DroppedState> }> {
  const exhaustiveUpTo = opts.exhaustiveUpTo ?? 10;
  const samples = opts.samples ?? 256;
  const store = new DroppingStore(base);
  await operation(store);
  function* states(): Generator<DroppedState> {
    const rand = seededRandom(opts.seed ?? 1);
    for (const e of store.epochs()) {
      const n = e.ops.length;
      for (const mask of subsetMasks(n, exhaustiveUpTo, samples, rand)) {
        yield { epoch: e.index, pending: n, mask, bytes: applyOps(e.durable, e.ops, mask) };
      }
    }
  }
  return { store, states };
}

/** All 2^n masks when n ≤ exhaustiveUpTo, else `samples` distinct masks (none, all, then random). */
export function* subsetMasks(n: number, exhaustiveUpTo: number, samples: number, rand: () => number): Generator<boolean[]> {
  if (n <= exhaustiveUpTo) {
    for (let m = 0; m < 2 ** n; m++) yield toMask(m, n);
    return;
  }
  const seen = new Set<string>();
  const emit = (mask: boolean[]): boolean[] | undefined => {
    const key = mask.map((b) => (b ? '1' : '0')).join('');
    if (seen.has(key)) return undefined;
    seen.add(key);
    return mask;
  };
  const none = emit(Array(n).fill(false));
  if (none) yield none;
  const all = emit(Array(n).fill(true));
  if (all) yield all;
  // Prefixes (writes landing in order) are the likeliest real outcomes: include them all.
  for (let p = 1; p < n && seen.size < samples; p++) {
    const m = emit(Array.from({ length: n }, (_, i) => i < p));
    if (m) yield m;
  }
  let attempts = 0;
  while (seen.size < samples && attempts < samples * 20) {
    attempts++;
    const m = emit(Array.from({ length: n }, () => rand() < 0.5));
    if (m) yield m;
  }
}

/**
 * `judge` run once per distinct image: many crash points leave the same bytes (a dropped write
 * that the next one rewrites, the same subset reached twice, a stop before the first write), and
 * asking QEMU again about the same bytes gives the same answer. `judge` must depend on the bytes
 * alone (and on what is fixed for the test); it throws on a bad state, so bytes met again passed
 * their judgement already.
 */
export function judgeEachDistinct(judge: (bytes: Uint8Array, label: string) => void): (bytes: Uint8Array, label: string) => void {
  const judged = new Set<string>();
  return (bytes, label) => {
    const key = createHash('sha256').update(bytes).digest('hex');
    if (judged.has(key)) return;
    judge(bytes, label);
    judged.add(key);
  };
}
