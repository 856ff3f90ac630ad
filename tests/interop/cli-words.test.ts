// The command line's refusals against qemu-img's on the same command lines: `check` on overlays
// whose backing file cannot be opened (qemu-img opens the chain and refuses, exit 1), and the
// messages qemu-img prints over several lines (cvtnum's size message, option-list type errors
// with their hint, error_exit's help line, create's backing-file hints): the same stdout, the
// same stderr line for line (our prefix and name in place of qemu-img's) and the same exit code.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { qemuImgCreateEncrypted, qemuImgOk, qemuIoOk } from '../helpers/qemu.ts';
import { useCliWorkDir } from './cli-oracle.ts';

const w = useCliWorkDir('qcowscope-words-');
beforeAll(() => {
  qemuImgOk(['create', '-q', '-f', 'qcow2', path.join(w.dir, 'ok.qcow2'), '16M']);
});

/** Both tools on `args`; no image named new.qcow2 left over from an earlier case. */
async function expectSame(args: string[]): Promise<number | null> {
  fs.rmSync(path.join(w.dir, 'new.qcow2'), { force: true });
  return w.expectSame(args);
}

describe('check on an overlay whose backing file cannot be opened', () => {
  it('missing, not qcow2, a directory, missing two links down: exit 1, qemu-img\'s words', async () => {
    const p = (n: string) => path.join(w.dir, n);
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('gone.qcow2'), '16M']);
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', p('over-gone.qcow2')]);
    qemuIoOk(p('over-gone.qcow2'), 'write -P 1 0 64k');
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'over-gone.qcow2', '-F', 'qcow2', p('top.qcow2'), '16M']);
    fs.rmSync(p('gone.qcow2'));
    fs.writeFileSync(p('garbage.qcow2'), 'not an image\n');
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'garbage.qcow2', '-F', 'qcow2', p('over-garbage.qcow2'), '16M']);
    fs.mkdirSync(p('a-dir'));
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'a-dir', '-F', 'qcow2', p('over-dir.qcow2'), '16M']);
    for (const image of ['over-gone.qcow2', 'top.qcow2', 'over-garbage.qcow2', 'over-dir.qcow2']) {
      expect(await expectSame(['check', image])).toBe(1);
      await expectSame(['check', '--output=json', image]);
      await expectSame(['check', '-r', 'leaks', image]);
    }
  });

  it('an overlay whose backing file is there is checked as before', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'ok.qcow2', '-F', 'qcow2', path.join(w.dir, 'over-ok.qcow2')]);
    expect(await expectSame(['check', 'over-ok.qcow2'])).toBe(0);
    await expectSame(['check', '--output=json', 'over-ok.qcow2']);
  });
});

