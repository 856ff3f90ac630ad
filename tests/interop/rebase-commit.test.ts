// `qcowscope rebase` and `qcowscope commit` against qemu-img 7.2: the same backing chain (1-3
// links, cluster sizes 512 B-2 MiB, v2 and v3, extended L2, compressed and zero clusters) made by qemu-img and
// qemu-io in two directories; the same command run by qemu-img in one and by us in the other, with
// the same stdout, stderr and exit code; then every image of ours is clean for `qemu-img check`,
// reads as qemu-img's result (`qemu-img compare`), names the same backing file and format
// (`qemu-img info`), and, after commit, the emptied overlay maps as qemu-img's (`qemu-img map`).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { qemuCheck, qemuImg, qemuImgOk, qemuIoOk, qemuMap } from '../helpers/qemu.ts';
import { qemuInfoJson } from './read-support.ts';
import { bitsOf, sparseRaw, useCliWorkDir } from './cli-oracle.ts';

const w = useCliWorkDir('qcowscope-rebase-commit-');

/** One link of a chain: file name, qemu-img create -o options, qemu-io commands. */
type Link = [name: string, opts: string, io: string[]];

const CHAINS: Record<string, Link[]> = {
  'one link, 64 KiB clusters, compressed in the base': [
    ['base.qcow2', '', ['write -c -P 1 0 128k', 'write -P 2 1M 300k', 'write -P 3 3M 64k']],
    ['top.qcow2', '', ['write -P 4 64k 100k', 'write -z 1M 64k', 'write -P 5 5M 4k']],
  ],
  'two links, 512 B under 2 MiB under 64 KiB clusters': [
    ['base.qcow2', 'cluster_size=512', ['write -P 1 0 1M', 'write -c -P 6 2M 512', 'write -P 7 6M 1536']],
    ['mid.qcow2', 'cluster_size=2M', ['write -P 2 512k 4k', 'write -z 6M 1k']],
    ['top.qcow2', '', ['write -P 3 700k 200k', 'write -P 8 7M 70k']],
  ],
  'one link, both qcow2 v2 (compat=0.10)': [
    ['base.qcow2', 'compat=0.10', ['write -P 1 0 1M', 'write -c -P 2 2M 64k']],
    ['top.qcow2', 'compat=0.10', ['write -P 3 512k 64k', 'write -z 2M 4k', 'write -P 4 6M 10k']],
  ],
  'three links, extended L2 and 4 KiB clusters': [
    ['b0.qcow2', 'cluster_size=4k', ['write -P 1 0 2M', 'write -c -P 9 4M 8k']],
    ['b1.qcow2', 'extended_l2=on', ['write -P 2 100k 10k', 'write -z 1M 128k']],
    ['b2.qcow2', 'cluster_size=128k', ['write -P 3 1536k 300k', 'write -c -P 4 4M 128k']],
    ['top.qcow2', '', ['write -P 5 10k 1k', 'write -P 6 7M 64k']],
  ],
};

/** The chain built in q/ and copied to o/ (relative backing names stay right in both). */
function build(chain: Link[]): void {
  for (const d of ['q', 'o']) fs.rmSync(path.join(w.dir, d), { recursive: true, force: true });
  const q = path.join(w.dir, 'q');
  fs.mkdirSync(q);
  let below: string | undefined;
  for (const [name, opts, io] of chain) {
    const f = path.join(q, name);
    qemuImgOk(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...(below ? ['-b', below, '-F', 'qcow2'] : []), f, '8M']);
    if (io.length) qemuIoOk(f, ...io);
    below = name;
  }
  fs.cpSync(q, path.join(w.dir, 'o'), { recursive: true });
}

const q = (f: string): string => path.join(w.dir, 'q', f);
const o = (f: string): string => path.join(w.dir, 'o', f);

function backingOf(file: string): unknown {
  const i = qemuInfoJson(file);
  return [i['backing-filename'], i['backing-filename-format']];
}

