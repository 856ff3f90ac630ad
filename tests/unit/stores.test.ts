// One contract suite for every ImageStore (docs/architecture.md §2), run unchanged
// against MemoryStore, OverlayStore (over an in-memory ByteSource), the worker's FileStore (over a
// Node File: block cache, overlay, pending overlay) and NodeFileStore (a temp file). The other
// browser stores (File System Access, OPFS) run the same ideas in the e2e tests.
// Store-specific extras follow: the overlay's segments(), the Node store's crash hook.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { NodeFileStore, CRASH_EXIT_CODE } from '../../cli/node-file-store.ts';
import { isQcowError } from '../../core/errors.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { OverlayStore, OVERLAY_PAGE_SIZE, type ByteSource } from '../../core/io/overlay-store.ts';
import { readInto, type ImageStore } from '../../core/io/store.ts';
import { FileStore } from '../../worker/stores/file-store.ts';
import { expectBytes } from '../helpers/bytes.ts';
import { seededRandom } from '../helpers/random.ts';
import { makeTempDir, removeDir } from '../helpers/qemu.ts';

const TWO_32 = 2 ** 32;

interface Backend {
  /** A writable store holding `initial`. */
  open(initial: Uint8Array): Promise<ImageStore>;
  /** A read-only store holding `initial`, if the backend has a read-only mode. */
  openReadOnly?(initial: Uint8Array): Promise<ImageStore>;
  /** Whether writes far beyond 2^32 can be held (sparse). Memory cannot allocate 4 GiB. */
  sparse: boolean;
  /** What is durably stored after close (for stores backed by something outside the object). */
  persisted?(store: ImageStore): Uint8Array;
}

