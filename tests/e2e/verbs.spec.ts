// The qemu-img verbs on the page, each tried in Chromium on images qemu-img made and judged by
// qemu-img: "What a copy would need" against `qemu-img measure`, Compare [-s] against `qemu-img
// compare [-s]`, and bitmap removal, rebase (-u, safe, -b "") and commit [-d] (changes held in the
// tab, then downloaded or saved) against `qemu-img check` and the same operation done by qemu-img
// on a copy (`compare`, `info`, `map`).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Locator, Page } from '@playwright/test';
import { createImage, qemuCheck, qemuConvertToRaw, qemuImg, qemuImgOk, qemuIo, qemuIoOk, qemuMap, sha256 } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput, openViaPicker, installPickerStub, readFromOpfs, opfsSha256, downloadImage, showView, type Fixture } from './fixtures.ts';

/** qemu-img compare's first line and exit code. */
function qemuCompare(args: string[]): { line: string; code: number } {
  const r = qemuImg(['compare', ...args]);
  return { line: r.stdout.trim().split('\n').at(-1)!, code: r.status ?? -1 };
}

/** The figure a measure row shows, as a number. */
async function figure(page: Page, key: string): Promise<number> {
  return Number((await page.locator(`[data-measure="${key}"]`).innerText()).replace(/,/g, ''));
}

function fixture(dir: string, name: string): Fixture {
  return { path: path.join(dir, name), name };
}

/** Copies of `files` in a new folder `dir` (for qemu-img's reference operation); returns the folder. */
function copiesIn(dir: string, ...files: Fixture[]): string {
  fs.mkdirSync(dir);
  for (const f of files) fs.copyFileSync(f.path, path.join(dir, f.name));
  return dir;
}

/** qemu-img info's backing link of `file`. */
function backingOf(file: string): { file?: string; format?: string } {
  const info = JSON.parse(qemuImgOk(['info', '--output=json', file])) as Record<string, string | undefined>;
  return { file: info['backing-filename'], format: info['backing-filename-format'] };
}

/** The ranges an image allocates itself (qemu-img map, depth 0), without host offsets. */
function ownRanges(file: string): Array<[number, number, boolean, boolean]> {
  return qemuMap(file).filter((e) => e.depth === 0 && e.present).map((e) => [e.start, e.length, e.data, e.zero]);
}

/**
 * A rebased overlay judged by qemu-img: clean, with the backing link `link`, the same disk as
 * `before` (through its old chain) and as qemu-img's result `ref`, and the same ranges of its own.
 */
function expectRebasedAsQemu(out: string, before: string, ref: string, link: { file?: string; format?: string }): void {
  expect(qemuCheck(out).exitCode).toBe(0);
  expect(backingOf(out)).toEqual(link);
  expect(qemuCompare([before, out]).code).toBe(0);
  expect(qemuCompare([ref, out]).code).toBe(0);
  expect(ownRanges(out)).toEqual(ownRanges(ref));
}

/**
 * Open a confirmation from `button` by keyboard, Escape it (the focus goes back to the button),
 * open it again and confirm with `confirm` by keyboard. `says`: text the dialog must show.
 */
async function confirmByKeyboard(page: Page, button: Locator, title: string, confirm: string, says = ''): Promise<void> {
  await button.focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: title });
  await expect(dialog).toContainText(says);
  await page.keyboard.press('Escape');
  await expect(dialog).toHaveCount(0);
  await expect(button).toBeFocused();
  await page.keyboard.press('Enter');
  await dialog.getByRole('button', { name: confirm }).focus();
  await page.keyboard.press('Enter');
}

/** Read the open `overlay` through the open `base` (its link names it already); `ownFile`: a person's file (asks about VMs). */
async function readThrough(page: Page, overlay: string, base: string, ownFile = false): Promise<void> {
  await page.getByRole('tab', { name: overlay }).click();
  await showView(page, 'Header');
  await page.getByLabel('Read through the open image').selectOption({ label: base });
  await page.getByRole('button', { name: 'Use as backing file' }).click();
  if (ownFile) await page.getByRole('dialog').getByRole('button', { name: 'No VM is running: go on' }).click();
  await expect(page.getByText(`It reads through ${base}, open here.`)).toBeVisible();
}

