// Guest writes (core/image/write.ts) judged by QEMU: random sequences of our data writes, zero
// writes and discards on images of every cluster size, refcount width, v2 and v3, extended L2,
// compressed clusters (qemu-img convert -c), backing overlays, preallocated and zero-allocated
// clusters, and images with internal snapshots (so shared clusters are copied on write). After
// each sequence `qemu-img check` must find nothing at all (no corruption, no leak) and
// `qemu-img convert -O raw` must give exactly the bytes a model predicts; snapshots must still
// read as they did.
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { openImage } from '../../cli/open.ts';
import { writeGuest, writeZeroes, discard } from '../../core/image/write.ts';
import type { Qcow2Image } from '../../core/image/qcow2-image.ts';
import {
  createImage, qemuCheck, qemuConvertToRaw, qemuImgOk, qemuIoOk, qemuSnapshotCreate, qemuInfo, type CreateOptions,
} from '../helpers/qemu.ts';
import { seededRandom } from '../helpers/random.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-write-');

/** Guest content = a base raw file plus the chunks our writes changed (sparse, any size). */
class Model {
  private readonly chunks = new Map<number, Uint8Array>();
  static readonly CHUNK = 65536;
  constructor(private readonly baseFile: string, readonly size: number) {}

  private chunk(i: number): Uint8Array {
    let c = this.chunks.get(i);
    if (!c) {
      c = new Uint8Array(Model.CHUNK);
      const fd = fs.openSync(this.baseFile, 'r');
      try { fs.readSync(fd, c, 0, Model.CHUNK, i * Model.CHUNK); } finally { fs.closeSync(fd); }
      this.chunks.set(i, c);
    }
    return c;
  }

  write(offset: number, data: Uint8Array): void {
    for (let done = 0; done < data.length;) {
      const pos = offset + done;
      const i = Math.floor(pos / Model.CHUNK);
      const at = pos - i * Model.CHUNK;
      const n = Math.min(Model.CHUNK - at, data.length - done);
      this.chunk(i).set(data.subarray(done, done + n), at);
      done += n;
    }
  }

  fill(offset: number, length: number, value = 0): void {
    this.write(offset, new Uint8Array(length).fill(value));
  }

  /** Copy from another raw file (what a v2 discard with a backing file shows). */
  copyFrom(file: string, offset: number, length: number): void {
    const buf = new Uint8Array(length);
    const fd = fs.openSync(file, 'r');
    try { fs.readSync(fd, buf, 0, length, offset); } finally { fs.closeSync(fd); }
    this.write(offset, buf);
  }

  /** First differing guest offset between `rawFile` and the model, or -1. */
  diff(rawFile: string): number {
    const piece = 1 << 20;
    const fdR = fs.openSync(rawFile, 'r');
    const fdB = fs.openSync(this.baseFile, 'r');
    try {
      const a = new Uint8Array(piece);
      const b = new Uint8Array(piece);
      for (let pos = 0; pos < this.size; pos += piece) {
        const n = Math.min(piece, this.size - pos);
        a.fill(0); b.fill(0);
        fs.readSync(fdR, a, 0, n, pos);
        fs.readSync(fdB, b, 0, n, pos);
        for (let c = pos / Model.CHUNK; c < (pos + n) / Model.CHUNK; c++) {
          const m = this.chunks.get(c);
          if (m) b.set(m.subarray(0, Math.min(Model.CHUNK, pos + n - c * Model.CHUNK)), c * Model.CHUNK - pos);
        }
        if (Buffer.compare(Buffer.from(a.buffer, 0, n), Buffer.from(b.buffer, 0, n)) !== 0) {
          for (let i = 0; i < n; i++) if (a[i] !== b[i]) return pos + i;
        }
      }
      return -1;
    } finally {
      fs.closeSync(fdR);
      fs.closeSync(fdB);
    }
  }
}

