// A person's own file opened through "Open image" (the stubbed picker: a real OPFS handle): every
// change waits in the tab, the file stays byte for byte as it was until "Save", which writes them
// all at once; "Discard changes" brings the file back; a cancelled save leaves the file as it was
// and the changes pending. QEMU judges the saved file against the same operations done by
// qemu-img on a copy.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type Page } from '@playwright/test';
import { SEGMENTS_PY } from '../../cli/holes.ts';
import { createImage, qemuCheck, qemuConvertToRaw, qemuImg, qemuImgOk, qemuIoOk, qemuSnapshotList, sha256, sha256Bytes } from '../helpers/qemu.ts';
import { test, expect, downloadFromOpfs, downloadImage, installPickerStub, makeImage, openGroup, openViaInput, openViaPicker, opfsSha256, readFromOpfs, showView } from './fixtures.ts';

const table = (page: Page) => page.getByRole('table', { name: 'Snapshots' });
const saveBar = (page: Page) => page.getByRole('group', { name: 'Unsaved changes' });

/** The first change to a person's file asks about running VMs first. */
async function goOnNoVm(page: Page): Promise<void> {
  const d = page.getByRole('dialog');
  await expect(d).toContainText('Failed to get write lock');
  await d.getByRole('button', { name: 'No VM is running: go on' }).click();
}

/** Create a snapshot in the Snapshots view; on a person's file the first change asks about VMs (`vm`). */
async function createSnapshot(page: Page, name: string, vm = true): Promise<void> {
  await showView(page, 'Snapshots');
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill(name);
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  if (vm) await goOnNoVm(page);
}

