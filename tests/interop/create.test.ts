// Image creation (core/image/create.ts, `qcowscope create`) against `qemu-img create -f qcow2`:
// for the same options the file is byte-identical, `qemu-img check` is clean and `qemu-img info`
// agrees; wrong option combinations fail with qemu-img's messages and leave no file.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { createImage as ourCreate } from '../../core/image/create.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { writeGuest } from '../../core/image/write.ts';
import { isQcowError } from '../../core/errors.ts';
import { makeTempDir, qemuCheck, qemuImg, qemuImgOk, qemuInfo, qemuIoOk, qemuMap, removeDir, sha256 } from '../helpers/qemu.ts';
import { runCliInProcess } from '../helpers/cli-in-process.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const tmp = useTempDir('qcowscope-create-');
const ROOT = path.resolve(__dirname, '../..');
/** The backing file several cases name: a plain 64 MiB image made by qemu-img once for the file, copied into each test's dir. */
let baseDir = '';
beforeAll(() => {
  baseDir = makeTempDir('qcowscope-create-base-');
  qemuImgOk(['create', '-q', '-f', 'qcow2', path.join(baseDir, 'base.qcow2'), '64M']);
});
afterAll(() => removeDir(baseDir));
function copyBase(dir: string): void {
  fs.copyFileSync(path.join(baseDir, 'base.qcow2'), path.join(dir, 'base.qcow2'));
}

/** Our CLI, run in this process (tests/helpers/cli-in-process.ts), from `cwd`. */
function cli(args: string[], cwd = ROOT): ReturnType<typeof runCliInProcess> {
  return runCliInProcess(args, { cwd });
}

/** [name, -o options (or ''), size (or '' with a backing file), extra args] */
const CASES: Array<[string, string, string, string[]?]> = [
  ['default', '', '64M'],
  ['size 0', '', '0'],
  ['odd size (rounded to 512)', '', '1000'],
  ['1 TiB', '', '1T'],
  ['100 TiB (multi-cluster L1)', '', '100T'],
  ['512-byte clusters', 'cluster_size=512', '64M'],
  ['512-byte clusters, 1 GiB (L1 needs new refcount blocks)', 'cluster_size=512', '1G'],
  ['1 KiB clusters', 'cluster_size=1k', '1G'],
  ['4 KiB clusters', 'cluster_size=4096', '64M'],
  ['2 MiB clusters', 'cluster_size=2M', '64G'],
  ['refcount_bits=1', 'refcount_bits=1', '64M'],
  ['refcount_bits=2', 'refcount_bits=2', '64M'],
  ['refcount_bits=4', 'refcount_bits=4', '64M'],
  ['refcount_bits=8', 'refcount_bits=8', '64M'],
  ['refcount_bits=32', 'refcount_bits=32', '64M'],
  ['refcount_bits=64', 'refcount_bits=64', '64M'],
  ['refcount_bits=1, 512-byte clusters, 1 GiB', 'refcount_bits=1,cluster_size=512', '1G'],
  ['refcount_bits=64, 512-byte clusters, 1 GiB', 'refcount_bits=64,cluster_size=512', '1G'],
  ['compat=0.10', 'compat=0.10', '64M'],
  ['compat=0.10, 512-byte clusters', 'compat=0.10,cluster_size=512', '64M'],
  ['lazy_refcounts=on', 'lazy_refcounts=on', '64M'],
  ['extended_l2=on', 'extended_l2=on', '64M'],
  ['extended_l2=on, 16 KiB clusters', 'extended_l2=on,cluster_size=16k', '64M'],
  ['compression_type=zstd', 'compression_type=zstd', '64M'],
  ['everything v3', 'cluster_size=32k,refcount_bits=8,lazy_refcounts=on,extended_l2=on,compression_type=zstd', '3G'],
  ['preallocation=metadata', 'preallocation=metadata', '1G'],
  ['preallocation=metadata, 1 KiB clusters, refcount_bits=1', 'preallocation=metadata,cluster_size=1k,refcount_bits=1', '64M'],
  ['preallocation=metadata, extended L2', 'preallocation=metadata,extended_l2=on', '100M'],
  ['preallocation=metadata, 512-byte clusters (new refcount blocks)', 'preallocation=metadata,cluster_size=512', '4M'],
  ['preallocation=metadata, 512-byte clusters, refcount table grown twice', 'preallocation=metadata,cluster_size=512', '16M'],
  ['preallocation=metadata, 512-byte clusters, 64-bit refcounts, grown tables', 'preallocation=metadata,cluster_size=512,refcount_bits=64', '16M'],
  ['preallocation=metadata, 1 KiB clusters, 64-bit refcounts', 'preallocation=metadata,cluster_size=1024,refcount_bits=64', '64M'],
  ['preallocation=falloc', 'preallocation=falloc', '100M'],
  ['preallocation=full', 'preallocation=full', '100M'],
  ['preallocation=full, empty disk (the refcount area still moves)', 'preallocation=full', '0'],
  ['preallocation=falloc, extended L2, 2 MiB clusters', 'preallocation=falloc,extended_l2=on,cluster_size=2M', '100M'],
  ['preallocation=full, 512-byte clusters, 64-bit refcounts (several refcount blocks)', 'preallocation=full,cluster_size=512,refcount_bits=64', '8M'],
  ['preallocation=falloc, compat=0.10, 1 KiB clusters', 'preallocation=falloc,compat=0.10,cluster_size=1k', '16M'],
  ['64 GiB with 512-byte clusters and 64-bit refcounts (L1 grows the refcount table)', 'cluster_size=512,refcount_bits=64', '64G'],
  ['backing file, size from it', '', '', ['-b', 'base.qcow2', '-F', 'qcow2']],
  ['backing file, larger', '', '128M', ['-b', 'base.qcow2', '-F', 'qcow2']],
  ['raw backing file', '', '', ['-b', 'base.qcow2', '-F', 'raw']],
  ['backing file, extended L2 + preallocation', 'extended_l2=on,preallocation=metadata', '', ['-b', 'base.qcow2', '-F', 'qcow2']],
  ['backing file, compat=0.10', 'compat=0.10', '', ['-b', 'base.qcow2', '-F', 'qcow2']],
  ['backing file, extended L2 + preallocation=falloc', 'extended_l2=on,preallocation=falloc', '', ['-b', 'base.qcow2', '-F', 'qcow2']],
];

