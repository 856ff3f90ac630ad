// The engine layer (core/ops/) driven both ways: the command line's (cli/open.ts: paths, the file
// resolver) and the worker's (worker/engine-adapter.ts: the files the person chose, stores it
// holds), where the two drivers used to differ. qemu-img and qemu-io are the judges: the backing
// chain's depth limit, the repair of a dirty image on a writable open, the check's percentages
// and the raw export of a snapshot taken before a resize.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/temp-dir.ts';
import { createImage, qemuCheck, qemuConvertToRaw, qemuImgCreateEncrypted, qemuImg, qemuImgOk, qemuInfo, qemuIo, qemuIoOk } from '../helpers/qemu.ts';
import { NodeFileStore } from '../../cli/node-file-store.ts';
import { openImage as openFile } from '../../cli/open.ts';
import { openForWrite, openImage as openView, openWithChosenBacking } from '../../worker/engine-adapter.ts';
import { MAX_BACKING_CHAIN_DEPTH, openImage } from '../../core/ops/open.ts';
import { checkReport } from '../../core/ops/check.ts';
import { guestWrite } from '../../core/ops/write.ts';
import { groupSnapshotOp } from '../../core/ops/snapshot.ts';
import { main } from '../../cli/main.ts';

const tmp = useTempDir('qcowscope-engine-layer-');
const MiB = 1024 * 1024;

/** base.qcow2 (0x5a at 1 MiB, by qemu-io) under `n` overlays l1..ln; returns the paths, top last. */
function chain(n: number): string[] {
  const files = [tmp.file('base.qcow2')];
  createImage(files[0]!, 4 * MiB);
  qemuIoOk(files[0]!, 'write -P 0x5a 1M 64k');
  for (let i = 1; i <= n; i++) {
    files.push(tmp.file(`l${i}.qcow2`));
    createImage(files[i]!, 4 * MiB, { backing: path.basename(files[i - 1]!) });
  }
  return files;
}

/** The files as the browser holds them: stores under their base names. */
function chosen(files: string[]): Array<{ name: string; store: NodeFileStore }> {
  return files.map((f) => ({ name: path.basename(f), store: NodeFileStore.open(f) }));
}

describe('one backing chain limit for both drivers', () => {
  it(`a chain of ${MAX_BACKING_CHAIN_DEPTH} backing files opens both ways and reads the base's data (the browser's old limit was 16)`, async () => {
    const files = chain(MAX_BACKING_CHAIN_DEPTH);
    const top = files[files.length - 1]!;
    expect(qemuIo(['-c', 'read -P 0x5a 1M 64k', top]).status).toBe(0);
    const img = await openFile(top);
    try {
      expect((await img.read(MiB, 65536)).every((b) => b === 0x5a)).toBe(true);
    } finally {
      await img.close();
    }
    const links = chosen(files.slice(0, -1));
    const view = await openWithChosenBacking(NodeFileStore.open(top), links);
    try {
      expect((await view.image!.read(MiB, 65536)).every((b) => b === 0x5a)).toBe(true);
    } finally {
      await view.close();
    }
  }, 120_000);

  it('one more is refused both ways, and so is a loop (which qemu-img follows until memory runs out)', async () => {
    const files = chain(MAX_BACKING_CHAIN_DEPTH + 1);
    const top = files[files.length - 1]!;
    const deep = new RegExp(`deeper than ${MAX_BACKING_CHAIN_DEPTH} images`);
    await expect(openFile(top)).rejects.toMatchObject({ code: 'BACKING_CHAIN_TOO_DEEP', message: expect.stringMatching(deep) });
    await expect(openWithChosenBacking(NodeFileStore.open(top), chosen(files.slice(0, -1))))
      .rejects.toMatchObject({ code: 'BACKING_CHAIN_TOO_DEEP', message: expect.stringMatching(deep) });

    const a = tmp.file('a.qcow2');
    const b = tmp.file('b.qcow2');
    createImage(a, MiB);
    createImage(b, MiB, { backing: 'a.qcow2' });
    qemuImgOk(['rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', a]);
    await expect(openFile(b)).rejects.toMatchObject({ code: 'BACKING_CHAIN_TOO_DEEP' });
    await expect(openWithChosenBacking(NodeFileStore.open(b), chosen([a, b]))).rejects.toMatchObject({ code: 'BACKING_CHAIN_TOO_DEEP' });
  }, 120_000);

  it('a missing link is reported by each resolver in its own words, QEMU\'s prefix in front', async () => {
    const files = chain(2);
    fs.rmSync(files[0]!);
    const top = files[2]!;
    const q = qemuImg(['map', top]);
    expect(q.status).not.toBe(0);
    const e = await openFile(top).then(() => null, (x: unknown) => x as Error);
    expect(e).toMatchObject({ code: 'BACKING_MISSING' });
    expect(q.stderr.trim()).toBe(`qemu-img: ${e!.message}`);
    const links = chosen([files[1]!]);
    await expect(openWithChosenBacking(NodeFileStore.open(top), links))
      .rejects.toMatchObject({ code: 'BACKING_MISSING', message: 'Could not open backing file: l1.qcow2 reads through its own backing file base.qcow2: choose it together with l1.qcow2' });
  });
});