/** In q/ and o/ alike: bitmaps `on` (granularity G, enabled) and `off` (disabled) added to FILE, then qemu-io's WRITE, which `on` records. */
function withBitmaps(file: string, g: string, write: string): void {
  for (const d of ['q', 'o']) {
    const f = path.join(w.dir, d, file);
    qemuImgOk(['bitmap', '--add', '-g', g, f, 'on']);
    qemuImgOk(['bitmap', '--add', '--disable', f, 'off']);
    qemuIoOk(f, write);
  }
}

/** Our o/FILE judged against qemu-img's q/FILE. */
function judge(file: string, step: string): void {
  const c = qemuCheck(o(file));
  expect(c.exitCode, `${step}: qemu-img check ${file}\n${c.stderr}`).toBe(0);
  const cmp = qemuImg(['compare', q(file), o(file)]);
  expect(cmp.status, `${step}: qemu-img compare ${file}\n${cmp.stdout}${cmp.stderr}`).toBe(0);
  expect(backingOf(o(file)), `${step}: backing of ${file}`).toEqual(backingOf(q(file)));
}

/** The same command on q/TOP (qemu-img) and o/TOP (ours), then every link judged. */
async function same(args: string[], chain: Link[], top = 'top.qcow2'): Promise<number | null> {
  const status = await w.expectSame([...args, `q/${top}`], [`q/${top}`, `o/${top}`]);
  for (const [name] of chain) judge(name, args.join(' '));
  return status;
}

/**
 * qemu-img map of an image without host offsets (they differ with allocation order), neighbouring
 * runs of one kind joined: qemu-img splits a run where the host offsets stop being contiguous, and
 * its commit job copies with several requests in flight, so where its runs split varies per run.
 */
function mapShape(file: string): unknown {
  const runs: Record<string, unknown>[] = [];
  for (const { offset: _o, ...e } of qemuMap(file)) {
    const last = runs.at(-1);
    const kind = (r: Record<string, unknown>): string => JSON.stringify({ ...r, start: 0, length: 0 });
    if (last && (last.start as number) + (last.length as number) === e.start && kind(last) === kind(e)) {
      last.length = (last.length as number) + (e.length as number);
    } else runs.push({ ...e });
  }
  return runs;
}

describe('rebase -u: only the backing link changes', () => {
  for (const [name, chain] of Object.entries(CHAINS)) {
    it(name, async () => {
      build(chain);
      const first = chain[0]![0];
      expect(await same(['rebase', '-u', '-b', first, '-F', 'qcow2'], chain)).toBe(0);
      // byte for byte qemu-img's header
      expect(fs.readFileSync(o('top.qcow2')).equals(fs.readFileSync(q('top.qcow2')))).toBe(true);
      // a link to a file that is not there (yet): written all the same
      expect(await w.expectSame(['rebase', '-f', 'qcow2', '-u', '-b', 'elsewhere.qcow2', '-F', 'qcow2', 'q/top.qcow2'], ['q/top.qcow2', 'o/top.qcow2'])).toBe(0);
      expect(fs.readFileSync(o('top.qcow2')).equals(fs.readFileSync(q('top.qcow2')))).toBe(true);
      expect(await same(['rebase', '-u', '-b', ''], chain)).toBe(0);
      expect(await same(['rebase', '-u', '-b', first, '-F', 'raw'], chain)).toBe(0);
      expect(await same(['rebase', '-u'], chain)).toBe(0);
      expect(fs.readFileSync(o('top.qcow2')).equals(fs.readFileSync(q('top.qcow2')))).toBe(true);
    });
  }
});

