// The browser stores (worker/stores) and the Comlink error transfer, run in Chromium itself on
// real Files, real OPFS handles, real createWritable sessions, Web Locks and a real worker. The
// modules are bundled with esbuild at test time and loaded into a page of the app's origin.
import { build } from 'esbuild';
import type { Page } from '@playwright/test';
import { test, expect } from './fixtures.ts';

test.use({ bypassCSP: true });

let pageBundle = '';
let workerBundle = '';

test.beforeAll(async () => {
  const bundle = async (contents: string) =>
    (
      await build({
        stdin: { contents, resolveDir: process.cwd(), loader: 'ts', sourcefile: 'entry.ts' },
        bundle: true,
        format: 'iife',
        write: false,
        target: 'es2022',
        logLevel: 'silent',
      })
    ).outputFiles[0]!.text;
  pageBundle = await bundle(`
    import * as Comlink from 'comlink';
    import { QcowError } from './core/errors.ts';
    import { installTransferHandlers } from './worker/transfer.ts';
    import { BlockCache } from './worker/stores/block-cache.ts';
    import { FileStore, blobFromSegments, fileReader } from './worker/stores/file-store.ts';
    import { HandleStore } from './worker/stores/handle-store.ts';
    installTransferHandlers();
    (globalThis as any).qs = { Comlink, QcowError, BlockCache, FileStore, blobFromSegments, fileReader, HandleStore };
  `);
  workerBundle = await bundle(`
    import * as Comlink from 'comlink';
    import { QcowError } from './core/errors.ts';
    import './worker/transfer.ts';
    import { OpfsStore } from './worker/stores/opfs-store.ts';
    import { OpfsPageMap, findPending, pendingKey } from './worker/stores/pending-pages.ts';
    import { SpillPageMap } from './worker/stores/spill-pages.ts';
    import { openScratchPages } from './worker/stores/scratch-pages.ts';
    import { FileStore } from './worker/stores/file-store.ts';
    import { OverlayStore } from './core/io/overlay-store.ts';
    Comlink.expose({
      // A dropped file's scratch files: pages beyond the budget spilled; files in use stay when
      // another opens, a crashed tab's are removed; closing removes them.
      async scratch() {
        const root = await navigator.storage.getDirectory();
        const dir = await root.getDirectoryHandle('scratch-pages', { create: true });
        const names = async () => { const n: string[] = []; for await (const k of (dir as any).keys()) n.push(k); return n.sort(); };
        await (await (await dir.getFileHandle('crashed.op', { create: true })).createWritable()).close();
        const page = (b: number) => new Uint8Array(65536).fill(b);
        const a = (await openScratchPages(2 * 65536))!;
        const afterFirst = await names();
        for (let p = 0; p < 5; p++) a.held.set(p * 3, page(p + 1));
        const b = (await openScratchPages(2 * 65536))!;
        const both = (await names()).length;
        const read = [0, 3, 6, 9, 12].map((p) => a.held.get(p)![65535]);
        const spilled = a.held.spilled;
        await a.close();
        await b.close();
        const closed = await names();
        // a FileStore's changes through them
        const bytes = new Uint8Array(300000).map((_, i) => i & 0xff);
        const fs = new FileStore(new File([bytes], 'd.qcow2'));
        await fs.beginWrite();
        const inUse = (await names()).length;
        await fs.write(65536, page(9));
        await fs.write(200000, Uint8Array.of(1, 2));
        await fs.commit();
        const got = await fs.read(0, fs.size());
        bytes.fill(9, 65536, 131072);
        bytes.set([1, 2], 200000);
        const same = got.every((v, i) => v === bytes[i]);
        await fs.close();
        return { afterFirst: afterFirst.length, crashedGone: !afterFirst.includes('crashed.op'), both, read, spilled, closed, inUse, same, after: await names() };
      },
      // An operation's pages beyond a budget of 2 pages go to a scratch file: the overlay reads
      // what a plain byte array given the same writes holds.
      async spill() {
        const root = await navigator.storage.getDirectory();
        const scratch = await OpfsStore.open(await root.getFileHandle('spill-test.op', { create: true }));
        const map = new SpillPageMap(scratch, 2 * 65536);
        let seed = 7;
        const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
        const src = new Uint8Array(600000).map(() => rnd(256));
        const model = new Uint8Array(1 << 20);
        model.set(src);
        let length = src.length;
        const o = new OverlayStore({ size: src.length, read: async (at, n) => src.slice(at, at + n) }, 'spill', map);
        let most = 0;
        for (let i = 0; i < 60; i++) {
          if (i === 30) { await o.truncate(300001); model.fill(0, 300001); length = 300001; }
          const at = rnd(length + 20000);
          const data = new Uint8Array(1 + rnd(i % 7 === 0 ? 150000 : 3000)).map(() => rnd(256));
          await o.write(at, data);
          model.set(data, at);
          length = Math.max(length, at + data.length);
          most = Math.max(most, map.size - map.spilled);
        }
        const got = await o.read(0, length);
        let diff = -1;
        for (let i = 0; i < length; i++) if (got[i] !== model[i]) { diff = i; break; }
        const spilled = map.spilled;
        map.clear();
        await scratch.close();
        await root.removeEntry('spill-test.op');
        return { size: o.size(), length, diff, spilled, most, cleared: map.size };
      },
      // Kept pages: what the last index names survives later writes that were never indexed.
      async pages() {
        const page = (b: number) => new Uint8Array(65536).fill(b);
        const state = (changes: number) => ({ name: 'k.qcow2', fileSize: 10, lastModified: 5, extent: { length: 3 << 20, sourceLimit: 10 }, changes, at: 1 });
        const key = pendingKey('k.qcow2', { size: 10, lastModified: 5 });
        const a = await OpfsPageMap.open(key, false);
        a.pages.set(0, page(1));
        a.pages.set(7, page(2));
        await a.pages.persist(state(1));
        a.pages.set(0, page(3)); // after the index: must go to a new slot
        a.pages.delete(7);
        a.pages.set(9, page(4));
        const live = [a.pages.get(0)![0], a.pages.get(7), a.pages.get(9)![100]];
        await a.pages.close(); // a tab that died here
        const file = new File([new Uint8Array(10)], 'k.qcow2', { lastModified: 5 });
        const found = await findPending('k.qcow2', file);
        const b = await OpfsPageMap.open(key, true);
        const kept = { size: b.pages.size, p0: b.pages.get(0)![65535], p7: b.pages.get(7)![0], p9: b.pages.get(9), state: b.state };
        await b.pages.drop();
        const gone = await findPending('k.qcow2', file);
        return { live, found: found?.changes, kept, gone };
      },
      fail(code: string, details: Record<string, unknown>) { throw new QcowError(code as any, 'failed on purpose at 0x30000', details); },
      echo(e: unknown) { return { isQcow: e instanceof QcowError, code: (e as QcowError).code, details: (e as QcowError).details }; },
      // Transfer handlers apply to a whole argument or return value (Comlink does not walk into objects).
      back(e: unknown) { return e; },
      async opfs() {
        const root = await navigator.storage.getDirectory();
        const fh = await root.getFileHandle('opfs-store-test.bin', { create: true });
        const s = await OpfsStore.open(fh);
        await s.truncate(0);
        await s.write(100, new Uint8Array([1, 2, 3]));
        const size1 = s.size();
        const r = Array.from(await s.read(98, 8));
        await s.flush();
        await s.truncate(101);
        const size2 = s.size();
        const past = Array.from(await s.read(99, 4));
        await s.close();
        const again = await OpfsStore.open(fh, { writable: false });
        const persisted = Array.from(await again.read(99, 2));
        await again.close();
        return { size1, r, size2, past, persisted };
      },
    });
  `);
});