/** A dirty image as qemu-io leaves it when killed with lazy refcounts: QEMU finds corruptions. */
function dirtyImage(name: string): string {
  const f = tmp.file(name);
  createImage(f, 16 * MiB, { lazyRefcounts: true });
  qemuIo(['-c', 'write -P 0x22 0 64k', '-c', 'write -P 0x23 2M 64k', '-c', 'sigraise 9', f]);
  expect(qemuInfo(f)['dirty-flag']).toBe(true);
  expect(qemuCheck(f).corruptions).toBeGreaterThan(0);
  return f;
}

describe('a dirty image opened writable is repaired first, as QEMU\'s open does', () => {
  it('the command line\'s way (a path) and the worker\'s way (a store it holds)', async () => {
    const viaPath = dirtyImage('cli.qcow2');
    const viaStore = dirtyImage('worker.qcow2');
    const a = await openFile(viaPath, { writable: true });
    await guestWrite(a, { kind: 'pattern', offset: 4 * MiB, length: 65536, pattern: 0x44 });
    await a.close();
    const store = NodeFileStore.open(viaStore, { writable: true });
    const b = await openForWrite(store, null);
    await guestWrite(b, { kind: 'pattern', offset: 4 * MiB, length: 65536, pattern: 0x44 });
    await store.close();
    for (const f of [viaPath, viaStore]) {
      expect(qemuCheck(f).exitCode, f).toBe(0);
      expect(qemuInfo(f)['dirty-flag']).toBe(false);
      qemuIoOk(f, 'read -P 0x22 0 64k', 'read -P 0x23 2M 64k', 'read -P 0x44 4M 64k');
    }
  });

  it('check mode opens it as it is (qemu-img check sees the same corruptions)', async () => {
    const f = dirtyImage('check.qcow2');
    const want = qemuCheck(f).corruptions;
    const img = await openImage({ name: f, store: NodeFileStore.open(f, { writable: true }) }, { checkMode: true, writable: true });
    try {
      expect((await checkReport(img)).corruptions).toBe(want);
    } finally {
      await img.close();
    }
    expect(qemuInfo(f)['dirty-flag']).toBe(true);
  });
});

describe('the check\'s percentages have one home', () => {
  it('qemu-img check\'s summary line, from the report both drivers print or show', async () => {
    const f = tmp.file('frag.qcow2');
    createImage(f, 64 * MiB, { clusterSize: 4096 });
    qemuIoOk(f, 'write -P 1 0 1M', 'write -P 2 8M 64k', 'write -P 3 512k 8k', 'write -c -P 4 16M 64k');
    const line = /(\d+)\/(\d+) = ([\d.]+)% allocated, ([\d.]+)% fragmented, ([\d.]+)% compressed clusters/.exec(qemuImgOk(['check', f]));
    expect(line).not.toBeNull();
    const img = await openFile(f, { checkMode: true, noBacking: true });
    try {
      const r = await checkReport(img);
      expect(r.percent).toEqual({ allocated: line![3], fragmented: line![4], compressed: line![5] });
      expect(Number(line![5])).toBeGreaterThan(0);
    } finally {
      await img.close();
    }
    const view = await openView(NodeFileStore.open(f));
    try {
      const dto = await view.check({ signal: new AbortController().signal, progress: () => {} }, 'frag.qcow2');
      expect(dto.percent).toEqual({ allocated: line![3], fragmented: line![4], compressed: line![5] });
    } finally {
      await view.close();
    }
  });
});