describe('safe rebase: the overlay reads the same over its new backing', () => {
  for (const [name, chain] of Object.entries(CHAINS)) {
    it(`${name}: onto the first link, then standalone`, async () => {
      build(chain);
      expect(await same(['rebase', '-b', chain[0]![0], '-F', 'qcow2'], chain)).toBe(0);
      expect(mapShape(o('top.qcow2')), 'what the overlay allocates').toEqual(mapShape(q('top.qcow2')));
      expect(await same(['rebase', '-b', ''], chain)).toBe(0);
      expect(mapShape(o('top.qcow2')), 'what the overlay allocates').toEqual(mapShape(q('top.qcow2')));
    });
    it(`${name}: onto an unrelated image with data of its own`, async () => {
      build(chain);
      for (const d of ['q', 'o']) {
        const f = path.join(w.dir, d, 'other.qcow2');
        qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=16k', f, '6M']);
        qemuIoOk(f, 'write -P 11 0 1M', 'write -P 12 5M 17k');
      }
      expect(await same(['rebase', '-b', 'other.qcow2', '-F', 'qcow2'], chain)).toBe(0);
      judge('other.qcow2', 'rebase onto other.qcow2');
      expect(mapShape(o('top.qcow2')), 'what the overlay allocates').toEqual(mapShape(q('top.qcow2')));
    });
  }
});

describe('commit: the overlay folded into its backing file', () => {
  for (const [name, chain] of Object.entries(CHAINS)) {
    it(name, async () => {
      build(chain);
      expect(await same(['commit'], chain)).toBe(0);
      expect(mapShape(o('top.qcow2')), 'emptied overlay').toEqual(mapShape(q('top.qcow2')));
      expect(fs.statSync(o('top.qcow2')).size, 'emptied overlay, file size').toBe(fs.statSync(q('top.qcow2')).size);
      // the link under it next, kept with -d
      const below = chain[chain.length - 2]![0];
      if (chain.length > 2) {
        expect(await same(['commit', '-d'], chain, below)).toBe(0);
        expect(mapShape(o(below)), 'kept overlay').toEqual(mapShape(q(below)));
      }
      expect(await same(['commit', '-q'], chain)).toBe(0);
    });
  }
});

describe('refusals: qemu-img\'s words and exit codes', () => {
  it('rebase and commit on bad command lines and images', async () => {
    const chain = CHAINS['one link, 64 KiB clusters, compressed in the base']!;
    build(chain);
    expect(await same(['rebase'], chain)).toBe(1);
    expect(await same(['rebase', '-u', '-b', 'base.qcow2'], chain)).toBe(1);
    // refusals that change nothing, run on the same file
    expect(await w.expectSame(['rebase', '-b', 'missing.qcow2', '-F', 'qcow2', 'q/top.qcow2'])).toBe(1);
    expect(await w.expectSame(['rebase', '-b', 'sub/missing.qcow2', '-F', 'qcow2', 'q/top.qcow2'])).toBe(1);
    expect(await w.expectSame(['rebase', '-u', '-b', 'x', '-F', 'qcow2', 'q/top.qcow2', 'q/base.qcow2'])).toBe(1);
    expect(await w.expectSame(['rebase', '-u', '-b', 'x', '-F', 'qcow2', 'nothing.qcow2'])).toBe(1);
    expect(await same(['commit'], chain, 'base.qcow2')).toBe(1);
    expect(await w.expectSame(['commit'])).toBe(1);
    expect(await w.expectSame(['commit', 'nothing.qcow2'])).toBe(1);
    // a safe rebase onto a chain that reaches the image itself (its own overlay, or itself):
    // QEMU fails on the image's lock; the file is left as it was, no backing loop written
    for (const onto of ['top.qcow2', 'base.qcow2']) {
      const before = fs.readFileSync(path.join(w.dir, 'q', 'base.qcow2'));
      expect(await w.expectSame(['rebase', '-b', onto, '-F', 'qcow2', 'q/base.qcow2'])).toBe(1);
      expect(fs.readFileSync(path.join(w.dir, 'q', 'base.qcow2')).equals(before), `rebase onto ${onto}: base untouched`).toBe(true);
    }
    // safe rebase without -F: the data is copied, then the link is refused (qemu-img 7.2)
    for (const d of ['q', 'o']) qemuImgOk(['create', '-q', '-f', 'qcow2', path.join(w.dir, d, 'other.qcow2'), '8M']);
    expect(await same(['rebase', '-b', 'other.qcow2'], chain)).toBe(1);
    // an overlay whose backing file is gone
    for (const d of ['q', 'o']) fs.rmSync(path.join(w.dir, d, 'base.qcow2'));
    expect(await w.expectSame(['rebase', '-b', '', 'q/top.qcow2'])).toBe(1);
    expect(await w.expectSame(['commit', 'q/top.qcow2'])).toBe(1);
  });
});

