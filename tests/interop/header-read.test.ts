// Reading the header of a 2 MiB-cluster image (Qcow2Image.readHeader, headerBytesNeeded): the
// first 4 KiB are enough when the header, its extensions up to the end marker and the backing
// file name lie in them; otherwise the whole cluster is read. Both paths against `qemu-img info`
// on the same file: a qemu-img-made overlay as it is, and the same overlay with an unknown header
// extension of 6000 bytes before the end marker and its backing file name moved after it (past
// 4 KiB), which QEMU reads through and so must we.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runCliInProcess } from '../helpers/cli-in-process.ts';
import { createImage } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const tmp = useTempDir('qcowscope-header-read-');

/** qemu-img ARGS from the temp dir. */
function qemuImg(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync('qemu-img', args, { cwd: tmp.dir, encoding: 'utf8' });
}

/** `info --output=json` of `file` by both tools, from the temp dir (the backing file is found there). */
async function expectSameInfo(file: string): Promise<void> {
  const args = ['info', '--output=json', file];
  const q = qemuImg(args);
  const o = await runCliInProcess(args, { cwd: tmp.dir });
  expect(q.status, q.stderr).toBe(0);
  expect({ status: o.status, stdout: o.stdout, stderr: o.stderr }).toEqual({ status: 0, stdout: q.stdout, stderr: '' });
}

/** The overlay with an unknown extension of `len` bytes inserted before the end marker and the backing file name after it. */
function withLongExtensions(file: string, len: number): void {
  const b = fs.readFileSync(file);
  const headerLength = b.readUInt32BE(100);
  const nameOffset = Number(b.readBigUInt64BE(8));
  const nameSize = b.readUInt32BE(16);
  const name = Buffer.from(b.subarray(nameOffset, nameOffset + nameSize));
  // the extensions up to (without) the end marker
  let off = headerLength;
  while (b.readUInt32BE(off) !== 0) off += 8 + Math.ceil(b.readUInt32BE(off + 4) / 8) * 8;
  const ext = Buffer.alloc(8 + len);
  ext.writeUInt32BE(0x51c05c0e, 0); // a type QEMU does not know: kept as an unknown extension
  ext.writeUInt32BE(len, 4);
  const end = Buffer.alloc(8);
  const head = Buffer.concat([b.subarray(0, off), ext, end]);
  head.writeBigUInt64BE(BigInt(head.length), 8);
  const cluster = Buffer.alloc(2 << 20);
  head.copy(cluster);
  name.copy(cluster, head.length);
  expect(head.length).toBeGreaterThan(4096);
  const out = Buffer.concat([cluster, b.subarray(cluster.length)]);
  fs.writeFileSync(file, out);
}

describe('header of a 2 MiB-cluster image, read in 4 KiB or whole', () => {
  it('extensions and backing name inside the first 4 KiB, then past them', async () => {
    createImage(tmp.file('base.qcow2'), '64M', { clusterSize: 2 << 20 });
    const top = tmp.file('top.qcow2');
    createImage(top, undefined, { clusterSize: 2 << 20, backing: 'base.qcow2' });
    await expectSameInfo(top);
    withLongExtensions(top, 6000);
    expect(qemuImg(['check', top]).status).toBe(0);
    await expectSameInfo(top);
  });
});
