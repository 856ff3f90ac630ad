// Snapshot management through the UI, judged by QEMU: create, revert and delete (each revert and
// delete confirmed in a dialog), run the check, then save by "Download image" (a File opened
// without a writable handle; a picked handle's Save is save.spec.ts) and let `qemu-img check`,
// `info` and `convert` agree with every change.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { qemuCheck, qemuConvertToRaw, qemuInfo, sha256 } from '../helpers/qemu.ts';
import { test, expect, downloadImage, makeImage, openViaInput, showView, type Fixture } from './fixtures.ts';

/** Create snapC, revert to snapA, delete snapB, all through the UI; then the check is clean. */
async function createRevertDelete(page: Page): Promise<void> {
  await showView(page, 'Snapshots');
  const table = page.getByRole('table', { name: 'Snapshots' });
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('snapC');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(table.getByRole('cell', { name: 'snapC', exact: true })).toBeVisible();
  await expect(table.locator('tbody tr')).toHaveCount(3);
  await expect(table.locator('tbody tr').nth(2).getByRole('cell').first()).toHaveText('3');

  await page.getByRole('button', { name: 'Revert to snapA' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('snapA');
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await expect(dialog).toHaveCount(0);
  await expect(page.getByRole('alert')).toHaveCount(0);

  await page.getByRole('button', { name: 'Delete snapB' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(table.getByRole('cell', { name: 'snapB', exact: true })).toHaveCount(0);
  await expect(table.locator('tbody tr')).toHaveCount(2);

  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();

  // The journal lists what each operation wrote, with its commit point.
  await showView(page, 'Journal');
  await expect(page.getByRole('article')).toHaveCount(3);
  await expect(page.getByText('← commit point')).toHaveCount(3);
}

/** QEMU agrees: clean, snapA and snapC listed, the active disk equals snapA's content. */
function judge(saved: string, original: Fixture, tmp: string): void {
  const check = qemuCheck(saved);
  expect(check.exitCode, JSON.stringify(check)).toBe(0);
  const snaps = (qemuInfo(saved).snapshots ?? []).map((s) => [s.id, s.name]);
  expect(snaps).toEqual([['1', 'snapA'], ['3', 'snapC']]);
  const active = path.join(tmp, 'active.raw');
  const snapA = path.join(tmp, 'snapA.raw');
  const snapC = path.join(tmp, 'snapC.raw');
  const before = path.join(tmp, 'before.raw');
  const beforeA = path.join(tmp, 'before-snapA.raw');
  qemuConvertToRaw(saved, active);
  qemuConvertToRaw(saved, snapA, { name: 'snapA' });
  qemuConvertToRaw(saved, snapC, { name: 'snapC' });
  qemuConvertToRaw(original.path, before);
  qemuConvertToRaw(original.path, beforeA, { name: 'snapA' });
  expect(sha256(active)).toBe(sha256(beforeA)); // reverted to snapA
  expect(sha256(snapA)).toBe(sha256(beforeA)); // snapA unchanged
  expect(sha256(snapC)).toBe(sha256(before)); // snapC holds the disk as it was before the revert
}

test('create, revert, delete on a File, then Download image; QEMU agrees', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'vm.qcow2');
  const pristine = path.join(tmp, 'pristine.qcow2');
  fs.copyFileSync(f.path, pristine);
  await page.goto('/');
  await openViaInput(page, f);
  await createRevertDelete(page);
  await expect(page.getByText('Unsaved changes: download to keep them')).toBeVisible();

  const download = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download image' }).click();
  const d = await download;
  expect(d.suggestedFilename()).toBe('vm.qcow2');
  const saved = path.join(tmp, 'saved.qcow2');
  await d.saveAs(saved);
  expect(sha256(f.path)).toBe(sha256(pristine)); // the picked file itself was never written
  // The state line tells the truth after the download.
  await expect(page.getByText('Downloaded as vm.qcow2: no changes since')).toBeVisible();
  judge(saved, { path: pristine, name: 'vm.qcow2' }, tmp);
});

test('a refused operation changes nothing and says why', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'refuse.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('é'.repeat(128)); // 128 characters, 256 bytes: QEMU keeps at most 255
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(page.getByRole('alert')).toContainText('INVALID_ARGUMENT');
  await expect(page.getByRole('table', { name: 'Snapshots' }).locator('tbody tr')).toHaveCount(2);
  await expect(page.getByText('Changes are kept until you download')).toBeVisible();
});

test('the demo image opens with snapshots, checks clean and downloads as a valid image', async ({ page, tmp }) => {
  await page.goto('/');
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Snapshots');
  const rows = page.getByRole('table', { name: 'Snapshots' }).locator('tbody tr');
  const count = await rows.count();
  expect(count).toBeGreaterThanOrEqual(2);
  // Every view has something to show: shared and exclusive data, and a compressed cluster.
  await showView(page, 'Cluster map');
  const legend = page.getByRole('list', { name: 'Legend' });
  for (const kind of ['Data (shared)', 'Data (snapshots only)', 'Data (active only)', 'Compressed data']) {
    await expect(legend.getByRole('listitem').filter({ hasText: kind })).toHaveCount(1);
  }
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
  const saved = await downloadImage(page, path.join(tmp, 'demo.qcow2'));
  expect(qemuCheck(saved).exitCode).toBe(0);
  expect((qemuInfo(saved).snapshots ?? []).length).toBe(count);
});

test('export the active disk and a snapshot as raw files, equal to qemu-img convert', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'export.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  const save = async (click: () => Promise<void>, name: string): Promise<string> => {
    const d = page.waitForEvent('download');
    await click();
    const dl = await d;
    expect(dl.suggestedFilename()).toBe(name);
    const to = path.join(tmp, `ui-${name}`);
    await dl.saveAs(to);
    return to;
  };
  const active = await save(() => page.getByRole('button', { name: 'Export the active disk as raw' }).click(), 'export.raw');
  await page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'snapA', exact: true }).click();
  const snapA = await save(() => page.getByRole('button', { name: 'Export snapA as raw' }).click(), 'export-snapA.raw');
  const qa = path.join(tmp, 'q-active.raw');
  const qs = path.join(tmp, 'q-snapA.raw');
  qemuConvertToRaw(f.path, qa);
  qemuConvertToRaw(f.path, qs, { name: 'snapA' });
  expect(sha256(active)).toBe(sha256(qa));
  expect(sha256(snapA)).toBe(sha256(qs));
});