describe('commit into a smaller backing file', () => {
  it('grows it to the overlay\'s size as qemu-img does (qcow2, one link and through -b)', async () => {
    const chain: Link[] = [
      ['base.qcow2', 'cluster_size=4k', ['write -P 1 0 1M', 'write -c -P 7 7M 64k']],
      ['mid.qcow2', '', ['write -P 2 2M 64k']],
      ['top.qcow2', 'cluster_size=16k', ['write -P 3 3M 64k']],
    ];
    build(chain);
    // a larger mid and top (qemu-img create with a bigger size, same chain)
    for (const d of ['q', 'o']) {
      for (const [name, size, below, io] of [['mid.qcow2', '12M', 'base.qcow2', 'write -P 4 10M 64k'], ['top.qcow2', '40M', 'mid.qcow2', 'write -P 5 30M 100k']] as const) {
        const f = path.join(w.dir, d, name);
        qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', below, '-F', 'qcow2', f, size]);
        qemuIoOk(f, io, 'write -z 1M 64k');
      }
    }
    expect(await same(['commit', '-b', 'base.qcow2'], chain)).toBe(0);
    expect(mapShape(o('base.qcow2'))).toEqual(mapShape(q('base.qcow2')));
    expect(qemuInfoJson(o('base.qcow2'))['virtual-size']).toBe(qemuInfoJson(q('base.qcow2'))['virtual-size']);
    expect(await same(['commit'], chain)).toBe(0);
    expect(mapShape(o('mid.qcow2'))).toEqual(mapShape(q('mid.qcow2')));
    expect(fs.statSync(o('top.qcow2')).size, 'emptied overlay, file size').toBe(fs.statSync(q('top.qcow2')).size);
  });

  it('a raw backing file takes the data and grows (one link, and -b through a qcow2 link)', async () => {
    for (const step of [['commit'], ['commit', '-b', 'base.raw']]) {
      for (const d of ['q', 'o']) {
        const dir = path.join(w.dir, d);
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir);
        sparseRaw(path.join(dir, 'base.raw'), 2 << 20, 5 << 10);
        qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base.raw', '-F', 'raw', path.join(dir, 'mid.qcow2'), '3M']);
        qemuIoOk(path.join(dir, 'mid.qcow2'), 'write -P 2 1M 64k', 'write -z 0 4k');
        qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', path.join(dir, 'top.qcow2'), '6M']);
        qemuIoOk(path.join(dir, 'top.qcow2'), 'write -P 3 2M 64k', 'write -z 4M 64k', 'write -P 4 5M 10k');
      }
      const file = step.length === 1 ? 'mid.qcow2' : 'top.qcow2';
      expect(await w.expectSame([...step, `q/${file}`], [`q/${file}`, `o/${file}`])).toBe(0);
      expect(fs.readFileSync(o('base.raw')).equals(fs.readFileSync(q('base.raw'))), step.join(' ')).toBe(true);
      for (const n of ['mid.qcow2', 'top.qcow2']) {
        expect(qemuCheck(o(n)).exitCode).toBe(0);
        expect(mapShape(o(n)), n).toEqual(mapShape(q(n)));
        expect(fs.statSync(o(n)).size, n).toBe(fs.statSync(q(n)).size);
      }
    }
  });
});