async function load(page: Page): Promise<void> {
  await page.goto('/');
  await page.addScriptTag({ content: pageBundle });
}

test('FileStore: aligned block reads, copy-on-write overlay, commit/discard, download Blob of slices + patches', async ({ page }) => {
  await load(page);
  const r = await page.evaluate(async () => {
    const { FileStore } = (globalThis as any).qs;
    const size = 3 * 1024 * 1024 + 12345;
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >> 11)) & 0xff;
    const file = new File([bytes], 'img.qcow2');
    const s = new FileStore(file);
    const same = (a: Uint8Array, off: number) => a.every((v, i) => v === (off + i < size ? bytes[off + i] : 0));
    const checks: boolean[] = [];
    for (const [off, len] of [[0, 512], [1048576 - 10, 20], [2 * 1048576 + 5, 1048576], [size - 3, 10], [size + 100, 5]]) {
      checks.push(same(await s.read(off, len), off));
    }
    const rawReads = s.cache.rawReads;
    await s.write(1048576 - 2, new Uint8Array([9, 9, 9, 9]));
    await s.write(size, new Uint8Array([7])); // grows the image
    const patched = await s.read(1048576 - 3, 6);
    // An operation's writes are pending until commit; a failed one is discarded whole.
    const blobBeforeCommit: Blob = s.toBlob();
    await s.commit();
    await s.write(5, new Uint8Array([1, 2, 3]));
    s.discard();
    const discarded = Array.from(await s.read(5, 3)).join() === Array.from(bytes.subarray(5, 8)).join();
    const blob: Blob = s.toBlob();
    const out = new Uint8Array(await blob.arrayBuffer());
    const expected = new Uint8Array(size + 1);
    expected.set(bytes);
    expected.set([9, 9, 9, 9], 1048576 - 2);
    expected[size] = 7;
    const original = new Uint8Array(await file.slice(1048576 - 2, 1048576 + 2).arrayBuffer());
    return {
      checks,
      rawReads,
      patched: Array.from(patched),
      expect3: [bytes[1048576 - 3], 9, 9, 9, 9, bytes[1048576 + 2]],
      blobSize: blob.size,
      blobOk: out.length === expected.length && out.every((v, i) => v === expected[i]),
      originalUntouched: Array.from(original).join() === Array.from(bytes.subarray(1048576 - 2, 1048576 + 2)).join(),
      pristine: s.pristine,
      beforeCommitSize: blobBeforeCommit.size,
      discarded,
    };
  });
  expect(r.checks).toEqual([true, true, true, true, true]);
  expect(r.rawReads).toBeLessThanOrEqual(4); // one raw read per request: contiguous missing blocks are fetched together
  expect(r.patched).toEqual(r.expect3);
  expect(r.blobSize).toBe(3 * 1024 * 1024 + 12345 + 1);
  expect(r.blobOk).toBe(true);
  expect(r.originalUntouched).toBe(true);
  expect(r.pristine).toBe(false);
  expect(r.beforeCommitSize).toBe(3 * 1024 * 1024 + 12345);
  expect(r.discarded).toBe(true);
});