test('What a copy would need: the figures of qemu-img measure -O qcow2, bitmaps included', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'disk.qcow2');
  qemuImgOk(['bitmap', '--add', '-g', '65536', a.path, 'backup-1']);
  const b = makeImage(tmp, 'small.qcow2', { clusterSize: 4096 }, []);
  qemuIoOk(b.path, 'write -P 0x11 1M 300k', 'write -z 2M 64k');
  await page.goto('/');
  for (const f of [a, b]) {
    await openViaInput(page, f);
    await showView(page, 'Cluster map');
    await page.getByRole('button', { name: 'Measure a copy' }).click();
    await expect(page.getByRole('status', { name: 'What a copy would need' })).toBeVisible();
    const want = JSON.parse(qemuImgOk(['measure', '--output=json', '-O', 'qcow2', f.path])) as Record<string, number>;
    expect(await figure(page, 'required')).toBe(want.required);
    expect(await figure(page, 'fully-allocated')).toBe(want['fully-allocated']);
    expect(await figure(page, 'bitmaps')).toBe(want.bitmaps);
  }
});

test('Compare: two open images and an image with its snapshot, qemu-img compare\'s verdict and the first difference', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'a.qcow2');
  const same = fixture(tmp, 'same.qcow2');
  fs.copyFileSync(a.path, same.path);
  const other = makeImage(tmp, 'other.qcow2', {}, []);
  qemuIoOk(other.path, 'write -P 0x77 3200k 1k');
  const refs: Record<string, { line: string; code: number }> = {
    'same.qcow2': qemuCompare([a.path, same.path]),
    'other.qcow2': qemuCompare([a.path, other.path]),
  };
  const snapRaw = path.join(tmp, 'snapA.raw');
  qemuConvertToRaw(a.path, snapRaw, { name: 'snapA' });
  refs['snapshot snapA'] = qemuCompare(['-f', 'qcow2', '-F', 'raw', a.path, snapRaw]);
  // the cases differ: identical, a mismatch in data, a mismatch where the snapshot reads zeros
  expect(refs['same.qcow2']!.code).toBe(0);
  expect(refs['other.qcow2']!.code).toBe(1);
  expect(refs['snapshot snapA']!.code).toBe(1);

  await page.goto('/');
  for (const f of [other, same, a]) await openViaInput(page, f);
  await showView(page, 'Diff');
  const select = page.getByLabel('Other disk', { exact: true });
  for (const [option, want] of Object.entries(refs)) {
    await select.selectOption({ label: option.startsWith('snapshot') ? `${option} (ID 1)` : option });
    await page.getByRole('button', { name: 'Compare the disks' }).click();
    const status = page.getByRole('status', { name: `Comparison of a.qcow2 and ${option}` });
    await expect(status.locator('.verdict').last()).toHaveText(want.line);
  }

  // The first difference (with snapA: 64k, written after it was taken) on the map and in Translation.
  const offset = Number(/offset (\d+)/.exec(refs['snapshot snapA']!.line)![1]);
  await page.getByRole('button', { name: 'Show on the cluster map' }).click();
  await expect(page.getByRole('heading', { name: 'Cluster map', level: 2 })).toBeVisible();
  await expect(page.getByRole('list', { name: 'Legend' })).toContainText(`First difference (guest 0x${offset.toString(16)})`);
  await showView(page, 'Diff');
  await select.selectOption({ label: 'snapshot snapA (ID 1)' });
  await page.getByRole('button', { name: 'Compare the disks' }).click();
  await page.getByRole('button', { name: 'Follow it in Translation' }).click();
  await expect(page.getByRole('heading', { name: 'Translation', level: 2 })).toBeVisible();
  await expect(page.getByLabel('Guest offset')).toHaveValue(`0x${offset.toString(16)}`);
  await expect(page.locator('.answer')).toContainText('is at host offset');
});