describe('commit into a smaller backing file: cluster sizes, a snapshot in it, v2', () => {
  // [label, base options, its snapshots]
  const cases: Array<[string, string, string[]]> = [
    ['64 KiB clusters', '', []],
    ['512 B clusters (the L1 table grows over several clusters and refcount blocks)', 'cluster_size=512', []],
    ['2 MiB clusters, an internal snapshot in the backing file', 'cluster_size=2M', ['s']],
    ['v2 with an internal snapshot: refused as qemu-img refuses', 'compat=0.10', ['s']],
  ];
  for (const [name, opts, snaps] of cases) {
    it(`grows it first as qemu-img does: ${name}`, async () => {
      const chain: Link[] = [
        ['base.qcow2', opts, ['write -P 1 0 1M', 'write -P 7 3M 64k']],
        ['top.qcow2', '', ['write -P 2 0 64k']],
      ];
      build(chain);
      for (const d of ['q', 'o']) {
        const base = path.join(w.dir, d, 'base.qcow2');
        for (const sn of snaps) qemuImgOk(['snapshot', '-c', sn, base]);
        const top = path.join(w.dir, d, 'top.qcow2');
        fs.rmSync(top);
        qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top, '300M']);
        qemuIoOk(top, 'write -P 3 12M 64k', 'write -P 4 200M 128k', 'write -P 5 64k 4k');
      }
      const status = await same(['commit'], chain);
      expect(status).toBe(opts === 'compat=0.10' ? 1 : 0);
      for (const f of ['base.qcow2', 'top.qcow2']) {
        expect(fs.statSync(o(f)).size, `length of ${f}`).toBe(fs.statSync(q(f)).size);
      }
      // host offsets aside: qemu-img's commit job copies with several requests in flight, so its
      // own data lands in a different order from run to run
      expect(mapShape(o('base.qcow2')), 'map of the grown backing file').toEqual(mapShape(q('base.qcow2')));
      expect(mapShape(o('top.qcow2')), 'map of the emptied overlay').toEqual(mapShape(q('top.qcow2')));
      expect(qemuInfoJson(o('base.qcow2'))['virtual-size']).toBe(qemuInfoJson(q('base.qcow2'))['virtual-size']);
    });
  }
});

describe('commit -b, -r, -p: qemu-img\'s spelling', () => {
  it('accepts them and refuses as qemu-img does', async () => {
    const chain = CHAINS['two links, 512 B under 2 MiB under 64 KiB clusters']!;
    build(chain);
    expect(await same(['commit', '-b', 'mid.qcow2', '-r', '1M'], chain)).toBe(0);
    expect(mapShape(o('mid.qcow2'))).toEqual(mapShape(q('mid.qcow2')));
    expect(await same(['commit', '-q', '-p', '-r', '0', '-b', 'base.qcow2'], chain)).toBe(0);
    expect(mapShape(o('base.qcow2'))).toEqual(mapShape(q('base.qcow2')));
    for (const bad of [['-b', 'nothere.qcow2'], ['-b', 'top.qcow2'], ['-r', 'xx'], ['-r', '-1']]) {
      expect(await w.expectSame(['commit', ...bad, 'q/top.qcow2'])).toBe(1);
    }
    // -p: qemu-img's progress line, then its last word; how often it repeats depends on timing
    build(chain);
    const r = await w.run(['commit', '-p', 'o/top.qcow2']);
    const qr = qemuImg(['commit', '-p', q('top.qcow2')]);
    expect(r.status).toBe(qr.status);
    const shape = (s: string): string[] => [...new Set(s.split('\r'))];
    expect(shape(r.stdout)[0]).toBe(shape(qr.stdout)[0]);
    expect(r.stdout.slice(r.stdout.lastIndexOf('(100.00/100%)'))).toBe(qr.stdout.slice(qr.stdout.lastIndexOf('(100.00/100%)')));
    for (const [name] of chain) judge(name, 'commit -p');
  });
});

