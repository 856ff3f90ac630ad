// External snapshots: `qcowscope snapshot --external OVERLAY IMAGE...` makes overlays whose
// backing file is the image; QEMU reads and writes them, reading through the chain works in
// qemu-img and in our engine, and for a group, a failure leaves no overlay behind.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openImage } from '../../cli/open.ts';
import { QcowError } from '../../core/errors.ts';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { createExternalSnapshots, type OverlayTarget } from '../../core/image/external-snapshot.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import {
  createImage, qemuCheck, qemuConvertToRaw, qemuInfo, qemuIoOk, sha256,
} from '../helpers/qemu.ts';
import { cliBundle } from '../helpers/cli.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { spawnSmall } from '../helpers/spawner.ts';

const MiB = 1024 * 1024;
// Absolute loader path: some runs use another working directory.
const CLI = [await cliBundle()];

function cli(args: string[], cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSmall(process.execPath, [...CLI, ...args], { cwd });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('external snapshots', () => {
  const tmp = useTempDir('qcowscope-ext-');

  it('one image: overlay backed by the image; writes go to the overlay; reads fall through', async () => {
    const base = tmp.file('base.qcow2');
    createImage(base, 8 * MiB);
    qemuIoOk(base, 'write -P 1 0 1M', 'write -P 2 4M 64k');
    const baseSum = sha256(base);
    const top = tmp.file('top.qcow2');
    const r = cli(['snapshot', '--external', top, base]);
    expect(r.status, r.stderr).toBe(0);
    const info = qemuInfo(top);
    expect(info['backing-filename']).toBe('base.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    expect(info['virtual-size']).toBe(8 * MiB);
    expect(qemuCheck(top).exitCode).toBe(0);
    qemuIoOk(top, 'write -P 3 512k 64k');
    expect(sha256(base)).toBe(baseSum);
    // the chain as qemu-img reads it, and as our engine does
    const want = tmp.file('want.raw');
    qemuConvertToRaw(top, want);
    const img = await openImage(top);
    try {
      const got = await img.read(0, 8 * MiB);
      expect(Buffer.from(got).equals(fs.readFileSync(want))).toBe(true);
    } finally {
      await img.close();
    }
    expect(cli(['export', top, tmp.file('ours.raw')]).status).toBe(0);
    expect(sha256(tmp.file('ours.raw'))).toBe(sha256(want));
    // an existing overlay is never replaced
    const again = cli(['snapshot', '--external', top, base]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/already exists/);
  });

  it('a group: one overlay per image, relative backing names across directories', () => {
    fs.mkdirSync(tmp.file('disks'));
    fs.mkdirSync(tmp.file('tops'));
    const a = path.join('disks', 'a.qcow2');
    const b = path.join('disks', 'b.qcow2');
    createImage(tmp.file(a), 4 * MiB);
    createImage(tmp.file(b), 2 * MiB, { clusterSize: 4096 });
    qemuIoOk(tmp.file(a), 'write -P 5 0 64k');
    const r = cli(['snapshot', '-e', 'tops/a1.qcow2', '-e', 'tops/b1.qcow2', a, b], tmp.dir);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuInfo(tmp.file('tops/a1.qcow2'))['backing-filename']).toBe('../disks/a.qcow2');
    expect(qemuInfo(tmp.file('tops/b1.qcow2'))['virtual-size']).toBe(2 * MiB);
    const out = tmp.file('a.raw');
    qemuConvertToRaw(tmp.file('tops/a1.qcow2'), out);
    expect(fs.readFileSync(out).subarray(0, 65536).every((x) => x === 5)).toBe(true);
    expect(cli(['snapshot', '-e', 'tops/x.qcow2', a, b], tmp.dir).status).toBe(1); // one overlay for two images
  });

  it('a group where one overlay cannot be created leaves none behind', () => {
    const a = tmp.file('a.qcow2');
    const b = tmp.file('b.qcow2');
    createImage(a, 4 * MiB);
    createImage(b, 4 * MiB);
    const r = cli(['snapshot', '-e', tmp.file('a1.qcow2'), '-e', tmp.file('missing-dir/b1.qcow2'), a, b]);
    expect(r.status).toBe(1);
    expect(fs.readdirSync(tmp.dir).sort()).toEqual(['a.qcow2', 'b.qcow2']);
  });

  it('engine: a failure while publishing the second overlay discards the first', async () => {
    const mk = async (): Promise<Qcow2Image> => {
      const { createImage: create } = await import('../../core/image/create.ts');
      const s = new MemoryStore();
      await create(s, { size: MiB });
      return Qcow2Image.open(s);
    };
    const made = new Map<string, 'written' | 'published' | 'discarded'>();
    const target = (name: string, failPublish = false): OverlayTarget => ({
      name,
      async open() {
        made.set(name, 'written');
        return new MemoryStore();
      },
      async publish() {
        if (failPublish) throw new QcowError('IO_ERROR', 'disk full', {});
        made.set(name, 'published');
      },
      async discard() {
        made.set(name, 'discarded');
      },
    });
    const a = await mk();
    const b = await mk();
    await expect(createExternalSnapshots([
      { base: a, backingFile: 'a.qcow2', target: target('a1') },
      { base: b, backingFile: 'b.qcow2', target: target('b1', true) },
    ])).rejects.toMatchObject({ code: 'IO_ERROR', message: expect.stringMatching(/^b1: disk full/) });
    expect([...made]).toEqual([['a1', 'discarded'], ['b1', 'discarded']]);
  });
});
