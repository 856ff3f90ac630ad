// What guest writes refuse, and the special images they handle: read-only opens, corrupt and
// dirty images, persistent bitmaps, ranges past the disk, refcounts that would hand out metadata
// (QEMU's "Preventing invalid allocation"), lazy_refcounts images (we never set the dirty bit).
// A refused write leaves the file byte-identical.
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { MemoryStore } from '../../core/io/memory-store.ts';
import { Qcow2Image } from '../../core/image/qcow2-image.ts';
import { writeGuest, writeZeroes } from '../../core/image/write.ts';
import { isQcowError } from '../../core/errors.ts';
import { main } from '../../cli/main.ts';
import {
  createImage, pokeU16, pokeU64, qemuCheck, qemuImgOk, qemuInfo, qemuIo, qemuIoOk, sha256,
} from '../helpers/qemu.ts';
import { useTempDir } from '../helpers/temp-dir.ts';
import { dataClusterOffset, readHeader, reftableEntryPos } from '../helpers/qcow2-mini.ts';

const tmp = useTempDir('qcowscope-wref-');

async function refused(file: string, opts: { checkMode?: boolean; writable?: boolean } = {}, write = (img: Qcow2Image) => writeGuest(img, 0, new Uint8Array(4096).fill(1))): Promise<unknown> {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const mem = new MemoryStore(bytes.slice(), { writable: opts.writable ?? true });
  const before = sha256(file);
  let err: unknown;
  try {
    const img = await Qcow2Image.open(mem, { writable: opts.writable ?? true, checkMode: opts.checkMode });
    await write(img);
  } catch (e) {
    err = e;
  }
  expect(Buffer.compare(mem.bytes(), bytes)).toBe(0);
  expect(sha256(file)).toBe(before);
  return err;
}

describe('refused writes change nothing', () => {
  it('read-only open', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    const e = await refused(f, { writable: false });
    expect(isQcowError(e) && e.code).toBe('READ_ONLY');
  });

  it('corrupt bit (even when opened for repair)', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    pokeU64(f, 72, 2n);
    const e = await refused(f, { checkMode: true });
    expect(isQcowError(e) && e.code).toBe('IMAGE_CORRUPT');
  });

  it('dirty image (lazy refcounts left stale): the engine asks for a repair', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M', { lazyRefcounts: true });
    qemuIo(['-c', 'write -P 0x5a 0 512', '-c', 'sigraise 9', f]);
    expect(qemuInfo(f)['dirty-flag']).toBe(true);
    const e = await refused(f);
    expect(isQcowError(e) && e.code).toBe('NOT_SUPPORTED');
    expect(String((e as Error).message)).toMatch(/dirty/);
  });

  it('persistent dirty bitmaps', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    qemuImgOk(['bitmap', '--add', f, 'b0']);
    const e = await refused(f);
    expect(isQcowError(e) && e.code).toBe('NOT_SUPPORTED');
  });

  it('past the end of the virtual disk', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '1M');
    const e = await refused(f, {}, (img) => writeGuest(img, 1024 * 1024 - 10, new Uint8Array(11)));
    expect(isQcowError(e) && e.code).toBe('INVALID_ARGUMENT');
    const z = await refused(f, {}, (img) => writeZeroes(img, -1, 5));
    expect(isQcowError(z) && z.code).toBe('INVALID_ARGUMENT');
  });

  it('header refcount zeroed: "Preventing invalid allocation of L2 table at offset 0"', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    pokeU16(f, 0x20000, 0); // refcount of cluster 0
    const e = await refused(f);
    expect(isQcowError(e) && e.code).toBe('METADATA_CORRUPT');
    expect((e as Error).message).toBe('Preventing invalid allocation of L2 table at offset 0');
  });

  it('refcount block pointing at guest data: no allocation 2 GiB past the end (qemu-io writes there)', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    qemuIoOk(f, 'write -P 0x11 0 64k');
    // refcounts read as 0x1111 for every cluster refcount block 0 covers (2 GiB)
    pokeU64(f, reftableEntryPos(readHeader(f), 0), BigInt(dataClusterOffset(f)));
    const e = await refused(f, {}, (img) => writeGuest(img, 1 << 20, new Uint8Array(4096).fill(1)));
    expect(isQcowError(e) && e.code).toBe('METADATA_CORRUPT');
    expect((e as Error).message).toMatch(/^Preventing invalid allocation of data cluster past 0x[0-9a-f]+: refcount block 0 at 0x50000 counts the clusters after the end of the file \(0x60000\) as in use; the refcounts are corrupt, run a check with repair$/);
    const q = tmp.file('q.qcow2');
    fs.copyFileSync(f, q);
    qemuIo(['-c', 'write -P 1 1M 4k', q]);
    expect(fs.statSync(q).size).toBeGreaterThan(2 ** 31);
  });

  it('L1 table refcount zeroed: the allocator will not hand it out', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M');
    pokeU16(f, 0x20006, 0); // refcount of cluster 3 (the L1 table)
    const e = await refused(f);
    expect(isQcowError(e) && e.code).toBe('METADATA_CORRUPT');
    expect((e as Error).message).toMatch(/overlaps with active L1 table/);
  });
});

describe('special images that are written', () => {
  it('lazy_refcounts=on: refcounts are written eagerly, the dirty bit is never set', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M', { lazyRefcounts: true });
    const mem = new MemoryStore(new Uint8Array(fs.readFileSync(f)));
    const img = await Qcow2Image.open(mem, { writable: true });
    await writeGuest(img, 5000, new Uint8Array(200000).fill(0x42));
    fs.writeFileSync(f, mem.bytes());
    expect(qemuInfo(f)['dirty-flag']).toBe(false);
    expect(qemuCheck(f).exitCode).toBe(0);
    qemuIoOk(f, 'read -P 0x42 5000 200000');
  });

  it('qcowscope write repairs a dirty image first (as QEMU does on a writable open)', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M', { lazyRefcounts: true });
    qemuIo(['-c', 'write -P 0x5a 0 512', '-c', 'sigraise 9', f]);
    expect(qemuCheck(f).corruptions).toBeGreaterThan(0);
    expect(await main(['write', '-P', '0x66', f, '4096', '4096'])).toBe(0);
    expect(qemuCheck(f).exitCode).toBe(0);
    expect(qemuInfo(f)['dirty-flag']).toBe(false);
    qemuIoOk(f, 'read -P 0x5a 0 512', 'read -P 0x66 4096 4096');
  });

  it('qcowscope write: -P, -z, -u, -d and --from', async () => {
    const f = tmp.file('a.qcow2');
    createImage(f, '16M', { clusterSize: 4096 });
    expect(await main(['write', '-P', '0x11', f, '0', '1M'])).toBe(0);
    expect(await main(['write', '-z', f, '4k', '8k'])).toBe(0);
    expect(await main(['write', '-z', '-u', f, '64k', '64k'])).toBe(0);
    expect(await main(['write', '-d', f, '256k', '128k'])).toBe(0);
    const src = tmp.file('src.raw');
    fs.writeFileSync(src, new Uint8Array(3000).fill(0x77));
    expect(await main(['write', '--from', src, f, '2M', '3000'])).toBe(0);
    expect(qemuCheck(f).exitCode).toBe(0);
    qemuIoOk(f, 'read -P 0x11 0 4k', 'read -P 0 4k 8k', 'read -P 0x11 12k 52k', 'read -P 0 64k 64k',
      'read -P 0x11 128k 128k', 'read -P 0 256k 128k', 'read -P 0x11 384k 640k', 'read -P 0x77 2M 3000');
  });
});