describe('messages qemu-img prints over several lines', () => {
  const cases: string[][] = [
    // cvtnum: two prefixed lines
    ['create', '-f', 'qcow2', 'new.qcow2', '1x'],
    ['create', '-f', 'qcow2', 'new.qcow2', '8E'],
    ['map', '--start-offset', '1x', 'ok.qcow2'],
    ['map', '--max-length=-1', 'ok.qcow2'],
    // option lists: the type error, its hint unprefixed
    ['create', '-f', 'qcow2', '-o', 'cluster_size=abc', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'size=x', 'new.qcow2'],
    ['create', '-f', 'qcow2', '-o', 'extent_size_hint=1x', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'refcount_bits=abc', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=x', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'foo=1', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', ',foo', 'new.qcow2', '1M'],
    // values qcow2 refuses after the Formatting line
    ['create', '-f', 'qcow2', '-o', 'compat=bad', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'preallocation=bad', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'compression_type=bad', 'new.qcow2', '1M'],
    // create's backing file: the error, then what QEMU found
    ['create', '-f', 'qcow2', '-b', 'ok.qcow2', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-b', 'missing.qcow2', 'new.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2', 'new.qcow2', '1M'],
    // error_exit: the message, then the help line
    ['create', '-f', 'qcow2'],
    ['create', '-f', 'qcow2', 'new.qcow2', '1M', 'extra'],
    ['info'],
    ['info', 'ok.qcow2', 'ok.qcow2'],
    ['map'],
    ['map', 'ok.qcow2', 'ok.qcow2'],
    ['check'],
    ['check', 'ok.qcow2', 'ok.qcow2'],
    ['check', '-r', 'some', 'ok.qcow2'],
    ['snapshot', '-l'],
    ['snapshot', '-l', 'ok.qcow2', 'ok.qcow2'],
    ['compare', 'ok.qcow2'],
    // getopt's mistakes: the argument as given, then the help hint; a verb that is not there; none
    ['info', '--bogus', 'ok.qcow2'],
    ['check', '-Z', 'ok.qcow2'],
    ['compare', '--bogus', 'ok.qcow2', 'ok.qcow2'],
    ['info', '--backing-chain=yes', 'ok.qcow2'],
    ['info', '-f'],
    ['map', '--output'],
    ['check', '-r'],
    ['snapshot', '-c'],
    ['bogus', 'ok.qcow2'],
    [],
    // --output takes human or json only
    ['info', '--output=xml', 'ok.qcow2'],
    ['map', '--output=JSON', 'ok.qcow2'],
  ];
  for (const c of cases) it(c.join(' '), async () => { await expectSame(c); });
});

describe('snapshot -c / -a / -d refused: qemu-img\'s "Could not … snapshot" words', () => {
  it('a missing snapshot, active dirty bitmaps, an external data file; each file left as qemu-img leaves it', async () => {
    const p = (n: string) => path.join(w.dir, n);
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('snaps.qcow2'), '16M']);
    qemuIoOk(p('snaps.qcow2'), 'write -P 1 0 64k');
    qemuImgOk(['snapshot', '-c', 'one', p('snaps.qcow2')]);
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('bitmaps.qcow2'), '16M']);
    qemuImgOk(['snapshot', '-c', 's1', p('bitmaps.qcow2')]);
    qemuImgOk(['bitmap', '--add', p('bitmaps.qcow2'), 'b0']);
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `data_file=${p('data.raw')}`, p('datafile.qcow2'), '16M']);
    const cases: Array<[string, string[]]> = [
      ['snaps.qcow2', ['-a', 'nope']], ['snaps.qcow2', ['-a', '']], ['snaps.qcow2', ['-a', '7']],
      ['snaps.qcow2', ['-d', 'nope']], ['snaps.qcow2', ['-d', '7']],
      ['bitmaps.qcow2', ['-a', 's1']],
      ['datafile.qcow2', ['-c', 's']], ['datafile.qcow2', ['-a', 's']], ['datafile.qcow2', ['-d', 's']],
    ];
    for (const [image, args] of cases) {
      for (const d of ['q', 'o']) fs.copyFileSync(p(image), p(`${d}-${image}`));
      expect(await w.expectSame(['snapshot', ...args, `q-${image}`], [`q-${image}`, `o-${image}`]), `snapshot ${args.join(' ')} ${image}`).toBe(1);
    }
    // nothing written by our refusals
    for (const image of ['snaps.qcow2', 'datafile.qcow2']) expect(fs.readFileSync(p(`o-${image}`)).equals(fs.readFileSync(p(image)))).toBe(true);
    // the refused revert of an image with bitmaps: qemu-img stores them again when it closes the image, and so do we
    expect(fs.readFileSync(p('o-bitmaps.qcow2')).equals(fs.readFileSync(p('q-bitmaps.qcow2'))), 'bitmaps.qcow2 as qemu-img leaves it').toBe(true);
    expect(fs.readFileSync(p('q-bitmaps.qcow2')).equals(fs.readFileSync(p('bitmaps.qcow2')))).toBe(false);
  });

  it('a refcount past refcount_bits\' maximum: create refused in qemu-img\'s words, the file untouched (qemu-img leaks a cluster)', async () => {
    const p = (n: string) => path.join(w.dir, n);
    for (const bits of ['1', '2']) {
      const image = `rb${bits}.qcow2`;
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `refcount_bits=${bits}`, p(image), '1M']);
      qemuIoOk(p(image), 'write -P 1 0 64k');
      if (bits === '2') for (const n of ['s1', 's2']) qemuImgOk(['snapshot', '-c', n, p(image)]); // refcount 3, the most two bits hold
      for (const d of ['q', 'o']) fs.copyFileSync(p(image), p(`${d}-${image}`));
      expect(await w.expectSame(['snapshot', '-c', 'more', `q-${image}`], [`q-${image}`, `o-${image}`]), image).toBe(1);
      expect(fs.readFileSync(p(`o-${image}`)).equals(fs.readFileSync(p(image))), `${image} untouched`).toBe(true);
    }
  });
});

