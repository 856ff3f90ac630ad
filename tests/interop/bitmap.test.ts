// `qcowscope bitmap` against `qemu-img bitmap`: the same sequence of operations on two copies of a
// qemu-made image (cluster sizes 512 B-2 MiB, extended L2, with snapshots, with bitmaps qemu-img
// added), each step with the same exit code and stderr; after each step our copy is clean for
// `qemu-img check`, lists the same bitmaps in `qemu-img info` (names, granularity, flags, order)
// and holds the same guest data (`qemu-img compare`); and, as qemu-img leaves it, the same file
// (length, `qemu-img map`, `qemu-img info` but for actual-size, bytes). So too `check -r` on an
// image with bitmaps, which qemu-img stores again when it closes the image.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { poke, qemuCheck, qemuImg, qemuImgOk, qemuInfo, qemuIoOk } from '../helpers/qemu.ts';
import { dataClusterOffset, getRefcount, setRefcount } from '../helpers/qcow2-mini.ts';
import { bitsOf, useCliWorkDir } from './cli-oracle.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const w = useCliWorkDir('qcowscope-bitmap-');

function bitmapsOf(file: string): unknown {
  return (qemuInfo(file) as unknown as { 'format-specific'?: { data?: { bitmaps?: unknown } } })['format-specific']?.data?.bitmaps ?? [];
}

/** Each step (bitmap arguments before IMAGE NAME, and the name) on both copies; both judged after each. */
async function runSteps(make: (file: string) => void, steps: Array<[string[], string]>): Promise<void> {
  const q = path.join(w.dir, 'q.qcow2');
  const o = path.join(w.dir, 'o.qcow2');
  make(q);
  fs.copyFileSync(q, o);
  for (const [args, name] of steps) await runStep(args, name);
}

const SEQUENCE: Array<[string[], string]> = [
  [['--add'], 'b0'],
  [['--add', '-g', '512'], 'fine'],
  [['--add', '--disable', '-g', '1M'], 'off'],
  [['--clear'], 'b0'],
  [['--disable'], 'b0'],
  [['--enable'], 'off'],
  [['--remove'], 'fine'],
  [['--add'], 'b0'],
  [['--remove'], 'nope'],
  [['--clear', '--disable'], 'off'],
  [['--remove'], 'b0'],
  [['--remove'], 'off'],
  [['--add', '-g', '64k'], 'again'],
];

function image(opts: string, size: string, ...io: string[]): (file: string) => void {
  return (file) => {
    qemuImgOk(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, size]);
    if (io.length) qemuIoOk(file, ...io);
  };
}

