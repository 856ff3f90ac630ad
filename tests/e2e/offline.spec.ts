// Offline: after one visit the service worker serves the app and its engine worker with the
// network off; an image opens, takes snapshot changes, checks clean and downloads, and QEMU agrees.
import * as path from 'node:path';
import { test, expect, downloadImage, foreign, makeImage, openViaInput, showView } from './fixtures.ts';
import { qemuCheck, qemuInfo } from '../helpers/qemu.ts';

test('works offline after the first visit', async ({ page, context, tmp, requests, baseURL }) => {
  const f = makeImage(tmp, 'offline.qcow2');
  await page.goto('/');
  // Wait until the service worker has installed (precached everything) and controls the page.
  await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
    if (!navigator.serviceWorker.controller) {
      await new Promise<void>((r) => navigator.serviceWorker.addEventListener('controllerchange', () => r(), { once: true }));
    }
  });
  expect(await page.evaluate(() => !!navigator.serviceWorker.controller)).toBe(true);
  await context.setOffline(true);
  await page.reload();
  // The app is up (the introduction, or the start demo once it has opened: either may show first).
  await expect(page.getByRole('button', { name: 'Open image' })).toBeVisible();
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  const table = page.getByRole('table', { name: 'Snapshots' });
  for (const s of qemuInfo(f.path).snapshots ?? []) await expect(table.getByRole('cell', { name: s.name, exact: true })).toBeVisible();

  // Change it offline: create, revert, delete; check; download.
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('offline-1');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(table.getByRole('cell', { name: 'offline-1', exact: true })).toBeVisible();
  await page.getByRole('button', { name: 'Revert to snapB' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('button', { name: 'Delete snapA' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(table.getByRole('cell', { name: 'snapA', exact: true })).toHaveCount(0);
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
  const saved = await downloadImage(page, path.join(tmp, 'offline-saved.qcow2'));
  await context.setOffline(false);

  expect(qemuCheck(saved).exitCode).toBe(0);
  expect((qemuInfo(saved).snapshots ?? []).map((s) => s.name)).toEqual(['snapB', 'offline-1']);
  expect(foreign(requests, baseURL!)).toEqual([]);
});
