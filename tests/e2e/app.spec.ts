// The app loads from the production build, explains itself, keeps its Content Security Policy,
// and asks nothing of any other origin.
import { test, expect, foreign } from './fixtures.ts';

test('opens the demo image on a first visit, and explains itself once it is closed', async ({ page, requests, baseURL }) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto('/');
  await expect(page).toHaveTitle('qcowscope');
  // nothing opened: the built-in demo image, with its snapshots
  await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toHaveAttribute('aria-selected', 'true');
  await page.getByRole('link', { name: 'Snapshots' }).first().click();
  await expect(page.getByRole('table', { name: 'Snapshots' }).getByRole('row')).not.toHaveCount(1);
  // "Try the demo image" shows that one rather than a second copy
  await page.getByRole('button', { name: 'Try the demo image' }).click();
  await expect(page.getByRole('tab')).toHaveCount(1);
  await page.getByRole('button', { name: 'Close demo.qcow2' }).click();
  await expect(page.getByRole('heading', { name: 'See inside a qcow2 disk image' })).toBeVisible();
  await expect(page.getByText('the image never leaves your device')).toBeVisible();
  await expect(page.getByRole('button', { name: 'Open image' })).toBeVisible();
  await expect(page.getByRole('button', { name: 'Try the demo image' })).toBeVisible();
  await expect(page.getByLabel('Image file')).toBeAttached();
  expect(errors).toEqual([]);
  expect(foreign(requests, baseURL!)).toEqual([]);
});

test('the page carries a CSP with connect-src self', async ({ page }) => {
  await page.goto('/');
  const csp = await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute('content');
  expect(csp).toContain("connect-src 'self'");
  expect(csp).toContain("default-src 'self'");
  // The policy is live: a fetch to another origin is refused by the browser itself.
  const blocked = await page.evaluate(() => fetch('https://example.com/').then(() => false, () => true));
  expect(blocked).toBe(true);
});

test('is installable: manifest and icons', async ({ page, request }) => {
  await page.goto('/');
  const href = await page.locator('link[rel="manifest"]').getAttribute('href');
  expect(href).toBeTruthy();
  const manifest = await (await request.get(href!)).json();
  expect(manifest.name).toBe('qcowscope');
  const sizes = manifest.icons.map((i: { sizes: string }) => i.sizes);
  expect(sizes).toEqual(expect.arrayContaining(['192x192', '512x512']));
  for (const icon of manifest.icons) expect((await request.get(icon.src)).ok()).toBe(true);
});
