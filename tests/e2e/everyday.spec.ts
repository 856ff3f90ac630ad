// Everyday use (issue 18), one test per rough edge a new user met: group mode that stays put, a
// first visit that explains itself, errors that name the file, one size parser, focus back to the
// opener, a phone layout that leaves room, and a cluster inspector that says who uses a cluster.
// Images are made by qemu-img; QEMU judges what the page wrote.
import * as path from 'node:path';
import { qemuCheck, qemuInfo } from '../helpers/qemu.ts';
import { test, expect, downloadImage, makeImage, openViaInput, showView } from './fixtures.ts';

const snapshotNames = (file: string) => (qemuInfo(file).snapshots ?? []).map((s) => s.name);

test('1. group mode stays on across tab switches and its confirmation lists every image', async ({ page, tmp }) => {
  const a = makeImage(tmp, 'sys.qcow2', {}, ['base', 'old']);
  const b = makeImage(tmp, 'data.qcow2', {}, ['base', 'old']);
  await page.goto('/');
  await openViaInput(page, a);
  await openViaInput(page, b);
  await showView(page, 'Snapshots');
  const groupBox = page.getByRole('checkbox', { name: /Apply to all 2 open images as one group/ });
  await groupBox.check();

  // Another image's tab, and another view and back: the choice is still there, and still on.
  await page.getByRole('tab', { name: 'sys.qcow2' }).click();
  await expect(groupBox).toBeChecked();
  await showView(page, 'Header');
  await showView(page, 'Snapshots');
  await expect(groupBox).toBeChecked();

  await page.getByRole('button', { name: 'Delete old' }).click();
  const dialog = page.getByRole('dialog');
  const listed = dialog.getByRole('list', { name: 'Images that change' }).getByRole('listitem');
  await expect(listed).toHaveText(['sys.qcow2', 'data.qcow2']);
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await expect(dialog).toHaveCount(0);
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'old', exact: true })).toHaveCount(0);

  // Both images lost "old", as QEMU reads them.
  for (const name of ['sys.qcow2', 'data.qcow2']) {
    const saved = await downloadImage(page, path.join(tmp, `saved-${name}`), name);
    expect(qemuCheck(saved).exitCode).toBe(0);
    expect(snapshotNames(saved)).toEqual(['base']);
  }
});
