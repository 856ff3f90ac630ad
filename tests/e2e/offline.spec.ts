// Offline: after one visit the service worker serves the app and its engine worker with the
// network off, and an image still opens.
import { test, expect, foreign, makeImage, openViaInput, showView } from './fixtures.ts';
import { qemuInfo } from '../helpers/qemu.ts';

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
  await expect(page.getByRole('heading', { name: 'See inside a qcow2 disk image' })).toBeVisible();
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  const table = page.getByRole('table', { name: 'Snapshots' });
  for (const s of qemuInfo(f.path).snapshots ?? []) await expect(table.getByRole('cell', { name: s.name, exact: true })).toBeVisible();
  await context.setOffline(false);
  expect(foreign(requests, baseURL!)).toEqual([]);
});
