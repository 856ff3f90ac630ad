// Several images as the disks of one VM: a group snapshot lands on all of them, and a group
// operation that one image cannot take leaves every image unchanged. QEMU judges the downloads.
import * as path from 'node:path';
import { qemuCheck, qemuInfo } from '../helpers/qemu.ts';
import { test, expect, downloadImage, makeImage, openGroup, openViaInput, showView } from './fixtures.ts';

const names = (file: string) => (qemuInfo(file).snapshots ?? []).map((s) => s.name);

test('group create lands on every image; a group delete one image cannot take changes none', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'sys.qcow2', {}, ['base']);
  const b = makeImage(tmp, 'data.qcow2', {}, []);
  await page.goto('/');
  await openGroup(page, openViaInput, a, b);
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('vm-1');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'vm-1', exact: true })).toBeVisible();

  // "base" exists only on sys.qcow2: deleting it as a group must fail and change nothing.
  await page.getByRole('tab', { name: 'sys.qcow2' }).click();
  await showView(page, 'Snapshots');
  await page.getByRole('checkbox', { name: /Apply to all 2 open images as one group/ }).check();
  await page.getByRole('button', { name: 'Delete base' }).click();
  await expect(page.getByRole('dialog')).toContainText('On all 2 open images');
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(page.getByRole('alert')).toContainText('data.qcow2');
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'base', exact: true })).toBeVisible();

  const sa = path.join(tmp, 'sys-saved.qcow2');
  const sb = path.join(tmp, 'data-saved.qcow2');
  await downloadImage(page, sa, 'sys.qcow2');
  await downloadImage(page, sb, 'data.qcow2');
  for (const f of [sa, sb]) expect(qemuCheck(f).exitCode).toBe(0);
  expect(names(sa)).toEqual(['base', 'vm-1']);
  expect(names(sb)).toEqual(['vm-1']);
});