function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected an error with code ${code}`).toBeDefined();
  expect(isQcowError(err) ? err.code : String(err)).toBe(code);
}

/** A plain reference model of the contract: what every store must be indistinguishable from. */
class Model {
  bytes: Uint8Array;
  constructor(initial: Uint8Array) {
    this.bytes = initial.slice();
  }
  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    if (offset < this.bytes.length) out.set(this.bytes.subarray(offset, Math.min(this.bytes.length, offset + length)));
    return out;
  }
  write(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.bytes.length) this.truncate(offset + data.length);
    this.bytes.set(data, offset);
  }
  truncate(size: number): void {
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, Math.min(size, this.bytes.length)));
    this.bytes = next;
  }
}

function contract(name: string, backend: Backend): void {
  describe(`${name}: ImageStore contract`, () => {
    it('reports its size and reads back its initial bytes', async () => {
      const init = pattern(5000);
      const s = await backend.open(init);
      expect(s.size()).toBe(5000);
      expect(s.writable).toBe(true);
      expectBytes(await s.read(0, 5000), init);
      expectBytes(await s.read(1234, 100), init.subarray(1234, 1334));
      expect((await s.read(10, 0)).length).toBe(0);
      await s.close();
    });

    it('reads past the end return zeros, with exactly the requested length', async () => {
      const init = pattern(1000);
      const s = await backend.open(init);
      const straddle = await s.read(990, 30);
      expect(straddle.length).toBe(30);
      expectBytes(straddle.subarray(0, 10), init.subarray(990));
      expectBytes(straddle.subarray(10), new Uint8Array(20));
      expectBytes(await s.read(5000, 64), new Uint8Array(64));
      expectBytes(await s.read(TWO_32 + 17, 16), new Uint8Array(16));
      // Any offset a qcow2 entry can hold (host offsets reach 2^56, beyond exact doubles) reads as
      // zeros instead of failing: a hostile table pointer then reads as an empty table.
      expectBytes(await s.read(2 ** 56 - 512, 512), new Uint8Array(512));
      expectBytes(await s.read(2 ** 55, 8), new Uint8Array(8));
      expect(s.size()).toBe(1000); // reading never grows a store
      await s.close();
    });

    it('readInto gives the bytes read gives, overwriting a reused buffer whole (zeros past the end)', async () => {
      const init = pattern(1000);
      const s = await backend.open(init);
      const buf = new Uint8Array(30).fill(0xee);
      for (const at of [0, 500, 990, 1000, 5000, TWO_32 + 17, 2 ** 56 - 512]) {
        await readInto(s, at, buf);
        expectBytes(buf, await s.read(at, buf.length));
        buf.fill(0xee);
      }
      await readInto(s, 7, buf.subarray(3, 13));
      expectBytes(buf.subarray(3, 13), init.subarray(7, 17));
      expect(buf[2]).toBe(0xee);
      expect(buf[13]).toBe(0xee);
      expect(s.size()).toBe(1000);
      await s.close();
    });

    it('rejects invalid ranges', async () => {
      const s = await backend.open(pattern(100));
      await expect(s.read(-1, 4)).rejects.toThrow();
      await expect(s.read(0.5, 4)).rejects.toThrow();
      await expect(s.write(-8, new Uint8Array(1))).rejects.toThrow();
      await s.close();
    });

    it('writes in place and grows on writes past the end (the gap reads as zeros)', async () => {
      const s = await backend.open(pattern(1000));
      await s.write(100, new Uint8Array(50).fill(0xaa));
      expect(s.size()).toBe(1000);
      expectBytes(await s.read(100, 50), new Uint8Array(50).fill(0xaa));
      expectBytes(await s.read(99, 1), pattern(1000).subarray(99, 100));
      await s.write(3000, new Uint8Array(10).fill(0xbb));
      expect(s.size()).toBe(3010);
      expectBytes(await s.read(1000, 2000), new Uint8Array(2000));
      expectBytes(await s.read(3000, 12), Uint8Array.from([...new Uint8Array(10).fill(0xbb), 0, 0]));
      await s.close();
    });

    it('starts empty and grows from nothing', async () => {
      const s = await backend.open(new Uint8Array(0));
      expect(s.size()).toBe(0);
      expectBytes(await s.read(0, 8), new Uint8Array(8));
      await s.write(0, Uint8Array.of(1, 2, 3));
      expect(s.size()).toBe(3);
      expectBytes(await s.read(0, 4), Uint8Array.of(1, 2, 3, 0));
      await s.close();
    });

    it('truncates smaller, then larger: the regrown range is zeros, not the old bytes', async () => {
      const init = pattern(200_000);
      const s = await backend.open(init);
      await s.write(150_000, new Uint8Array(1000).fill(0xcc));
      await s.truncate(70_001);
      expect(s.size()).toBe(70_001);
      expectBytes(await s.read(70_000, 4), Uint8Array.of(init[70_000]!, 0, 0, 0));
      await s.truncate(200_000);
      expect(s.size()).toBe(200_000);
      expectBytes(await s.read(0, 70_001), init.subarray(0, 70_001));
      expectBytes(await s.read(70_001, 200_000 - 70_001), new Uint8Array(200_000 - 70_001));
      await s.truncate(0);
      expect(s.size()).toBe(0);
      expectBytes(await s.read(0, 16), new Uint8Array(16));
      await s.close();
    });

    it('truncates larger with zeros', async () => {
      const s = await backend.open(pattern(10));
      await s.truncate(100_000);
      expect(s.size()).toBe(100_000);
      expectBytes(await s.read(0, 10), pattern(10));
      expectBytes(await s.read(10, 99_990), new Uint8Array(99_990));
      await s.close();
    });

    it('has flush() and close()', async () => {
      const s = await backend.open(pattern(10));
      await s.write(0, Uint8Array.of(9));
      await expect(s.flush()).resolves.toBeUndefined();
      expectBytes(await s.read(0, 1), Uint8Array.of(9));
      await expect(s.close()).resolves.toBeUndefined();
    });

    // only stores that can hold a sparse file this large (not the in-memory ones)
    if (backend.sparse) it('handles offsets above 2^32 (sparse)', async () => {
      const s = await backend.open(pattern(4096));
      const off = TWO_32 + 65_536 * 3 + 5; // unaligned on purpose: no 32-bit arithmetic may survive
      await s.write(off, Uint8Array.of(1, 2, 3, 4));
      expect(s.size()).toBe(off + 4);
      expectBytes(await s.read(off - 2, 8), Uint8Array.of(0, 0, 1, 2, 3, 4, 0, 0));
      expectBytes(await s.read(TWO_32 - 4, 8), new Uint8Array(8));
      expectBytes(await s.read(0, 4096), pattern(4096));
      await s.truncate(TWO_32 + 2);
      expect(s.size()).toBe(TWO_32 + 2);
      expectBytes(await s.read(off, 4), new Uint8Array(4));
      await s.close();
    });

    it('behaves exactly like the reference model under random writes, truncates and reads', async () => {
      const rand = seededRandom(42);
      const init = pattern(150_000, 3);
      const s = await backend.open(init);
      const m = new Model(init);
      for (let step = 0; step < 300; step++) {
        const r = rand();
        const size = m.bytes.length;
        if (r < 0.55) {
          const off = Math.floor(rand() * (size + 70_000));
          const len = 1 + Math.floor(rand() * (rand() < 0.2 ? 140_000 : 700));
          const data = pattern(len, step);
          await s.write(off, data);
          m.write(off, data);
        } else if (r < 0.65) {
          const to = Math.floor(rand() * (size * 1.3 + 1000));
          await s.truncate(to);
          m.truncate(to);
        } else if (r < 0.7) {
          await s.flush();
        } else {
          const off = Math.floor(rand() * (size + 1000));
          const len = Math.floor(rand() * 90_000);
          expectBytes(await s.read(off, len), m.read(off, len), `step ${step}: read ${off}+${len}`);
        }
        expect(s.size(), `step ${step}`).toBe(m.bytes.length);
      }
      expectBytes(await s.read(0, m.bytes.length), m.bytes);
      await s.flush();
      if (backend.persisted) {
        await s.close();
        expectBytes(backend.persisted(s), m.bytes);
      } else {
        await s.close();
      }
    });

    // only stores that have a read-only mode
    if (backend.openReadOnly) it('a read-only store refuses writes and truncates with READ_ONLY and reads normally', async () => {
      const init = pattern(300);
      const s = await backend.openReadOnly!(init);
      expect(s.writable).toBe(false);
      await expectCode(s.write(0, Uint8Array.of(1)), 'READ_ONLY');
      await expectCode(s.write(1000, Uint8Array.of(1)), 'READ_ONLY');
      await expectCode(s.truncate(10), 'READ_ONLY');
      expect(s.size()).toBe(300);
      expectBytes(await s.read(0, 300), init);
      await s.flush(); // flushing nothing is harmless
      await s.close();
    });
  });
}

// ---- MemoryStore ---------------------------------------------------------------------------------

contract('MemoryStore', {
  open: async (initial) => new MemoryStore(initial.slice()),
  openReadOnly: async (initial) => new MemoryStore(initial.slice(), { writable: false }),
  sparse: false,
});

// ---- OverlayStore ----------------------------------------------------------------------------------

/** An in-memory ByteSource that also counts reads (a stand-in for a browser File). */
class ArraySource implements ByteSource {
  reads = 0;
  constructor(readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.reads++;
    const out = new Uint8Array(length);
    if (offset < this.bytes.length) out.set(this.bytes.subarray(offset, Math.min(this.bytes.length, offset + length)));
    return out;
  }
}

const overlaySources = new WeakMap<ImageStore, ArraySource>();

contract('OverlayStore', {
  open: async (initial) => {
    const src = new ArraySource(initial.slice());
    const s = new OverlayStore(src, 'overlay');
    overlaySources.set(s, src);
    return s;
  },
  sparse: true,
  // What "Download image" would save: the segments, reassembled.
  persisted: (s) => reassembleSync(s as OverlayStore),
});

/**
 * A page map that copies whole pages itself (PageMap.setCopy, as the worker's scratch-file maps
 * do): the overlay then hands it the caller's bytes. Every buffer a write is given is scribbled
 * over once the write returns, as a caller reusing one buffer does.
 */
class CopyingPages extends Map<number, Uint8Array> {
  copies = 0;
  setCopy(page: number, data: Uint8Array): void {
    this.copies++;
    this.set(page, data.slice());
  }
}

class ScribbledAfterWrite extends OverlayStore {
  override async write(offset: number, data: Uint8Array): Promise<void> {
    const given = data.slice();
    await super.write(offset, given);
    given.fill(0xee);
  }
}

const copyingPages = new WeakMap<ImageStore, CopyingPages>();
contract('OverlayStore with a page map that copies whole pages', {
  open: async (initial) => {
    const pages = new CopyingPages();
    const s = new ScribbledAfterWrite(new ArraySource(initial.slice()), 'overlay', pages);
    copyingPages.set(s, pages);
    return s;
  },
  sparse: true,
  persisted: (s) => {
    // the random writes include whole pages: they went through setCopy
    expect(copyingPages.get(s)!.copies).toBeGreaterThan(0);
    return reassembleSync(s as OverlayStore);
  },
});

/** Bytes described by segments(), from the source and the patches (synchronous for ArraySource). */
function reassembleSync(s: OverlayStore): Uint8Array {
  const src = overlaySources.get(s)!;
  const out = new Uint8Array(s.size());
  let pos = 0;
  for (const seg of s.segments()) {
    expect(seg.offset, 'segments are contiguous and ordered').toBe(pos);
    if (seg.kind === 'patch') {
      out.set(seg.data, seg.offset);
      pos += seg.data.length;
    } else {
      if (seg.kind === 'source') {
        out.set(src.bytes.subarray(seg.offset, seg.offset + seg.length), seg.offset);
      }
      expect(seg.length).toBeGreaterThan(0);
      pos += seg.length;
    }
  }
  expect(pos, 'segments cover [0, size)').toBe(s.size());
  return out;
}

describe('OverlayStore: segments() reassemble to exactly what reads return', () => {
  it('is pristine (one source segment) until written', async () => {
    const src = new ArraySource(pattern(100_000));
    const s = new OverlayStore(src);
    expect(s.pristine).toBe(true);
    expect(s.segments()).toEqual([{ kind: 'source', offset: 0, length: 100_000 }]);
    await s.write(5, Uint8Array.of(1));
    expect(s.pristine).toBe(false);
    expect(s.overlayBytes).toBe(OVERLAY_PAGE_SIZE);
  });

  it('reads the source for a partly written page only, never for a whole one', async () => {
    const P = OVERLAY_PAGE_SIZE;
    const init = pattern(4 * P + 100);
    const src = new ArraySource(init);
    const s = new OverlayStore(src);
    const m = new Model(init);
    const whole = pattern(2 * P, 7);
    await s.write(P, whole); // pages 1 and 2, whole
    m.write(P, whole);
    expect(src.reads).toBe(0);
    const tail = pattern(P, 8); // the last page is partly past the end: whole page, file grows
    await s.write(4 * P, tail);
    m.write(4 * P, tail);
    expect(src.reads).toBe(0);
    await s.write(10, Uint8Array.of(9, 9)); // page 0, partly: its other bytes come from the source
    m.write(10, Uint8Array.of(9, 9));
    expect(src.reads).toBe(1);
    expectBytes(await s.read(0, s.size()), m.bytes);
  });

  it('after random writes and truncates (smaller and larger) on page boundaries and across them', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const rand = seededRandom(seed);
      const init = pattern(Math.floor(rand() * 400_000), seed);
      const src = new ArraySource(init);
      const s = new OverlayStore(src);
      overlaySources.set(s, src);
      const m = new Model(init);
      for (let step = 0; step < 80; step++) {
        const size = m.bytes.length;
        const r = rand();
        if (r < 0.6) {
          const off = rand() < 0.3
            ? Math.floor(rand() * 8) * OVERLAY_PAGE_SIZE - Math.floor(rand() * 3)
            : Math.floor(rand() * (size + 200_000));
          const data = pattern(1 + Math.floor(rand() * 150_000), step);
          await s.write(Math.max(0, off), data);
          m.write(Math.max(0, off), data);
        } else {
          const to = rand() < 0.3 ? Math.floor(rand() * 8) * OVERLAY_PAGE_SIZE + 1 : Math.floor(rand() * (size * 1.5 + 10));
          await s.truncate(to);
          m.truncate(to);
        }
        expectBytes(reassembleSync(s), await s.read(0, s.size()), `seed ${seed} step ${step}`);
      }
      expectBytes(await s.read(0, s.size()), m.bytes);
    }
  });

  it('a cut below the source and a regrow yield a zeros segment, never stale source bytes', async () => {
    const src = new ArraySource(pattern(300_000));
    const s = new OverlayStore(src);
    overlaySources.set(s, src);
    await s.truncate(100_000);
    await s.truncate(250_000);
    const segs = s.segments();
    expect(segs).toEqual([
      { kind: 'source', offset: 0, length: 100_000 },
      { kind: 'zeros', offset: 100_000, length: 150_000 },
    ]);
    expectBytes(await s.read(99_999, 2), Uint8Array.of(pattern(300_000)[99_999]!, 0));
  });

  it('handles patches above 2^32 in segments', async () => {
    const src = new ArraySource(pattern(1000));
    const s = new OverlayStore(src);
    const off = TWO_32 + 12_345;
    await s.write(off, Uint8Array.of(7, 7));
    const segs = s.segments();
    expect(segs[0]).toEqual({ kind: 'source', offset: 0, length: 1000 });
    const patch = segs.find((x) => x.kind === 'patch');
    expect(patch).toBeDefined();
    const last = segs[segs.length - 1]!;
    const end = last.offset + (last.kind === 'patch' ? last.data.length : last.length);
    expect(end).toBe(off + 2);
    if (patch && patch.kind === 'patch') {
      expect(patch.data[off - patch.offset]).toBe(7);
    }
  });
});

// ---- FileStore (the worker's store for a dropped or chosen File) ------------------------------------

contract('FileStore', {
  // small blocks, so that reads cross block boundaries and hit cached, gathered and fresh blocks
  open: async (initial) => new FileStore(new File([initial as Uint8Array<ArrayBuffer>], 'img.qcow2'), 256),
  sparse: true,
});

// ---- NodeFileStore ---------------------------------------------------------------------------------

const nodeDir = makeTempDir('qcowscope-stores-');
afterAll(() => removeDir(nodeDir));
let nodeFiles = 0;
const nodePaths = new WeakMap<ImageStore, string>();

function tempFileWith(initial: Uint8Array): string {
  const file = path.join(nodeDir, `store-${nodeFiles++}.bin`);
  fs.writeFileSync(file, initial);
  return file;
}

contract('NodeFileStore', {
  open: async (initial) => {
    const file = tempFileWith(initial);
    const s = NodeFileStore.open(file, { writable: true });
    nodePaths.set(s, file);
    return s;
  },
  openReadOnly: async (initial) => NodeFileStore.open(tempFileWith(initial)),
  sparse: true,
  persisted: (s) => new Uint8Array(fs.readFileSync(nodePaths.get(s)!)),
});

describe('FileStore: an operation over the block cache', () => {
  it('an operation\'s whole pages hide the cached file bytes under them, and are the image after commit', async () => {
    const P = OVERLAY_PAGE_SIZE;
    const init = pattern(8 * P + 123);
    const store = new FileStore(new File([init as Uint8Array<ArrayBuffer>], 'f.qcow2'));
    const m = new Model(init);
    expectBytes(await store.read(0, store.size()), m.bytes);
    const reads = store.cache.rawReads;
    const page = pattern(P, 5);
    await store.write(3 * P, page); // the running operation's page
    m.write(3 * P, page);
    await store.write(6 * P + 7, Uint8Array.of(1, 2, 3));
    m.write(6 * P + 7, Uint8Array.of(1, 2, 3));
    await store.commit();
    page.fill(0); // the caller's buffer is not the image's
    expectBytes(await store.read(0, store.size()), m.bytes);
    expect(store.cache.rawReads).toBe(reads);
    // the file's bytes under the whole page were dropped from the cache; the rest stayed
    await store.cache.read(3 * P, 16);
    expect(store.cache.rawReads).toBe(reads + 1);
    await store.cache.read(4 * P, 16);
    expect(store.cache.rawReads).toBe(reads + 1);
    // a later operation writes over the adopted page: the image changes, nothing else
    await store.write(3 * P + 1, Uint8Array.of(9));
    m.write(3 * P + 1, Uint8Array.of(9));
    await store.commit();
    expectBytes(await store.read(0, store.size()), m.bytes);
  });
});

describe('NodeFileStore: files', () => {
  it('a write above 2^32 makes a sparse file of the right length', async () => {
    const file = tempFileWith(new Uint8Array(0));
    const s = NodeFileStore.open(file, { writable: true });
    await s.write(TWO_32 + 4096, Uint8Array.of(1));
    await s.close();
    const st = fs.statSync(file);
    expect(st.size).toBe(TWO_32 + 4097);
    expect(st.blocks * 512).toBeLessThan(1 << 20); // sparse, not 4 GiB of zeros
  });

  it('opening a missing file is an IO_ERROR naming the file', async () => {
    let err: unknown;
    try {
      NodeFileStore.open(path.join(nodeDir, 'nope.qcow2'));
    } catch (e) {
      err = e;
    }
    expect(isQcowError(err) && err.code).toBe('IO_ERROR');
    expect(String((err as Error).message)).toContain('No such file or directory');
  });

  it('create() makes an empty writable file', async () => {
    const file = path.join(nodeDir, 'created.bin');
    fs.writeFileSync(file, pattern(100));
    const s = NodeFileStore.create(file);
    expect(s.size()).toBe(0);
    await s.write(0, Uint8Array.of(5));
    await s.close();
    expect([...fs.readFileSync(file)]).toEqual([5]);
  });
});

describe('NodeFileStore: QCOWSCOPE_CRASH_AFTER_WRITES', () => {
  const writer = fileURLToPath(new URL('../helpers/crash-writer.ts', import.meta.url));

  function runWriter(file: string, k: number | undefined) {
    const env = { ...process.env };
    delete env.QCOWSCOPE_CRASH_AFTER_WRITES;
    if (k !== undefined) env.QCOWSCOPE_CRASH_AFTER_WRITES = String(k);
    return spawnSync(process.execPath, ['--import', 'tsx', writer, file], { encoding: 'utf8', env });
  }

  function writesOnDisk(file: string): number {
    const bytes = fs.readFileSync(file);
    let n = 0;
    for (let i = 0; i < 3; i++) {
      const chunk = bytes.subarray(i * 512, (i + 1) * 512);
      if (chunk.length === 512 && chunk.every((b) => b === i + 1)) n++;
      else {
        // Everything after the last write that landed is untouched (the file was empty).
        expect(chunk.every((b) => b === 0), `write ${i + 1} landed partially`).toBe(true);
      }
    }
    return n;
  }

  for (const k of [0, 1, 2]) {
    it(`K=${k}: exits ${CRASH_EXIT_CODE} before write ${k + 1}, with exactly ${k} writes in the file`, () => {
      const file = tempFileWith(new Uint8Array(0));
      const r = runWriter(file, k);
      expect(r.status, r.stderr).toBe(CRASH_EXIT_CODE);
      expect(r.stdout).not.toContain('done');
      expect(writesOnDisk(file)).toBe(k);
      expect(fs.statSync(file).size).toBe(k * 512);
    });
  }

  it('K=3 (no more writes than allowed) and unset: all three writes, exit 0', () => {
    for (const k of [3, undefined]) {
      const file = tempFileWith(new Uint8Array(0));
      const r = runWriter(file, k);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('done');
      expect(writesOnDisk(file)).toBe(3);
    }
  });
});