for (const keep of ['Download image', 'Save'] as const) {
test(`a stale in-use bitmap, listed and explained, removed after a confirmation as qemu-img bitmap --remove does (${keep})`, async ({ page, tmp }) => {
  const f = makeImage(tmp, 'vm.qcow2', {}, []);
  qemuImgOk(['bitmap', '--add', f.path, 'stale']);
  qemuImgOk(['bitmap', '--add', '--disable', f.path, 'kept']);
  // QEMU marks bitmaps in use when it opens the image for writing; killed, it never clears the flag.
  qemuIo(['-f', 'qcow2', '-c', 'write -P 0x42 1M 64k', '-c', 'sigraise 9', f.path]);
  const bitmaps = (file: string) => (JSON.parse(qemuImgOk(['info', '--output=json', file])) as { 'format-specific': { data: { bitmaps?: Array<{ name: string; flags: string[] }> } } })['format-specific'].data.bitmaps;
  expect(bitmaps(f.path)!.map((b) => b.flags)).toEqual([['in-use', 'auto'], ['in-use']]);
  const ref = path.join(tmp, 'ref.qcow2');
  fs.copyFileSync(f.path, ref);
  qemuImgOk(['bitmap', '--remove', ref, 'stale']);

  if (keep === 'Save') await installPickerStub(page);
  await page.goto('/');
  if (keep === 'Save') await openViaPicker(page, f);
  else await openViaInput(page, f);
  const list = page.getByRole('list', { name: 'Bitmaps' });
  const stale = list.getByRole('listitem', { name: 'Bitmap stale' });
  const kept = list.getByRole('listitem', { name: 'Bitmap kept' });
  await expect(stale.getByTestId('bitmap-flags')).toHaveText('in-use, auto');
  await expect(stale).toContainText('QEMU refuses to use it');
  await expect(kept.getByTestId('bitmap-flags')).toHaveText('in-use');
  await expect(kept).toContainText('Not auto: disabled');
  await page.getByRole('button', { name: 'Remove bitmap stale' }).click();
  const dialog = page.getByRole('dialog', { name: 'Remove bitmap stale?' });
  await dialog.getByRole('button', { name: 'Remove bitmap' }).click();
  // a person's own file: the first change asks about running VMs
  if (keep === 'Save') await page.getByRole('dialog').getByRole('button', { name: 'No VM is running: go on' }).click();
  await expect(stale).toHaveCount(0);
  await expect(kept).toBeVisible();
  await expect(page.getByRole('heading', { name: 'Dirty bitmaps' })).toBeFocused();

  const out = path.join(tmp, 'out.qcow2');
  if (keep === 'Save') {
    const bar = page.getByRole('group', { name: 'Unsaved changes' });
    await expect(bar).toContainText('1 unsaved change');
    await bar.getByRole('button', { name: 'Save', exact: true }).click();
    await expect(bar).toHaveCount(0);
    await readFromOpfs(page, f.name, out);
  } else {
    await downloadImage(page, out);
  }
  expect(qemuCheck(out).exitCode).toBe(0);
  expect(qemuCompare([ref, out]).code).toBe(0);
  expect(bitmaps(out)).toEqual(bitmaps(ref));
  expect(bitmaps(out)!.map((b) => b.name)).toEqual(['kept']);
});
}

