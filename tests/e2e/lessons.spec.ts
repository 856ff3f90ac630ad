// The lessons (web/lessons/lessons.ts), each followed in Chromium as a student would, on its
// gallery image: every figure the views show along the way is compared with qemu-img's answer on
// the same image, exported from the page (Download image) or made by QEMU from the recipe.
import type { Page } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test, expect, downloadImage } from './fixtures.ts';
import { qemuCheck, qemuImgOk, qemuMap, qemuSnapshotList } from '../helpers/qemu.ts';
import { dataClusters, freedByDeleting, snapshotData } from '../helpers/snapshot-oracle.ts';
import { readHeader } from '../helpers/qcow2-mini.ts';
import { galleryRecipe } from '../../core/gallery/recipes.ts';
import { runRecipeWithQemu } from '../helpers/recipe-qemu.ts';

const bar = (page: Page) => page.getByRole('region', { name: /^Lesson:/ });
const inspector = (page: Page) => page.getByRole('complementary');

async function next(page: Page, step: number, of: number): Promise<void> {
  await bar(page).getByRole('button', { name: 'Next' }).click();
  await expect(bar(page).getByText(`Step ${step} of ${of}`)).toBeVisible();
}

async function currentView(page: Page): Promise<string> {
  return (await page.getByRole('navigation', { name: 'Views' }).locator('[aria-current="page"]').textContent())!.trim();
}

/** qemu-img map's host offset of guest byte `at` (the answer to "where does it live"). */
function qemuHostOffset(file: string, at: number): number {
  const e = qemuMap(file).find((m) => m.start <= at && at < m.start + m.length);
  if (!e?.data || e.offset === undefined) throw new Error(`qemu-img map: guest ${at} holds no data`);
  return e.offset + (at - e.start);
}

/** The translation's answer, as the page says it: the host offset of the guest byte. */
async function shownHostOffset(page: Page): Promise<number> {
  const answer = page.locator('.answer[role="status"]');
  await expect(answer).toContainText('host offset');
  return Number(/host offset (0x[0-9a-f]+)/.exec((await answer.textContent())!)![1]);
}

/** A row of the journal's "What changed" table: before and after. */
async function changedRow(page: Page, owner: string): Promise<{ before: number; after: number }> {
  const row = page.getByRole('table', { name: /^Clusters by owner/ }).first().getByRole('row').filter({ has: page.getByRole('rowheader', { name: owner, exact: true }) });
  const cells = await row.getByRole('cell').allTextContents();
  return { before: Number(cells[0]), after: Number(cells[1]) };
}

test('where does byte X live: from the start screen, each step in the live views, the host offset is qemu-img map’s', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Lessons', exact: true }).click();
  await page.getByRole('dialog', { name: 'Lessons' }).getByRole('button', { name: 'Where does guest byte 0x48000 live?' }).click();
  await expect(bar(page).getByText('Step 1 of 4')).toBeVisible();
  await expect(page.getByRole('tab', { name: 'snapshots.qcow2' })).toBeVisible();
  await expect.poll(() => currentView(page)).toBe('Translation');
  const host = await shownHostOffset(page);
  const file = await downloadImage(page, path.join(tmp, 'snapshots.qcow2'));
  expect(host).toBe(qemuHostOffset(file, 0x48000));
  await expect(page).toHaveURL(/#img=gallery:snapshots&view=translate&offset=0x48000&lesson=byte&step=1$/);

  await next(page, 2, 4);
  await expect.poll(() => currentView(page)).toBe('L1 table');
  await expect(inspector(page).getByRole('heading', { name: 'L1 entry 0' })).toBeVisible();

  await next(page, 3, 4);
  await expect(inspector(page).getByRole('heading', { name: 'L2 entry 4' })).toBeVisible();
  // The L2 entry's host cluster is the one qemu-img map gives for the byte.
  const cs = readHeader(file).clusterSize;
  await expect(inspector(page).getByText(`0x${(host - (host % cs)).toString(16)}`, { exact: true })).toBeVisible();

  await next(page, 4, 4);
  await expect.poll(() => currentView(page)).toBe('Hex');
  await expect(inspector(page).getByRole('heading', { name: `Host cluster ${Math.floor(host / cs)}` })).toBeVisible();
  await expect(page).toHaveURL(new RegExp(`sel=cluster:0x${(host - (host % cs)).toString(16)}&lesson=byte&step=4$`));
  // Keyboard: Back is a button in the guide; it returns to step 3.
  await bar(page).getByRole('button', { name: 'Back' }).focus();
  await page.keyboard.press('Enter');
  await expect(bar(page).getByText('Step 3 of 4')).toBeVisible();
});

test('what does snapshot S hold alone: the count and the outline equal what qemu-img snapshot -d frees', async ({ page, tmp }) => {
  // Opened from a lesson's link: the image is rebuilt in the page, the same for everyone.
  await page.goto('/#lesson=alone&step=1');
  await expect(bar(page).getByText('Step 1 of 3')).toBeVisible();
  await expect.poll(() => currentView(page)).toBe('Snapshots');
  await expect(inspector(page).getByRole('heading', { name: /first/ })).toBeVisible();
  const alone = inspector(page).locator('dd').filter({ hasText: 'deleting it frees them' });
  const shown = Number(/^(\d+) cluster/.exec((await alone.textContent())!)![1]);
  const file = await downloadImage(page, path.join(tmp, 'snapshots.qcow2'));
  const freed = freedByDeleting(file, ['first'], tmp);
  expect(shown).toBe(freed);

  await next(page, 2, 3);
  await expect.poll(() => currentView(page)).toBe('Cluster map');
  await expect(page.getByRole('list', { name: 'Legend' }).getByText(`Held only by snapshot first ${freed}`)).toBeVisible();
});

