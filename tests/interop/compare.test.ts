// `qcowscope compare` against `qemu-img compare` on pairs of images qemu-img and qemu-io made:
// the same data in different layouts (cluster sizes 512 B-2 MiB, extended L2, compressed zlib and
// zstd, v2, metadata preallocation, a backing chain against its flattened copy), a difference in
// the middle, different sizes, zero clusters against unallocated ones. Each pair is compared both
// ways, with and without -s: the same stdout, stderr (prefix aside) and exit code.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { qemuImgOk } from '../helpers/qemu.ts';
import { useCliWorkDir } from './cli-oracle.ts';

const w = useCliWorkDir('qcowscope-compare-');
const { create, io } = w;
const expectSame = (args: string[]): Promise<number | null> => w.expectSame(['compare', ...args]);

/** Both orders, lenient and strict; returns qemu-img's exit codes for the lenient and strict runs. */
async function expectSamePair(a: string, b: string): Promise<[number | null, number | null]> {
  const lenient = await expectSame([a, b]);
  await expectSame([b, a]);
  const strict = await expectSame(['-s', a, b]);
  await expectSame(['-s', b, a]);
  return [lenient, strict];
}

function convert(from: string, to: string, ...opts: string[]): string {
  qemuImgOk(['convert', '-O', 'qcow2', ...opts, path.join(w.dir, from), path.join(w.dir, to)]);
  return to;
}

function copy(from: string, to: string): string {
  fs.copyFileSync(path.join(w.dir, from), path.join(w.dir, to));
  return to;
}

/** The reference image the layouts are made from: data, a partial cluster, zeros. */
function reference(): string {
  const f = create('ref.qcow2', '40M');
  io(f, 'write -P 1 0 1M', 'write -P 2 5M 3k', 'write -z 6M 1M', 'write -P 3 20M 2M', 'write -P 4 39M 1M');
  return f;
}

describe('compare: the same data in different layouts', () => {
  const layouts: Array<[string, string[]]> = [
    ['4 KiB clusters', ['-o', 'cluster_size=4k']],
    ['512-byte clusters (many L2 tables)', ['-o', 'cluster_size=512']],
    ['2 MiB clusters', ['-o', 'cluster_size=2M']],
    ['extended L2', ['-o', 'extended_l2=on,cluster_size=128k']],
    ['compressed (zlib)', ['-c']],
    ['compressed (zstd)', ['-c', '-o', 'compression_type=zstd']],
    ['compat=0.10', ['-o', 'compat=0.10']],
    ['preallocation=metadata', ['-o', 'preallocation=metadata']],
  ];
  for (const [name, opts] of layouts) {
    it(name, async () => {
      const ref = reference();
      const other = convert(ref, 'other.qcow2', ...opts);
      const [lenient] = await expectSamePair(ref, other);
      expect(lenient).toBe(0);
    });
  }

  it('a sparse copy (metadata-preallocation detection) against its original', async () => {
    const ref = reference();
    const c = copy(ref, 'copy.qcow2');
    io(c, 'write -P 9 5000123 1');
    const [lenient, strict] = await expectSamePair(ref, c);
    expect([lenient, strict]).toEqual([1, 1]);
  });
});

describe('compare: differences', () => {
  it('one byte in the middle, in a fresh cluster and in an allocated one', async () => {
    const ref = reference();
    const fresh = copy(ref, 'fresh.qcow2');
    io(fresh, 'write -P 9 15000123 1');
    expect((await expectSamePair(ref, fresh))[0]).toBe(1);
    const inside = convert(ref, 'inside.qcow2', '-o', 'cluster_size=4k');
    io(inside, 'write -P 1 20971777 700');
    expect((await expectSamePair(ref, inside))[0]).toBe(1);
  });

  it('a difference inside a compressed image', async () => {
    const ref = reference();
    const z = convert(ref, 'z.qcow2', '-c');
    io(ref, 'write -P 7 1000000 10');
    expect((await expectSamePair(ref, z))[0]).toBe(1);
  });

  it('different sizes: a zero tail is identical, data in the tail is not', async () => {
    const ref = reference();
    const longer = create('longer.qcow2', '64M');
    io(longer, 'write -P 1 0 1M', 'write -P 2 5M 3k', 'write -P 3 20M 2M', 'write -P 4 39M 1M', 'write -z 50M 1M');
    expect(await expectSamePair(ref, longer)).toEqual([0, 1]);
    io(longer, 'write -P 5 60M 4k');
    expect((await expectSamePair(ref, longer))[0]).toBe(1);
    const shorter = create('shorter.qcow2', '10M', 'cluster_size=512');
    io(shorter, 'write -P 1 0 1M', 'write -P 2 5M 3k');
    expect((await expectSamePair(ref, shorter))[0]).toBe(1);
  });

  it('zero clusters against unallocated clusters', async () => {
    const a = create('unalloc.qcow2', '16M');
    io(a, 'write -P 1 0 64k');
    const b = copy(a, 'zeros.qcow2');
    io(b, 'write -z 1M 2M', 'write -z -u 4M 64k');
    expect(await expectSamePair(a, b)).toEqual([0, 1]);
    const c = create('zeros-ext.qcow2', '16M', 'extended_l2=on');
    io(c, 'write -P 1 0 64k', 'write -z 1M 8k');
    await expectSamePair(a, c);
    await expectSamePair(b, c);
  });
});