test('rebase -u: an overlay saved away from its backing file is linked to the open image, as qemu-img rebase -u does', async ({ page, tmp }) => {
  fs.mkdirSync(path.join(tmp, 'old'));
  const base = makeImage(path.join(tmp, 'old'), 'base.qcow2', {}, []);
  const ov = fixture(tmp, 'overlay.qcow2');
  createImage(ov.path, undefined, { backing: 'old/base.qcow2' });
  qemuIoOk(ov.path, 'write -P 0x5c 1M 64k');
  const ref = fixture(path.join(tmp, 'ref'), 'overlay.qcow2');
  fs.mkdirSync(path.dirname(ref.path));
  fs.copyFileSync(ov.path, ref.path);
  fs.copyFileSync(base.path, path.join(tmp, 'ref', 'base.qcow2'));
  qemuImgOk(['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', ref.path]);

  await page.goto('/');
  await openViaInput(page, base);
  await openViaInput(page, ov);
  await page.getByLabel('Read through the open image').selectOption({ label: 'base.qcow2' });
  await expect(page.getByText('The link is rewritten to base.qcow2')).toBeVisible();
  await page.getByRole('button', { name: 'Use as backing file' }).click();
  await expect(page.locator('[data-field="backing-filename"]')).toHaveText('base.qcow2');
  await expect(page.getByText('It reads through base.qcow2, open here.')).toBeVisible();
  // Read through the open image, the overlay measures as qemu-img measures the chain it names.
  await showView(page, 'Cluster map');
  await page.getByRole('button', { name: 'Measure a copy' }).click();
  const want = JSON.parse(qemuImgOk(['measure', '--output=json', '-O', 'qcow2', ov.path])) as Record<string, number>;
  expect(await figure(page, 'required')).toBe(want.required);
  expect(await figure(page, 'fully-allocated')).toBe(want['fully-allocated']);
  await showView(page, 'Header');

  const outDir = path.join(tmp, 'out');
  fs.mkdirSync(outDir);
  fs.copyFileSync(base.path, path.join(outDir, 'base.qcow2'));
  const out = await downloadImage(page, path.join(outDir, 'overlay.qcow2'));
  expect(qemuCheck(out).exitCode).toBe(0);
  const info = (file: string) => {
    const { filename: _f, 'actual-size': _a, 'full-backing-filename': _b, ...rest } = JSON.parse(qemuImgOk(['info', '--output=json', file])) as Record<string, unknown>;
    return rest;
  };
  expect(info(out)).toEqual(info(ref.path));
  expect(qemuCompare([ref.path, out]).code).toBe(0);

  // A typed name: only the link changes, and nothing open is read through any more.
  await page.getByLabel('Or link it to the file named').fill('images/base.qcow2');
  await page.getByRole('button', { name: 'Change the link' }).click();
  await expect(page.locator('[data-field="backing-filename"]')).toHaveText('images/base.qcow2');
  await expect(page.getByText(/which is\s+not open/)).toBeVisible();
  const out2 = await downloadImage(page, path.join(tmp, 'renamed.qcow2'));
  qemuImgOk(['rebase', '-u', '-b', 'images/base.qcow2', '-F', 'qcow2', ref.path]);
  expect(info(out2)).toEqual(info(ref.path));
});

