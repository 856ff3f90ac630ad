// Two tabs, one file: the first tab to change an image opened through its handle holds a Web Lock
// until it closes the image; the second tab's change is refused and changes nothing; once it may
// change it, it starts from the file as the first tab saved it (nothing the first tab did is lost).
import * as path from 'node:path';
import { qemuCheck, qemuInfo } from '../helpers/qemu.ts';
import { test, expect, installPickerStub, makeImage, readFromOpfs, showView, stageInOpfs } from './fixtures.ts';

test('a second tab cannot write an image the first one is writing', async ({ page, context, tmp }) => {
  const f = makeImage(tmp, 'shared.qcow2');
  await installPickerStub(page);
  await page.goto('/');
  await stageInOpfs(page, f);
  const other = await context.newPage();
  await installPickerStub(other);
  await other.goto('/');
  await other.evaluate((name) => localStorage.setItem('e2e-picker-file', name), f.name);

  for (const p of [page, other]) {
    await p.getByRole('button', { name: 'Open image' }).click();
    await expect(p.getByRole('tab', { name: f.name })).toBeVisible();
    await showView(p, 'Snapshots');
  }
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('first');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'No VM is running: go on' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'first', exact: true })).toBeVisible();

  await other.getByRole('textbox', { name: 'Snapshot name' }).fill('second');
  await other.getByRole('button', { name: 'Create snapshot' }).click();
  await other.getByRole('dialog').getByRole('button', { name: 'No VM is running: go on' }).click();
  await expect(other.getByRole('alert')).toContainText('being written in another tab');

  // The first tab saves; closing the image there releases the lock.
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await expect(page.getByRole('group', { name: 'Unsaved changes' })).toHaveCount(0);
  await page.getByRole('button', { name: `Close ${f.name}` }).click();
  // The first tab's worker lets go of the lock as it closes the image.
  await expect.poll(() => other.evaluate(async () => ((await navigator.locks.query()).held ?? []).length)).toBe(0);
  await other.getByRole('button', { name: 'Dismiss message' }).click();
  await other.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(other.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'second', exact: true })).toBeVisible();
  await expect(other.getByRole('alert')).toHaveCount(0);
  await expect(other.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 'first', exact: true })).toBeVisible();
  await other.getByRole('button', { name: 'Save', exact: true }).click();
  await expect(other.getByRole('group', { name: 'Unsaved changes' })).toHaveCount(0);

  const saved = path.join(tmp, 'shared-after.qcow2');
  await readFromOpfs(other, f.name, saved);
  expect(qemuCheck(saved).exitCode).toBe(0);
  // The second tab opened the file before "first" was saved; it re-reads the file when it takes
  // the lock, so its snapshot is added to the table as it is now and "first" is kept.
  expect((qemuInfo(saved).snapshots ?? []).map((s) => s.name)).toEqual(['snapA', 'snapB', 'first', 'second']);
});