interface Scenario {
  /** Makes the image (at `file`); may make a backing file in `dir`. */
  make(file: string, dir: string): void;
  ops: number;
  seed: number;
  /** Guest bytes around which writes cluster (L2 boundaries, snapshots' data, ...). */
  hotSpots?: number[];
  /** Allow discards (they are only modelled where their result is certain). */
  discards?: boolean;
  /** Reopen the image every this many ops (fresh allocator state, as after a restart). */
  reopenEvery?: number;
  /** The largest single write. */
  maxLength?: number;
}

async function runScenario(s: Scenario): Promise<void> {
  const file = tmp.file('img.qcow2');
  s.make(file, tmp.dir);
  const base = tmp.file('base.raw');
  qemuConvertToRaw(file, base);
  const info = qemuInfo(file);
  const size = info['virtual-size'];
  const snapshots = (info.snapshots ?? []).map((sn) => {
    const raw = tmp.file(`snap-${sn.id}.raw`);
    qemuConvertToRaw(file, raw, { id: sn.id });
    return { id: sn.id, raw };
  });
  const backingRaw = info['backing-filename'] !== undefined ? tmp.file('backing.raw') : undefined;
  if (backingRaw) qemuConvertToRaw(info['full-backing-filename'] as string, backingRaw);
  const model = new Model(base, size);
  const rand = seededRandom(s.seed);
  const randInt = (n: number): number => Math.floor(rand() * n);
  let img: Qcow2Image = await openImage(file, { writable: true });
  const cs = img.clusterSize;
  const v3 = img.version >= 3;
  const maxLen = s.maxLength ?? 3 * cs + 4096;
  const log: string[] = [];
  try {
    for (let i = 0; i < s.ops; i++) {
      if (s.reopenEvery && i > 0 && i % s.reopenEvery === 0) {
        await img.close();
        img = await openImage(file, { writable: true });
      }
      let offset: number;
      const r = rand();
      if (s.hotSpots?.length && r < 0.4) {
        offset = s.hotSpots[randInt(s.hotSpots.length)]! + randInt(4 * cs) - 2 * cs;
      } else if (r < 0.7) {
        offset = randInt(Math.floor(size / cs)) * cs; // cluster aligned
      } else {
        offset = randInt(size);
      }
      offset = Math.max(0, Math.min(size - 1, offset));
      let length = rand() < 0.3 ? cs * (1 + randInt(3)) : 1 + randInt(maxLen);
      if (rand() < 0.1) length = 1 + randInt(512);
      length = Math.min(length, size - offset);
      const kind = rand();
      if (kind < 0.6) {
        const data = new Uint8Array(length);
        const fillByte = 1 + randInt(255);
        data.fill(fillByte);
        for (let k = 0; k < data.length; k += 97) data[k] = randInt(256);
        log.push(`write ${offset} ${length}`);
        await writeGuest(img, offset, data);
        model.write(offset, data);
      } else if (kind < 0.85 || !s.discards) {
        const unmap = rand() < 0.3;
        log.push(`zero${unmap ? ' -u' : ''} ${offset} ${length}`);
        await writeZeroes(img, offset, length, { unmap });
        model.fill(offset, length);
      } else {
        log.push(`discard ${offset} ${length}`);
        await discard(img, offset, length);
        const first = Math.ceil(offset / cs) * cs;
        const last = Math.floor((offset + length) / cs) * cs;
        if (last > first) {
          if (v3 || !backingRaw) model.fill(first, last - first);
          else model.copyFrom(backingRaw, first, last - first);
        }
      }
    }
    // Our own reads agree with the model too.
    const probe = await img.read(0, Math.min(size, 1 << 20));
    expect(probe.length).toBe(Math.min(size, 1 << 20));
  } finally {
    await img.close();
  }
  const check = qemuCheck(file);
  expect({ exit: check.exitCode, stderr: check.stderr, json: check.json, log }).toMatchObject({ exit: 0 });
  const out = tmp.file('out.raw');
  qemuConvertToRaw(file, out);
  const at = model.diff(out);
  expect({ firstDifference: at, log }).toMatchObject({ firstDifference: -1 });
  for (const sn of snapshots) {
    const now = tmp.file(`snap-${sn.id}-after.raw`);
    qemuConvertToRaw(file, now, { id: sn.id });
    expect(Buffer.compare(fs.readFileSync(now), fs.readFileSync(sn.raw))).toBe(0);
  }
}