describe('qcowscope create = qemu-img create, byte for byte', () => {
  for (const [name, o, size, extra = []] of CASES) {
    it(name, async () => {
      const dir = tmp.dir;
      copyBase(dir);
      const args = [...(o ? ['-o', o] : []), ...extra];
      const q = path.join(dir, 'q.qcow2');
      const ours = path.join(dir, 'o.qcow2');
      // Same relative backing name in both headers: run both from the temp dir.
      const rq = spawnSmall('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, 'q.qcow2', ...(size ? [size] : [])], { cwd: dir });
      expect(rq.status, rq.stderr).toBe(0);
      const r = await cli(['create', '-q', ...args, 'o.qcow2', ...(size ? [size] : [])], dir);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.statSync(ours).size).toBe(fs.statSync(q).size);
      expect(sha256(ours)).toBe(sha256(q));
      expect(qemuCheck(ours).exitCode).toBe(0);
      const a = qemuInfo(ours);
      const b = qemuInfo(q);
      expect(a['virtual-size']).toBe(b['virtual-size']);
      expect(a['format-specific']).toEqual(b['format-specific']);
      expect(a['backing-filename']).toBe(b['backing-filename']);
      // where the data lies and whether the file holds it (falloc/full write it: "zero": false)
      expect(qemuMap(ours)).toEqual(qemuMap(q));
    }, 180_000); // qemu-img create of 64 GiB in 512-byte clusters alone took 87 s on a loaded machine
  }

  it('created images take QEMU writes and ours', async () => {
    const f = tmp.file('w.qcow2');
    const r = await cli(['create', '-q', '-o', 'cluster_size=4096,refcount_bits=4', f, '16M']);
    expect(r.status, r.stderr).toBe(0);
    qemuIoOk(f, 'write -P 0x12 0 1M');
    const mem = new MemoryStore(new Uint8Array(fs.readFileSync(f)));
    const img = await Qcow2Image.open(mem, { writable: true });
    await writeGuest(img, 512 * 1024, new Uint8Array(1024 * 1024).fill(0x34));
    fs.writeFileSync(f, mem.bytes());
    expect(qemuCheck(f).exitCode).toBe(0);
    qemuIoOk(f, 'read -P 0x12 0 512k', 'read -P 0x34 512k 1M', 'read -P 0 1536k 1M');
  });

  it('in memory, as the web app does', async () => {
    const mem = new MemoryStore();
    await ourCreate(mem, { size: 64 * 1024 * 1024 });
    const f = tmp.file('m.qcow2');
    fs.writeFileSync(f, mem.bytes());
    qemuImgOk(['create', '-q', '-f', 'qcow2', tmp.file('q.qcow2'), '64M']);
    expect(sha256(f)).toBe(sha256(tmp.file('q.qcow2')));
  });
});