describe('commit: an overlay with an internal snapshot', () => {
  it('keeps the snapshot\'s clusters and empties the active layer as qemu-img does', async () => {
    const chain: Link[] = [
      ['base.qcow2', '', ['write -P 1 0 1M']],
      ['top.qcow2', '', ['write -P 2 512k 64k']],
    ];
    build(chain);
    for (const d of ['q', 'o']) {
      const f = path.join(w.dir, d, 'top.qcow2');
      qemuImgOk(['snapshot', '-c', 's1', f]);
      qemuIoOk(f, 'write -P 3 2M 64k', 'write -P 4 512k 4k');
    }
    expect(await same(['commit'], chain)).toBe(0);
    expect(mapShape(o('top.qcow2'))).toEqual(mapShape(q('top.qcow2')));
    // the snapshot still reads as it did (qemu-img's own copy is the reference)
    for (const d of ['q', 'o']) qemuImgOk(['convert', '-l', 'snapshot.name=s1', '-O', 'raw', path.join(w.dir, d, 'top.qcow2'), path.join(w.dir, d, 's1.raw')]);
    expect(fs.readFileSync(o('s1.raw')).equals(fs.readFileSync(q('s1.raw')))).toBe(true);
  });

  it('into a backing file with persistent bitmaps: the enabled ones take the committed ranges, as qemu-img\'s', async () => {
    for (const [cs, g] of [['64k', '4k'], ['512', '1M'], ['2M', '512']]) {
      const chain: Link[] = [
        ['base.qcow2', `cluster_size=${cs}`, []],
        ['top.qcow2', '', ['write -P 2 100k 10k', 'write -z 1M 64k', 'write -P 3 7M 3k']],
      ];
      build(chain);
      withBitmaps('base.qcow2', g, 'write -P 1 3M 10k');
      expect(await same(['commit'], chain)).toBe(0);
      for (const n of ['on', 'off']) expect(bitsOf(o('base.qcow2'), n), `${cs}/${g}: ${n}`).toEqual(bitsOf(q('base.qcow2'), n));
      expect(bitsOf(o('base.qcow2'), 'on')![2]).toMatch(/[1-9a-f]/);
      expect(qemuInfoJson(o('base.qcow2'))['format-specific']).toEqual(qemuInfoJson(q('base.qcow2'))['format-specific']);
    }
    // an overlay larger than the backing file: the bitmaps grow with it (new bits clear)
    for (const d of ['q', 'o']) {
      const f = path.join(w.dir, d, 'big.qcow2');
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', f, '300M']);
      qemuIoOk(f, 'write -P 4 200M 3k', 'write -P 5 0 4k');
    }
    expect(await w.expectSame(['commit', 'q/big.qcow2'], ['q/big.qcow2', 'o/big.qcow2'])).toBe(0);
    judge('base.qcow2', 'commit big.qcow2');
    for (const n of ['on', 'off']) expect(bitsOf(o('base.qcow2'), n), `grown: ${n}`).toEqual(bitsOf(q('base.qcow2'), n));
    expect(qemuInfoJson(o('base.qcow2'))['format-specific']).toEqual(qemuInfoJson(q('base.qcow2'))['format-specific']);
  });

  it('with persistent bitmaps in the overlay: emptied as qemu-img empties it, the bits kept', async () => {
    const chain: Link[] = [
      ['base.qcow2', '', ['write -P 1 0 1M']],
      ['top.qcow2', '', []],
    ];
    build(chain);
    for (const d of ['q', 'o']) {
      const f = path.join(w.dir, d, 'top.qcow2');
      qemuImgOk(['bitmap', '--add', '-g', '4k', f, 'b0']);
      qemuImgOk(['bitmap', '--add', '--disable', f, 'b1']);
      qemuIoOk(f, 'write -P 2 512k 64k', 'write -P 3 3M 64k');
    }
    expect(await same(['commit'], chain)).toBe(0);
    expect(mapShape(o('top.qcow2'))).toEqual(mapShape(q('top.qcow2')));
    for (const n of ['b0', 'b1']) expect(bitsOf(o('top.qcow2'), n), n).toEqual(bitsOf(q('top.qcow2'), n));
    expect(bitsOf(o('top.qcow2'), 'b0')![2]).toMatch(/[1-9a-f]/);
    expect(qemuInfoJson(o('top.qcow2'))['format-specific']).toEqual(qemuInfoJson(q('top.qcow2'))['format-specific']);
  });
});