test('Commit into backing file: the overlay folded into its open backing image, as qemu-img commit does', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, ['before']);
  const ov = fixture(tmp, 'top.qcow2');
  createImage(ov.path, undefined, { backing: 'base.qcow2' });
  qemuIoOk(ov.path, 'write -P 0xcd 64k 64k', 'write -P 0xee 5M 100k', 'write -z 0 4k');
  const refDir = path.join(tmp, 'ref');
  fs.mkdirSync(refDir);
  for (const f of [base, ov]) fs.copyFileSync(f.path, path.join(refDir, f.name));
  qemuImgOk(['commit', path.join(refDir, 'top.qcow2')]);

  const compareWithBase = async (want: string) => {
    await showView(page, 'Diff');
    await page.getByLabel('Other disk', { exact: true }).selectOption({ label: 'base.qcow2' });
    await page.getByRole('button', { name: 'Compare the disks' }).click();
    await expect(page.getByRole('status', { name: 'Comparison of top.qcow2 and base.qcow2' }).locator('.verdict').last()).toHaveText(want);
    await showView(page, 'Header');
  };

  await page.goto('/');
  await openViaInput(page, base);
  await openViaInput(page, ov);
  // Not read through its backing file yet: compare refuses, in one line.
  await showView(page, 'Diff');
  await page.getByLabel('Other disk', { exact: true }).selectOption({ label: 'base.qcow2' });
  await page.getByRole('button', { name: 'Compare the disks' }).click();
  await expect(page.getByRole('alert').locator('span').first()).toHaveText('The backing file of top.qcow2 is not open: open it (Header) before comparing it');
  await showView(page, 'Header');
  await page.getByLabel('Read through the open image').selectOption({ label: 'base.qcow2' });
  await page.getByRole('button', { name: 'Use as backing file' }).click();
  await expect(page.getByText('It reads through base.qcow2, open here.')).toBeVisible();
  await compareWithBase(qemuCompare([ov.path, base.path]).line);
  // by keyboard: Escape cancels and gives the focus back; Enter on the dialog's button commits
  await confirmByKeyboard(page, page.getByRole('button', { name: 'Commit into backing file' }), 'Commit top.qcow2 into base.qcow2?', 'Commit');
  await expect(page.getByRole('dialog')).toHaveCount(0);
  await expect(page.getByRole('button', { name: 'Commit into backing file' })).toBeEnabled();
  // the overlay now reads what the base holds
  const after = qemuCompare([path.join(refDir, 'top.qcow2'), path.join(refDir, 'base.qcow2')]);
  expect(after.line).toBe('Images are identical.');
  await compareWithBase(after.line);

  const outDir = path.join(tmp, 'out');
  fs.mkdirSync(outDir);
  await downloadImage(page, path.join(outDir, 'top.qcow2'), 'top.qcow2');
  await downloadImage(page, path.join(outDir, 'base.qcow2'), 'base.qcow2');
  for (const f of ['base.qcow2', 'top.qcow2']) {
    expect(qemuCheck(path.join(outDir, f)).exitCode).toBe(0);
    expect(qemuCompare([path.join(refDir, f), path.join(outDir, f)]).code).toBe(0);
  }
  // the snapshot taken before is untouched
  const snap = (dir: string) => {
    const raw = path.join(tmp, `${path.basename(dir)}-before.raw`);
    qemuConvertToRaw(path.join(dir, 'base.qcow2'), raw, { name: 'before' });
    return fs.readFileSync(raw);
  };
  expect(snap(outDir).equals(snap(refDir))).toBe(true);
  const allocated = (file: string) => (JSON.parse(qemuImgOk(['map', '--output=json', file])) as Array<{ depth: number; data: boolean }>).filter((e) => e.depth === 0 && e.data).length;
  expect(allocated(path.join(outDir, 'top.qcow2'))).toBe(allocated(path.join(refDir, 'top.qcow2')));
});