/** Create snapC, revert to snapA, delete snapB through the UI. */
async function threeOps(page: Page): Promise<void> {
  await createSnapshot(page, 'snapC');
  await expect(table(page).getByRole('cell', { name: 'snapC', exact: true })).toBeVisible();
  await expect(saveBar(page)).toContainText('1 unsaved change');
  await page.getByRole('button', { name: 'Revert to snapA' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(saveBar(page)).toContainText('2 unsaved changes');
  await page.getByRole('button', { name: 'Delete snapB' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(table(page).getByRole('cell', { name: 'snapB', exact: true })).toHaveCount(0);
  await expect(saveBar(page)).toContainText('3 unsaved changes');
  await expect(page.getByRole('alert')).toHaveCount(0);
}

/** The same three operations done by qemu-img on a copy of the original. */
function byQemu(original: string, to: string): string {
  fs.copyFileSync(original, to);
  qemuImgOk(['snapshot', '-c', 'snapC', to]);
  qemuImgOk(['snapshot', '-a', 'snapA', to]);
  qemuImgOk(['snapshot', '-d', 'snapB', to]);
  return to;
}

/** Our saved file and qemu-img's agree: clean, the same snapshots, the same disk in each, the same length and map. */
function judge(ours: string, theirs: string, tmp: string): void {
  const check = qemuCheck(ours);
  expect(check.exitCode, JSON.stringify(check)).toBe(0);
  const list = (f: string) => qemuSnapshotList(f).map((s) => [s.id, s.name, s['vm-state-size']]);
  expect(list(ours)).toEqual(list(theirs));
  const cmp = qemuImg(['compare', ours, theirs]);
  expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
  // the file as qemu-img leaves it (core/image/snapshot-settle.ts): same length, same map
  expect(fs.statSync(ours).size, 'length').toBe(fs.statSync(theirs).size);
  expect(qemuImgOk(['map', '--output=json', ours]), 'map').toBe(qemuImgOk(['map', '--output=json', theirs]));
  for (const name of ['snapA', 'snapC']) {
    const a = path.join(tmp, `ours-${name}.raw`);
    const b = path.join(tmp, `theirs-${name}.raw`);
    qemuConvertToRaw(ours, a, { name });
    qemuConvertToRaw(theirs, b, { name });
    expect(sha256(a), name).toBe(sha256(b));
  }
}

test('changes to a picked file wait in the tab, untouched on disk, and Save writes them once; QEMU agrees', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'mine.qcow2');
  const before = sha256(f.path);
  await installPickerStub(page);
  await page.goto('/');
  await openViaPicker(page, f);
  await expect(page.getByText('Your file: changes wait here until you Save')).toBeVisible();
  await threeOps(page);

  // Every view shows the changed image: the check runs on it, the Journal lists three operations.
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
  await showView(page, 'Journal');
  await expect(page.getByRole('article')).toHaveCount(3);
  // The file itself is as it was.
  expect(await opfsSha256(page, f.name)).toBe(before);

  await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Saved mine.qcow2' })).toBeVisible();
  await expect(saveBar(page)).toHaveCount(0);
  await expect(page.getByText('Your file: changes wait here until you Save')).toBeVisible();

  const ours = path.join(tmp, 'ours.qcow2');
  await readFromOpfs(page, f.name, ours);
  judge(ours, byQemu(f.path, path.join(tmp, 'theirs.qcow2')), tmp);
});

test('Discard changes brings back the file as it is on disk', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'undo.qcow2');
  const before = sha256(f.path);
  await installPickerStub(page);
  await page.goto('/');
  await openViaPicker(page, f);
  await threeOps(page);
  await saveBar(page).getByRole('button', { name: 'Discard changes' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Discard', exact: true }).click();
  await expect(saveBar(page)).toHaveCount(0);
  await expect(table(page).locator('tbody tr')).toHaveCount(2);
  await expect(table(page).getByRole('cell', { name: 'snapB', exact: true })).toBeVisible();
  expect(await opfsSha256(page, f.name)).toBe(before);
  // Closing an image with nothing pending asks nothing.
  await page.getByRole('button', { name: `Close ${f.name}` }).click();
  await expect(page.getByRole('tab', { name: f.name })).toHaveCount(0);
});

test('a save cancelled halfway leaves the file byte for byte as it was, the changes still pending', async ({ page, tmp }) => {
  // A fully allocated image (the save writes every byte of it) with data over half the disk.
  const f = { path: path.join(tmp, 'big.qcow2'), name: 'big.qcow2' };
  createImage(f.path, '256M', { preallocation: 'full' });
  qemuIoOk(f.path, 'write -P 0x5a 0 128M');
  qemuImgOk(['snapshot', '-c', 'snapA', f.path]);
  const before = sha256(f.path);
  await installPickerStub(page);
  await page.goto('/');
  await openViaPicker(page, f);
  await createSnapshot(page, 'snapB');
  await expect(saveBar(page)).toContainText('1 unsaved change');

  await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
  // Cancel once some bytes, not all, are written.
  const progress = saveBar(page).getByRole('progressbar', { name: 'Saving' });
  await expect.poll(async () => Number(await progress.getAttribute('value')), { intervals: [20] }).toBeGreaterThan(0);
  const max = Number(await progress.getAttribute('max'));
  const value = Number(await progress.getAttribute('value'));
  expect(value).toBeLessThan(max);
  await expect(saveBar(page)).toContainText(/of 256\.\d+ MiB/);
  await saveBar(page).getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Cancelled' })).toBeVisible();
  await expect(saveBar(page)).toContainText('1 unsaved change');
  expect(await opfsSha256(page, f.name)).toBe(before);

  // Saved after all: qemu-img sees the new snapshot.
  await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
  await expect(saveBar(page)).toHaveCount(0);
  const ours = path.join(tmp, 'big-saved.qcow2');
  await readFromOpfs(page, f.name, ours);
  expect(qemuCheck(ours).exitCode).toBe(0);
  expect(qemuSnapshotList(ours).map((s) => s.name)).toEqual(['snapA', 'snapB']);
});

/** A file's data segments (SEEK_DATA / SEEK_HOLE, by the command line's python3 snippet), to copy it sparsely. */
function dataSegments(file: string): Array<[number, number]> {
  const r = spawnSync('/usr/bin/python3', ['-c', SEGMENTS_PY, file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python3 could not list the data segments: ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
}

/**
 * A large preallocation=metadata image made by qemu-img (snapshot snapA), staged sparsely in the
 * private file system of an on-disk profile (its data segments, then its size: the rest stays a
 * hole) and opened through "Open image". Returns the file's segments and their bytes, to tell that
 * it is untouched.
 */
async function openLargeSparse(page: Page, f: { path: string; name: string }, size: string, baseURL: string) {
  createImage(f.path, size, { preallocation: 'metadata' });
  qemuImgOk(['snapshot', '-c', 'snapA', f.path]);
  const bytes = fs.statSync(f.path).size;
  const segments = dataSegments(f.path);
  const fd = fs.openSync(f.path, 'r');
  const parts = segments.map(([at, end]) => {
    const b = Buffer.alloc(end - at);
    fs.readSync(fd, b, 0, b.length, at);
    return { at, b64: b.toString('base64') };
  });
  fs.closeSync(fd);
  await installPickerStub(page);
  await page.goto(baseURL);
  await page.evaluate(async ({ parts, name, size }) => {
    const h = await (await navigator.storage.getDirectory()).getFileHandle(name, { create: true });
    const w = await h.createWritable();
    for (const p of parts) {
      const bin = atob(p.b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      await w.write({ type: 'write', position: p.at, data: bytes });
    }
    await w.truncate(size);
    await w.close();
    localStorage.setItem('e2e-picker-file', name);
  }, { parts, name: f.name, size: bytes });
  await page.getByRole('button', { name: 'Open image' }).click();
  const data = sha256Bytes(Buffer.concat(parts.map((p) => Buffer.from(p.b64, 'base64'))));
  /** The file in the private file system is as it was: its size, and the bytes of its data segments. */
  const untouched = async () => {
    const onDisk = await page.evaluate(async ({ name, segments }) => {
      const file = await (await (await navigator.storage.getDirectory()).getFileHandle(name)).getFile();
      const blob = new Blob(segments.map(([a, b]) => file.slice(a, b)));
      const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
      return { size: file.size, sha: Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('') };
    }, { name: f.name, segments });
    expect(onDisk).toEqual({ size: bytes, sha: data });
  };
  return { untouched };
}

/** Chromium's private file system on disk (a persistent profile), so a large file stays sparse. */
async function onDiskProfile(tmp: string, body: (page: Page) => Promise<void>): Promise<void> {
  const ctx = await chromium.launchPersistentContext(path.join(tmp, 'profile'), { executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'], acceptDownloads: true });
  try {
    await body(ctx.pages()[0] ?? (await ctx.newPage()));
  } finally {
    await ctx.close();
  }
}

test('a save that rewrites more than 1 GiB says what it costs first; Cancel leaves everything pending', async ({ tmp, baseURL }) => {
  // its metadata (the first MiB of a preallocation=metadata image) is written, the rest is a hole.
  const f = { path: path.join(tmp, 'large.qcow2'), name: 'large.qcow2' };
  await onDiskProfile(tmp, async (page) => {
    const { untouched } = await openLargeSparse(page, f, '2G', baseURL!);
    await createSnapshot(page, 'snapB');
    await expect(saveBar(page)).toContainText('1 unsaved change');

    await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
    const d = page.getByRole('dialog', { name: 'Saving rewrites the whole file' });
    await expect(d).toContainText(`writes all of ${f.name} again, from start to end: 2.00 GiB`);
    await expect(d).toContainText('needs 2.00 GiB of free disk space while saving');
    await expect(d).toContainText('Holes of a sparse file are written out');
    for (const name of ['Rewrite and save', 'Save as…', 'Download image', 'Cancel']) await expect(d.getByRole('button', { name, exact: true })).toBeVisible();
    await d.getByRole('button', { name: 'Cancel', exact: true }).click();
    await expect(d).toHaveCount(0);
    await expect(saveBar(page)).toContainText('1 unsaved change');
    await untouched();
  });
});

test('from the cost dialog, "Save as…" and "Download image" each give the changed image, as qemu-img makes it; the file and its changes stay', async ({ tmp, baseURL }) => {
  test.setTimeout(10 * 60_000); // two writes of 1.1 GiB, on a shared machine
  const f = { path: path.join(tmp, 'big.qcow2'), name: 'big.qcow2' };
  await onDiskProfile(tmp, async (page) => {
    // The save picker, stubbed: a new file in the private file system.
    await page.addInitScript(() => {
      (window as unknown as { showSaveFilePicker: () => Promise<FileSystemFileHandle> }).showSaveFilePicker = async () =>
        (await navigator.storage.getDirectory()).getFileHandle('saved-as.qcow2', { create: true });
    });
    const { untouched } = await openLargeSparse(page, f, '1100M', baseURL!);
    await createSnapshot(page, 'snapB');
    await expect(saveBar(page)).toContainText('1 unsaved change');
    const theirs = path.join(tmp, 'theirs.qcow2');
    // a sparse copy: the image is 1.1 GiB of holes but for its metadata
    execFileSync('cp', ['--sparse=always', f.path, theirs]);
    qemuImgOk(['snapshot', '-c', 'snapB', theirs]);
    const sameAsQemu = (ours: string) => {
      expect(qemuCheck(ours).exitCode).toBe(0);
      const list = (x: string) => qemuSnapshotList(x).map((s) => [s.id, s.name, s['vm-state-size']]);
      expect(list(ours)).toEqual(list(theirs));
      expect(list(ours).map(([, name]) => name)).toEqual(['snapA', 'snapB']);
      const cmp = qemuImg(['compare', ours, theirs]);
      expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    };
    const costDialog = async () => {
      await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
      return page.getByRole('dialog', { name: 'Saving rewrites the whole file' });
    };

    await (await costDialog()).getByRole('button', { name: 'Save as…', exact: true }).click();
    await expect(page.getByText(`Saved as saved-as.qcow2; ${f.name} is unchanged and its changes still wait here.`)).toBeVisible({ timeout: 4 * 60_000 });
    await expect(saveBar(page)).toContainText('1 unsaved change');
    await untouched();
    // Judged where Chromium downloaded them (no 1.1 GiB copies), then deleted.
    const savedAs = await downloadFromOpfs(page, 'saved-as.qcow2');
    const savedAsPath = await savedAs.path();
    await page.evaluate(async () => (await navigator.storage.getDirectory()).removeEntry('saved-as.qcow2'));

    const download = page.waitForEvent('download', { timeout: 4 * 60_000 });
    await (await costDialog()).getByRole('button', { name: 'Download image', exact: true }).click();
    // QEMU judges the saved copy while the page writes the download: two 1.1 GiB jobs side by side.
    sameAsQemu(savedAsPath);
    await savedAs.delete();
    const dl = await download;
    expect(dl.suggestedFilename()).toBe(f.name);
    await expect(saveBar(page)).toContainText('1 unsaved change');
    await untouched();
    sameAsQemu(await dl.path());
    await dl.delete();
  });
});

test('closing an image or leaving the page with unsaved changes asks first; after a download nothing is unsaved', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'dropped.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await createSnapshot(page, 'snapC', false);
  await expect(page.getByText('Unsaved changes: download to keep them')).toBeVisible();

  await page.getByRole('button', { name: `Close ${f.name}` }).click();
  const d = page.getByRole('dialog', { name: `Close ${f.name}?` });
  await expect(d).toContainText('1 unsaved change');
  await d.getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('tab', { name: f.name })).toBeVisible();

  // Leaving the page: the browser's own question (beforeunload), answered "stay".
  const asked: string[] = [];
  page.on('dialog', (dlg) => {
    asked.push(dlg.type());
    void dlg.dismiss();
  });
  await page.close({ runBeforeUnload: true });
  await expect.poll(() => asked).toEqual(['beforeunload']);
  expect(page.isClosed()).toBe(false);

  // The download holds every change: the state line says so, and closing asks nothing.
  const saved = await downloadImage(page, path.join(tmp, 'dropped-saved.qcow2'));
  await expect(page.getByText(`Downloaded as ${f.name}: no changes since`)).toBeVisible();
  expect(qemuSnapshotList(saved).map((s) => s.name)).toEqual(['snapA', 'snapB', 'snapC']);
  await page.getByRole('button', { name: `Close ${f.name}` }).click();
  await expect(page.getByRole('tab', { name: f.name })).toHaveCount(0);
});

test('a group is saved all or none: when a later image cannot be saved, the saved ones are put back', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'sys.qcow2', {}, ['base']);
  const b = makeImage(tmp, 'data.qcow2', {}, []);
  const beforeA = sha256(a.path);
  await installPickerStub(page);
  await page.goto('/');
  await openGroup(page, openViaPicker, a, b);
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('vm-1');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await goOnNoVm(page);
  await goOnNoVm(page);
  await expect(saveBar(page)).toContainText('2 unsaved changes in 2 images');

  // Another program writes data.qcow2 (a byte in its header cluster, past the header).
  await page.evaluate(async () => {
    const h = await (await navigator.storage.getDirectory()).getFileHandle('data.qcow2');
    await new Promise((done) => setTimeout(done, 20));
    const w = await h.createWritable({ keepExistingData: true });
    await w.write({ type: 'write', position: 4000, data: new Uint8Array([1]) });
    await w.close();
  });
  const theirsB = await opfsSha256(page, 'data.qcow2');
  await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
  await expect(page.getByRole('alert')).toContainText('data.qcow2 was changed on disk by another program');
  await expect(page.getByRole('alert')).toContainText('sys.qcow2 put back as it was');
  await expect(saveBar(page)).toContainText('2 unsaved changes in 2 images');
  expect(await opfsSha256(page, 'sys.qcow2')).toBe(beforeA);
  expect(await opfsSha256(page, 'data.qcow2')).toBe(theirsB);
  // sys.qcow2 still shows its pending change over the file as put back.
  await page.getByRole('tab', { name: 'sys.qcow2' }).click();
  await expect(table(page).getByRole('cell', { name: 'vm-1', exact: true })).toBeVisible();
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
});

test('pending changes live in the private file system and come back after a reload', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'kept.qcow2');
  const before = sha256(f.path);
  await installPickerStub(page);
  await page.goto('/');
  await openViaPicker(page, f);
  await createSnapshot(page, 'snapC');
  await page.getByRole('button', { name: 'Revert to snapA' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(saveBar(page)).toContainText('2 unsaved changes');
  const kept = () => page.evaluate(async () => {
    const out: Array<[string, number]> = [];
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('pending-changes', { create: true });
    for await (const [name, h] of (dir as unknown as { entries(): AsyncIterable<[string, FileSystemFileHandle]> }).entries()) out.push([name, (await h.getFile()).size]);
    return out.sort();
  });
  // The changed pages are in a file of the private file system, with their index; the scratch
  // file of an operation's pages beyond its memory budget (32 MiB) stayed empty at this size.
  const files = await kept();
  expect(files.map(([n, size]) => [n.replace(/-\d+-\d+/, ''), size > 0])).toEqual([['kept.qcow2.json', true], ['kept.qcow2.op', false], ['kept.qcow2.pages', true]]);

  // A reload (the browser asks first; the test says leave) loses nothing: the file remembered
  // from the last visit (IndexedDB) is offered again, and opened again it offers the changes back.
  page.on('dialog', (d) => void d.accept());
  await page.reload();
  const again = page.getByRole('dialog', { name: 'Unsaved changes from an earlier visit' });
  await expect(again).toContainText('2 changes to kept.qcow2 were never saved');
  await again.getByRole('button', { name: 'Reopen kept.qcow2' }).click();
  const d = page.getByRole('dialog', { name: 'Unsaved changes to kept.qcow2' });
  await expect(d).toContainText('2 changes to kept.qcow2 from an earlier visit');
  await d.getByRole('button', { name: 'Restore the changes' }).click();
  await expect(saveBar(page)).toContainText('2 unsaved changes');
  expect(await opfsSha256(page, f.name)).toBe(before);
  await showView(page, 'Snapshots');
  await expect(table(page).getByRole('cell', { name: 'snapC', exact: true })).toBeVisible();
  await saveBar(page).getByRole('button', { name: 'Save', exact: true }).click();
  await expect(saveBar(page)).toHaveCount(0);
  expect(await kept()).toEqual([]);

  const ours = path.join(tmp, 'kept-saved.qcow2');
  await readFromOpfs(page, f.name, ours);
  const theirs = path.join(tmp, 'kept-qemu.qcow2');
  fs.copyFileSync(f.path, theirs);
  qemuImgOk(['snapshot', '-c', 'snapC', theirs]);
  qemuImgOk(['snapshot', '-a', 'snapA', theirs]);
  expect(qemuCheck(ours).exitCode).toBe(0);
  expect(qemuSnapshotList(ours).map((s) => [s.id, s.name])).toEqual(qemuSnapshotList(theirs).map((s) => [s.id, s.name]));
  expect(qemuImg(['compare', ours, theirs]).status).toBe(0);
});