test('HandleStore: operations held in the tab, one atomic save (streamed or keepExistingData), cancel, change on disk, put back, Web Lock', async ({ page }) => {
  await load(page);
  const r = await page.evaluate(async () => {
    const { HandleStore, QcowError } = (globalThis as any).qs;
    const root = await navigator.storage.getDirectory();
    const fh = await root.getFileHandle('handle-store-test.qcow2', { create: true });
    const w = await fh.createWritable();
    await w.write(new Uint8Array(200_000).fill(1));
    await w.close();
    const disk = async () => new Uint8Array(await (await fh.getFile()).arrayBuffer());
    const code = async (p: Promise<unknown>) => p.then(() => 'ok', (e: any) => (e instanceof QcowError ? e.code : String(e)));

    const s = await HandleStore.open(fh);
    await s.beginWrite();
    await s.write(10, new Uint8Array([5, 5]));
    await s.write(150_000, new Uint8Array([6]));
    await s.commit(); // one operation: held in the tab, not in the file
    const onDiskAfterOp = Array.from((await disk()).subarray(10, 12));
    const readsOwnWrite = Array.from(await s.read(9, 4));
    // A failed operation: its writes are dropped.
    await s.write(20, new Uint8Array([8]));
    s.discard();
    // Shrink and grow inside one operation.
    await s.truncate(100);
    await s.truncate(300);
    await s.commit();
    const changes = s.changes;

    // A save cancelled after its first bytes: the file is as it was, the changes still pending.
    const ac = new AbortController();
    const cancelled = await code(s.save({ signal: ac.signal, progress: () => ac.abort() }));
    const untouched = (await disk()).every((v: number) => v === 1) && (await disk()).length === 200_000;
    const stillPending = s.unsaved;

    await s.save(); // streamed through a fresh writable
    const saved = await disk();
    const afterSave = [saved.length, saved[10], saved[11], saved[99], saved[100], saved[299], s.unsaved, s.changes];

    // The other way: keepExistingData, then only the changed pages.
    await s.beginWrite();
    await s.write(0, new Uint8Array([9]));
    await s.commit();
    await s.save({ mode: 'keep' });
    const kept = await disk();
    const afterKeep = [kept.length, kept[0], kept[10], kept[1]];

    // A group save that failed later puts a saved file back: old bytes, changes pending again.
    await s.write(1, new Uint8Array([7]));
    await s.write(400, new Uint8Array([4])); // grows the file
    await s.commit();
    const undo = await s.undoRecord();
    await s.save({ hold: true });
    const heldSaved = [(await disk())[1], (await disk()).length];
    await s.putBack(undo);
    const putBack = [(await disk())[1], (await disk()).length, s.unsaved, (await s.read(1, 1))[0]];

    // Another program changes the file (later: its time differs): the save is refused, the file keeps its bytes.
    await new Promise((done) => setTimeout(done, 20));
    const other = await fh.createWritable({ keepExistingData: true });
    await other.write({ type: 'write', position: 2, data: new Uint8Array([3]) });
    await other.close();
    const changedOnDisk = await code(s.save());
    const theirs = [(await disk())[1], (await disk())[2]];
    await s.discardChanges();
    const discarded = [s.unsaved, (await s.read(2, 1))[0]];

    // A second writer of the same image (another tab) is refused while the first holds the lock.
    const second = await HandleStore.open(fh);
    const lockError = await second.beginWrite().then(() => '', (e: any) => (e instanceof QcowError ? e.code + ': ' + e.message : String(e)));
    await s.close();
    await second.beginWrite(); // free after the first closed
    await second.close();
    return { onDiskAfterOp, readsOwnWrite, changes, cancelled, untouched, stillPending, afterSave, afterKeep, heldSaved, putBack, changedOnDisk, theirs, discarded, lockError, saves: s.saves };
  });
  expect(r.onDiskAfterOp).toEqual([1, 1]);
  expect(r.readsOwnWrite).toEqual([1, 5, 5, 1]);
  expect(r.changes).toBe(2);
  expect(r.cancelled).toBe('CANCELLED');
  expect(r.untouched).toBe(true);
  expect(r.stillPending).toBe(true);
  expect(r.afterSave).toEqual([300, 5, 5, 1, 0, 0, false, 0]);
  expect(r.afterKeep).toEqual([300, 9, 5, 1]);
  expect(r.heldSaved).toEqual([7, 401]);
  expect(r.putBack).toEqual([1, 300, true, 7]);
  expect(r.changedOnDisk).toBe('IO_ERROR');
  expect(r.theirs).toEqual([1, 3]);
  expect(r.discarded).toEqual([false, 3]);
  expect(r.lockError).toMatch(/^READ_ONLY: .*another tab/);
  expect(r.saves).toBe(3);
});

