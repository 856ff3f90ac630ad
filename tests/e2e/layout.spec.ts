// Every view in both colour schemes, on a desktop and a phone screen: nothing makes the view
// scroll sideways (wide tables scroll on their own), each view is reachable from the rail and
// headed by its name, and text colours keep WCAG AA contrast against their backgrounds.
import type { Page } from '@playwright/test';
import { test, expect, makeImage, openViaInput, showView } from './fixtures.ts';

const VIEWS = ['Header', 'Snapshots', 'L1 table', 'Refcount table', 'Cluster map', 'Translation', 'Diff', 'Hex', 'Playground', 'Journal', 'Crash stage', 'Check'];

/** WCAG contrast ratio of two CSS colours, computed in the page. */
function contrast(page: Page, fg: string, bg: string): Promise<number> {
  return page.evaluate(([fg, bg]) => {
    const rgb = (css: string): number[] => {
      const el = document.createElement('div');
      el.style.color = css;
      document.body.append(el);
      const c = getComputedStyle(el).color.match(/[\d.]+/g)!.slice(0, 3).map(Number);
      el.remove();
      return c;
    };
    const lum = (c: number[]) => {
      const [r, g, b] = c.map((v) => {
        const s = v / 255;
        return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
    };
    const [a, b] = [lum(rgb(fg)), lum(rgb(bg))].sort((x, y) => y - x);
    return (a! + 0.05) / (b! + 0.05);
  }, [fg, bg] as const);
}

for (const colorScheme of ['light', 'dark'] as const) {
  for (const viewport of [{ width: 1280, height: 800 }, { width: 390, height: 844 }]) {
    test(`every view fits, ${colorScheme}, ${viewport.width}×${viewport.height}`, async ({ page }) => {
      await page.setViewportSize(viewport);
      await page.emulateMedia({ colorScheme });
      await page.goto('/');
      await page.getByRole('button', { name: 'Try the demo image' }).click();
      await expect(page.getByRole('tab', { name: 'demo.qcow2' })).toBeVisible();
      for (const [fg, bg] of [['var(--text)', 'var(--bg)'], ['var(--muted)', 'var(--bg)'], ['var(--muted)', 'var(--panel)'], ['var(--danger)', 'var(--panel)'], ['var(--accent-text)', 'var(--accent)'], ['var(--danger-text)', 'var(--danger)']]) {
        expect(await contrast(page, fg!, bg!), `${fg} on ${bg}`).toBeGreaterThanOrEqual(4.5);
      }
      for (const v of VIEWS) {
        await showView(page, v);
        if (v === 'Cluster map') await expect(page.getByRole('list', { name: 'Legend' })).toBeVisible();
        const overflow = await page.evaluate(() => {
          const main = document.getElementById('main')!;
          return { main: main.scrollWidth - main.clientWidth, page: document.documentElement.scrollWidth - window.innerWidth };
        });
        expect(overflow, v).toEqual({ main: expect.any(Number), page: 0 });
        expect(overflow.main, `${v} scrolls sideways`).toBeLessThanOrEqual(1);
      }
    });
  }
}

test('long snapshot tags wrap in their column: the table stays in the view and every row keeps its buttons', async ({ page, tmp }) => {
  await page.setViewportSize({ width: 1280, height: 800 });
  const long = ['a'.repeat(100), `b-${'x'.repeat(60)}-${'y'.repeat(37)}`];
  await page.goto('/');
  await openViaInput(page, makeImage(tmp, 'tags.qcow2', {}, long));
  await showView(page, 'Snapshots');
  await expect(page.getByRole('row').filter({ hasText: long[0]! })).toHaveCount(1);
  const overflow = await page.evaluate(() => document.getElementById('main')!.scrollWidth - document.getElementById('main')!.clientWidth);
  expect(overflow, 'the Snapshots view scrolls sideways').toBeLessThanOrEqual(1);
  const main = (await page.locator('#main').boundingBox())!;
  for (const name of long) {
    const del = (await page.getByRole('button', { name: `Delete ${name}` }).boundingBox())!;
    expect(del.x + del.width, `Delete ${name.slice(0, 8)}… inside the view`).toBeLessThanOrEqual(main.x + main.width);
  }
});
