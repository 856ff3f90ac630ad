// Our check on clean images of every variety qemu-img makes: clean exactly when qemu-img check
// is, with the same JSON (image end offset, cluster statistics), and `layout` agrees with it.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, qemuCheck, qemuImgCreateEncrypted, qemuImgOk, qemuIo, qemuIoOk, type CreateOptions } from '../helpers/qemu.ts';
import { openImage } from '../../cli/open.ts';
import { checkExitCode, runCheck } from '../../core/analysis/check.ts';
import { checkJson } from '../../core/ops/check.ts';

async function ourCheck(file: string) {
  // the metadata needs no key: an encrypted image is compared with qemu-img check given its key
  const img = await openImage(file, { checkMode: true, noBacking: true, refuseEncrypted: false });
  try {
    const r = await runCheck(img);
    return { exitCode: checkExitCode(r), json: checkJson(file, r), messages: r.findings.map((f) => f.message) };
  } finally {
    await img.close();
  }
}

interface Variety {
  name: string;
  size?: string;
  create: CreateOptions;
  /** qemu-io commands (and qemu-img snapshot -c via 'snapshot NAME'). */
  steps: string[];
}

const WRITES = ['write -P 0x11 0 64k', 'write -P 0x22 1M 192k', 'write -z 2M 64k', 'write -P 0x33 5M 4k'];

const VARIETIES: Variety[] = [
  { name: 'empty', create: {}, steps: [] },
  { name: 'default-writes', create: {}, steps: WRITES },
  { name: 'v2', create: { compat: '0.10' }, steps: ['write -P 0x11 0 64k', 'write -P 0x22 1M 192k'] },
  ...[512, 4096, 2 * 1024 * 1024].map((cs) => ({ name: `cluster-${cs}`, create: { clusterSize: cs }, steps: WRITES })),
  ...([1, 2, 4, 8, 32, 64] as const).map((bits) => ({ name: `refcount-bits-${bits}`, create: { refcountBits: bits }, steps: WRITES })),
  { name: 'extended-l2', create: { extendedL2: true }, steps: ['write -P 0x11 0 4k', 'write -P 0x22 70k 10k', 'write -z 1M 64k', 'write -P 0x33 3M 128k'] },
  { name: 'compressed-zlib', create: {}, steps: ['write -c -P 0x11 0 64k', 'write -c -P 0x22 64k 64k', 'write -P 0x33 1M 64k'] },
  { name: 'compressed-zstd', create: { compressionType: 'zstd' }, steps: ['write -c -P 0x11 0 64k', 'write -c -P 0x22 128k 64k'] },
  { name: 'snapshots', create: {}, steps: ['write -P 0x11 0 128k', 'snapshot a', 'write -P 0x22 64k 64k', 'snapshot b', 'write -P 0x33 1M 64k'] },
  { name: 'snapshots-compressed', create: {}, steps: ['write -c -P 0x11 0 64k', 'snapshot a', 'write -P 0x22 0 4k'] },
  { name: 'prealloc-metadata', size: '256M', create: { preallocation: 'metadata' }, steps: [] },
  { name: 'lazy-refcounts', create: { lazyRefcounts: true }, steps: WRITES },
  { name: 'big-fragmented', size: '8G', create: {}, steps: ['write -P 0x11 4G 64k', 'write -P 0x22 0 64k', 'write -P 0x33 7G 1M', 'write -P 0x44 64k 64k'] },
];

describe('check on clean images agrees with qemu-img check', () => {
  const tmp = useTempDir('qcowscope-check-clean-');
  for (const v of VARIETIES) {
    it(v.name, async () => {
      const file = tmp.file(`${v.name}.qcow2`);
      createImage(file, v.size ?? '64M', v.create);
      for (const s of v.steps) {
        if (s.startsWith('snapshot ')) qemuImgOk(['snapshot', '-c', s.slice(9), file]);
        else qemuIoOk(file, s);
      }
      const q = qemuCheck(file);
      const o = await ourCheck(file);
      expect(o.exitCode).toBe(q.exitCode);
      expect(o.json).toEqual({ ...q.json, filename: file });
      expect(o.messages).toEqual([]);
    });
  }

  it('with a backing file (the overlay is checked alone)', async () => {
    const base = tmp.file('base.qcow2');
    const top = tmp.file('top.qcow2');
    createImage(base, '64M');
    qemuIoOk(base, 'write -P 0x11 0 1M');
    createImage(top, '64M', { backing: base });
    qemuIoOk(top, 'write -P 0x22 64k 64k');
    const q = qemuCheck(top);
    const o = await ourCheck(top);
    expect(o.exitCode).toBe(q.exitCode);
    expect(o.json).toEqual({ ...q.json, filename: top });
  });

  it('with an external data file (data clusters are not refcounted)', async () => {
    const file = tmp.file('df.qcow2');
    createImage(file, '64M', { extra: [`data_file=${tmp.file('df.raw')}`] });
    qemuIoOk(file, 'write -P 0x11 0 128k', 'write -P 0x22 5M 64k');
    const q = qemuCheck(file);
    const o = await ourCheck(file);
    expect(o.exitCode).toBe(q.exitCode);
    expect(o.json).toEqual({ ...q.json, filename: file });
  });

  it('LUKS-encrypted (the crypto header area is refcounted)', async () => {
    const file = tmp.file('luks.qcow2');
    const secret = ['--object', 'secret,id=s0,data=abc'];
    qemuImgCreateEncrypted(['-q', '-f', 'qcow2', ...secret, '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', file, '64M']);
    const opts = `driver=qcow2,file.filename=${file},encrypt.key-secret=s0`;
    const w = qemuIo([...secret, '--image-opts', opts, '-c', 'write -P 0x11 0 128k']);
    expect(w.status).toBe(0);
    const q = JSON.parse(qemuImgOk(['check', ...secret, '--image-opts', opts, '--output=json'])) as Record<string, unknown>;
    const o = await ourCheck(file);
    expect(o.exitCode).toBe(0);
    expect(o.json).toEqual({ ...q, filename: file });
  });

  it('with a persistent bitmap', async () => {
    const file = tmp.file('bitmap.qcow2');
    createImage(file, '64M');
    qemuIoOk(file, 'write -P 0x11 0 1M');
    qemuImgOk(['bitmap', '--add', file, 'b0']);
    qemuImgOk(['bitmap', '--add', '-g', '64k', file, 'b1']);
    const q = qemuCheck(file);
    const o = await ourCheck(file);
    expect(o.exitCode).toBe(q.exitCode);
    expect(o.json).toEqual({ ...q.json, filename: file });
  });
});