describe('an external data file that cannot be opened', () => {
  it('missing: every verb but info refuses as qemu-img does; a relative name is found from the current directory', async () => {
    const p = (n: string) => path.join(w.dir, n);
    fs.mkdirSync(p('df'), { recursive: true });
    // made from inside df/: the header names the data file 'df-data.raw' (relative)
    expect(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=df-data.raw', 'df.qcow2', '16M'], { cwd: p('df') }).status).toBe(0);
    expect(spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 3 0 64k', 'df.qcow2'], { cwd: p('df') }).status).toBe(0);
    const verbs = [['info'], ['check'], ['map', '--output=json'], ['snapshot', '-l'], ['measure', '-O', 'qcow2'], ['compare', 'df/df.qcow2']];
    // from w.dir, 'df-data.raw' is not there (it is in df/): qemu-img refuses all but info
    for (const v of verbs) expect(await w.expectSame([...v, 'df/df.qcow2']), v.join(' ')).toBe(v[0] === 'info' ? 0 : v[0] === 'compare' ? 2 : 1);
    // a data file of that name in the current directory is the one QEMU opens
    fs.copyFileSync(p('df/df-data.raw'), p('df-data.raw'));
    for (const v of verbs) expect(await w.expectSame([...v, 'df/df.qcow2']), `${v.join(' ')} (found)`).toBe(0);
    fs.rmSync(p('df-data.raw'));
  });
});

describe('check on a file that is not qcow2', () => {
  it('qemu-img takes it as raw, which has no check: the same words and exit 63', async () => {
    fs.writeFileSync(path.join(w.dir, 'text.txt'), 'hello\n');
    fs.writeFileSync(path.join(w.dir, 'empty.img'), '');
    for (const args of [['check', 'text.txt'], ['check', 'empty.img'], ['check', '-f', 'raw', 'ok.qcow2'], ['check', '--output=json', 'text.txt']]) {
      expect(await w.expectSame(args), args.join(' ')).toBe(63);
    }
  });
});

describe('encrypted images and chains, without a key', () => {
  it('every verb but info refuses as qemu-img does ("encrypt.key-secret is required"); create over one works; nothing written', async () => {
    const p = (n: string) => path.join(w.dir, n);
    qemuImgCreateEncrypted(['-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=k', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', p('enc.qcow2'), '16M']);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'enc.qcow2', '-F', 'qcow2', p('over-enc.qcow2'), '16M']);
    const before = fs.readFileSync(p('enc.qcow2'));
    const verbs = [['info'], ['check'], ['check', '-r', 'all'], ['map'], ['snapshot', '-l'], ['snapshot', '-c', 's'], ['snapshot', '-a', 's'],
      ['snapshot', '-d', 's'], ['measure', '-O', 'qcow2'], ['bitmap', '--add'], ['commit'], ['compare', 'ok.qcow2']];
    for (const image of ['enc.qcow2', 'over-enc.qcow2']) {
      for (const v of verbs) {
        if (v[0] === 'bitmap' && image !== 'enc.qcow2') continue; // bitmap opens no backing file: it would change the overlay
        const args = v[0] === 'bitmap' ? [...v, image, 'b0'] : v[0] === 'compare' ? ['compare', image, 'ok.qcow2'] : [...v, image];
        const rc = await w.expectSame(args);
        if (v[0] !== 'commit') expect(rc, args.join(' ')).toBe(v[0] === 'info' ? 0 : v[0] === 'compare' ? 2 : 1);
      }
    }
    expect(fs.readFileSync(p('enc.qcow2')).equals(before)).toBe(true);
    // qemu-img create opens the backing file without I/O: no key needed
    expect(await expectSame(['create', '-f', 'qcow2', '-b', 'enc.qcow2', '-F', 'qcow2', 'new.qcow2'])).toBe(0);
  });
});

describe('snapshot and create open the backing chain, as qemu-img does', () => {
  it('a missing backing file fails snapshot -l/-c/-a/-d, and create over an image whose own backing file is gone', async () => {
    const p = (n: string) => path.join(w.dir, n);
    qemuImgOk(['create', '-q', '-u', '-f', 'qcow2', '-b', 'nowhere.qcow2', '-F', 'qcow2', p('orphan.qcow2'), '16M']);
    const before = fs.readFileSync(p('orphan.qcow2'));
    for (const v of [['-l'], ['-c', 's'], ['-a', 's'], ['-d', 's']]) expect(await w.expectSame(['snapshot', ...v, 'orphan.qcow2']), v.join(' ')).toBe(1);
    expect(fs.readFileSync(p('orphan.qcow2')).equals(before)).toBe(true);
    expect(await expectSame(['create', '-f', 'qcow2', '-b', 'orphan.qcow2', '-F', 'qcow2', 'new.qcow2'])).toBe(1);
    expect(fs.existsSync(p('new.qcow2'))).toBe(false);
    // a backing file with a missing external data file: opened without I/O, so create works
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', `data_file=${p('gone.raw')}`, p('df-gone.qcow2'), '1M']);
    fs.rmSync(p('gone.raw'));
    expect(await expectSame(['create', '-f', 'qcow2', '-b', 'df-gone.qcow2', '-F', 'qcow2', 'new.qcow2'])).toBe(0);
  });
});

describe('bitmaps a program without bitmap support left (the autoclear bit cleared)', () => {
  it('every verb warns as qemu-img does, through the chain; a writable open drops the extension as QEMU does', async () => {
    const p = (n: string) => path.join(w.dir, n);
    const stale = (f: string): void => {
      qemuImgOk(['create', '-q', '-f', 'qcow2', p(f), '16M']);
      qemuImgOk(['bitmap', '--add', p(f), 'b']);
      const b = fs.readFileSync(p(f));
      b[95] = b[95]! & ~1; // autoclear_features bit 0
      fs.writeFileSync(p(f), b);
    };
    stale('stale.qcow2');
    stale('stale-base.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'stale-base.qcow2', '-F', 'qcow2', p('over-stale.qcow2')]);
    for (const args of [['info', 'stale.qcow2'], ['check', 'stale.qcow2'], ['map', '--output=json', 'stale.qcow2'], ['snapshot', '-l', 'stale.qcow2'],
      ['measure', '-O', 'qcow2', 'stale.qcow2'], ['info', '--backing-chain', 'over-stale.qcow2'], ['map', 'over-stale.qcow2']]) {
      await expectSame(args);
    }
    // check -r all: the extension dropped, its clusters repaired as leaks, the same file
    fs.copyFileSync(p('stale.qcow2'), p('stale-o.qcow2'));
    expect(await w.expectSame(['check', '-r', 'all', 'stale.qcow2'], ['stale.qcow2', 'stale-o.qcow2'])).toBe(0);
    expect(fs.readFileSync(p('stale-o.qcow2')).equals(fs.readFileSync(p('stale.qcow2')))).toBe(true);
  });
});
