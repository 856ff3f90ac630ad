// "What did creating a snapshot change?": the Journal shows, for each operation, who owned each
// host cluster before and after. Judged on a qemu-made image whose data clusters qemu-img map
// counts: a snapshot makes every data cluster shared and adds a snapshot L1 table and a snapshot
// table; deleting it makes the data the active disk's alone again.
import { qemuMap } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';
import type { Page } from '@playwright/test';

async function row(page: Page, article: number, owner: string): Promise<[string, string]> {
  const table = page.getByRole('article').nth(article).getByRole('table', { name: /Clusters by owner/ });
  const r = table.getByRole('row').filter({ has: page.getByRole('rowheader', { name: owner, exact: true }) });
  if ((await r.count()) === 0) return ['0', '0'];
  const cells = r.getByRole('cell');
  return [(await cells.nth(0).textContent())!.trim(), (await cells.nth(1).textContent())!.trim()];
}

test('the journal shows what a snapshot create and delete changed, cluster by cluster', async ({ page, tmp }) => {
  const f = makeImage(tmp, 'disk.qcow2', {}, []);
  const dataClusters = qemuMap(f.path).filter((e) => e.data).reduce((n, e) => n + e.length, 0) / 65536;
  expect(dataClusters).toBe(2);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'Snapshots');
  await page.getByRole('textbox', { name: 'Snapshot name' }).fill('s1');
  await page.getByRole('button', { name: 'Create snapshot' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 's1', exact: true })).toBeVisible();
  await page.getByRole('button', { name: 'Delete s1' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Confirm' }).click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('cell', { name: 's1', exact: true })).toHaveCount(0);

  await showView(page, 'Journal');
  await expect(page.getByRole('article')).toHaveCount(2);
  // newest first: 0 = the delete, 1 = the create
  const n = String(dataClusters);
  expect(await row(page, 1, 'Data (active only)')).toEqual([n, '0']);
  expect(await row(page, 1, 'Data (shared)')).toEqual(['0', n]);
  expect((await row(page, 1, 'L2 table (active only)'))[0]).toBe('1');
  expect(await row(page, 1, 'Snapshot L1 table')).toEqual(['0', '1']);
  expect(await row(page, 1, 'Snapshot table')).toEqual(['0', '1']);
  const created = page.getByRole('article').nth(1).getByRole('list', { name: /Clusters that changed owner/ });
  await expect(created.getByRole('listitem').filter({ hasText: 'Data (active only) → Data (shared)' })).toHaveCount(1);
  await expect(created.getByRole('listitem').filter({ hasText: '→ Snapshot table' })).toHaveCount(1);

  expect(await row(page, 0, 'Data (shared)')).toEqual([n, '0']);
  expect(await row(page, 0, 'Data (active only)')).toEqual(['0', n]);
  expect(await row(page, 0, 'Snapshot L1 table')).toEqual(['1', '0']);
});