describe('commit: the backing file allocated chunk for chunk as by QEMU\'s mirror', () => {
  // base cluster size, base writes, overlay cluster size, overlay writes
  const cases: Array<[string, string[], string, string[]]> = [
    ['512', [], '64k', ['write -P 5 343040 512']], // the overlay's whole cluster, in 4 KiB chunks
    ['512', [], '64k', ['write -z 343040 512']], // a zero cluster: zeros
    ['512', ['write -P 1 339968 1024'], '64k', ['write -P 5 343040 512']],
    ['4k', [], '512', ['write -P 5 343040 512', 'write -P 6 1M 3k']], // a sector: its 4 KiB chunk as data
    ['512', [], '512', ['write -z 343040 512', 'write -z 2M 64k']], // a zero sector: its chunk as data; 64 KiB of zeros as zeros
    ['1k', ['write -P 1 0 1M'], '4k', ['write -z 327680 65536', 'write -P 2 700k 2k']], // zeros over data: unmapped
    ['64k', ['write -P 1 0 1M'], '512', ['write -z 1024 1000', 'write -P 3 200k 1k']],
    ['2M', [], '512', ['write -z 343040 512', 'write -P 4 3M 512']],
    ['2M', [], '512', ['write -z 0 4M']], // zeros past one L2 table of the overlay's (32 KiB): copied as data, as QEMU's block status stops there
    ['64k', [], '1k', ['write -z 0 3M']],
    ['64k', [], '64k', ['write -P 7 100k 10k']],
  ];
  it('every dirty chunk copied, zeroed or left as QEMU does', async () => {
    for (const [bcs, bio, tcs, tio] of cases) {
      const chain: Link[] = [['base.qcow2', `cluster_size=${bcs}`, bio], ['top.qcow2', `cluster_size=${tcs}`, tio]];
      build(chain);
      expect(await same(['commit'], chain)).toBe(0);
      const what = `base ${bcs} [${bio.join('; ')}], top ${tcs} [${tio.join('; ')}]`;
      expect(mapShape(o('base.qcow2')), what).toEqual(mapShape(q('base.qcow2')));
      expect(fs.statSync(o('base.qcow2')).size, `${what}: length`).toBe(fs.statSync(q('base.qcow2')).size);
    }
    // an extended-L2 overlay: subclusters, not clusters, are what it allocates
    const chain: Link[] = [['base.qcow2', 'cluster_size=4k', ['write -P 1 0 64k']], ['top.qcow2', 'extended_l2=on', ['write -P 2 2k 1k', 'write -z 72k 4k']]];
    build(chain);
    expect(await same(['commit'], chain)).toBe(0);
    expect(mapShape(o('base.qcow2'))).toEqual(mapShape(q('base.qcow2')));
  });
});

