// Tests of the crash-injection helpers themselves (tests/helpers/crash-store.ts), on a toy
// operation whose every crash state is known, so crash tests of the engine can trust them.
import { describe, expect, it } from 'vitest';
import { isQcowError } from '../../core/errors.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import type { ImageStore } from '../../core/io/store.ts';
import { bytesDiff, expectBytes } from '../helpers/bytes.ts';
import {
  DroppingStore, StopAfterWritesStore, applyOps, countWrites, enumerateCrashStates, enumerateDroppedStates,
  subsetMasks,
} from '../helpers/crash-store.ts';
import { seededRandom } from '../helpers/random.ts';

const fill = (n: number, v: number) => new Uint8Array(n).fill(v);

/** Toy operation: write 1s at 0, flush, 2s at 8, 3s at 4 (overlapping the 1s), flush, grow to 32. */
async function toyOp(s: ImageStore): Promise<void> {
  await s.write(0, fill(8, 1));
  await s.flush();
  await s.write(8, fill(8, 2));
  await s.write(4, fill(8, 3));
  await s.flush();
  await s.truncate(32);
}

function expected(k: number): Uint8Array {
  const m = new MemoryStore(new Uint8Array(16));
  const b = m.bytes();
  if (k >= 1) b.fill(1, 0, 8);
  if (k >= 2) b.fill(2, 8, 16);
  if (k >= 3) b.fill(3, 4, 12);
  return b.slice();
}

describe('StopAfterWritesStore', () => {
  it('lets k writes through, then fails every write, flush and truncate with CRASH_INJECTED', async () => {
    const mem = new MemoryStore(new Uint8Array(16));
    const s = new StopAfterWritesStore(mem, 2);
    await s.write(0, fill(2, 7));
    await s.flush();
    await s.write(2, fill(2, 8));
    const codes: string[] = [];
    for (const step of [() => s.write(4, fill(2, 9)), () => s.flush(), () => s.truncate(4), () => s.write(0, fill(1, 1))]) {
      try {
        await step();
        codes.push('ok');
      } catch (e) {
        codes.push(isQcowError(e) ? e.code : String(e));
      }
    }
    expect(codes).toEqual(['CRASH_INJECTED', 'CRASH_INJECTED', 'CRASH_INJECTED', 'CRASH_INJECTED']);
    expect(s.stopped).toBe(true);
    expect(s.writes).toBe(2);
    expectBytes(mem.bytes(), Uint8Array.from([7, 7, 8, 8, ...new Uint8Array(12)]));
    expectBytes(await s.read(0, 4), Uint8Array.of(7, 7, 8, 8)); // reads still work after the crash
  });

  it('k = 0 stops before the first write', async () => {
    const s = new StopAfterWritesStore(new MemoryStore(new Uint8Array(4)), 0);
    await expect(s.write(0, fill(1, 1))).rejects.toMatchObject({ code: 'CRASH_INJECTED' });
  });
});

describe('enumerateCrashStates', () => {
  it('returns the state after each prefix of writes, the last one completed', async () => {
    expect((await countWrites(new Uint8Array(16), toyOp)).writes).toBe(3);
    const states = await enumerateCrashStates(new Uint8Array(16), toyOp);
    expect(states.map((s) => [s.writes, s.completed])).toEqual([[0, false], [1, false], [2, false], [3, true]]);
    for (const st of states.slice(0, 3)) {
      expect(isQcowError(st.error) && st.error.code).toBe('CRASH_INJECTED');
      expectBytes(st.bytes, expected(st.writes), `k=${st.writes}`);
    }
    // The completed run also did its truncate.
    expectBytes(states[3]!.bytes, Uint8Array.from([...expected(3), ...new Uint8Array(16)]));
  });

  it('accepts a wrapped error after the crash but rethrows an error before it', async () => {
    const wrapping = async (s: ImageStore) => {
      try {
        await toyOp(s);
      } catch (e) {
        throw new Error('operation failed', { cause: e });
      }
    };
    expect((await enumerateCrashStates(new Uint8Array(16), wrapping)).length).toBe(4);
    const buggy = async (s: ImageStore) => {
      await s.write(0, fill(1, 1));
      if (s instanceof StopAfterWritesStore) throw new Error('bug');
    };
    await expect(enumerateCrashStates(new Uint8Array(4), buggy)).rejects.toThrow('bug');
  });

  it('never mutates the base bytes', async () => {
    const base = new Uint8Array(16);
    await enumerateCrashStates(base, toyOp);
    expectBytes(base, new Uint8Array(16));
  });
});

describe('DroppingStore and enumerateDroppedStates', () => {
  it('reads see every write; bytesWithSubset keeps flushed writes and the chosen pending ones', async () => {
    const s = new DroppingStore(new Uint8Array(16));
    await s.write(0, fill(8, 1));
    await s.flush();
    await s.write(8, fill(8, 2));
    await s.write(4, fill(8, 3));
    expectBytes(await s.read(0, 16), expected(3));
    expect(s.pendingOps.length).toBe(2);
    expectBytes(s.bytesWithSubset([false, false]), expected(1));
    expectBytes(s.bytesWithSubset([true, false]), expected(2));
    expectBytes(s.bytesWithSubset(0b11), expected(3));
    // Only the later, overlapping write landed.
    expectBytes(s.bytesWithSubset([false, true]), Uint8Array.from([1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0]));
  });

  it('enumerates every subset of each flush epoch, in epoch order', async () => {
    const { store, states } = await enumerateDroppedStates(new Uint8Array(16), toyOp);
    const all = [...states()];
    // epoch 0: one write (2 subsets), epoch 1: two writes (4), epoch 2: the unflushed truncate (2)
    expect(all.map((s) => s.epoch)).toEqual([0, 0, 1, 1, 1, 1, 2, 2]);
    expect([...store.epochs()].map((e) => [e.ops.length, e.flushed])).toEqual([[1, true], [2, true], [1, false]]);
    expectBytes(all[0]!.bytes, expected(0));
    expectBytes(all[1]!.bytes, expected(1));
    // Flushed writes are in every later state: the barrier holds.
    for (const st of all.filter((s) => s.epoch >= 1)) expect(st.bytes.subarray(0, 4)).toEqual(fill(4, 1));
    expectBytes(all[5]!.bytes, expected(3));
    expect(all[6]!.bytes.length).toBe(16); // truncate dropped
    expect(all[7]!.bytes.length).toBe(32); // truncate landed
  });

  it('samples large epochs deterministically: none, all, every prefix, then random subsets', () => {
    const a = [...subsetMasks(14, 10, 100, seededRandom(7))];
    const b = [...subsetMasks(14, 10, 100, seededRandom(7))];
    expect(a.length).toBe(100);
    expect(a).toEqual(b);
    expect(new Set(a.map((m) => m.join())).size).toBe(100);
    expect(a[0]).toEqual(Array(14).fill(false));
    expect(a[1]).toEqual(Array(14).fill(true));
    expect(a[2]).toEqual([true, ...Array(13).fill(false)]);
    expect([...subsetMasks(3, 10, 100, seededRandom(1))].length).toBe(8);
  });

  it('applyOps applies writes and truncates in issue order', () => {
    const out = applyOps(fill(4, 9), [
      { kind: 'truncate', size: 2 },
      { kind: 'write', offset: 3, data: fill(1, 5) },
      { kind: 'truncate', size: 6 },
    ], [true, true, true]);
    expect(bytesDiff(out, Uint8Array.of(9, 9, 0, 5, 0, 0))).toBe('');
  });
});
