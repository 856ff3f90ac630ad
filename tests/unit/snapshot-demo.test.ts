// The demo image (core/image/demo.ts): deterministic, clean under qemu-img check, two snapshots,
// a compressed cluster QEMU can decompress, and the contents the builder wrote.
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildDemoImage } from '../../core/image/demo.ts';
import { qemuCheck, qemuConvertToRaw, qemuInfo, qemuImgOk } from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';

const MiB = 1024 * 1024;

describe('demo image', () => {
  const tmp = useTempDir('qcowscope-demo-');

  it('is deterministic and passes qemu-img check', async () => {
    const bytes = await buildDemoImage();
    expect(Buffer.from(await buildDemoImage()).equals(Buffer.from(bytes))).toBe(true);
    const f = tmp.file('demo.qcow2');
    fs.writeFileSync(f, bytes);
    const chk = qemuCheck(f);
    expect(chk.stderr).toBe('');
    expect(chk.exitCode).toBe(0);
    expect(chk.json?.['compressed-clusters']).toBe(1);
    const info = qemuInfo(f);
    expect(info['virtual-size']).toBe(64 * MiB);
    expect(info.snapshots?.map((s) => [s.id, s.name, s['date-sec']])).toEqual([['1', 'installed', 1767225600], ['2', 'updated', 1767312000]]);
    // contents, as QEMU reads them (the compressed cluster included)
    const raw = tmp.file('a.raw');
    qemuConvertToRaw(f, raw);
    const a = fs.readFileSync(raw);
    expect(a.subarray(16 * MiB, 16 * MiB + 43).toString()).toBe('this cluster is stored deflate-compressed. ');
    expect(a.subarray(64 * 1024, 64 * 1024 + 22).toString()).toBe('base file, version 2. ');
    expect(a[8 * MiB + 256 * 1024]).toBe(0x33);
    expect(a.subarray(8 * MiB + 512 * 1024, 8 * MiB + 640 * 1024).every((x) => x === 0)).toBe(true);
    qemuConvertToRaw(f, raw, { id: 1 });
    const s1 = fs.readFileSync(raw);
    expect(s1.subarray(64 * 1024, 64 * 1024 + 22).toString()).toBe('base file, version 1. ');
    expect(s1.subarray(16 * MiB, 16 * MiB + 4).toString()).toBe('this');
    expect(s1[24 * MiB]).toBe(0);
    qemuConvertToRaw(f, raw, { id: 2 });
    const s2 = fs.readFileSync(raw);
    expect(s2[24 * MiB]).toBe(0x22);
    expect(s2[8 * MiB + 256 * 1024]).toBe(0x11);
    // shared and exclusive clusters: deleting a snapshot frees only what it alone holds
    qemuImgOk(['snapshot', '-d', 'installed', f]);
    expect(qemuCheck(f).exitCode).toBe(0);
  });
});
