// What a user review found and fixed, asserted in Chromium: a long table list is one Tab stop
// with arrow keys inside it (no walking through 8,192 rows), even after the mouse wheel scrolled
// its active row away; the snapshot actions stay on a phone screen, the header's meanings are
// shown on a phone, the check's figures are explained with qemu-img check's own percentages, and
// a damaged image's error is one line.
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { makeDamagedImage } from '../helpers/corruptor.ts';
import { createImage, qemuImg, qemuIoOk } from '../helpers/qemu.ts';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';

const focused = (page: Page) => page.evaluate(() => document.activeElement?.getAttribute('aria-label') ?? document.activeElement?.textContent ?? '');

/** 8 GiB, data in three L2 tables' ranges: an L1 table of 16 entries. */
function makeWide(dir: string) {
  const file = path.join(dir, 'wide.qcow2');
  createImage(file, '8G');
  qemuIoOk(file, 'write -P 0x11 0 1M', 'write -P 0x22 1G 64k', 'write -c -P 0x33 4G 256k');
  return { path: file, name: 'wide.qcow2' };
}

test('the refcount table (8,192 rows) is one Tab stop; arrow keys, Home and End move in it', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Refcount table');
  const first = page.getByRole('button', { name: /^Refcount table entry 0:/ });
  await first.focus();
  await page.keyboard.press('ArrowDown');
  expect(await focused(page)).toMatch(/^Refcount table entry 1:/);
  await page.keyboard.press('End');
  await expect(page.getByRole('button', { name: /^Refcount table entry 8191:/ })).toBeFocused();
  await page.keyboard.press('Home');
  await expect(first).toBeFocused();
  // Enter on the row opens its block, whose list is the next Tab stop.
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { name: /^Refcount block at 0x/ })).toBeVisible();
  await page.keyboard.press('Tab');
  expect(await focused(page)).toMatch(/^Cluster 0 at 0x0: refcount 1/);
  // Shift+Tab goes back to the row last used, not to row 8191.
  await page.keyboard.press('Shift+Tab');
  await expect(first).toBeFocused();
});

test('a list scrolled far with the mouse wheel is still a Tab stop: Tab goes to the active row', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
  await showView(page, 'Refcount table');
  const list = page.getByRole('list', { name: 'Refcount table entries' });
  const first = page.getByRole('button', { name: /^Refcount table entry 0:/ });
  await expect(first).toHaveAttribute('tabindex', '0');
  // Wheel the list until the row holding the Tab stop is no longer rendered.
  const box = (await list.boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + Math.min(box.height, 200) / 2);
  for (let i = 0; i < 10 && (await first.count()) > 0; i++) {
    await page.mouse.wheel(0, 3000);
    await page.waitForTimeout(100);
  }
  await expect(first).toHaveCount(0);
  await expect(list.getByRole('button').first()).toBeVisible();
  // Tab from the control before the list (the demo note's last button, above the view) lands on that row, back in view.
  await page.getByRole('region', { name: 'Demo image' }).getByRole('button').last().focus();
  await page.keyboard.press('Tab');
  await expect(first).toBeFocused();
  await page.keyboard.press('ArrowDown');
  await expect(page.getByRole('button', { name: /^Refcount table entry 1:/ })).toBeFocused();
});

test('L1 and L2 lists: one Tab stop each, arrow keys move, the L2 table opens from the keyboard', async ({ page, tmp }) => {
  const f = makeWide(tmp);
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'L1 table');
  await page.getByRole('button', { name: /^L1 entry 0:/ }).focus();
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowDown');
  await expect(page.getByRole('button', { name: /^L1 entry 2: L2 table at 0x/ })).toBeFocused();
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { name: /^L2 table at 0x/ })).toBeVisible();
  // Tab leaves the 16 L1 rows at once for the L2 list.
  await page.keyboard.press('Tab');
  await expect(page.getByRole('button', { name: /^L2 entry 0: guest 0x40000000, data at 0x/ })).toBeFocused();
  await page.keyboard.press('End');
  await expect(page.getByRole('button', { name: /^L2 entry 8191: guest 0x5fff0000, unallocated/ })).toBeFocused();
  await page.keyboard.press('PageUp');
  await expect(page.getByRole('button', { name: /^L2 entry 8181:/ })).toBeFocused();
});

test('on a phone, the snapshot actions and the header meanings are on the screen', async ({ page, tmp }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  const f = makeImage(tmp, 'phone.qcow2', {}, ['before upgrade', 'snapB']);
  await page.goto('/');
  await openViaInput(page, f);
  const meaning = page.getByText('Entries in the active L1 table; each points to one L2 table.').filter({ visible: true });
  await expect(meaning).toBeVisible();
  expect((await meaning.boundingBox())!.x + (await meaning.boundingBox())!.width).toBeLessThanOrEqual(390);

  await showView(page, 'Snapshots');
  for (const name of ['Revert to before upgrade', 'Delete before upgrade', 'Revert to snapB', 'Delete snapB']) {
    const b = page.getByRole('button', { name, exact: true });
    await expect(b).toBeVisible();
    const box = (await b.boundingBox())!;
    expect(box.x + box.width, name).toBeLessThanOrEqual(390);
  }
  const overflow = await page.evaluate(() => {
    const main = document.getElementById('main')!;
    const wrap = main.querySelector('table')!.parentElement!;
    return wrap.scrollWidth - wrap.clientWidth;
  });
  expect(overflow).toBeLessThanOrEqual(1);
});

test('the check figures are explained, with the percentages qemu-img check prints', async ({ page, tmp }) => {
  const f = makeWide(tmp);
  const q = qemuImg(['check', f.path]);
  const m = /= ([\d.]+)% allocated, ([\d.]+)% fragmented, ([\d.]+)% compressed clusters/.exec(q.stdout)!;
  expect(m).not.toBeNull();
  await page.goto('/');
  await openViaInput(page, f);
  await page.getByRole('button', { name: 'Run check' }).click();
  await expect(page.getByText('No errors were found on the image.')).toBeVisible();
  const stats = page.getByRole('definition').filter({ hasText: '%' });
  await expect(stats.nth(0)).toContainText(`(${m[1]}%)`);
  await expect(stats.nth(1)).toContainText(`(${m[2]}% of the allocated)`);
  await expect(stats.nth(2)).toContainText(`(${m[3]}% of the allocated)`);
  await expect(page.getByText('Allocated clusters that do not follow the previous guest cluster in the file.')).toBeVisible();
  const end = /Image end offset: (\d+)/.exec(q.stdout)![1]!;
  await expect(page.getByText(`${Number(end).toLocaleString('en-US')} bytes`)).toBeVisible();
});

test("a damaged image's error is one line in the message bar; the note says what is still shown", async ({ page, tmp }) => {
  const file = path.join(tmp, 'l1-offset-unaligned.qcow2');
  const d = makeDamagedImage('l1-offset-unaligned', file);
  await page.goto('/');
  await openViaInput(page, { path: file, name: 'l1-offset-unaligned.qcow2' });
  const alert = page.getByRole('alert');
  await expect(alert).toContainText(`l1-offset-unaligned.qcow2 failed validation: ${d.expect.openError}`);
  await expect(alert).not.toContainText('Its header is shown');
  const box = (await alert.locator('span').first().boundingBox())!;
  const lineHeight = await alert.locator('span').first().evaluate((el) => parseFloat(getComputedStyle(el).lineHeight));
  expect(box.height).toBeLessThan(lineHeight * 1.5);
  await expect(page.getByRole('note', { name: 'Validation error' })).toContainText('Its header is shown');
});