describe('bitmap: the same operations as qemu-img, judged by qemu-img', () => {
  const images: Array<[string, (file: string) => void]> = [
    ['64 KiB clusters with data', image('', '64M', 'write -P 1 0 1M', 'write -P 2 40M 64k')],
    ['512-byte clusters', image('cluster_size=512', '16M', 'write -P 1 0 100k')],
    ['2 MiB clusters, a large disk', image('cluster_size=2M', '100G', 'write -P 1 1G 4M')],
    ['extended L2', image('extended_l2=on', '64M', 'write -P 1 4k 4k')],
    ['with internal snapshots', (f) => {
      image('', '64M', 'write -P 1 0 1M')(f);
      qemuImgOk(['snapshot', '-c', 's1', f]);
      qemuIoOk(f, 'write -P 2 0 64k');
    }],
    ['with bitmaps qemu-img added', (f) => {
      image('', '64M', 'write -P 1 0 1M')(f);
      qemuImgOk(['bitmap', '--add', f, 'b0']);
      qemuImgOk(['bitmap', '--add', '-g', '4k', '--disable', f, 'older']);
    }],
  ];
  for (const [name, make] of images) {
    it(name, async () => {
      const seq = name === 'with bitmaps qemu-img added' ? [[['--remove'], 'older'] as [string[], string], ...SEQUENCE.slice(1)] : SEQUENCE;
      await runSteps(make, seq);
    });
  }

  it('the first --add: the same file as qemu-img\'s, byte for byte (table and directory written at their own length)', async () => {
    for (const [name, make] of images.slice(0, 4)) {
      const [q, o] = [path.join(w.dir, 'q.qcow2'), path.join(w.dir, 'o.qcow2')];
      make(q);
      fs.copyFileSync(q, o);
      await w.expectSame(['bitmap', '--add', '-g', '128k', 'q.qcow2', 'first'], ['q.qcow2', 'o.qcow2']);
      expect(fs.statSync(o).size, `${name}: file length`).toBe(fs.statSync(q).size);
      expect(fs.readFileSync(o).equals(fs.readFileSync(q)), `${name}: bytes`).toBe(true);
    }
  });

  it('refusals: v2 image, bad granularity, empty name, no action, -g without --add, missing name', async () => {
    await runSteps(image('', '16M'), [
      [['--add', '-g', '100'], 'g'],
      [['--add', '-g', 'x'], 'g'],
      [['--add'], ''],
      [[], 'b'],
      [['--remove', '-g', '64k'], 'b'],
      [['--enable'], 'nope'],
      [['--clear'], 'nope'],
    ]);
    const v2 = path.join(w.dir, 'v2.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '16M']);
    const rq = qemuImg(['bitmap', '--add', v2, 'b']);
    const ro = await w.run(['bitmap', '--add', v2, 'b']);
    expect(rq.status).toBe(1);
    expect(ro.status).toBe(1);
    // QEMU names the image's node with two random digits (#block1NN): compared without them
    const node = (t: string): string => t.replace(/qemu-img/g, 'qcowscope').replace(/'#block1\d\d'/g, "'#block1NN'");
    expect(node(ro.stderr)).toBe(node(rq.stderr));
    expect(ro.stderr).toMatch(/^qcowscope: Operation add on bitmap b failed: Can't make bitmap 'b' persistent in '#block1\d\d': Cannot store dirty bitmaps in qcow2 v2 files\n$/);
    expect(bitmapsOf(v2)).toEqual([]);
  });

  it('refusals of a bitmap the image cannot store, in qemu-img\'s words, the file untouched: too large for its granularity, name too long', async () => {
    const node = (t: string): string => t.replace(/qemu-img/g, 'qcowscope').replace(/'#block1\d\d'/g, "'#block1NN'");
    const cases: Array<[size: string, args: string[]]> = [
      ['4T', ['-g', '512', 'big']], // 1 GiB of bits: over BME_MAX_PHYS_SIZE
      ['64T', ['-g', '4096', 'big']],
      ['16M', ['x'.repeat(1024)]], // over BME_MAX_NAME_SIZE
    ];
    for (const [size, args] of cases) {
      const f = path.join(w.dir, 'refuse.qcow2');
      fs.rmSync(f, { force: true });
      qemuImgOk(['create', '-q', '-f', 'qcow2', f, size]);
      const before = fs.readFileSync(f);
      const rq = qemuImg(['bitmap', '--add', f, ...args.slice(0, -1), args.at(-1)!]);
      expect(fs.readFileSync(f).equals(before), `qemu-img left ${size} ${args[0]} as it was`).toBe(true);
      const ro = await w.run(['bitmap', '--add', f, ...args.slice(0, -1), args.at(-1)!]);
      expect({ status: ro.status, stderr: node(ro.stderr) }, `${size} ${args.join(' ').slice(0, 20)}`).toEqual({ status: rq.status, stderr: node(rq.stderr) });
      expect(rq.status).toBe(1);
      expect(fs.readFileSync(f).equals(before), `${size}: the file untouched`).toBe(true);
    }
    // the largest granularity-to-size that fits is stored, and QEMU reads it back
    const f = path.join(w.dir, 'fits.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', f, '4T']);
    expect((await w.run(['bitmap', '--add', '-g', '4096', f, 'fits'])).status).toBe(0);
    expect(qemuCheck(f).exitCode).toBe(0);
    expect(bitmapsOf(f)).toEqual([{ name: 'fits', granularity: 4096, flags: ['auto'] }]);
  });
});

/** Bitmaps with bits: qemu-io's writes are recorded by the enabled ones and stored when it closes. */
function withBits(clusterSize: string): (file: string) => void {
  return (f) => {
    image(`cluster_size=${clusterSize}`, '64M')(f);
    qemuImgOk(['bitmap', '--add', '-g', '512', f, 'dirty']);
    qemuImgOk(['bitmap', '--add', '-g', '1M', f, 'coarse']);
    qemuImgOk(['bitmap', '--add', '--disable', f, 'quiet']);
    qemuIoOk(f, 'write -P 2 5M 300k', 'write -P 3 50M 64k');
    qemuImgOk(['bitmap', '--disable', f, 'dirty']);
    qemuIoOk(f, 'write -P 4 60M 4k');
  };
}

describe('bitmap on an image that already has bitmaps: qemu-img\'s layout', () => {
  // QEMU stores every bitmap again when it closes the image (a remove stores a directory of its
  // own first): each verb on a fresh copy of the same qemu-made image, judged with the layout
  for (const cs of ['512', '64k', '2M']) {
    it(`${cs} clusters: every verb, on bitmaps with and without data`, async () => {
      const tpl = path.join(w.dir, 'tpl.qcow2');
      withBits(cs)(tpl);
      for (const step of [
        [['--add'], 'new'], [['--add', '-g', '4k', '--disable'], 'new'],
        [['--remove'], 'dirty'], [['--remove'], 'coarse'], [['--remove'], 'quiet'],
        [['--clear'], 'dirty'], [['--clear'], 'quiet'], [['--enable'], 'quiet'], [['--disable'], 'coarse'],
        [['--merge', 'dirty'], 'quiet'], [['--merge', 'quiet'], 'coarse'],
        [['--remove'], 'nope'], [['--add'], 'dirty'], [['--clear', '--remove'], 'coarse'],
      ] as Array<[string[], string]>) {
        await runSteps((f) => fs.copyFileSync(tpl, f), [step]);
      }
    });
  }

  it('a remove and an add of the same name in one command: qemu-img\'s bitmaps, in our layout', async () => {
    // a crash between QEMU's two stores would list the bitmaps neither as before nor as after:
    // one store of our own instead (docs/architecture.md)
    const tpl = path.join(w.dir, 'tpl.qcow2');
    withBits('64k')(tpl);
    await runSteps((f) => fs.copyFileSync(tpl, f), []);
    await runStep(['--remove', '--add'], 'dirty', false);
  });
});

describe('bitmaps a crash left in use', () => {
  it('refused as qemu-img refuses them (its hint included), removable, and the others stored as QEMU stores them', async () => {
    await runSteps((f) => {
      image('', '64M', 'write -P 1 0 1M')(f);
      qemuImgOk(['bitmap', '--add', f, 'stale']);
      // qemu-io opens the image for writing (every bitmap marked in use) and is killed before it stores them again
      const r = spawnSmall('qemu-io', ['-f', 'qcow2', '-c', 'write -P 6 1M 64k', '-c', 'sigraise 9', f]);
      expect(r.signal, 'qemu-io killed itself').toBe('SIGKILL');
      qemuImgOk(['bitmap', '--add', f, 'fresh']);
    }, [
      [['--clear'], 'stale'], [['--enable'], 'stale'], [['--disable'], 'stale'],
      [['--merge', 'stale'], 'fresh'], [['--merge', 'fresh'], 'stale'],
      [['--clear'], 'fresh'], [['--remove'], 'stale'], [['--add'], 'stale'],
    ]);
  });
});

describe('bitmap --merge: the same bits as qemu-img\'s', () => {
  const names = ['dirty', 'coarse', 'quiet', 'new'];
  const sameBits = (step: string): void => {
    for (const n of names) expect(bitsOf(path.join(w.dir, 'o.qcow2'), n), `${step}: ${n}`).toEqual(bitsOf(path.join(w.dir, 'q.qcow2'), n));
  };
  for (const cs of ['512', '64k', '2M']) {
    it(`${cs} clusters: merges within the image, across granularities, in command-line order`, async () => {
      const steps: Array<[string[], string]> = [
        [['--merge', 'dirty'], 'quiet'],
        [['--merge', 'coarse'], 'dirty'],
        [['--merge', 'dirty', '--merge', 'coarse', '--clear', '--merge=dirty'], 'coarse'],
        [['--add', '-g', '4k', '--merge', 'quiet'], 'new'],
      ];
      await runSteps(withBits(cs), []);
      for (const [args, name] of steps) {
        await runStep(args, name);
        sameBits(args.join(' '));
      }
    });
  }

  it('from another image (-b, -F), and qemu-img\'s refusals', async () => {
    withBits('4k')(path.join(w.dir, 'src.qcow2'));
    image('', '16M')(path.join(w.dir, 'small.qcow2'));
    qemuImgOk(['bitmap', '--add', path.join(w.dir, 'small.qcow2'), 's0']);
    await runSteps(withBits('64k'), []);
    for (const [args, name] of [
      [['--merge', 'dirty', '-b', 'src.qcow2', '-F', 'qcow2'], 'quiet'],
      [['--merge', 'coarse', '-b', 'src.qcow2'], 'dirty'],
      [['--merge', 'nope'], 'quiet'],
      [['--merge', 'dirty'], 'nope'],
      [['--merge', 'dirty', '-b', 'nothere.qcow2'], 'quiet'],
      [['--merge', 'dirty', '-F', 'qcow2'], 'quiet'],
      [['--add', '-b', 'src.qcow2'], 'zz'],
      [['--merge', 's0', '-b', 'small.qcow2'], 'quiet'],
      [['--merge', 's0', '-b', 'small.qcow2', '-F', 'raw'], 'quiet'],
      [['--merge', 'dirty', '--add'], 'quiet'],
      [['--merge', 'dirty', '--merge', 'nope'], 'coarse'],
    ] as Array<[string[], string]>) {
      await runStep(args, name);
      sameBits(args.join(' '));
    }
  });
});

/** One step on the copies runSteps made (q.qcow2 by qemu-img, o.qcow2 by us), judged as runSteps judges. */
async function runStep(args: string[], name: string, layout = true): Promise<void> {
  const [q, o] = [path.join(w.dir, 'q.qcow2'), path.join(w.dir, 'o.qcow2')];
  const step = `bitmap ${args.join(' ')} ${name}`;
  await w.expectSame(['bitmap', ...args, 'q.qcow2', name], ['q.qcow2', 'o.qcow2']);
  const check = qemuCheck(o);
  expect(check.exitCode, `${step}: qemu-img check\n${check.stderr}`).toBe(0);
  expect(bitmapsOf(o), step).toEqual(bitmapsOf(q));
  expect(qemuImg(['compare', q, o]).status, `${step}: qemu-img compare`).toBe(0);
  if (layout) expectSameLayout(q, o, step);
}

/**
 * qemu-img's layout (core/image/bitmap-ops.ts): the same file length, `qemu-img map`, `qemu-img
 * info` (its actual-size aside: QEMU punches holes where it frees bitmap data clusters, we zero
 * them) and, as the clusters QEMU frees keep the bytes it leaves there, the same bytes.
 */
function expectSameLayout(q: string, o: string, step: string): void {
  expect(fs.statSync(o).size, `${step}: file length`).toBe(fs.statSync(q).size);
  const map = (f: string): string => qemuImgOk(['map', '--output=json', f]);
  expect(map(o), `${step}: qemu-img map`).toBe(map(q));
  const info = (f: string): unknown => ({ ...qemuInfo(f), filename: '', 'actual-size': 0 });
  expect(info(o), `${step}: qemu-img info`).toEqual(info(q));
  expect(fs.readFileSync(o).equals(fs.readFileSync(q)), `${step}: the same bytes`).toBe(true);
}

describe('check -r on an image with bitmaps: qemu-img stores them all again on close', () => {
  /** Bitmaps qemu-img added (one enabled, dirtied by qemu-io's writes, one disabled), and data. */
  function withBitmaps(clusterSize: string, f: string): void {
    image(`cluster_size=${clusterSize}`, '16M', 'write -P 1 0 100k')(f);
    qemuImgOk(['bitmap', '--add', f, 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '4k', '--disable', f, 'off']);
    qemuIoOk(f, 'write -P 2 1M 64k', 'write -P 3 5M 4k');
  }

  /** Leaks as an interrupted write leaves them: a free cluster inside the file and one appended, both holding data. */
  function leak(f: string): void {
    const cs = 2 ** fs.readFileSync(f).readUInt32BE(20);
    const n = Math.ceil(fs.statSync(f).size / cs);
    let inside = -1;
    for (let i = 1; i < n && inside < 0; i++) if (getRefcount(f, i) === 0n) inside = i;
    fs.appendFileSync(f, Buffer.alloc(n * cs - fs.statSync(f).size)); // the file ends on a cluster boundary
    fs.appendFileSync(f, Buffer.alloc(cs, 0x55));
    for (const i of inside > 0 ? [inside, n] : [n]) {
      setRefcount(f, i, 1);
      if (i < n) poke(f, i * cs, Buffer.alloc(cs, 0x66));
    }
  }

  /** Set a bitmap's in-use flag in its directory entry, as a crash of a writer leaves it. */
  function markInUse(f: string, name: string): void {
    const b = fs.readFileSync(f);
    let pos = b.readUInt32BE(100);
    while (b.readUInt32BE(pos) !== 0x23852875) pos += 8 + Math.ceil(b.readUInt32BE(pos + 4) / 8) * 8;
    let at = Number(b.readBigUInt64BE(pos + 8 + 16));
    for (let i = 0; i < b.readUInt32BE(pos + 8); i++) {
      const nameSize = b.readUInt16BE(at + 18);
      if (b.subarray(at + 24, at + 24 + nameSize).toString('utf8') === name) {
        const flags = Buffer.alloc(4);
        flags.writeUInt32BE(b.readUInt32BE(at + 12) | 1);
        poke(f, at + 12, flags);
        return;
      }
      at += Math.ceil((24 + nameSize + b.readUInt32BE(at + 20)) / 8) * 8;
    }
    throw new Error(`no bitmap ${name}`);
  }

  const cases: Array<[string, boolean, boolean]> = [['nothing to repair', false, false], ['leaked clusters', true, false],
    ['leaked clusters and a bitmap a crash left in use (QEMU neither loads nor stores it)', true, true]];
  for (const cs of ['512', '64k', '2M']) {
    for (const [what, leaky, inUse] of cases) {
      it(`${cs} clusters, ${what}: -r leaks and -r all leave qemu-img's file`, async () => {
        const base = path.join(w.dir, 'base.qcow2');
        fs.rmSync(base, { force: true });
        withBitmaps(cs, base);
        if (leaky) leak(base);
        if (inUse) markInUse(base, 'b0');
        expect(qemuCheck(base).exitCode).toBe(leaky ? 3 : 0);
        for (const mode of ['leaks', 'all']) {
          const [q, o] = [path.join(w.dir, 'q.qcow2'), path.join(w.dir, 'o.qcow2')];
          fs.copyFileSync(base, q);
          fs.copyFileSync(base, o);
          await w.expectSame(['check', '-r', mode, 'q.qcow2'], ['q.qcow2', 'o.qcow2']);
          expect(qemuCheck(o).exitCode).toBe(0);
          expect(bitmapsOf(o)).toEqual(bitmapsOf(q));
          for (const n of ['b0', 'off']) expect(bitsOf(o, n), `${cs} -r ${mode}: ${n}`).toEqual(bitsOf(q, n));
          expectSameLayout(q, o, `${cs} check -r ${mode}`);
        }
      });
    }
  }

  it('a rebuild needed: -r leaks leaves the bitmaps (qemu-img 7.2 stores them over a guest cluster), -r all stores them as qemu-img', async () => {
    // a data cluster with refcount 0: -r leaks cannot repair it (the check fails); qemu-img still
    // stores the bitmaps on close, first fit, and the first free cluster is that data cluster
    const base = path.join(w.dir, 'base.qcow2');
    fs.rmSync(base, { force: true });
    withBitmaps('64k', base);
    setRefcount(base, dataClusterOffset(base) / 65536, 0);
    const [q, o] = [path.join(w.dir, 'q.qcow2'), path.join(w.dir, 'o.qcow2')];
    fs.copyFileSync(base, q);
    fs.copyFileSync(base, o);
    expect(await w.expectSame(['check', '-r', 'leaks', 'q.qcow2'], ['q.qcow2', 'o.qcow2'])).toBe(1);
    expect(fs.readFileSync(o).equals(fs.readFileSync(base)), 'ours: the file as it was').toBe(true);
    // the oracle's own result, for the record of why we differ
    expect(qemuImg(['compare', base, q]).status, 'qemu-img: guest data overwritten').toBe(1);
    // -r all rebuilds the refcounts first: then the bitmaps are stored again as qemu-img stores them
    fs.copyFileSync(base, q);
    fs.copyFileSync(base, o);
    expect(await w.expectSame(['check', '-r', 'all', 'q.qcow2'], ['q.qcow2', 'o.qcow2'])).toBe(0);
    expect(qemuImg(['compare', base, o]).status).toBe(0);
    expectSameLayout(q, o, 'check -r all with a rebuild');
  });
});