describe('refused options, with qemu-img\'s messages', () => {
  const REFUSED: Array<[string, string[], RegExp]> = [
    ['cluster size not a power of two', ['-o', 'cluster_size=1000'], /Cluster size must be a power of two between 512 and 2048k/],
    ['cluster size too large', ['-o', 'cluster_size=4M'], /Cluster size must be a power of two between 512 and 2048k/],
    ['refcount width', ['-o', 'refcount_bits=3'], /Refcount width must be a power of two and may not exceed 64 bits/],
    ['refcount width too large', ['-o', 'refcount_bits=128'], /Refcount width must be a power of two and may not exceed 64 bits/],
    ['v2 refcount width', ['-o', 'compat=0.10,refcount_bits=8'], /Different refcount widths than 16 bits require compatibility level 1.1/],
    ['v2 lazy refcounts', ['-o', 'compat=0.10,lazy_refcounts=on'], /Lazy refcounts only supported with compatibility level 1.1/],
    ['v2 extended L2', ['-o', 'compat=0.10,extended_l2=on'], /Extended L2 entries are only supported with compatibility level 1.1/],
    ['small-cluster extended L2', ['-o', 'extended_l2=on,cluster_size=8k'], /Extended L2 entries are only supported with cluster sizes of at least 16384 bytes/],
    ['v2 zstd', ['-o', 'compat=0.10,compression_type=zstd'], /Non-zlib compression type is only supported with compatibility level 1.1/],
    ['backing + preallocation', ['-o', 'preallocation=metadata', '-b', 'base.qcow2', '-F', 'qcow2'], /Backing file and preallocation can only be used at the same time if extended_l2 is on/],
    ['backing without format', ['-b', 'base.qcow2'], /Backing file specified without backing format/],
    ['bad compat', ['-o', 'compat=0.9'], /Parameter 'version' does not accept value '0.9'/],
    ['bad size', [], /Invalid image size specified/],
    ['too large for the cluster size', ['-o', 'cluster_size=512'], /The image size is too large for file format 'qcow2' \(try using a larger cluster size\)/],
  ];
  for (const [name, args, message] of REFUSED) {
    it(name, async () => {
      copyBase(tmp.dir);
      const size = name === 'bad size' ? '1x' : name.startsWith('too large') ? '512G' : '64M';
      const q = spawnSmall('qemu-img', ['create', '-q', '-f', 'qcow2', ...args, 'q.qcow2', size], { cwd: tmp.dir });
      expect(q.status).not.toBe(0);
      expect(q.stderr).toMatch(message);
      const r = await cli(['create', ...args, 'o.qcow2', size], tmp.dir);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(message);
      // qemu-img's lines, each with our prefix (its two-line size message included)
      expect(r.stderr).toBe(q.stderr.replace(/^qemu-img: /gm, 'qcowscope: ').replaceAll('q.qcow2', 'o.qcow2'));
      expect(fs.existsSync(tmp.file('o.qcow2'))).toBe(false);
    });
  }

  it('the engine refuses with INVALID_ARGUMENT before writing anything', async () => {
    const mem = new MemoryStore();
    const e = await ourCreate(mem, { size: 1 << 20, clusterSize: 3000 }).catch((x) => x);
    expect(isQcowError(e) && e.code).toBe('INVALID_ARGUMENT');
    expect(mem.size()).toBe(0);
  });

  it('qemu-img agrees that every created variant opens', async () => {
    for (const o of ['compat=0.10', 'extended_l2=on,cluster_size=2M', 'refcount_bits=64,cluster_size=512']) {
      const f = tmp.file('v.qcow2');
      expect((await cli(['create', '-q', '-o', o, f, '1G'])).status).toBe(0);
      expect(qemuImg(['check', f]).status).toBe(0);
    }
  });
});