function make(size: string, opts: CreateOptions = {}, setup: (file: string) => void = () => {}) {
  return (file: string): void => {
    createImage(file, size, opts);
    setup(file);
  };
}

/** Some data written by QEMU first, so our writes meet allocated clusters and L2 tables. */
function seedData(cs: number) {
  return (file: string): void => {
    qemuIoOk(file, `write -P 0x5a 0 ${3 * cs}`, `write -P 0x6b ${7 * cs + 100} ${2 * cs}`, `write -z ${12 * cs} ${2 * cs}`);
  };
}

describe('random guest writes, judged by qemu-img check and convert', () => {
  for (const clusterSize of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`cluster_size=${clusterSize}`, async () => {
      const size = clusterSize === 2 * 1024 * 1024 ? '64M' : clusterSize === 512 ? '4M' : '48M';
      await runScenario({
        make: make(size, { clusterSize }, seedData(clusterSize)), ops: 40, seed: clusterSize, discards: true, reopenEvery: 15,
        hotSpots: [clusterSize * (clusterSize / 8), 0], maxLength: clusterSize === 2 * 1024 * 1024 ? 5 * 1024 * 1024 : undefined,
      });
    });
  }

  for (const refcountBits of [1, 2, 4, 8, 16, 32, 64] as const) {
    it(`refcount_bits=${refcountBits} (1 KiB clusters)`, async () => {
      await runScenario({ make: make('2M', { refcountBits, clusterSize: 1024 }, seedData(1024)), ops: 40, seed: 100 + refcountBits, discards: true });
    });
  }

  it('v2 (compat=0.10): zero writes write real zeros', async () => {
    await runScenario({ make: make('8M', { compat: '0.10', clusterSize: 4096 }, (f) => qemuIoOk(f, 'write -P 0x33 0 64k')), ops: 50, seed: 7, discards: true });
  });

  for (const clusterSize of [16384, 65536]) {
    it(`extended L2 subclusters (cluster_size=${clusterSize})`, async () => {
      await runScenario({
        make: make('16M', { extendedL2: true, clusterSize }, (f) => qemuIoOk(f, `write -P 0x44 0 ${clusterSize / 32 * 3}`, `write -P 0x45 ${clusterSize * 2 + 1024} 5000`, `write -z ${clusterSize * 4} ${clusterSize / 16}`)),
        ops: 50, seed: clusterSize + 3, discards: true, maxLength: clusterSize * 2,
      });
    });
  }

  it('extended L2 over a backing file: partial subcluster writes copy the backing data', async () => {
    await runScenario({
      make: (file, dir) => {
        const b = `${dir}/base.qcow2`;
        createImage(b, '4M', { clusterSize: 65536 });
        qemuIoOk(b, 'write -P 0x21 0 4M');
        createImage(file, undefined, { backing: b, extendedL2: true, clusterSize: 65536 });
      },
      ops: 40, seed: 11, discards: true, maxLength: 70000,
    });
  });

  it('compressed clusters (qemu-img convert -c) are copied on write', async () => {
    await runScenario({
      make: (file, dir) => {
        const src = `${dir}/src.qcow2`;
        createImage(src, '8M', { clusterSize: 65536 });
        qemuIoOk(src, 'write -P 0x71 0 3M', 'write -P 0x72 5M 1M');
        qemuImgOk(['convert', '-c', '-O', 'qcow2', src, file]);
      },
      ops: 40, seed: 12, discards: true,
    });
  });

  it('zstd-compressed clusters with extended L2', async () => {
    await runScenario({
      make: (file, dir) => {
        const src = `${dir}/src.qcow2`;
        createImage(src, '4M', { clusterSize: 65536 });
        qemuIoOk(src, 'write -P 0x73 0 2M');
        qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd,extended_l2=on', src, file]);
      },
      ops: 30, seed: 13, discards: true,
    });
  });

  for (const compat of ['1.1', '0.10'] as const) {
    it(`backing overlay (compat=${compat})`, async () => {
      await runScenario({
        make: (file, dir) => {
          const b = `${dir}/base.qcow2`;
          createImage(b, '8M', { clusterSize: 4096 });
          qemuIoOk(b, 'write -P 0x61 0 8M');
          createImage(file, undefined, { backing: b, compat, clusterSize: 4096 });
          qemuIoOk(file, 'write -P 0x62 8k 8k');
        },
        ops: 50, seed: compat === '1.1' ? 14 : 15, discards: true,
      });
    });
  }

  it('raw backing file, overlay larger than the backing file', async () => {
    await runScenario({
      make: (file, dir) => {
        const b = `${dir}/backing-file.raw`;
        fs.writeFileSync(b, new Uint8Array(3 * 1024 * 1024 + 1000).fill(0x17));
        createImage(file, '8M', { backing: b, backingFormat: 'raw', clusterSize: 65536 });
      },
      ops: 30, seed: 16, discards: true, hotSpots: [3 * 1024 * 1024 + 1000],
    });
  });

  for (const refcountBits of [2, 16] as const) {
    it(`images with internal snapshots: shared clusters and L2 tables are copied (refcount_bits=${refcountBits})`, async () => {
      await runScenario({
        make: make('8M', { clusterSize: 4096, refcountBits }, (f) => {
          // write -z over allocated clusters keeps them (zero-allocated), so the snapshot shares those too
          qemuIoOk(f, 'write -P 0x31 0 1M', 'write -z 2M 64k', 'write -P 0x32 3M 12k', 'write -z 256k 16k');
          expect(qemuSnapshotCreate(f, 'one').status).toBe(0);
          qemuIoOk(f, 'write -P 0x33 512k 1M');
          if (refcountBits > 2) expect(qemuSnapshotCreate(f, 'two').status).toBe(0);
        }),
        ops: 50, seed: 20 + refcountBits, discards: true, hotSpots: [0, 512 * 1024, 2 * 1024 * 1024],
      });
    });
  }

  it('preallocated and zero-allocated clusters', async () => {
    await runScenario({
      make: make('4M', { clusterSize: 4096, preallocation: 'metadata' }, (f) => qemuIoOk(f, 'write -P 0x41 0 256k', 'write -z 64k 64k')),
      ops: 40, seed: 30, discards: true,
    });
  });

  it('across L2 boundaries with 64 KiB clusters (512 MiB spans)', async () => {
    const boundary = 512 * 1024 * 1024;
    await runScenario({
      make: make('1G', { clusterSize: 65536 }, (f) => qemuIoOk(f, `write -P 0x51 ${boundary - 65536} 128k`)),
      ops: 20, seed: 31, discards: true, hotSpots: [boundary], maxLength: 300000,
    });
  });

  it('grows the refcount table (512-byte clusters, 64-bit refcounts)', async () => {
    // 512 B clusters with 64-bit refcounts: one reftable cluster covers 4096 clusters (2 MiB).
    await runScenario({
      make: make('6M', { clusterSize: 512, refcountBits: 64 }, (f) => qemuIoOk(f, 'write -P 0x19 0 1900k')),
      ops: 30, seed: 32, maxLength: 400000, hotSpots: [2 * 1024 * 1024, 4 * 1024 * 1024],
    });
    const img = await openImage(tmp.file('img.qcow2'));
    try {
      expect(img.header.refcountTableClusters).toBeGreaterThan(1);
    } finally {
      await img.close();
    }
  });
});

