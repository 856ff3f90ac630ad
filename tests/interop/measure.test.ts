// `qcowscope measure` against `qemu-img measure` on images qemu-img and qemu-io made (cluster
// sizes 512 B-2 MiB, compressed zlib and zstd, extended L2, snapshots with -l, backing chains,
// bitmaps added by `qemu-img bitmap`, metadata preallocation, v2) and on --size alone: the same
// stdout byte for byte (human and JSON), the same stderr (prefix aside) and the same exit code.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'vitest';
import { qemuImgOk } from '../helpers/qemu.ts';
import { useCliWorkDir } from './cli-oracle.ts';

const w = useCliWorkDir('qcowscope-measure-');
const { create, io } = w;
const expectSame = async (args: string[]): Promise<void> => {
  await w.expectSame(['measure', ...args]);
};

/** The targets every image is measured for. */
const TARGETS: string[][] = [
  ['-O', 'qcow2'],
  ['--output=json', '-O', 'qcow2'],
  ['-O', 'qcow2', '-o', 'cluster_size=512'],
  ['--output=json', '-O', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=1,extended_l2=on'],
  ['-O', 'qcow2', '-o', 'compat=0.10,cluster_size=4k'],
  ['-O', 'qcow2', '-o', 'refcount_bits=64', '-o', 'preallocation=falloc'],
  ['-O', 'qcow2', '-o', 'backing_file=other.qcow2'],
  [],
  ['--output=json', '-O', 'raw'],
];

// A catalogue: its entries share one shape on purpose (each is a different image recipe and its
// expected result), so the duplicate-code scan's same-shape pairs inside it are deliberate.
const IMAGES: Array<[string, () => string]> = [
  ['64 KiB clusters: data, zeros, a partial cluster', () => {
    const f = create('plain.qcow2', '64M');
    io(f, 'write -P 1 0 100k', 'write -P 2 5M 1M', 'write -z 10M 64k', 'write -P 3 20M 3k', 'write -P 4 63M 1M');
    return f;
  }],
  ['512-byte clusters', () => {
    const f = create('c512.qcow2', '8M', 'cluster_size=512');
    io(f, 'write -P 1 0 1500', 'write -P 2 1M 64k', 'write -z 2M 4k', 'write -P 3 7M 700');
    return f;
  }],
  ['2 MiB clusters, odd virtual size', () => {
    const f = create('c2m.qcow2', '100000512', 'cluster_size=2M');
    io(f, 'write -P 1 3M 4k', 'write -P 2 50M 5M', 'write -P 3 99999744 512');
    return f;
  }],
  ['compressed (zlib)', () => {
    const src = create('src-z.qcow2', '32M');
    io(src, 'write -P 7 0 2M', 'write -P 8 9M 300k');
    qemuImgOk(['convert', '-c', '-O', 'qcow2', path.join(w.dir, src), path.join(w.dir, 'zlib.qcow2')]);
    return 'zlib.qcow2';
  }],
  ['compressed (zstd), 4 KiB clusters', () => {
    const src = create('src-zs.qcow2', '16M');
    io(src, 'write -P 9 100k 3M', 'write -P 10 12M 64k');
    qemuImgOk(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=4k', path.join(w.dir, src), path.join(w.dir, 'zstd.qcow2')]);
    return 'zstd.qcow2';
  }],
  ['extended L2, subcluster writes', () => {
    const f = create('extl2.qcow2', '64M', 'extended_l2=on,cluster_size=128k');
    io(f, 'write -P 1 4k 4k', 'write -P 2 1M 12k', 'write -z 2M 8k', 'write -P 3 40M 200k');
    return f;
  }],
  ['metadata preallocation (holes in the file)', () => {
    const f = create('prealloc.qcow2', '32M', 'preallocation=metadata');
    io(f, 'write -P 5 1M 100k', 'write -P 6 30M 64k');
    return f;
  }],
  ['compat=0.10 (v2)', () => {
    const f = create('v2.qcow2', '16M', 'compat=0.10');
    io(f, 'write -P 1 0 1M', 'write -z 2M 1M');
    return f;
  }],
  ['backing chain of 3, a shorter base', () => w.chainOf3('48M')],
  ['raw backing file with holes', () => w.overRawWithHoles('over-raw.qcow2')],
  ['persistent bitmaps (qemu-img bitmap --add)', () => {
    const f = create('bitmaps.qcow2', '100M');
    io(f, 'write -P 1 0 1M');
    qemuImgOk(['bitmap', '--add', path.join(w.dir, f), 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '512', path.join(w.dir, f), 'fine-grained']);
    qemuImgOk(['bitmap', '--add', '-g', '2M', '--disable', path.join(w.dir, f), 'a-much-longer-bitmap-name-to-take-more-directory-space']);
    return f;
  }],
];

describe('measure an image: same output as qemu-img', () => {
  for (const [name, make] of IMAGES) {
    it(name, async () => {
      const image = make();
      for (const t of TARGETS) await expectSame([...t, image]);
    });
  }

  it('internal snapshots with -l (by name, by ID, by either, not found)', async () => {
    const f = create('snaps.qcow2', '32M');
    io(f, 'write -P 1 0 4M');
    qemuImgOk(['snapshot', '-c', 'one', path.join(w.dir, f)]);
    io(f, 'write -P 2 8M 4M', 'write -z 0 2M');
    qemuImgOk(['snapshot', '-c', 'two', path.join(w.dir, f)]);
    io(f, 'write -P 3 20M 1M');
    qemuImgOk(['resize', '-q', path.join(w.dir, f), '48M']);
    for (const l of ['snapshot.name=one', 'snapshot.id=2', 'snapshot.id=1,snapshot.name=one', 'two', '1', 'snapshot.id=1,snapshot.name=two', 'nope', 'snapshot.bad=1']) {
      await expectSame(['-O', 'qcow2', '-l', l, f]);
      await expectSame(['--output=json', '-O', 'qcow2', '-o', 'cluster_size=1k', '-l', l, f]);
    }
    await expectSame(['-O', 'qcow2', f]);
  });
});

describe('measure a raw file (qemu-img probes a file that is not qcow2 as raw): same output as qemu-img', () => {
  it('sparse, dense, odd-sized and empty raw files, probed and with -f raw, into qcow2 and raw', async () => {
    const p = (n: string) => path.join(w.dir, n);
    // sparse: data at 1 MiB and 40 MiB of a 64 MiB file; odd: one byte of data in a file of 10,000,001 bytes
    fs.writeFileSync(p('sparse.raw'), '');
    fs.truncateSync(p('sparse.raw'), 64 << 20);
    const fd = fs.openSync(p('sparse.raw'), 'r+');
    fs.writeSync(fd, Buffer.alloc(1 << 20, 3), 0, 1 << 20, 1 << 20);
    fs.writeSync(fd, Buffer.alloc(4096, 4), 0, 4096, 40 << 20);
    fs.closeSync(fd);
    fs.writeFileSync(p('odd.raw'), '');
    fs.truncateSync(p('odd.raw'), 10_000_001);
    fs.writeSync(fs.openSync(p('odd.raw'), 'r+'), 'x', 5_000_000);
    fs.writeFileSync(p('dense.raw'), Buffer.alloc(3 << 20, 7));
    fs.writeFileSync(p('empty.raw'), '');
    for (const f of ['sparse.raw', 'odd.raw', 'dense.raw', 'empty.raw']) {
      for (const t of TARGETS) await expectSame([...t, f]);
      await expectSame(['-f', 'raw', '-O', 'qcow2', f]);
      await expectSame(['-O', 'qcow2', '-l', 'snap', f]);
    }
    await expectSame(['-f', 'raw', '-O', 'qcow2', create('q.qcow2', '8M')]);
  });
});

describe('measure --size: same output as qemu-img', () => {
  const cases: string[][] = [
    ['--size', '1G'],
    ['--size', '1000'],
    ['--size', '0'],
    ['--size', '1P'],
    ['--size', '1.5G', '-o', 'cluster_size=512'],
    ['--size', '100T', '-o', 'cluster_size=2M,refcount_bits=64'],
    ['--size', '3G', '-o', 'size=1G', '-o', 'cluster_size=1k'],
    ['--size', '1G', '-o', 'extended_l2=on'],
    ['--size', '1G', '-o', 'extended_l2=on,compat=0.10'],
    ['--size', '1G', '-o', 'refcount_bits=1,cluster_size=4k'],
    ['--size', '1G', '-o', 'preallocation=full'],
    ['--size', '1G', '-o', 'preallocation=metadata,lazy_refcounts=on,compression_type=zstd'],
    ['--size', '1G', '-o', 'backing_file=x.qcow2,backing_fmt=qcow2'],
    ['--size', '1M', '-o', 'size=5M'],
  ];
  for (const c of cases) {
    it(c.join(' '), async () => {
      await expectSame(['-O', 'qcow2', ...c]);
      await expectSame(['--output=json', '-O', 'qcow2', ...c]);
    });
  }
  it('raw target (the default)', async () => {
    await expectSame(['--size', '1000']);
    await expectSame(['--output=json', '--size', '1G']);
  });
});

describe('measure refusals: same messages and exit codes as qemu-img', () => {
  const cases: string[][] = [
    ['-O', 'qcow2'],
    ['-O', 'qcow2', '--size', '1G', 'nonexistent.qcow2'],
    ['-O', 'qcow2', 'nonexistent.qcow2'],
    ['-O', 'qcow2', 'a.qcow2', 'b.qcow2'],
    ['-O', 'qcow2', '-l', 'x', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'size=5M'],
    ['-O', 'vmdk', '--size', '1G'],
    ['-O', 'nosuchformat', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'foo=1', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'cluster_size=1000', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'cluster_size=abc', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'refcount_bits=abc', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'refcount_bits=3', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=8', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'compat=v3', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'extended_l2=maybe', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=4k', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'preallocation=bogus', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '1P'],
    ['-O', 'qcow2', '-o', ',cluster_size=4k', '--size', '1G'],
    ['-O', 'raw', '-o', 'cluster_size=4k', '--size', '1G'],
    ['--output=foo', '--size', '1G'],
    ['-O', 'qcow2', '--size', '8E'],
  ];
  for (const c of cases) it(c.join(' '), () => expectSame(c));
});