test('Compare -s, and a snapshot whose first difference the active disk no longer holds, outlined on the map', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'a.qcow2');
  const same = fixture(tmp, 'same.qcow2');
  fs.copyFileSync(a.path, same.path);
  // reads the same, allocated differently: a zero cluster where a.qcow2 allocates nothing
  const zeroed = fixture(tmp, 'zeroed.qcow2');
  fs.copyFileSync(a.path, zeroed.path);
  qemuIoOk(zeroed.path, 'write -z 1M 64k');
  // the same disk, 1 MiB longer (its tail reads zeros)
  const bigger = fixture(tmp, 'bigger.qcow2');
  qemuImgOk(['convert', '-O', 'qcow2', a.path, bigger.path]);
  qemuImgOk(['resize', bigger.path, '+1M']);
  const cases = ['same.qcow2', 'zeroed.qcow2', 'bigger.qcow2'].map((name) => ({
    name,
    loose: qemuCompare([a.path, path.join(tmp, name)]),
    strict: qemuCompare(['-s', a.path, path.join(tmp, name)]),
  }));
  // the cases differ: identical both ways, identical only when not strict, sizes
  expect(cases.map((c) => [c.loose.code, c.strict.code])).toEqual([[0, 0], [0, 1], [0, 1]]);

  // The active disk of snapz reads zeros at 0 where snapA still holds its cluster.
  const snapz = makeImage(tmp, 'snapz.qcow2');
  const shared = qemuMap(snapz.path).find((e) => e.start === 0)!.offset!;
  qemuIoOk(snapz.path, 'discard 0 64k');
  const snapRaw = path.join(tmp, 'snapA.raw');
  qemuConvertToRaw(snapz.path, snapRaw, { name: 'snapA' });
  const snapRef = qemuCompare(['-f', 'qcow2', '-F', 'raw', snapz.path, snapRaw]);
  expect(snapRef.line).toBe('Content mismatch at offset 0!');

  await page.goto('/');
  for (const f of [same, zeroed, bigger, snapz, a]) await openViaInput(page, f);
  await page.getByRole('tab', { name: 'a.qcow2' }).click();
  await showView(page, 'Diff');
  const select = page.getByLabel('Other disk', { exact: true });
  const strict = page.getByRole('checkbox', { name: 'Strict (-s)' });
  for (const c of cases) {
    for (const mode of ['loose', 'strict'] as const) {
      await strict.setChecked(mode === 'strict');
      await select.selectOption({ label: c.name });
      await page.getByRole('button', { name: 'Compare the disks' }).click();
      await expect(page.getByRole('status', { name: `Comparison of a.qcow2 and ${c.name}` }).locator('.verdict').last()).toHaveText(c[mode].line);
    }
  }
  await strict.setChecked(false);
  await page.getByRole('tab', { name: 'snapz.qcow2' }).click();
  await showView(page, 'Diff');
  await select.selectOption({ label: 'snapshot snapA (ID 1)' });
  await page.getByRole('button', { name: 'Compare the disks' }).click();
  const status = page.getByRole('status', { name: 'Comparison of snapz.qcow2 and snapshot snapA' });
  await expect(status.locator('.verdict').last()).toHaveText(snapRef.line);
  await expect(status).toContainText(`in snapz.qcow2 it reads as zeros; in snapshot snapA it is in host cluster ${shared / 65536}`);
  await page.getByRole('button', { name: 'Show on the cluster map' }).click();
  await expect(page.getByRole('list', { name: 'Legend' })).toContainText('First difference (guest 0x0)');
});

test('safe rebase onto another open image: the overlay keeps its disk, as qemu-img rebase -b does', async ({ page, tmp }) => {
  const old = makeImage(tmp, 'old.qcow2', {}, []);
  const neu = makeImage(tmp, 'new.qcow2', {}, []);
  qemuIoOk(neu.path, 'write -P 0x33 64k 64k', 'write -P 0x44 1M 192k', 'write -z 0 4k');
  const ov = fixture(tmp, 'overlay.qcow2');
  createImage(ov.path, undefined, { backing: 'old.qcow2' });
  qemuIoOk(ov.path, 'write -P 0x5c 1M 64k');
  const refDir = copiesIn(path.join(tmp, 'ref'), old, neu, ov);
  qemuImgOk(['rebase', '-b', 'new.qcow2', '-F', 'qcow2', path.join(refDir, 'overlay.qcow2')]);

  await page.goto('/');
  for (const f of [old, neu, ov]) await openViaInput(page, f);
  await readThrough(page, 'overlay.qcow2', 'old.qcow2');
  await page.getByLabel('Read through the open image').selectOption({ label: 'new.qcow2' });
  await page.getByRole('radio', { name: /Keep what this disk reads/ }).check();
  await expect(page.locator('#backing-open-note')).toContainText('qemu-img rebase -b new.qcow2 -F qcow2');
  await page.getByRole('button', { name: 'Use as backing file' }).click();
  await expect(page.locator('[data-field="backing-filename"]')).toHaveText('new.qcow2');
  await expect(page.getByText('It reads through new.qcow2, open here.')).toBeVisible();

  const outDir = copiesIn(path.join(tmp, 'out'), neu);
  const out = await downloadImage(page, path.join(outDir, 'overlay.qcow2'), 'overlay.qcow2');
  expectRebasedAsQemu(out, ov.path, path.join(refDir, 'overlay.qcow2'), { file: 'new.qcow2', format: 'qcow2' });
});

