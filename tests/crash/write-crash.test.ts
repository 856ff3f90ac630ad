// Crash safety of guest writes (core/image/write.ts) and of the allocator under them (refcount
// blocks, refcount-table growth): each write runs on a memory copy of a QEMU-made image behind a
// store that stops at each write in turn, and behind one that drops any subset of the writes
// since the last flush. After every crash `qemu-img check` finds no corruption (leaks are
// allowed: a crash may waste clusters, never lose or damage data), and every unit of guest data
// (a cluster, or a subcluster with extended L2) reads as it was before the write or as after it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ImageStore } from '../../core/io/store.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { RawLayer, type Layer } from '../../core/image/layer.ts';
import { openImage } from '../../cli/open.ts';
import { discard, writeGuest, writeZeroes } from '../../core/image/write.ts';
import { enumerateCrashStates, enumerateDroppedStates, judgeEachDistinct } from '../helpers/crash-store.ts';
import {
  createImage, qemuCheck, qemuConvertToRaw, qemuImgOk, qemuIoOk, qemuSnapshotCreate, type CreateOptions,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-wcrash-');

type WriteOp = (img: Qcow2Image) => Promise<void>;

function data(length: number, seed: number): Uint8Array {
  const d = new Uint8Array(length);
  for (let i = 0; i < length; i++) d[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return d;
}

interface Case {
  name: string;
  make(file: string, dir: string): void;
  /** Writes done (and completed) before the one under test, to reach an interesting state. */
  before?: WriteOp[];
  op: WriteOp;
  /** Extra checks on the image bytes after the completed write. */
  assertAfter?(bytes: Uint8Array): void;
}

/** Open for writing; a backing file named in the header (absolute path) is opened read-only. */
async function openOn(store: ImageStore): Promise<Qcow2Image> {
  const h = await Qcow2Image.readHeader(store);
  let backing: Layer | null = null;
  if (h.backingFile !== undefined) {
    backing = h.backingFormat === 'raw'
      ? new RawLayer(new MemoryStore(new Uint8Array(fs.readFileSync(h.backingFile)), { writable: false }))
      : await openImage(h.backingFile);
  }
  return Qcow2Image.open(store, { writable: true, backing });
}

function guestRaw(bytes: Uint8Array, dir: string, name: string): Uint8Array {
  const f = path.join(dir, `${name}.qcow2`);
  fs.writeFileSync(f, bytes);
  const out = path.join(dir, `${name}.raw`);
  qemuConvertToRaw(f, out);
  return new Uint8Array(fs.readFileSync(out));
}

/** Every unit reads old or new; returns a description of the first unit that reads neither. */
function oldOrNew(got: Uint8Array, before: Uint8Array, after: Uint8Array, unit: number): string | null {
  for (let at = 0; at < after.length; at += unit) {
    const g = Buffer.from(got.subarray(at, at + unit));
    if (g.equals(Buffer.from(before.subarray(at, at + unit)))) continue;
    if (g.equals(Buffer.from(after.subarray(at, at + unit)))) continue;
    return `guest bytes ${at}..${at + unit} are neither old nor new`;
  }
  return null;
}

async function runCase(c: Case, opts: { dropped?: boolean } = {}): Promise<{ states: number }> {
  const file = tmp.file('base.qcow2');
  c.make(file, tmp.dir);
  // Bring the image to the starting state with our own (completed) writes.
  const mem = new MemoryStore(new Uint8Array(fs.readFileSync(file)));
  if (c.before?.length) {
    const img = await openOn(mem);
    for (const w of c.before) await w(img);
  }
  const base = mem.bytes().slice();
  const probe = await openOn(new MemoryStore(base.slice()));
  const unit = probe.subclusterSize;
  const operation = async (store: ImageStore): Promise<void> => {
    const img = await openOn(store);
    await c.op(img);
  };
  const before = guestRaw(base, tmp.dir, 'before');
  let after: Uint8Array | undefined;
  let count = 0;
  const judgeBytes = judgeEachDistinct((bytes, label) => {
    const f = tmp.file('state.qcow2');
    fs.writeFileSync(f, bytes);
    const chk = qemuCheck(f);
    expect({ label, corruptions: chk.corruptions, checkErrors: chk.checkErrors, exit: chk.exitCode, stderr: chk.stderr })
      .toMatchObject({ label, corruptions: 0, checkErrors: 0 });
    expect([0, 3]).toContain(chk.exitCode);
    const got = guestRaw(bytes, tmp.dir, 'state');
    expect({ label, problem: oldOrNew(got, before, after!, unit) }).toEqual({ label, problem: null });
  });
  const judge = (bytes: Uint8Array, label: string): void => {
    judgeBytes(bytes, label);
    count++;
  };
  const states = await enumerateCrashStates(base, operation);
  const final = states[states.length - 1]!;
  expect(final.completed).toBe(true);
  c.assertAfter?.(final.bytes);
  after = guestRaw(final.bytes, tmp.dir, 'after');
  expect(qemuCheck(tmp.file('after.qcow2')).exitCode).toBe(0); // the completed write leaks nothing
  for (const s of states) judge(s.bytes, `stopped after ${s.writes} writes`);
  if (opts.dropped) {
    const { states: dropped } = await enumerateDroppedStates(base, operation, { exhaustiveUpTo: 6, samples: 24 });
    for (const s of dropped()) judge(s.bytes, `epoch ${s.epoch}, landed ${s.mask.map((b) => (b ? 1 : 0)).join('')}`);
  }
  return { states: count };
}

function make(size: string, opts: CreateOptions = {}, setup: (file: string) => void = () => {}) {
  return (file: string): void => {
    createImage(file, size, opts);
    setup(file);
  };
}

describe('crash during a guest write: no corruption, old or new data', () => {
  it('first write to a fresh image (new L2 table, new data cluster)', async () => {
    const r = await runCase({ name: 'fresh', make: make('16M'), op: (img) => writeGuest(img, 4096, data(5000, 1)) }, { dropped: true });
    expect(r.states).toBeGreaterThan(5);
  });

  it('write across an L2 boundary with a partial cluster at each end (4 KiB clusters)', async () => {
    await runCase({
      name: 'l2-boundary', make: make('8M', { clusterSize: 4096 }, (f) => qemuIoOk(f, 'write -P 0x11 2040k 16k')),
      op: (img) => writeGuest(img, 2 * 1024 * 1024 - 6000, data(13000, 2)),
    }, { dropped: true });
  });

  it('copy-on-write of clusters and an L2 table shared with a snapshot', async () => {
    await runCase({
      name: 'snapshot-cow',
      make: make('8M', { clusterSize: 4096 }, (f) => {
        qemuIoOk(f, 'write -P 0x21 0 64k');
        expect(qemuSnapshotCreate(f, 's').status).toBe(0);
      }),
      op: (img) => writeGuest(img, 1000, data(10000, 3)),
    }, { dropped: true });
  });

  it('copy-on-write of compressed clusters', async () => {
    await runCase({
      name: 'compressed',
      make: (file, dir) => {
        const src = path.join(dir, 'src.qcow2');
        createImage(src, '4M', { clusterSize: 65536 });
        qemuIoOk(src, 'write -P 0x31 0 1M');
        qemuImgOk(['convert', '-c', '-O', 'qcow2', src, file]);
      },
      op: (img) => writeGuest(img, 60000, data(80000, 4)),
    }, { dropped: true });
  });

  it('zero writes: zero flags, unmapping, partial clusters', async () => {
    await runCase({
      name: 'zero', make: make('8M', { clusterSize: 4096 }, (f) => qemuIoOk(f, 'write -P 0x41 0 64k')),
      op: async (img) => { await writeZeroes(img, 2000, 20000, { unmap: true }); },
    }, { dropped: true });
    await runCase({
      name: 'zero-keep', make: make('8M', { clusterSize: 4096 }, (f) => qemuIoOk(f, 'write -P 0x42 0 64k')),
      op: (img) => writeZeroes(img, 0, 40960),
    });
  });

  it('discard', async () => {
    await runCase({
      name: 'discard', make: make('8M', { clusterSize: 4096 }, (f) => qemuIoOk(f, 'write -P 0x43 0 64k')),
      op: (img) => discard(img, 4096, 32768),
    });
  });

  it('extended L2: partial subclusters over a backing file', async () => {
    await runCase({
      name: 'extl2',
      make: (file, dir) => {
        const b = path.join(dir, 'backing.raw');
        fs.writeFileSync(b, new Uint8Array(4 * 1024 * 1024).fill(0x55));
        createImage(file, '4M', { backing: b, backingFormat: 'raw', extendedL2: true, clusterSize: 65536 });
        qemuIoOk(file, 'write -P 0x56 0 4k');
      },
      op: (img) => writeGuest(img, 3000, data(9000, 5)),
    }, { dropped: true });
  });

  it('new refcount blocks and refcount-table growth (512-byte clusters, 64-bit refcounts)', async () => {
    await runCase({
      name: 'growth',
      make: make('4M', { clusterSize: 512, refcountBits: 64 }, (f) => qemuIoOk(f, 'write -P 0x61 0 1950k')), // 68 clusters left below 2 MiB
      op: (img) => writeGuest(img, 2 * 1024 * 1024, data(40000, 6)),
      assertAfter: (bytes) => expect(Buffer.from(bytes).readUInt32BE(56)).toBeGreaterThan(1), // refcount_table_clusters grew
    }, { dropped: true });
  });

  it('a write that needs a new refcount block (1 KiB clusters)', async () => {
    await runCase({
      name: 'refblock',
      make: make('8M', { clusterSize: 1024, refcountBits: 16 }, (f) => qemuIoOk(f, 'write -P 0x71 0 500k')),
      op: (img) => writeGuest(img, 1024 * 1024, data(40000, 7)),
    }, { dropped: true });
  });
});