describe('compare: backing chains', () => {
  it('a chain of 3 against its flattened copy, and against a copy with one change', async () => {
    const top = w.chainOf3('32M');
    const mid = 'mid.qcow2';
    const flat = convert(top, 'flat.qcow2');
    expect((await expectSamePair(top, flat))[0]).toBe(0);
    expect((await expectSamePair(mid, flat))[0]).toBe(1);
    const overlay = create('overlay.qcow2', '32M', '', 'flat.qcow2');
    await expectSamePair(top, overlay);
    io(overlay, 'write -P 8 8388608 512');
    expect((await expectSamePair(top, overlay))[0]).toBe(1);
  });

  it('an overlay longer than its backing file, and a raw backing file with holes', async () => {
    const base = create('short-base.qcow2', '8M');
    io(base, 'write -P 1 7M 1M');
    const over = create('long-over.qcow2', '24M', '', 'short-base.qcow2');
    io(over, 'write -P 2 16M 64k');
    await expectSamePair(over, convert(over, 'long-flat.qcow2'));
    w.overRawWithHoles('over-raw.qcow2');
    expect((await expectSamePair('over-raw.qcow2', convert('over-raw.qcow2', 'raw-flat.qcow2')))[0]).toBe(0);
  });
});

describe('compare: options and refusals', () => {
  it('-q prints nothing; a missing image exits 2; one name is a usage error', async () => {
    const ref = reference();
    const other = copy(ref, 'q.qcow2');
    io(other, 'write -P 9 0 1');
    expect(await expectSame(['-q', ref, other])).toBe(1);
    expect(await expectSame(['-q', ref, ref])).toBe(0);
    expect(await expectSame([ref, 'missing.qcow2'])).toBe(2);
    expect(await expectSame(['missing.qcow2', ref])).toBe(2);
    expect(await expectSame([ref])).toBe(1);
    expect(await expectSame(['-f', 'qcow2', '-F', 'qcow2', ref, other])).toBe(1);
  });
});

describe('compare -p, -f/-F raw', () => {
  it('-p prints qemu-img\'s progress lines (the same chunks), none with -q or when an image is missing', async () => {
    const ref = reference();
    const longer = create('p-longer.qcow2', '64M', 'cluster_size=4k');
    io(longer, 'write -P 1 0 1M', 'write -P 2 5M 3k', 'write -P 3 20M 2M', 'write -P 4 39M 1M', 'write -z 50M 1M');
    const top = w.chainOf3('32M');
    for (const [a, b] of [[ref, longer], [longer, ref], [ref, ref], [top, convert(top, 'p-flat.qcow2', '-o', 'cluster_size=512')]] as const) {
      expect(await expectSame(['-p', a, b])).toBe(0);
      await expectSame(['-p', '-s', a, b]);
    }
    io(longer, 'write -P 5 60M 4k');
    expect(await expectSame(['-p', ref, longer])).toBe(1);
    expect(await expectSame(['-p', '-q', ref, longer])).toBe(1);
    expect(await expectSame(['-p', ref, 'missing.qcow2'])).toBe(2);
  });

  it('a raw file on either side, named by -f / -F or probed', async () => {
    const ref = reference();
    qemuImgOk(['convert', '-O', 'raw', path.join(w.dir, ref), path.join(w.dir, 'ref.raw')]);
    expect(await expectSame(['-f', 'qcow2', '-F', 'raw', ref, 'ref.raw'])).toBe(0);
    expect(await expectSame(['-f', 'raw', '-F', 'qcow2', 'ref.raw', ref])).toBe(0);
    expect(await expectSame(['ref.raw', ref])).toBe(0);
    expect(await expectSame(['-p', ref, 'ref.raw'])).toBe(0);
    // a qcow2 file read as raw: its bytes, not its guest disk
    expect(await expectSame(['-f', 'raw', ref, ref])).toBe(1);
    // -F names the second image only
    expect(await expectSame(['-F', 'raw', ref, 'ref.raw'])).toBe(0);
  });

  it('raw files of lengths not a multiple of 512: QEMU sees whole sectors, the tail reads as zeros', async () => {
    const p = (n: string) => path.join(w.dir, n);
    for (const [name, size] of [['odd1.raw', 10_000_001], ['odd2.raw', 10_000_300], ['odd3.raw', 10_000_385]] as const) {
      fs.writeFileSync(p(name), '');
      fs.truncateSync(p(name), size);
    }
    fs.writeSync(fs.openSync(p('odd1.raw'), 'r+'), 'x', 10_000_000);
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'odd1.raw', '-F', 'raw', p('over-odd.qcow2')]);
    for (const pair of [['odd1.raw', 'odd2.raw'], ['odd2.raw', 'odd3.raw'], ['over-odd.qcow2', 'odd1.raw']]) {
      await expectSame(pair);
      await expectSame(['-s', ...pair]);
    }
  });
});