describe('raw export has one home', () => {
  it('a snapshot taken before a resize exports at the current size, as qemu-img convert -l does, both ways', async () => {
    const f = tmp.file('resized.qcow2');
    createImage(f, 4 * MiB);
    qemuIoOk(f, 'write -P 0x31 0 1M', 'write -P 0x32 3M 1M');
    qemuImgOk(['snapshot', '-c', 'small', f]);
    qemuImgOk(['resize', f, '6M']);
    qemuIoOk(f, 'write -P 0x33 5M 64k');
    const want = tmp.file('want.raw');
    qemuConvertToRaw(f, want, 'small');
    const expected = new Uint8Array(fs.readFileSync(want));
    expect(expected.length).toBe(6 * MiB);

    const out = tmp.file('cli.raw');
    expect(await main(['export', '--snapshot', 'small', f, out])).toBe(0);
    expect(Buffer.from(fs.readFileSync(out)).equals(Buffer.from(expected))).toBe(true);

    const view = await openView(NodeFileStore.open(f));
    try {
      const blob = await view.exportRaw('1', { signal: new AbortController().signal, progress: () => {} });
      expect(Buffer.from(await blob.arrayBuffer()).equals(Buffer.from(expected))).toBe(true);
    } finally {
      await view.close();
    }
  });
});

describe('an encrypted image, without its key', () => {
  it('the page opens it but will not export ciphertext as a disk; the command line refuses it as qemu-img convert does', async () => {
    const f = tmp.file('enc.qcow2');
    qemuImgCreateEncrypted(['-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=k', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', f, '4M']);
    const q = qemuImg(['convert', '-O', 'raw', f, tmp.file('q.raw')]);
    expect(q.status).toBe(1);
    expect(q.stderr).toContain("Parameter 'encrypt.key-secret' is required for cipher");
    expect(await main(['export', f, tmp.file('o.raw')])).toBe(1);
    expect(fs.existsSync(tmp.file('o.raw'))).toBe(false);
    const view = await openView(NodeFileStore.open(f));
    try {
      await expect(view.exportRaw(null, { signal: new AbortController().signal, progress: () => {} })).rejects.toThrow(/encrypted/);
    } finally {
      await view.close();
    }
  });
});

describe('group revert takes an ID or a name, the ID first, as qemu-img snapshot -a does (the browser took names only)', () => {
  it('a name that is another snapshot\'s ID in one image of the group', async () => {
    // a.qcow2: snapshot ID 1 named "1"; b.qcow2: ID 1 named "x", ID 2 named "1"
    const a = tmp.file('a.qcow2');
    const b = tmp.file('b.qcow2');
    for (const f of [a, b]) createImage(f, 4 * MiB);
    qemuIoOk(a, 'write -P 0x11 0 64k');
    qemuImgOk(['snapshot', '-c', '1', a]);
    qemuIoOk(b, 'write -P 0x21 0 64k');
    qemuImgOk(['snapshot', '-c', 'x', b]);
    qemuIoOk(b, 'write -P 0x22 0 64k');
    qemuImgOk(['snapshot', '-c', '1', b]);
    for (const f of [a, b]) qemuIoOk(f, 'write -P 0x99 0 64k');
    // qemu-img's answer, on copies
    const want = [tmp.file('qa.qcow2'), tmp.file('qb.qcow2')];
    fs.copyFileSync(a, want[0]!);
    fs.copyFileSync(b, want[1]!);
    for (const f of want) qemuImgOk(['snapshot', '-a', '1', f]);
    const stores = [a, b].map((f) => NodeFileStore.open(f, { writable: true }));
    const imgs = [];
    for (const s of stores) imgs.push(await openForWrite(s, null));
    await groupSnapshotOp(imgs, 'revert', '1');
    for (const s of stores) await s.close();
    for (const [i, f] of [a, b].entries()) {
      const got = tmp.file(`got${i}.raw`);
      const exp = tmp.file(`want${i}.raw`);
      qemuConvertToRaw(f, got);
      qemuConvertToRaw(want[i]!, exp);
      expect(Buffer.from(fs.readFileSync(got)).equals(fs.readFileSync(exp)), f).toBe(true);
    }
    // b went back to ID 1 ("x"), not to the snapshot named "1"
    qemuIoOk(b, 'read -P 0x21 0 64k');
  });
});