describe('create prints what qemu-img create prints', () => {
  const RUNS: Array<[string[], string | undefined]> = [
    [['-o', 'compat=0.10'], '64M'], [['-o', 'compat=v2'], '64M'], [['-o', 'compat=1.1,preallocation=metadata'], '64M'],
    [['-o', 'compat=v3', '-b', 'base.qcow2', '-F', 'qcow2'], undefined], [['-o', 'cluster_size=4k,refcount_bits=1,lazy_refcounts=on'], '1G'],
    [['-o', 'extended_l2=on,compression_type=zstd'], '1.5G'], [['-o', 'size=3M'], '64M'], [['-o', 'size=3M'], undefined],
    [['-o', 'compat=0.10,lazy_refcounts=on'], '64M'], [['-o', 'cluster_size=3000'], '64M'], [['-o', 'refcount_bits=3'], '64M'],
    [[], '4P'], [[], '7E'], [[], '8E'], [[], '16E'], [[], '2P'], [['-o', 'compat=0.10,compression_type=zstd'], '64M'],
    // -u: the backing file is not opened (it may not be there yet), so the size must be given
    [['-u', '-b', 'missing.qcow2', '-F', 'qcow2'], '1G'], [['-u', '-b', 'missing.qcow2', '-F', 'qcow2'], undefined],
    [['-u', '-b', 'base.qcow2', '-F', 'qcow2'], undefined], [['-u', '-b', 'missing.qcow2'], '1G'], [['-u', '-b', 'base.qcow2', '-F', 'qcow2'], '5M'],
  ];
  for (const [args, size] of RUNS) {
    it(`${args.join(' ')} ${size ?? '(no size)'}: the Formatting line, the error and the exit code`, async () => {
      copyBase(tmp.dir);
      for (const f of ['x.qcow2', 'q.qcow2']) fs.rmSync(tmp.file(f), { force: true });
      const q = spawnSmall('qemu-img', ['create', '-f', 'qcow2', ...args, 'x.qcow2', ...(size ? [size] : [])], { cwd: tmp.dir });
      if (fs.existsSync(tmp.file('x.qcow2'))) fs.renameSync(tmp.file('x.qcow2'), tmp.file('q.qcow2'));
      const r = await cli(['create', ...args, 'x.qcow2', ...(size ? [size] : [])], tmp.dir);
      expect(r.status).toBe(q.status === 0 ? 0 : 1);
      expect(r.stdout).toBe(q.stdout);
      expect(r.stderr).toBe(q.stderr.replace(/^qemu-img: /, 'qcowscope: '));
      if (q.status === 0) expect(sha256(tmp.file('x.qcow2'))).toBe(sha256(tmp.file('q.qcow2')));
      else expect(fs.existsSync(tmp.file('x.qcow2'))).toBe(false);
    });
  }

  it('sizes QEMU takes above 2^53 bytes (2 MiB clusters) are refused in one line, nothing written', async () => {
    const q = spawnSmall('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', 'q.qcow2', '1.5E'], { cwd: tmp.dir });
    expect(q.status).toBe(0);
    const r = await cli(['create', '-q', '-o', 'cluster_size=2M', 'big.qcow2', '1.5E'], tmp.dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('qcowscope: big.qcow2: Virtual sizes above 8 PiB (2^53 bytes) are not supported by qcowscope\n');
    expect(fs.existsSync(tmp.file('big.qcow2'))).toBe(false);
  });
});