test('OpfsStore (sync access handle), kept pending pages, scratch pages of a dropped file, and QcowError across the worker boundary, both ways', async ({ page }) => {
  await load(page);
  const r = await page.evaluate(async (workerSrc) => {
    const { Comlink, QcowError } = (globalThis as any).qs;
    const url = URL.createObjectURL(new Blob([workerSrc], { type: 'text/javascript' }));
    const remote = Comlink.wrap(new Worker(url));
    let thrown: any;
    try { await remote.fail('TABLE_TOO_LARGE', { structure: 'L1 table', offset: 0x30000, big: 2n ** 60n }); } catch (e) { thrown = e; }
    const sent = new QcowError('SNAPSHOT_NOT_FOUND', 'no such snapshot', { id: '7' });
    const echoed = await remote.echo(sent);
    const back = await remote.back(sent);
    const opfs = await remote.opfs();
    const pages = await remote.pages();
    const spill = await remote.spill();
    const scratch = await remote.scratch();
    return {
      spill,
      scratch,
      isQcow: thrown instanceof QcowError,
      code: thrown?.code,
      message: thrown?.message,
      details: { ...thrown?.details, big: String(thrown?.details?.big) },
      echoed: { isQcow: echoed.isQcow, code: echoed.code, details: echoed.details, backIsQcow: back instanceof QcowError && back.code === 'SNAPSHOT_NOT_FOUND' },
      opfs,
      pages,
    };
  }, workerBundle);
  expect(r.isQcow).toBe(true);
  expect(r.code).toBe('TABLE_TOO_LARGE');
  expect(r.message).toBe('failed on purpose at 0x30000');
  expect(r.details).toEqual({ structure: 'L1 table', offset: 0x30000, big: String(2n ** 60n) });
  expect(r.echoed).toEqual({ isQcow: true, code: 'SNAPSHOT_NOT_FOUND', details: { id: '7' }, backIsQcow: true });
  expect(r.opfs).toEqual({ size1: 103, r: [0, 0, 1, 2, 3, 0, 0, 0], size2: 101, past: [0, 1, 0, 0], persisted: [0, 1] });
  expect(r.pages.live).toEqual([3, undefined, 4]);
  expect(r.pages.found).toBe(1);
  expect(r.pages.kept).toEqual({ size: 2, p0: 1, p7: 2, state: { name: 'k.qcow2', fileSize: 10, lastModified: 5, extent: { length: 3 << 20, sourceLimit: 10 }, changes: 1, at: 1 } });
  expect(r.pages.gone).toBe(null);
  expect(r.spill.diff).toBe(-1);
  expect(r.spill.size).toBe(r.spill.length);
  expect(r.spill.most).toBe(2);
  expect(r.spill.spilled).toBeGreaterThan(2);
  expect(r.spill.cleared).toBe(0);
  expect(r.scratch).toEqual({ afterFirst: 2, crashedGone: true, both: 4, read: [1, 2, 3, 4, 5], spilled: 3, closed: [], inUse: 2, same: true, after: [] });
});