test('Make standalone: the backing data copied in and the link removed, confirmed by keyboard, saved (rebase -b "")', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, []);
  const ov = fixture(tmp, 'overlay.qcow2');
  createImage(ov.path, undefined, { backing: 'base.qcow2' });
  qemuIoOk(ov.path, 'write -P 0x5c 64k 64k', 'write -z 0 4k');
  const refDir = copiesIn(path.join(tmp, 'ref'), base, ov);
  qemuImgOk(['rebase', '-b', '', path.join(refDir, 'overlay.qcow2')]);

  await installPickerStub(page);
  await page.goto('/');
  await openViaInput(page, base);
  await openViaPicker(page, ov);
  const button = page.getByRole('button', { name: 'Make standalone…' });
  // its backing data is what is copied: not before the backing file is open
  await expect(button).toBeDisabled();
  await readThrough(page, 'overlay.qcow2', 'base.qcow2', true);
  await confirmByKeyboard(page, button, 'Make overlay.qcow2 standalone?', 'Make standalone', 'qemu-img rebase -b ""');
  await expect(page.locator('[data-field="backing-filename"]')).toHaveCount(0);
  await expect(page.getByRole('heading', { name: 'Header', level: 2 })).toBeFocused();
  const bar = page.getByRole('group', { name: 'Unsaved changes' });
  await expect(bar).toContainText('1 unsaved change');
  await bar.getByRole('button', { name: 'Save', exact: true }).click();
  await expect(bar).toHaveCount(0);

  const out = path.join(tmp, 'out.qcow2'); // no base.qcow2 next to it: it reads nothing else
  await readFromOpfs(page, ov.name, out);
  expectRebasedAsQemu(out, ov.path, path.join(refDir, 'overlay.qcow2'), {});
});