// Random image setups: two in every run, QCOWSCOPE_WRITE_SEEDS=N for a wider campaign.
const EXTRA_SEEDS = Number(process.env.QCOWSCOPE_WRITE_SEEDS ?? 2);
describe('random image setups (QCOWSCOPE_WRITE_SEEDS)', () => {
  for (let seed = 1; seed <= EXTRA_SEEDS; seed++) {
    it(`setup ${seed}`, async () => {
      const rand = seededRandom(seed * 7919);
      const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const v2 = rand() < 0.25;
      const extendedL2 = !v2 && rand() < 0.3;
      const clusterSize = extendedL2 ? pick([16384, 32768, 65536, 2097152]) : pick([512, 1024, 4096, 65536, 2097152]);
      const refcountBits = v2 ? 16 : pick([1, 2, 4, 8, 16, 32, 64] as const);
      const withBacking = rand() < 0.3;
      const compressed = !withBacking && rand() < 0.25;
      const snapshot = !compressed && refcountBits > 1 && rand() < 0.4;
      const size = clusterSize >= 65536 ? 32 * 1024 * 1024 : 4 * 1024 * 1024;
      const opts: CreateOptions = { clusterSize, refcountBits, compat: v2 ? '0.10' : '1.1', extendedL2, lazyRefcounts: !v2 && rand() < 0.3 };
      await runScenario({
        make: (file, dir) => {
          if (compressed) {
            const src = `${dir}/src.qcow2`;
            createImage(src, size, { clusterSize: Math.max(clusterSize, 4096) > 65536 ? 65536 : Math.max(clusterSize, 4096) });
            qemuIoOk(src, `write -P 0x71 0 ${size / 2}`);
            qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${clusterSize},refcount_bits=${refcountBits},compat=${opts.compat}${extendedL2 ? ',extended_l2=on' : ''}`, src, file]);
            return;
          }
          if (withBacking) {
            const b = `${dir}/backing.qcow2`;
            createImage(b, size, { clusterSize: 65536 });
            qemuIoOk(b, `write -P 0x61 0 ${size}`);
            createImage(file, undefined, { ...opts, backing: b });
          } else {
            createImage(file, size, opts);
          }
          qemuIoOk(file, `write -P 0x5a 0 ${3 * clusterSize}`, `write -z ${5 * clusterSize} ${2 * clusterSize}`);
          if (snapshot) {
            expect(qemuSnapshotCreate(file, 'a').status).toBe(0);
            qemuIoOk(file, `write -P 0x5b ${clusterSize} ${clusterSize}`);
          }
        },
        ops: 40, seed, discards: true, reopenEvery: 13, maxLength: Math.max(3 * clusterSize, 300000),
        hotSpots: [0, clusterSize * (clusterSize / (extendedL2 ? 16 : 8))],
      });
    });
  }
});

describe('same bytes as QEMU', () => {
  it('a sequence of data and zero writes gives the file qemu-io gives (default options)', async () => {
    const q = tmp.file('q.qcow2');
    const o = tmp.file('o.qcow2');
    createImage(q, '16M');
    fs.copyFileSync(q, o);
    const ops: Array<['w' | 'z' | 'zu', number, number]> = [
      ['w', 0, 4096], ['w', 100000, 300000], ['z', 65536, 65536], ['w', 5000, 70000], ['z', 0, 200000],
      ['w', 600000, 1], ['zu', 1048576, 131072], ['w', 1048576, 65536], ['zu', 1048576, 131072],
      ['z', 3000000, 5000], ['z', 4194304, 4096], ['w', 4196000, 100], ['z', 4194304, 8192], ['zu', 4000000, 1000000],
    ];
    for (const [kind, off, len] of ops) {
      qemuIoOk(q, kind === 'w' ? `write -P 0x22 ${off} ${len}` : `write -z${kind === 'zu' ? ' -u' : ''} ${off} ${len}`);
      const img = await openImage(o, { writable: true });
      try {
        if (kind === 'w') await writeGuest(img, off, new Uint8Array(len).fill(0x22));
        else await writeZeroes(img, off, len, { unmap: kind === 'zu' });
      } finally {
        await img.close();
      }
    }
    expect(Buffer.compare(fs.readFileSync(o), fs.readFileSync(q))).toBe(0);
  });
});