test('what did a snapshot create change: the journal’s before and after equal qemu-img’s on the same image', async ({ page, tmp }) => {
  await page.goto('/#lesson=create&step=1');
  await expect(bar(page).getByText('Step 1 of 3')).toBeVisible();
  const before = await downloadImage(page, path.join(tmp, 'before.qcow2'));
  await bar(page).getByRole('button', { name: 'Create snapshot “third”' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'third', exact: true })).toBeVisible();

  await next(page, 2, 3);
  await expect.poll(() => currentView(page)).toBe('Journal');
  // QEMU makes the same change to the same bytes.
  const after = path.join(tmp, 'after.qcow2');
  fs.copyFileSync(before, after);
  qemuImgOk(['snapshot', '-c', 'third', after]);
  const was = snapshotData(before, ['first', 'second'], tmp);
  const now = snapshotData(after, ['first', 'second', 'third'], tmp);
  expect(await changedRow(page, 'Data (shared)')).toEqual({ before: was.shared.length, after: now.shared.length });
  expect(await changedRow(page, 'Data (active only)')).toEqual({ before: was.active.size - was.shared.length, after: now.active.size - now.shared.length });
  expect(await changedRow(page, 'Snapshot L1 table')).toEqual({ before: 2, after: qemuSnapshotList(after).length });

  await next(page, 3, 3);
  await expect(inspector(page).getByRole('heading', { name: /third/ })).toBeVisible();
  const ours = await downloadImage(page, path.join(tmp, 'ours.qcow2'));
  expect(qemuSnapshotList(ours).map((s) => s.name)).toEqual(qemuSnapshotList(after).map((s) => s.name));
  expect(qemuCheck(ours).exitCode).toBe(0);
});

test('why is the file larger than its data: cluster size, the 2 MiB cluster of a 4 KiB write and the file size are qemu-img’s', async ({ page, tmp }) => {
  await page.goto('/#lesson=size&step=1');
  await expect(bar(page).getByText('Step 1 of 3')).toBeVisible();
  await expect.poll(() => currentView(page)).toBe('Header');
  await expect(inspector(page).getByRole('heading', { name: 'cluster_bits' })).toBeVisible();
  // The recipe made by QEMU: the same cluster size, data clusters and file size.
  const qdir = path.join(tmp, 'qemu');
  fs.mkdirSync(qdir);
  runRecipeWithQemu(galleryRecipe('big-clusters')!.commands, qdir);
  const qfile = path.join(qdir, 'big-clusters.qcow2');
  const cs = readHeader(qfile).clusterSize;
  await expect(inspector(page).locator('dd').filter({ hasText: /^\d+$/ })).toHaveText(String(Math.log2(cs)));

  await next(page, 2, 3);
  const host = await shownHostOffset(page);
  const file = await downloadImage(page, path.join(tmp, 'big-clusters.qcow2'));
  expect(host).toBe(qemuHostOffset(file, 32 * 1024 * 1024));

  await next(page, 3, 3);
  await expect.poll(() => currentView(page)).toBe('Cluster map');
  const end = qemuCheck(qfile).json!['image-end-offset']!;
  await expect(page.getByText(`Why the file is ${end / 1024 / 1024} MiB`)).toBeVisible();
  expect(fs.statSync(file).size).toBe(end);
  const data = page.getByRole('table', { name: 'Space' }).getByRole('row').filter({ has: page.getByRole('rowheader', { name: 'Data (active only)' }) });
  await expect(data.getByRole('cell').first()).toHaveText(String(dataClusters(qfile, cs).size));
});

test('why a crash at any moment is safe: the journal (or crash stage) of a create, then a check that agrees with qemu-img check', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Lessons', exact: true }).click();
  await page.getByRole('dialog', { name: 'Lessons' }).getByRole('button', { name: 'Why is a crash at any moment safe?' }).click();
  await expect(bar(page).getByText('Step 1 of 3')).toBeVisible();
  await bar(page).getByRole('button', { name: 'Create snapshot “crash-test”' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'crash-test', exact: true })).toBeVisible();

  await next(page, 2, 3);
  const view = await currentView(page);
  expect(['Journal', 'Crash stage']).toContain(view);
  if (view === 'Journal') await expect(page.getByRole('article', { name: /crash-test/ })).toBeVisible();

  await next(page, 3, 3);
  await bar(page).getByRole('button', { name: 'Run check' }).click();
  const file = await downloadImage(page, path.join(tmp, 'crashed.qcow2'));
  const q = qemuCheck(file);
  expect({ corruptions: q.corruptions, leaks: q.leaks }).toEqual({ corruptions: 0, leaks: 0 });
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
});

test('the chain example: Translation follows a byte through middle.qcow2 into base.qcow2 with qemu-img map’s depth and offset', async ({ page, tmp }) => {
  const recipe = galleryRecipe('chain')!;
  runRecipeWithQemu(recipe.commands, tmp);
  const at = 0x8000;
  const e = qemuMap(path.join(tmp, 'top.qcow2')).find((m) => m.start <= at && at < m.start + m.length)!;
  expect(e.data && e.offset !== undefined).toBe(true);
  await page.goto(`/#img=gallery:chain&view=translate&offset=0x${at.toString(16)}`);
  const answer = page.locator('.answer[role="status"]');
  await expect(answer).toContainText('base.qcow2');
  const m = /base\.qcow2 \(depth (\d+)\): at offset (0x[0-9a-f]+)/.exec((await answer.textContent())!)!;
  expect({ depth: Number(m[1]), offset: Number(m[2]) }).toEqual({ depth: e.depth, offset: e.offset! + (at - e.start) });
  // Each deeper step names the file it is in once.
  await expect(page.getByText('In base.qcow2: L2 entry', { exact: true })).toBeVisible();
});