test('Commit into backing file with -d: the base takes the overlay\'s clusters, the overlay is kept, as qemu-img commit -d does', async ({ page, tmp }) => {
  const base = makeImage(tmp, 'base.qcow2', {}, []);
  const ov = fixture(tmp, 'top.qcow2');
  createImage(ov.path, undefined, { backing: 'base.qcow2' });
  qemuIoOk(ov.path, 'write -P 0xcd 64k 64k', 'write -P 0xee 5M 100k', 'write -z 0 4k');
  const refDir = copiesIn(path.join(tmp, 'ref'), base, ov);
  qemuImgOk(['commit', '-d', path.join(refDir, 'top.qcow2')]);

  await page.goto('/');
  await openViaInput(page, base);
  await openViaInput(page, ov);
  await readThrough(page, 'top.qcow2', 'base.qcow2');
  await page.getByRole('checkbox', { name: /Keep the overlay's clusters/ }).check();
  await expect(page.getByText('(qemu-img commit -d)')).toBeVisible();
  await page.getByRole('button', { name: 'Commit into backing file' }).click();
  const dialog = page.getByRole('dialog', { name: 'Commit top.qcow2 into base.qcow2?' });
  await expect(dialog).toContainText('top.qcow2 keeps its clusters and reads as before');
  await dialog.getByRole('button', { name: 'Commit' }).click();
  await expect(page.getByRole('dialog')).toHaveCount(0);
  await expect(page.getByRole('button', { name: 'Commit into backing file' })).toBeEnabled();

  const outDir = path.join(tmp, 'out');
  fs.mkdirSync(outDir);
  await downloadImage(page, path.join(outDir, 'top.qcow2'), 'top.qcow2');
  await downloadImage(page, path.join(outDir, 'base.qcow2'), 'base.qcow2');
  // the overlay's file is untouched; the base is qemu-img's
  expect(fs.readFileSync(path.join(outDir, 'top.qcow2')).equals(fs.readFileSync(ov.path))).toBe(true);
  expect(qemuCheck(path.join(outDir, 'base.qcow2')).exitCode).toBe(0);
  for (const f of ['base.qcow2', 'top.qcow2']) expect(qemuCompare([path.join(refDir, f), path.join(outDir, f)]).code).toBe(0);
  expect(ownRanges(path.join(outDir, 'base.qcow2'))).toEqual(ownRanges(path.join(refDir, 'base.qcow2')));
  // the base alone now reads what the overlay reads
  expect(qemuCompare([path.join(outDir, 'top.qcow2'), path.join(outDir, 'base.qcow2')]).line).toBe('Images are identical.');
});

test('Make standalone of a large overlay shows its progress and, cancelled halfway, leaves the image as it was', async ({ page, tmp }) => {
  const base = fixture(tmp, 'base.qcow2');
  createImage(base.path, '512M');
  qemuIoOk(base.path, 'write -P 0x5a 0 256M');
  const ov = fixture(tmp, 'overlay.qcow2');
  createImage(ov.path, undefined, { backing: 'base.qcow2' });
  qemuIoOk(ov.path, 'write -P 0x5c 1M 64k');

  await page.goto('/');
  await openViaInput(page, base);
  await openViaInput(page, ov);
  await readThrough(page, 'overlay.qcow2', 'base.qcow2');
  await page.getByRole('button', { name: 'Make standalone…' }).click();
  await page.getByRole('dialog', { name: 'Make overlay.qcow2 standalone?' }).getByRole('button', { name: 'Make standalone' }).click();
  // Cancel once some of the disk, not all, is copied.
  const progress = page.getByRole('progressbar', { name: 'Copying the backing data' });
  await expect.poll(async () => Number(await progress.getAttribute('value')), { intervals: [20] }).toBeGreaterThan(0);
  expect(Number(await progress.getAttribute('value'))).toBeLessThan(Number(await progress.getAttribute('max')));
  await page.getByRole('status').getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Cancelled' })).toBeVisible();
  await expect(page.locator('[data-field="backing-filename"]')).toHaveText('base.qcow2');
  const out = await downloadImage(page, path.join(tmp, 'out.qcow2'), 'overlay.qcow2');
  expect(fs.readFileSync(out).equals(fs.readFileSync(ov.path))).toBe(true);
});

test('a safe rebase held in the tab, then discarded: the file as on disk, and the overlay no longer reads the new base', async ({ page, tmp }) => {
  const old = makeImage(tmp, 'old.qcow2', {}, []);
  const neu = makeImage(tmp, 'new.qcow2', {}, []);
  qemuIoOk(neu.path, 'write -P 0x33 64k 64k');
  const ov = fixture(tmp, 'overlay.qcow2');
  createImage(ov.path, undefined, { backing: 'old.qcow2' });
  const before = sha256(ov.path);

  await installPickerStub(page);
  await page.goto('/');
  await openViaInput(page, old);
  await openViaInput(page, neu);
  await openViaPicker(page, ov);
  await readThrough(page, 'overlay.qcow2', 'old.qcow2', true);
  await page.getByLabel('Read through the open image').selectOption({ label: 'new.qcow2' });
  await page.getByRole('radio', { name: 'Keep what this disk reads' }).check();
  await page.getByRole('button', { name: 'Use as backing file' }).click();
  await expect(page.getByText('It reads through new.qcow2, open here.')).toBeVisible();
  const bar = page.getByRole('group', { name: 'Unsaved changes' });
  await expect(bar).toContainText('1 unsaved change');
  await bar.getByRole('button', { name: 'Discard changes' }).click();
  await page.getByRole('dialog', { name: 'Discard changes?' }).getByRole('button', { name: 'Discard' }).click();
  await expect(bar).toHaveCount(0);
  await expect(page.locator('[data-field="backing-filename"]')).toHaveText('old.qcow2');
  // the copied data went with the change: it does not read through new.qcow2 any more
  await expect(page.getByText(/which is\s+not open/)).toBeVisible();
  expect(await opfsSha256(page, ov.name)).toBe(before);
});
