// Links (web/links): the URL's fragment names the image, the view and the selection; it is kept
// up to date as the person moves (replaceState: selections add no history entries, views do), it
// restores the same page on load and on Back / Forward, and for a person's own file it names the
// file and never its bytes. The gallery opens its images from their recipes: what the page
// reports about one equals qemu-img's answer on the image QEMU makes from the same recipe.
import type { Page } from '@playwright/test';
import * as path from 'node:path';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';
import { qemuCheck, qemuMap } from '../helpers/qemu.ts';
import { galleryRecipe } from '../../core/gallery/recipes.ts';
import { runRecipeWithQemu } from '../helpers/recipe-qemu.ts';

const inspector = (page: Page) => page.getByRole('complementary');
const historyLength = (page: Page) => page.evaluate(() => history.length);

test('a gallery link restores image, view and selection; moving updates it; Back and Forward restore', async ({ page, tmp }) => {
  await page.goto('/#img=gallery:zeros&view=l1&sel=l2:0.1');
  await expect(page.getByRole('tab', { name: 'zeros.qcow2' })).toBeVisible();
  await expect(inspector(page).getByRole('heading', { name: 'L2 entry 1' })).toBeVisible();
  // The entry is what qemu-img map says of guest 64 KiB on the image QEMU makes from the recipe: zeros.
  runRecipeWithQemu(galleryRecipe('zeros')!.commands, tmp);
  const at64k = qemuMap(path.join(tmp, 'zeros.qcow2')).find((m) => m.start <= 0x10000 && 0x10000 < m.start + m.length)!;
  expect(at64k.zero).toBe(true);
  await expect(page.getByRole('button', { name: /^L2 entry 1: guest 0x10000, zero/ })).toBeVisible();

  // Choosing another entry rewrites the address in place (no new history entry).
  const before = await historyLength(page);
  await page.getByRole('button', { name: /^L2 entry 3: guest 0x30000/ }).click();
  await expect(page).toHaveURL(/#img=gallery:zeros&view=l1&sel=l2:0\.3$/);
  expect(await historyLength(page)).toBe(before);

  // A view change is a history entry: Back restores the view and its selection.
  await showView(page, 'Translation');
  await expect(page).toHaveURL(/#img=gallery:zeros&view=translate/);
  await page.getByRole('textbox', { name: 'Guest offset' }).fill('0x100000');
  await page.getByRole('button', { name: 'Translate', exact: true }).click();
  // The selection stays (the inspector still shows it) and the address says so.
  await expect(page).toHaveURL(/view=translate&sel=l2:0\.3&offset=0x100000$/);
  await page.goBack();
  await expect(page).toHaveURL(/view=l1&sel=l2:0\.3$/);
  await expect(inspector(page).getByRole('heading', { name: 'L2 entry 3' })).toBeVisible();
  await page.goForward();
  await expect(page.getByRole('heading', { name: 'Translation', level: 2 })).toBeVisible();
  await expect(page.getByRole('textbox', { name: 'Guest offset' })).toHaveValue('0x100000');
  await expect(page.locator('.answer[role="status"]')).toContainText('reads as zeros');

  // The same link in a fresh page shows the same thing.
  const url = page.url();
  const other = await page.context().newPage();
  await other.goto(url);
  await expect(other.locator('.answer[role="status"]')).toContainText('Guest 0x100000');
  await expect(other.locator('.answer[role="status"]')).toContainText('reads as zeros');
});

test('Copy link on a person’s file names the file and the view only; opening it asks for the file, then shows the view', async ({ page, tmp, context }) => {
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const f = makeImage(tmp, 'mine.qcow2');
  await page.goto('/');
  await openViaInput(page, f);
  await showView(page, 'L1 table');
  await page.getByRole('button', { name: /^L1 entry 0:/ }).click();
  await page.getByRole('button', { name: 'Copy link' }).click();
  await expect(page.getByText(/Link copied\. It names only the view/)).toBeVisible();
  const link = await page.evaluate(() => navigator.clipboard.readText());
  const hash = new URL(link).hash;
  expect(hash).toBe('#img=file:mine.qcow2&view=l1&sel=l1:0');

  const other = await context.newPage();
  await other.goto(link);
  await expect(other.getByText('Open your copy of mine.qcow2 to see it.', { exact: false })).toBeVisible();
  await openViaInput(other, f);
  await expect(other.getByRole('heading', { name: 'L1 table', level: 2 })).toBeVisible();
  await expect(inspector(other).getByRole('heading', { name: 'L1 entry 0' })).toBeVisible();
});

test('the gallery: an example opens from the start screen with its commands, and its check verdict is qemu-img check’s', async ({ page, tmp }) => {
  await page.goto('/');
  // The start screen (the demo closed) leads to the examples.
  await page.getByRole('button', { name: 'Close demo.qcow2' }).click();
  await page.getByRole('button', { name: 'example images' }).click();
  const gallery = page.getByRole('dialog', { name: 'Example images' });
  await gallery.getByRole('button', { name: 'Open A leaked cluster' }).click();
  await expect(page.getByRole('tab', { name: 'leak.qcow2' })).toBeVisible();
  await expect(page).toHaveURL(/#img=gallery:leak&view=map$/);
  const recipe = galleryRecipe('leak')!;
  await expect(page.getByLabel('Commands that make A leaked cluster')).toHaveText(recipe.commands.join('\n'));

  runRecipeWithQemu(recipe.commands, tmp);
  const q = qemuCheck(path.join(tmp, 'leak.qcow2'));
  await page.getByRole('button', { name: 'Run check' }).first().click();
  await expect(page.getByText(`${q.leaks} leaked clusters were found on the image.`)).toBeVisible();
});

test('a view link clicked as the page writes its own address: the clicked view is shown, and Back returns', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('heading', { name: 'Header', exact: true, level: 2 })).toBeVisible();
  // The address written back for the view shown (as an image that has just opened settles on its
  // view) lands in the same task as the click, before a hashchange could be handled.
  await page.evaluate(() => {
    const link = document.querySelector<HTMLAnchorElement>('nav[aria-label="Views"] a[href="#/snapshots"]')!;
    const before = location.hash;
    link.click();
    history.replaceState(history.state, '', before || '#/header');
  });
  await expect(page.getByRole('heading', { name: 'Snapshots', exact: true, level: 2 })).toBeVisible();
  // the hashchange the click queued has been handled by the next frames: the view stays
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done))));
  await expect(page.getByRole('heading', { name: 'Snapshots', exact: true, level: 2 })).toBeVisible();
  await page.goBack();
  await expect(page.getByRole('heading', { name: 'Header', exact: true, level: 2 })).toBeVisible();
});
