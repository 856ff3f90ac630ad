// The cluster map, judged by QEMU: its data clusters are the ones qemu-img check counts as
// allocated, every host cluster of the file has one owner, and selecting a cell shows the owner.
import { qemuCheck, fileSize } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';

/** The legend's count for a kind label ("Data (active only) 7" → 7), 0 when absent. */
async function legendCount(page: import('@playwright/test').Page, label: string): Promise<number> {
  const item = page.getByRole('list', { name: 'Legend' }).getByRole('listitem').filter({ hasText: label });
  if ((await item.count()) === 0) return 0;
  return Number((await item.innerText()).replace(label, '').replace(/[^0-9]/g, ''));
}

test('cluster map: data clusters match qemu-img check, every cluster has one owner', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'layout.qcow2', {}, []);
  const q = qemuCheck(f.path);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Cluster map');
  await expect(page.getByRole('list', { name: 'Legend' })).toBeVisible();
  expect(await legendCount(page, 'Data (active only)')).toBe(q.json!['allocated-clusters']);
  expect(await legendCount(page, 'Header')).toBe(1);
  expect(await legendCount(page, 'Refcount table')).toBe(1);
  expect(await legendCount(page, 'Leaked')).toBe(0);
  expect(await legendCount(page, 'Corrupt or overlapping')).toBe(0);
  const clusters = Math.ceil(fileSize(f.path) / 65536);
  await expect(page.getByText(`${clusters} host clusters of 64 KiB`)).toBeVisible();

  // Keyboard: focus the map, Home selects cluster 0 — the header, decoded in the inspector.
  await page.locator('canvas').focus();
  await page.keyboard.press('Home');
  const inspector = page.getByRole('complementary', { name: 'Inspector' });
  await expect(inspector.getByRole('heading', { name: 'Host cluster 0' })).toBeVisible();
  await expect(inspector).toContainText('Header');
  await page.keyboard.press('ArrowRight');
  await expect(inspector.getByRole('heading', { name: 'Host cluster 1' })).toBeVisible();
});