describe('safe rebase of an overlay with persistent bitmaps', () => {
  it('the enabled bitmaps take the copied ranges, as qemu-img\'s (rebase -b "" and onto the first link)', async () => {
    for (const [cs, g, target] of [['64k', '4k', ''], ['512', '1M', 'base.qcow2'], ['2M', '512', '']] as const) {
      const chain: Link[] = [
        ['base.qcow2', `cluster_size=${cs}`, ['write -P 1 0 1M', `write -c -P 6 2M ${cs}`]],
        ['mid.qcow2', '', ['write -P 2 700k 200k', 'write -P 7 6M 70k']],
        ['top.qcow2', `cluster_size=${cs}`, ['write -P 3 10k 1k']],
      ];
      build(chain);
      withBitmaps('top.qcow2', g, 'write -P 4 3M 10k');
      const args = target ? ['rebase', '-b', target, '-F', 'qcow2'] : ['rebase', '-b', ''];
      expect(await same(args, chain), `${cs}/${g}`).toBe(0);
      for (const n of ['on', 'off']) expect(bitsOf(o('top.qcow2'), n), `${cs}/${g}: ${n}`).toEqual(bitsOf(q('top.qcow2'), n));
      expect(bitsOf(o('top.qcow2'), 'on')![2]).toMatch(/[1-9a-f]/);
      expect(qemuInfoJson(o('top.qcow2'))['format-specific']).toEqual(qemuInfoJson(q('top.qcow2'))['format-specific']);
      // QEMU's layout: bitmaps marked in use where they are, the data written, then every bitmap stored again
      expect(qemuMap(o('top.qcow2')), `${cs}/${g}: map`).toEqual(qemuMap(q('top.qcow2')));
      expect(fs.readFileSync(o('top.qcow2')).equals(fs.readFileSync(q('top.qcow2'))), `${cs}/${g}: the same bytes as qemu-img's`).toBe(true);
    }
  });
});

describe('bitmaps of an image qemu-img only opens read-write', () => {
  it('rebase -u and commit -d store them again as QEMU does on close: the same bytes, the same map', async () => {
    const chain: Link[] = [['base.qcow2', '', ['write -P 1 0 1M']], ['top.qcow2', '', ['write -P 3 10k 1k']]];
    for (const args of [['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2'], ['rebase', '-u', '-b', ''], ['rebase', '-b', 'base.qcow2', '-F', 'qcow2'], ['commit', '-d']]) {
      build(chain);
      withBitmaps('top.qcow2', '4k', 'write -P 4 3M 10k');
      expect(await same(args, chain), args.join(' ')).toBe(0);
      expect(qemuMap(o('top.qcow2')), `${args.join(' ')}: map`).toEqual(qemuMap(q('top.qcow2')));
      for (const n of ['on', 'off']) expect(bitsOf(o('top.qcow2'), n), `${args.join(' ')}: ${n}`).toEqual(bitsOf(q('top.qcow2'), n));
      expect(fs.statSync(o('top.qcow2')).size, `${args.join(' ')}: length`).toBe(fs.statSync(q('top.qcow2')).size);
      if (args[0] === 'rebase') expect(fs.readFileSync(o('top.qcow2')).equals(fs.readFileSync(q('top.qcow2'))), `${args.join(' ')}: bytes`).toBe(true);
    }
  });
});

describe('safe rebase over a raw backing file with holes', () => {
  it('rebase -b "" copies the raw file\'s data, not its holes', async () => {
    w.overRawWithHoles('rq.qcow2');
    fs.copyFileSync(path.join(w.dir, 'rq.qcow2'), path.join(w.dir, 'ro.qcow2'));
    expect(await w.expectSame(['rebase', '-b', '', 'rq.qcow2'], ['rq.qcow2', 'ro.qcow2'])).toBe(0);
    const [rq, ro] = [path.join(w.dir, 'rq.qcow2'), path.join(w.dir, 'ro.qcow2')];
    expect(qemuCheck(ro).exitCode).toBe(0);
    expect(qemuImg(['compare', rq, ro]).status).toBe(0);
    expect(mapShape(ro)).toEqual(mapShape(rq));
  });
});
